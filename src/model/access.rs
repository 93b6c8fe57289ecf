//! Who may do what, as records: API tokens with their roles, and durable consumers with their
//! checkpoints. Tokens are random secrets shown once; only their SHA-256 hashes are stored.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{LogFilter, RecordedEvent};

/// Prefix of every Lethe API token, so that secret scanners can recognise them.
pub const TOKEN_PREFIX: &str = "lethe_";

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads, subscriptions.
    Reader,
    /// + appends, stream deletion.
    Writer,
    /// + everything under /admin, consumers, tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as stored (its hash, never the token).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A newly created token: the secret, to show once, and its record.
pub struct NewToken {
    pub secret: Zeroizing<String>,
    pub record: TokenRecord,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("secret", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// The SHA-256 of a presented token.
pub fn hash_token(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether two token hashes are equal, in constant time.
pub fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

impl NewToken {
    /// A token record for a secret chosen by the operator (`LETHE_ADMIN_TOKEN`), or for one
    /// just generated.
    pub(crate) fn from_secret(secret: Zeroizing<String>, name: &str, role: Role) -> NewToken {
        let record = TokenRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            role,
            hash: hash_token(&secret),
            created_at: Utc::now(),
            revoked_at: None,
        };
        NewToken { secret, record }
    }
}

/// A durable consumer: a named reader of the global log whose checkpoint Lethe keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub filter: LogFilter,
    /// A dependent service: erasures wait for its acknowledgement of their tombstones.
    pub erasure_dependent: bool,
    /// Last acknowledged position (0: nothing yet).
    pub checkpoint: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where tombstones are pushed, if anywhere (its signing secret is never shown again).
    pub webhook_url: Option<String>,
}

/// Events for a consumer after its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerBatch {
    pub events: Vec<RecordedEvent>,
    /// The consumer's checkpoint when the batch was read.
    pub checkpoint: u64,
    /// The head of the log when the batch was read.
    pub head: u64,
}
