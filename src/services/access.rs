//! API tokens: creation (random 256-bit secrets shown once), the first admin token,
//! authentication through the verified-token cache, and revocation.
//!
//! Only a token's SHA-256 hash is stored, so a leaked database reveals no usable token; a
//! presented token is hashed, looked up by hash, and compared in constant time. A verified
//! token is remembered for `StoreConfig::token_cache_ttl`; a revocation clears what every
//! process remembers (on PostgreSQL through a notification).

use base64::Engine as _;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::core::Core;
use crate::error::Error;
use crate::model::validation::check_token_name;
use crate::model::{NewToken, Role, TOKEN_PREFIX, TokenRecord, hash_token, hashes_match};

/// Creates an API token; its secret is in the result and nowhere else.
pub(crate) async fn create_token(core: &Core, name: &str, role: Role) -> Result<NewToken, Error> {
    let token = generate_token(name, role)?;
    core.storage.insert_token(&token.record).await?;
    tracing::info!(token_id = %token.record.id, role = %role, "token created");
    Ok(token)
}

/// The first admin token: if no unrevoked admin token exists, stores `secret` (when given,
/// from `LETHE_ADMIN_TOKEN`) or a generated one, and returns it. `None`: one exists already.
pub(crate) async fn bootstrap_admin_token(
    core: &Core,
    secret: Option<Zeroizing<String>>,
) -> Result<Option<NewToken>, Error> {
    let tokens = core.storage.tokens().await?;
    if let Some(secret) = &secret {
        let hash = hash_token(secret);
        if tokens.iter().any(|t| hashes_match(&t.hash, &hash)) {
            return Ok(None);
        }
    }
    if tokens.iter().any(|t| t.role == Role::Admin && t.revoked_at.is_none()) {
        return Ok(None);
    }
    let token = match secret {
        Some(secret) => NewToken::from_secret(secret, "bootstrap admin", Role::Admin),
        None => generate_token("bootstrap admin", Role::Admin)?,
    };
    core.storage.insert_token(&token.record).await?;
    Ok(Some(token))
}

/// The unrevoked token with this secret, if any.
pub(crate) async fn authenticate(core: &Core, secret: &str) -> Result<Option<TokenRecord>, Error> {
    let hash = hash_token(secret);
    if let Some(record) = core.tokens.get(&hash) {
        return Ok(Some(record));
    }
    let found = core.storage.token_by_hash(&hash).await?;
    let valid = found.filter(|t| t.revoked_at.is_none() && hashes_match(&t.hash, &hash));
    if let Some(record) = &valid {
        core.tokens.put(record.clone());
    }
    Ok(valid)
}

/// Revokes a token; false if it does not exist or was revoked already. The last active admin
/// token cannot be revoked (the API would be locked for good).
pub(crate) async fn revoke_token(core: &Core, id: Uuid) -> Result<bool, Error> {
    let tokens = core.storage.tokens().await?;
    let active_admins: Vec<&TokenRecord> = tokens
        .iter()
        .filter(|t| t.role == Role::Admin && t.revoked_at.is_none())
        .collect();
    if let [last] = active_admins.as_slice()
        && last.id == id
    {
        return Err(Error::LastAdminToken);
    }
    let revoked = core.storage.revoke_token(id).await?;
    // Forget every verified token, not only this one: simpler than a search by id, and the
    // others are verified again with one query each.
    core.tokens.clear();
    Ok(revoked)
}

pub(crate) async fn tokens(core: &Core) -> Result<Vec<TokenRecord>, Error> {
    Ok(core.storage.tokens().await?)
}

/// Makes a new random token (256 bits from the OS).
fn generate_token(name: &str, role: Role) -> Result<NewToken, Error> {
    check_token_name(name)?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|_| Error::Corrupt {
        detail: "the OS random number generator failed".into(),
    })?;
    let secret = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    Ok(NewToken::from_secret(secret, name, role))
}
