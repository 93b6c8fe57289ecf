//! The value types every vault speaks: key ids, DEKs, requests and answers.

use std::fmt;

use rand::TryRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::VaultError;
use crate::limits::NAME_LEN_MAX;

/// Length of a DEK and of a KEK in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// The id of one DEK: a random (v4) UUID, so ids reveal neither order nor creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub uuid::Uuid);

impl KeyId {
    pub fn new_random() -> Self {
        KeyId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A data-encryption key: 32 bytes, boxed so moves of the handle never copy the secret, and
/// zeroized when dropped. Cloning makes a second zeroize-on-drop copy.
#[derive(Clone)]
pub struct Dek {
    bytes: Box<[u8; KEY_LEN]>,
}

impl Dek {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Dek, VaultError> {
        let mut dek = Dek {
            bytes: Box::new([0u8; KEY_LEN]),
        };
        fill_random(&mut dek.bytes[..])?;
        Ok(dek)
    }

    /// Builds a DEK from exactly 32 bytes (e.g. an unwrapped key). The caller owns zeroizing
    /// its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Dek, VaultError> {
        if bytes.len() != KEY_LEN {
            return Err(VaultError::Corrupt(format!(
                "a DEK must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let mut dek = Dek {
            bytes: Box::new([0u8; KEY_LEN]),
        };
        dek.bytes.copy_from_slice(bytes);
        Ok(dek)
    }

    /// The raw key. Named loudly so every use is easy to find in review.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl Drop for Dek {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for Dek {}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// The reserved stream name prefix of subject keys: the subject key of subject `S` is stored
/// under the name `$subject:S`. Stream names starting with `$` are reserved for Lethe's system
/// streams, so no user stream can take such a name.
pub const SUBJECT_KEY_PREFIX: &str = "$subject:";

/// A request to create (or get back) the DEK of one stream, or of one data subject.
///
/// A *stream key* encrypts a stream's payloads; `subject` binds the stream to a data subject,
/// so that forgetting the subject destroys the key. A *subject key* ([`NewKey::subject_key`])
/// encrypts the personal fields of one subject inside any stream's events: it is stored
/// exactly like a stream key, under the reserved name `$subject:<subject>` and bound to its
/// own subject, so it is created, fetched and destroyed (with the subject's stream keys, by
/// [`crate::KeyVault::destroy_subject_keys`]) by the same machinery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    pub stream: String,
    #[serde(default)]
    pub subject: Option<String>,
}

impl NewKey {
    /// The request for the subject key of `subject`: the name `$subject:<subject>`, bound to
    /// `subject`. The vault checks the subject id when the key is created.
    pub fn subject_key(subject: &str) -> NewKey {
        NewKey {
            stream: format!("{SUBJECT_KEY_PREFIX}{subject}"),
            subject: Some(subject.to_owned()),
        }
    }

    /// Whether this requests a subject key: its name is in the reserved `$subject:` namespace.
    /// (The vault refuses such a request unless its `subject` is exactly the part of the name
    /// after the prefix, as [`NewKey::subject_key`] builds it.)
    pub fn is_subject_key(&self) -> bool {
        self.stream.starts_with(SUBJECT_KEY_PREFIX)
    }
}

/// The answer for one requested key id.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    Live(Dek),
    /// The key existed and was destroyed: its data is gone for good.
    Destroyed,
    /// The vault never had this id.
    NotFound,
    /// The key exists but the KEK epoch wrapping it was destroyed or is missing: its data
    /// cannot be read. (A vault database restored from a backup older than rotation plus
    /// retention answers this for the keys of that time: crypto-shredding reaching backups.)
    Unreadable {
        epoch: u32,
    },
}

/// Counts for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStats {
    /// Every live key, stream keys and subject keys.
    pub live_keys: u64,
    /// Every destroyed key, stream keys and subject keys.
    pub destroyed_keys: u64,
    /// The KEK version new keys are wrapped with.
    pub kek_version: u32,
    /// Live subject keys (one per data subject with personal fields; included in `live_keys`).
    /// Absent from older vault servers' answers, which then read as 0.
    #[serde(default)]
    pub subject_keys_live: u64,
    /// Destroyed subject keys (one per forgotten subject that had one; included in
    /// `destroyed_keys`). Absent from older vault servers' answers, which then read as 0.
    #[serde(default)]
    pub subject_keys_destroyed: u64,
    /// Live keys wrapped only by KEK epochs the provider no longer holds (destroyed, or a
    /// vault database restored from an old backup): their data cannot be read. Included in
    /// `live_keys`. Absent from older vault servers' answers, which then read as 0.
    #[serde(default)]
    pub keys_unreadable: u64,
    /// The kind of KEK provider: `"file"`, `"pkcs11"` or `"static"` (KEKs handed in). Empty
    /// from older vault servers.
    #[serde(default)]
    pub kek_provider: String,
}

/// Where a KEK epoch stands, as [`crate::KeyVault::kek_epochs`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochState {
    /// The target of a rotation in progress: new keys are wrapped with it already.
    Pending,
    /// New keys are wrapped with it.
    Active,
    /// Superseded; its KEK is kept until the retention period has passed.
    Retired,
    /// Its KEK was destroyed by the provider: whatever it wrapped is unreadable for good.
    Destroyed,
    /// The provider does not hold its KEK although keys are still wrapped with it (or it is
    /// the active or pending epoch): destroyed outside the vault, or the vault's database was
    /// restored from an old backup. Those keys' data cannot be read.
    Missing,
}

/// One KEK epoch of a vault: its state, when it changed (unix microseconds of the vault's
/// clock), and how many live keys it wraps. Lethe audits `kek_rotated` and
/// `kek_epoch_destroyed` from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    pub epoch: u32,
    pub state: EpochState,
    #[serde(default)]
    pub activated_at: Option<i64>,
    #[serde(default)]
    pub superseded_at: Option<i64>,
    #[serde(default)]
    pub destroyed_at: Option<i64>,
    pub live_keys: u64,
}

