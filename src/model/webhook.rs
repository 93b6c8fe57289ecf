//! How a tombstone pushed to a dependent's webhook is signed, so that receivers (and tests)
//! check it the same way Lethe signs it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-lethe-signature";

/// `sha256=<hex>` of a body under a secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
