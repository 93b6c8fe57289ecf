//! Lethe's key vault: one data-encryption key (DEK) per stream, stored only wrapped by a
//! key-encryption key (KEK), destroyable for good.
//!
//! Besides stream keys the vault holds one *subject key* per data subject whose personal
//! fields Lethe encrypts inside events ([`NewKey::subject_key`]). A subject key is a key like
//! any other, stored under the reserved name `$subject:<subject>` and bound to its subject, so
//! it is created (idempotently, in batches), fetched, wrapped and rotated with the stream keys,
//! and [`KeyVault::destroy_subject_keys`] destroys it with them. Destroying a subject's keys
//! also records the subject as forgotten, in the same transaction, for good: from then on
//! [`KeyVault::create_keys`] refuses every key bound to it with
//! [`VaultError::SubjectForgotten`], so a forgotten subject stays forgotten.
//!
//! Module map (one job each):
//! - [`envelope`]: the ciphertext format (AES-256-GCM), AAD helper, keyed digests.
//! - [`kek`]: the KEK value and the [`KekProvider`]s that hold a KEK per epoch: the keys
//!   directory ([`FileKeks`], `kek/file.rs`), an HSM token through PKCS#11 ([`Pkcs11Keks`],
//!   `kek/pkcs11.rs`, where the KEKs never leave the token), and KEKs handed in from outside
//!   ([`GivenKeks`], `kek/given.rs`).
//! - `keys`: the value types ([`KeyId`], [`Dek`], [`KeyLookup`], [`EpochInfo`], ...).
//! - `storage`: the storage trait and its SQLite and PostgreSQL implementations.
//! - [`local`]: the in-process vault ([`LocalVault`]), including manual KEK rotation; its
//!   `epochs` part rotates and destroys KEK epochs on a schedule ([`EpochPolicy`],
//!   [`VaultClock`]).
//! - `wire`: the JSON shapes of the HTTP API, shared by server and client.
//! - `server` (feature `server`): the HTTP API's router (`lethe keyvault serve`).
//! - [`client`]: the HTTP client ([`HttpVault`]), the same trait over the network.
//! - `cli` (feature `cli`): the `lethe keyvault ...` subcommands.
//! - [`limits`]: every limit the vault enforces.
//!
//! Architecture invariant: nothing in this crate depends on Lethe's event store; the only
//! dependency arrow points from Lethe to the vault.

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod envelope;
mod error;
pub mod kek;
mod keys;
pub mod limits;
pub mod local;
#[cfg(feature = "server")]
pub mod server;
mod storage;
mod wire;

use std::sync::Arc;

pub use client::HttpVault;
pub use error::VaultError;
pub use kek::{Epoch, FileKeks, GivenKeks, Kek, KekError, KekProvider, Pkcs11Config, Pkcs11Keks};
pub use keys::{Dek, EpochInfo, EpochState, KEY_LEN, KeyId, KeyLookup, NewKey, SUBJECT_KEY_PREFIX, VaultStats};
pub use local::{
    EpochPolicy, EpochTick, LocalVault, ManualClock, RotateOptions, RotationReport, SystemClock, VaultClock,
};