/// Fills `buf` from the OS RNG (getrandom), never a userspace PRNG: keys and nonces must not
/// depend on a seeded generator's state surviving a fork or snapshot.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), VaultError> {
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|e| VaultError::Internal(format!("OS random number generator failed: {e}")))
}

/// Names of streams and subjects: 1–200 chars of `[A-Za-z0-9_.:@-]`; a stream may start with
/// `$` (system streams). Checked here too so a remote caller cannot store junk in the vault.
pub(crate) fn validate_name(what: &str, name: &str, allow_dollar: bool) -> Result<(), VaultError> {
    let body = match (allow_dollar, name.strip_prefix('$')) {
        (true, Some(rest)) => rest,
        _ => name,
    };
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidInput(format!(
            "{what} must be 1-{NAME_LEN_MAX} characters of [A-Za-z0-9_.:@-]"
        )))
    }
}

/// A stream name given to `destroy_stream_key`: any valid name outside the `$subject:`
/// namespace. A subject key is destroyed only by forgetting its subject
/// (`destroy_subject_keys`), which also records the subject as forgotten; destroying it alone
/// would leave a subject whose key is gone but who may still be given new stream keys.
pub(crate) fn validate_stream(stream: &str) -> Result<(), VaultError> {
    if stream.starts_with(SUBJECT_KEY_PREFIX) {
        return Err(VaultError::InvalidInput(
            "a subject key is destroyed only by destroying its subject's keys".into(),
        ));
    }
    validate_name("stream name", stream, true)
}

