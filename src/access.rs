//! Who may do what: API tokens with roles, and durable consumers with their checkpoints.
//!
//! Tokens are random 256-bit secrets shown once at creation; only their SHA-256 hashes are
//! stored, so a leaked database reveals no usable token. A presented token is hashed and looked
//! up by hash; the comparison of the stored hash is constant-time. A verified token is
//! remembered for [`TOKEN_CACHE_TTL`] (`StoreConfig::token_cache_ttl`), so a busy client costs
//! no database query per request; a revocation clears what every process remembers (on
//! PostgreSQL through a notification).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{Error, ValidationError};

/// Prefix of every Lethe API token, so that secret scanners can recognise them.
pub const TOKEN_PREFIX: &str = "lethe_";
/// Token names: free text for humans, at most this long.
pub const TOKEN_NAME_LEN_MAX: usize = 100;

/// How long a verified token is trusted without asking the database again, by default.
/// Revoking a token takes effect at once in the process that revoked it and, on PostgreSQL,
/// as soon as the notification arrives in every other process; this bounds it for a process
/// whose listener was reconnecting (which also forgets every verified token).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Verified tokens remembered at most (a deployment has a handful; the bound is for safety).
const TOKEN_CACHE_ENTRIES_MAX: usize = 1024;

/// Tokens verified in the last `ttl`, by hash. Only valid tokens are cached: an unknown one
/// is looked up every time, so guessing fills nothing.
pub(crate) struct TokenCache {
    verified: Mutex<HashMap<[u8; 32], (TokenRecord, Instant)>>,
    ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            verified: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<TokenRecord> {
        let verified = self.lock();
        let (record, at) = verified.get(hash)?;
        (at.elapsed() < self.ttl).then(|| record.clone())
    }

    fn put(&self, record: TokenRecord) {
        let mut verified = self.lock();
        if verified.len() >= TOKEN_CACHE_ENTRIES_MAX {
            verified.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if verified.len() >= TOKEN_CACHE_ENTRIES_MAX {
                verified.clear();
            }
        }
        verified.insert(record.hash, (record, Instant::now()));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (TokenRecord, Instant)>> {
        // Each operation is one map call: a panic elsewhere cannot leave it half-changed.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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

/// Makes a new random token (256 bits from the OS).
pub(crate) fn generate_token(name: &str, role: Role) -> Result<NewToken, Error> {
    check_token_name(name)?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|_| Error::Corrupt {
        detail: "the OS random number generator failed".into(),
    })?;
    let secret = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    Ok(from_secret(secret, name, role))
}

/// A token record for a secret chosen by the operator (`LETHE_ADMIN_TOKEN`).
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

fn check_token_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.chars().count() > TOKEN_NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(ValidationError::InvalidName {
            what: "token name",
            max: TOKEN_NAME_LEN_MAX,
        }
        .into());
    }
    Ok(())
}

/// A durable consumer: a named reader of the global log whose checkpoint Lethe keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub filter: crate::model::LogFilter,
    /// A dependent service: erasures wait for its acknowledgement of their tombstones.
    pub erasure_dependent: bool,
    /// Last acknowledged position (0: nothing yet).
    pub checkpoint: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where tombstones are pushed, if anywhere (its signing secret is never shown again).
    pub webhook_url: Option<String>,
}

/// Checks a consumer name: the stream-name charset, 1–200 characters.
pub(crate) fn check_consumer_name(name: &str) -> Result<(), Error> {
    crate::model::SubjectId::new(name).map(drop).map_err(|_| {
        ValidationError::InvalidName {
            what: "consumer name (of A-Z a-z 0-9 _ . : @ -)",
            max: crate::limits::NAME_LEN_MAX,
        }
        .into()
    })
}

/// Events for a consumer after its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerBatch {
    pub events: Vec<crate::model::RecordedEvent>,
    /// The consumer's checkpoint when the batch was read.
    pub checkpoint: u64,
    /// The head of the log when the batch was read.
    pub head: u64,
}