/// The vault's operations, implemented in-process ([`LocalVault`]) and over HTTP
/// ([`HttpVault`]) so Lethe switches between them by URL alone.
#[async_trait::async_trait]
pub trait KeyVault: Send + Sync + 'static {
    /// Create DEKs for streams (and subject keys, [`NewKey::subject_key`]), or return the
    /// stream's existing live DEK (idempotent per stream). Refused, in this order:
    /// a malformed request (`InvalidInput`; a `$subject:` name must be bound to exactly the
    /// subject it names); a stream asked for twice with different subjects
    /// (`SubjectMismatch`); a key bound to a forgotten subject (`SubjectForgotten`, also for a
    /// subject key destroyed by its subject's forget, and for a subject forgotten before it
    /// ever had a key); an existing key bound to a different subject (None vs Some counts as
    /// different: `SubjectMismatch`); a stream whose key was destroyed (`KeyDestroyed`: a
    /// destroyed stream never gets a key again). Any error fails the whole batch and creates
    /// nothing. The result is in input order. One transaction per batch, which also checks
    /// the forgotten subjects, so a create racing a forget either commits first (and the
    /// forget destroys its keys) or is refused.
    async fn create_keys(&self, keys: &[NewKey]) -> Result<Vec<(KeyId, Dek)>, VaultError>;
    /// Fetch many DEKs in one call; one entry per requested id, in request order.
    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<(KeyId, KeyLookup)>, VaultError>;
    /// Forget a subject: destroy all live DEKs bound to it (its stream keys and its subject
    /// key) and record it as forgotten, in one transaction, so that no key bound to it is
    /// created again. Returns the ids destroyed by this call (empty on a repeat). Idempotent.
    /// When it returns, the key material is physically deleted from the vault's live storage.
    async fn destroy_subject_keys(&self, subject: &str) -> Result<Vec<KeyId>, VaultError>;
    /// Destroy one stream's DEK; returns its id if it was live. Idempotent. A subject key
    /// (`$subject:` name) is refused (`InvalidInput`): it goes only with its subject's forget.
    async fn destroy_stream_key(&self, stream: &str) -> Result<Option<KeyId>, VaultError>;
    async fn stats(&self) -> Result<VaultStats, VaultError>;
    /// The vault's KEK epochs (versions), ascending: state, when each was activated,
    /// superseded and destroyed, and the live keys each wraps.
    async fn kek_epochs(&self) -> Result<Vec<EpochInfo>, VaultError>;
    async fn health(&self) -> Result<(), VaultError>;
}

/// What [`open`] needs besides the URL.
#[derive(Default)]
pub struct OpenOptions {
    /// The KEK handed in, for `sqlite:` and `postgres://` URLs without a `provider`.
    pub kek: Option<Kek>,
    /// The other KEK of an interrupted rotation (see `SECURITY.md`), for local URLs.
    pub other_keks: Vec<Kek>,
    /// The vault server's bearer token, for `http(s)://` URLs.
    pub token: Option<String>,
    /// Where the KEK epochs live (keys directory, HSM), for local URLs; `kek` is then unused.
    pub provider: Option<Arc<dyn KekProvider>>,
    /// When a provider that manages epochs rotates and destroys them.
    pub epoch_policy: EpochPolicy,
    /// The clock of the epochs; the system clock when `None`.
    pub clock: Option<Arc<dyn VaultClock>>,
}

// Hand-written: the token must not reach logs through `{:?}` (KEKs and providers redact
// themselves).
impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("kek", &self.kek)
            .field("other_keks", &self.other_keks)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("provider", &self.provider.as_ref().map(|p| p.kind()))
            .field("epoch_policy", &self.epoch_policy)
            .field("clock", &self.clock)
            .finish()
    }
}

/// Opens a vault by URL: `sqlite://path` or `postgres://...` (in-process [`LocalVault`], with
/// `provider` if given, else the `kek` handed in), or `http(s)://host:port` ([`HttpVault`],
/// needs `token`). With a provider that manages epochs, the background epoch task
/// ([`LocalVault::spawn_epochs`]) is started too; it ends when the vault is dropped.
pub async fn open(url: &str, options: OpenOptions) -> Result<Arc<dyn KeyVault>, VaultError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let token = options
            .token
            .ok_or_else(|| VaultError::InvalidInput("an http(s) key vault URL needs the vault token".into()))?;
        return Ok(Arc::new(HttpVault::new(url, &token)?));
    }
    if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Some(provider) = options.provider {
            let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
            let manages = provider.manages_epochs();
            let vault = Arc::new(LocalVault::open_with_provider(url, provider, options.epoch_policy, clock).await?);
            if manages {
                // Detached: the task holds only a weak reference and ends with the vault.
                drop(vault.spawn_epochs());
            }
            return Ok(vault);
        }
        let kek = options
            .kek
            .ok_or_else(|| VaultError::InvalidInput("an in-process key vault needs the KEK".into()))?;
        return Ok(Arc::new(LocalVault::open(url, kek, options.other_keks).await?));
    }
    Err(VaultError::InvalidInput(
        "key vault URL must start with sqlite:, postgres://, http:// or https://".into(),
    ))
}