/// A create request: a stream key (a valid stream name outside the `$subject:` namespace, and
/// a valid subject if any), or a subject key (`$subject:` followed by a valid subject id, which
/// must also be its `subject`). A subject key's name may therefore be up to
/// `SUBJECT_KEY_PREFIX.len() + NAME_LEN_MAX` bytes long.
pub(crate) fn validate_new_key(key: &NewKey) -> Result<(), VaultError> {
    if let Some(s) = &key.subject {
        validate_subject(s)?;
    }
    match key.stream.strip_prefix(SUBJECT_KEY_PREFIX) {
        Some(subject) => {
            validate_subject(subject)?;
            if key.subject.as_deref() == Some(subject) {
                Ok(())
            } else {
                Err(VaultError::InvalidInput(format!(
                    "a subject key ({SUBJECT_KEY_PREFIX}<subject>) must be bound to the subject its name ends with"
                )))
            }
        }
        None => validate_name("stream name", &key.stream, true),
    }
}

pub(crate) fn validate_subject(subject: &str) -> Result<(), VaultError> {
    validate_name("subject", subject, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(key: &NewKey) -> bool {
        matches!(validate_new_key(key), Err(VaultError::InvalidInput(_)))
    }

    #[test]
    fn subject_keys_are_named_and_validated() {
        let key = NewKey::subject_key("456");
        assert_eq!(key.stream, "$subject:456");
        assert_eq!(key.subject.as_deref(), Some("456"));
        assert!(key.is_subject_key());
        assert!(validate_new_key(&key).is_ok());
        assert!(
            !NewKey {
                stream: "user-private-456".into(),
                subject: Some("456".into())
            }
            .is_subject_key()
        );

        // The name may exceed NAME_LEN_MAX by the prefix; the subject part may not.
        let longest = "s".repeat(NAME_LEN_MAX);
        assert!(validate_new_key(&NewKey::subject_key(&longest)).is_ok());
        assert!(invalid(&NewKey::subject_key(&format!("{longest}s"))));

        for subject in ["", "$x", "a b", "a/b"] {
            assert!(invalid(&NewKey::subject_key(subject)), "{subject:?}");
        }
        let with = |stream: &str, subject: Option<&str>| NewKey {
            stream: stream.into(),
            subject: subject.map(str::to_owned),
        };
        // The subject must be exactly the part of the name after the prefix.
        assert!(invalid(&with("$subject:456", None)));
        assert!(invalid(&with("$subject:456", Some("45"))));
        assert!(invalid(&with("$subject:456", Some("4567"))));
        assert!(invalid(&with("$subject:", Some(""))));
        // Other names are checked as before.
        assert!(validate_new_key(&with("$subject", None)).is_ok());
        assert!(validate_new_key(&with("$erasures", None)).is_ok());
        assert!(validate_new_key(&with("orders-1", Some("456"))).is_ok());
        assert!(invalid(&with(&"a".repeat(NAME_LEN_MAX + 1), None)));
        assert!(invalid(&with("ok", Some("$system"))));
        // A subject key is never destroyed as a stream.
        assert!(validate_stream("$subject:456").is_err());
        assert!(validate_stream("$erasures").is_ok());
    }

    #[test]
    fn stats_from_older_servers_still_parse() {
        let old = r#"{"live_keys":3,"destroyed_keys":1,"kek_version":2}"#;
        let stats: VaultStats = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            stats,
            VaultStats {
                live_keys: 3,
                destroyed_keys: 1,
                kek_version: 2,
                subject_keys_live: 0,
                subject_keys_destroyed: 0,
                keys_unreadable: 0,
                kek_provider: String::new(),
            }
        );
    }

    #[test]
    fn epoch_states_serialize_in_snake_case() {
        let info = EpochInfo {
            epoch: 2,
            state: EpochState::Destroyed,
            activated_at: Some(1),
            superseded_at: Some(2),
            destroyed_at: Some(3),
            live_keys: 0,
        };
        let text = serde_json::to_string(&info).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains(r#""state":"destroyed""#), "{text}");
        let back: EpochInfo = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, info);
        let missing = serde_json::to_string(&EpochState::Missing).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(missing, r#""missing""#);
    }
}