impl crate::store::EventStore {
    /// Creates an API token; its secret is in the result and nowhere else.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<NewToken, Error> {
        let token = generate_token(name, role)?;
        self.inner.storage.insert_token(&token.record).await?;
        tracing::info!(token_id = %token.record.id, role = %role, "token created");
        Ok(token)
    }

    /// The first admin token: if no unrevoked admin token exists, stores `secret` (when given,
    /// from `LETHE_ADMIN_TOKEN`) or a generated one, and returns it. `None`: one exists already.
    pub async fn bootstrap_admin_token(&self, secret: Option<Zeroizing<String>>) -> Result<Option<NewToken>, Error> {
        let tokens = self.inner.storage.tokens().await?;
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
            Some(secret) => from_secret(secret, "bootstrap admin", Role::Admin),
            None => generate_token("bootstrap admin", Role::Admin)?,
        };
        self.inner.storage.insert_token(&token.record).await?;
        Ok(Some(token))
    }

    /// The unrevoked token with this secret, if any (see [`TOKEN_CACHE_TTL`]).
    pub async fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>, Error> {
        let hash = hash_token(secret);
        if let Some(record) = self.inner.tokens.get(&hash) {
            return Ok(Some(record));
        }
        let found = self.inner.storage.token_by_hash(&hash).await?;
        let valid = found.filter(|t| t.revoked_at.is_none() && hashes_match(&t.hash, &hash));
        if let Some(record) = &valid {
            self.inner.tokens.put(record.clone());
        }
        Ok(valid)
    }

    /// Revokes a token; false if it does not exist or was revoked already. The last active
    /// admin token cannot be revoked (the API would be locked for good): create another first.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, Error> {
        let tokens = self.inner.storage.tokens().await?;
        let active_admins: Vec<&TokenRecord> = tokens
            .iter()
            .filter(|t| t.role == Role::Admin && t.revoked_at.is_none())
            .collect();
        if let [last] = active_admins.as_slice()
            && last.id == id
        {
            return Err(Error::LastAdminToken);
        }
        let revoked = self.inner.storage.revoke_token(id).await?;
        // Forget every verified token, not only this one: simpler than a search by id, and
        // the others are verified again with one query each.
        self.inner.tokens.clear();
        Ok(revoked)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        Ok(self.inner.storage.tokens().await?)
    }

    /// Creates or updates a durable consumer (its checkpoint is kept on update).
    pub async fn put_consumer(
        &self,
        name: &str,
        filter: crate::model::LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, Error> {
        check_consumer_name(name)?;
        crate::store::check_filter(&filter)?;
        Ok(self
            .inner
            .storage
            .upsert_consumer(name, &filter, erasure_dependent)
            .await?)
    }

    pub async fn consumer(&self, name: &str) -> Result<Option<Consumer>, Error> {
        check_consumer_name(name)?;
        Ok(self.inner.storage.consumer(name).await?)
    }

    pub async fn consumers(&self) -> Result<Vec<Consumer>, Error> {
        Ok(self.inner.storage.consumers().await?)
    }

    /// Up to `limit` events after the consumer's checkpoint that match its filter; when there
    /// are none, waits up to `wait` for new commits (long poll).
    pub async fn consumer_events(
        &self,
        name: &str,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<ConsumerBatch, Error> {
        check_consumer_name(name)?;
        let consumer = self
            .inner
            .storage
            .consumer(name)
            .await?
            .ok_or_else(|| Error::NotFound { what: "consumer" })?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut commits = self.commits();
        let mut from = consumer.checkpoint + 1;
        loop {
            commits.borrow_and_update();
            let page = self.read_log(from, &consumer.filter, limit).await?;
            if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(ConsumerBatch {
                    events: page.events,
                    checkpoint: consumer.checkpoint,
                    head: page.head,
                });
            }
            // Nothing matching up to the head: later reads can start past it.
            from = page.next;
            let _ = tokio::time::timeout_at(deadline, commits.changed()).await;
        }
    }

    /// Gives a consumer a webhook (tombstones are pushed to it, signed with `secret`), or with
    /// `None` takes it away.
    pub async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<Consumer, Error> {
        if let Some((url, secret)) = webhook {
            crate::webhooks::check_webhook(url, secret)?;
        }
        if !self.inner.storage.set_consumer_webhook(name, webhook).await? {
            return Err(Error::NotFound { what: "consumer" });
        }
        self.consumer(name).await?.ok_or(Error::NotFound { what: "consumer" })
    }

    /// Deletes a consumer. As a dependent of unfinished erasures it stops holding them up
    /// (they may complete). False if there was no such consumer.
    pub async fn delete_consumer(&self, name: &str) -> Result<bool, Error> {
        check_consumer_name(name)?;
        let deleted = self.inner.storage.delete_consumer(name).await?;
        if deleted {
            tracing::info!(consumer = name, "consumer deleted");
        }
        Ok(deleted)
    }

    /// Acknowledges everything up to `position`: the checkpoint moves there (never back).
    pub async fn ack_consumer(&self, name: &str, position: u64) -> Result<Consumer, Error> {
        check_consumer_name(name)?;
        let head = self.head().await?;
        if position > head {
            return Err(ValidationError::PositionPastHead { position, head }.into());
        }
        self.inner
            .storage
            .ack_consumer(name, position)
            .await?
            .ok_or(Error::NotFound { what: "consumer" })
    }
}
