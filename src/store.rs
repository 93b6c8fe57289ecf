//! [`EventStore`]: the library's front door.
//!
//! It validates input, turns events into stored rows (`crate::payload`), hands appends to the
//! group committer and reads back through the storage trait. It knows nothing of SQL (that is
//! `crate::storage`) nor of HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::Stream;
use lethe_keyvault::{Dek, KeyId, KeyVault, NewKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::access::TokenCache;
use crate::coalesce::{Batched, Coalescer};
use crate::crypto::{DekCipher, KeyCacheStats, KeyState, Keyring, OpenKey};
use crate::erasure::{
    self, Erasure, ErasureContext, ErasureFault, ErasureFilter, ErasureReason, ErasureStatus, ErasureTarget, LegalHold,
};
use crate::error::{Error, ValidationError, VersionConflict};
use crate::group_commit::{GroupCommitter, WriterStats};
use crate::limits::{APPEND_BYTES_MAX, APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, FILTER_TYPES_MAX, READ_PAGE_EVENTS_MAX};
use crate::model::{
    AppendOutcome, AppendResult, Direction, ExpectedVersion, LogFilter, LogPage, RecordedEvent, StreamAppend,
    StreamInfo, StreamName, StreamSlice, StreamStatus, SubjectId, check_event_type,
};
use crate::storage::plan::StreamState;
use crate::storage::{self, AtomicAppend, ChangeFeed, Storage, StoredEvent, StreamWrite};
use crate::{payload, subscription};

/// How to open a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/events.db` or `postgres://…`.
    pub database_url: String,
    /// Where the per-stream keys live (see `lethe_keyvault::open`).
    pub keyvault: Arc<dyn KeyVault>,
    /// DEKs kept in memory at most.
    pub key_cache_keys_max: usize,
    /// How long a verified API token is trusted without asking the database again
    /// ([`TOKEN_CACHE_TTL`](crate::access::TOKEN_CACHE_TTL) by default; zero: never cached). On
    /// PostgreSQL a revocation reaches every process at once anyway; this bounds how long a
    /// process that missed the notification (its listener reconnecting) may still accept it.
    pub token_cache_ttl: Duration,
    /// Makes erasures stop at a step as if the process had crashed (tests only).
    #[doc(hidden)]
    pub erasure_fault: Option<ErasureFault>,
    /// How often pending webhook deliveries are looked for.
    pub webhook_poll: Duration,
    /// The first retry delay of a failed webhook delivery (doubling up to 10 minutes).
    pub webhook_retry_base: Duration,
    /// Stores payloads unencrypted, so benchmarks can measure what encryption costs. Only in
    /// builds with the `insecure-noop-cipher` feature; never in a real deployment.
    #[cfg(feature = "insecure-noop-cipher")]
    pub insecure_noop_cipher: bool,
}

/// Default size of the DEK cache: enough for the hot streams of a busy service, small in memory
/// (a DEK is 32 bytes).
pub const KEY_CACHE_KEYS_DEFAULT: usize = 10_000;
/// How often a store retries unfinished erasures (e.g. after the vault was unreachable).
const ERASURE_RESUME_INTERVAL: Duration = Duration::from_secs(10);

impl StoreConfig {
    pub fn new(database_url: impl Into<String>, keyvault: Arc<dyn KeyVault>) -> Self {
        Self {
            database_url: database_url.into(),
            keyvault,
            key_cache_keys_max: KEY_CACHE_KEYS_DEFAULT,
            token_cache_ttl: crate::access::TOKEN_CACHE_TTL,
            erasure_fault: None,
            webhook_poll: Duration::from_millis(500),
            webhook_retry_base: Duration::from_secs(1),
            #[cfg(feature = "insecure-noop-cipher")]
            insecure_noop_cipher: false,
        }
    }
}

/// An open event store. Cheap to clone; all clones share one writer and one pool.
#[derive(Clone)]
pub struct EventStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) storage: Arc<dyn Storage>,
    keyring: Arc<Keyring>,
    committer: GroupCommitter,
    /// Stream states read before an append (to know which streams need a key), many
    /// appends' in one query.
    state_reads: Coalescer<StateReads>,
    /// API tokens verified lately (`access`).
    pub(crate) tokens: Arc<TokenCache>,
    erasure_fault: Option<ErasureFault>,
    /// Payloads stored in clear (benchmark builds only; always false otherwise).
    noop_cipher: bool,
    /// The last position known committed (ours, or another process's on PostgreSQL).
    commits: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

impl EventStore {
    /// Opens (and migrates) the event database, starts the writer, and resumes any erasure a
    /// previous run left unfinished (in the background, retrying until it completes).
    pub async fn open(config: StoreConfig) -> Result<Self, Error> {
        let storage = storage::open(&config.database_url).await?;
        let keyring = Arc::new(Keyring::new(config.keyvault, config.key_cache_keys_max));
        let head = storage.head().await?;
        let (commits_tx, commits) = watch::channel(head);
        let (revoker, forgetter) = (keyring.clone(), keyring.clone());
        let tokens = Arc::new(TokenCache::new(config.token_cache_ttl));
        let verified = tokens.clone();
        storage
            .watch_foreign_changes(ChangeFeed {
                commits: commits_tx.clone(),
                revoked_keys: Arc::new(move |keys| revoker.revoke(keys)),
                forget_cached_keys: Arc::new(move || forgetter.clear()),
                forget_verified_tokens: Arc::new(move || verified.clear()),
            })
            .await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (committer, writer_task) = GroupCommitter::start(storage.clone(), commits_tx, shutdown_rx.clone());
        let store = Self {
            inner: Arc::new(Inner {
                state_reads: Coalescer::start(StateReads {
                    storage: storage.clone(),
                }),
                storage,
                keyring,
                committer,
                tokens,
                erasure_fault: config.erasure_fault,
                #[cfg(feature = "insecure-noop-cipher")]
                noop_cipher: config.insecure_noop_cipher,
                #[cfg(not(feature = "insecure-noop-cipher"))]
                noop_cipher: false,
                commits,
                shutdown,
                writer_task: Mutex::new(Some(writer_task)),
            }),
        };
        tokio::spawn(resume_erasures_periodically(
            Arc::downgrade(&store.inner),
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::webhooks::deliver_periodically(
            Arc::downgrade(&store.inner),
            shutdown_rx,
            config.webhook_poll,
            config.webhook_retry_base,
        ));
        Ok(store)
    }

    /// Appends events to one stream. See [`EventStore::append_multi`] for several at once.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendResult, Error> {
        let outcome = self.append_multi(vec![append]).await?;
        outcome
            .streams
            .into_iter()
            .next()
            .ok_or(Error::Invalid(ValidationError::NoStreams))
    }

    /// Appends to one stream and also says whether this was an idempotent retry.
    pub async fn append_with_outcome(&self, append: StreamAppend) -> Result<AppendOutcome, Error> {
        self.append_multi(vec![append]).await
    }

    /// Appends to several streams atomically: every stream is written or none is, each
    /// with its own expected version, and the events take contiguous positions in the order
    /// given.
    pub async fn append_multi(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, Error> {
        validate_append(&appends)?;
        let names: Vec<String> = appends.iter().map(|a| a.stream.to_string()).collect();
        let states = self.inner.state_reads.call(names).await?;
        let keys = self.keys_for_append(&appends, &states).await?;
        let (atomic, data_bytes) = encode_append(appends, &keys, !self.inner.noop_cipher)?;
        let mut outcome = self.inner.committer.submit(atomic).await?;
        outcome.data_bytes = data_bytes;
        Ok(outcome)
    }

    /// The DEK of every stream of an append: existing streams' from the cache or the vault,
    /// new streams' created in the vault (one call for all) before any event is written.
    async fn keys_for_append(
        &self,
        appends: &[StreamAppend],
        states: &HashMap<String, StreamState>,
    ) -> Result<HashMap<String, (KeyId, Dek)>, Error> {
        let mut new_streams = Vec::new();
        let mut existing = Vec::new();
        for append in appends {
            match states.get(append.stream.as_str()) {
                Some(state) => {
                    let key = state.key_id.ok_or_else(|| Error::Corrupt {
                        detail: format!("stream {:?} has no key", append.stream.as_str()),
                    })?;
                    existing.push((append.stream.as_str(), state.status, KeyId(key)));
                }
                None => new_streams.push(append),
            }
        }
        // A stream that does not exist cannot satisfy `exists` or a version: fail before a key
        // is created for nothing (this is never a retry: a retry's streams exist).
        if new_streams
            .iter()
            .any(|a| matches!(a.expected_version, ExpectedVersion::Exists | ExpectedVersion::Exact(_)))
        {
            let conflicts = appends
                .iter()
                .filter_map(|a| {
                    let current = states.get(a.stream.as_str()).and_then(|s| s.version);
                    (!a.expected_version.is_satisfied_by(current)).then(|| VersionConflict {
                        stream: a.stream.to_string(),
                        expected: a.expected_version,
                        current,
                    })
                })
                .collect();
            return Err(Error::WrongExpectedVersion { conflicts });
        }

        // A subject being forgotten takes no new streams (checked again at commit, under the
        // commit-order lock); checking here too keeps the vault from keying a stream that the
        // erasure would then destroy the key of.
        let subjects: Vec<&str> = new_streams
            .iter()
            .filter_map(|a| a.subject.as_ref().map(|s| s.as_str()))
            .collect();
        if !subjects.is_empty()
            && let Some(subject) = self
                .inner
                .storage
                .subjects_being_erased(&subjects)
                .await?
                .into_iter()
                .next()
        {
            return Err(Error::ErasureInProgress { subject });
        }

        let mut keys = HashMap::with_capacity(appends.len());
        let requests: Vec<NewKey> = new_streams
            .iter()
            .map(|a| NewKey {
                stream: a.stream.to_string(),
                subject: a.subject.as_ref().map(|s| s.as_str().to_owned()),
            })
            .collect();
        let created = self.inner.keyring.create(&requests).await?;
        for (request, (id, dek)) in requests.into_iter().zip(created) {
            keys.insert(request.stream, (id, dek));
        }

        let ids: Vec<KeyId> = existing.iter().map(|(_, _, id)| *id).collect();
        let found = self.inner.keyring.lookup(&ids).await?;
        for (stream, status, id) in existing {
            match (found.get(&id), status) {
                (Some(KeyState::Live(dek)), _) => {
                    keys.insert(stream.to_owned(), (id, dek.clone()));
                }
                (_, StreamStatus::Deleted) => {
                    return Err(Error::StreamDeleted {
                        stream: stream.to_owned(),
                    });
                }
                _ => {
                    return Err(Error::StreamErased {
                        stream: stream.to_owned(),
                    });
                }
            }
        }
        Ok(keys)
    }

    /// Reads up to `limit` events of a stream from version `from` (inclusive). Backward reads
    /// with `from = u64::MAX` start at the end.
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, Error> {
        check_limit(limit)?;
        let stored = self.inner.storage.read_stream(stream, from, direction, limit).await?;
        let keyed: Vec<bool> = stored.iter().map(|event| event.key_id.is_some()).collect();
        let mut events = self.decode(stored).await?;
        // The status is read after the events and their keys, so that a read racing a forget
        // answers one picture. A forget commits the status before the vault destroys the key:
        // an event found erased (status or key) means the status read now is no longer
        // `active`, and a status no longer `active` erases the events read just before it.
        let info = self
            .inner
            .storage
            .stream_info(stream)
            .await?
            .ok_or_else(|| Error::StreamNotFound {
                stream: stream.to_string(),
            })?;
        if info.status != StreamStatus::Active {
            for (event, keyed) in events.iter_mut().zip(keyed) {
                if keyed {
                    event.data = None;
                    event.erased = true;
                }
            }
        }
        Ok(StreamSlice { info, events })
    }

    /// A page of one stream, still encrypted (for lazily decrypting readers).
    pub(crate) async fn read_stream_stored(
        &self,
        stream: &StreamName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        check_limit(limit)?;
        Ok(self
            .inner
            .storage
            .read_stream(stream, from, Direction::Forward, limit)
            .await?)
    }

    /// Reads up to `limit` events of the global log from position `from` (inclusive).
    pub async fn read_log(&self, from: u64, filter: &LogFilter, limit: usize) -> Result<LogPage, Error> {
        let (stored, next, head) = self.read_log_stored(from, filter, limit).await?;
        let events = self.decode(stored).await?;
        Ok(LogPage { events, next, head })
    }

    /// A page of the global log, still encrypted: `(events, next, head)`.
    pub(crate) async fn read_log_stored(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64, u64), Error> {
        check_limit(limit)?;
        check_filter(filter)?;
        let from = from.max(1);
        let (stored, head) = self.inner.storage.read_log(from, filter, limit).await?;
        // A full page continues after its last event; a short one has seen everything up to
        // the head, filtered out or not.
        let next = if stored.len() == limit {
            stored.last().map_or(from, |e| e.position + 1)
        } else {
            head.max(from - 1) + 1
        };
        Ok((stored, next, head))
    }

    /// Decrypts a page of stored events: one key lookup for the page (cache, then at most one
    /// vault call). The stream status read with the rows decides: a shredded stream's events
    /// are never decrypted, even with the key still at hand, and its key is evicted.
    pub(crate) async fn decode(&self, stored: Vec<StoredEvent>) -> Result<Vec<RecordedEvent>, Error> {
        let keys = self.page_keys(&stored).await?;
        // Each key prepared once for the whole page (not once per event).
        let keys: HashMap<KeyId, OpenKey> = keys.iter().map(|(id, state)| (*id, OpenKey::new(state))).collect();
        let decode_all = |events: Vec<StoredEvent>| -> Result<Vec<RecordedEvent>, Error> {
            events
                .into_iter()
                .map(|event| {
                    let key = event.key_id.and_then(|k| keys.get(&KeyId(k)));
                    payload::decode(event, key)
                })
                .collect()
        };
        if stored.len() < PARALLEL_DECODE_EVENTS_MIN {
            return decode_all(stored);
        }
        // A big page (a catch-up reads 1,000 events at a time) is pure CPU work — AES-GCM and
        // JSON parsing, a few µs per event — that kept one core busy while the database and
        // the other core waited: its second half is decoded on a scoped thread meanwhile. The
        // events keep their order, and an error is the first one in page order, as before.
        let mut first = stored;
        let second = first.split_off(first.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| decode_all(second));
            let first = decode_all(first);
            let second = other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let mut events = first?;
            events.extend(second?);
            Ok(events)
        })
    }

    /// Puts the keys a page will need into the cache (subscriptions decrypt lazily).
    pub(crate) async fn warm_keys(&self, stored: &[StoredEvent]) -> Result<(), Error> {
        self.page_keys(stored).await.map(drop)
    }

    /// The keys of a page's live events (at most one vault call); keys of shredded streams
    /// are revoked instead.
    async fn page_keys(&self, stored: &[StoredEvent]) -> Result<HashMap<KeyId, KeyState>, Error> {
        let mut needed = HashSet::new();
        let mut revoked = HashSet::new();
        for event in stored {
            if let Some(key) = event.key_id.map(KeyId) {
                if payload::is_shredded(event) {
                    revoked.insert(key);
                } else {
                    needed.insert(key);
                }
            }
        }
        if !revoked.is_empty() {
            self.inner.keyring.revoke(&revoked.into_iter().collect::<Vec<_>>());
        }
        self.inner.keyring.lookup(&needed.into_iter().collect::<Vec<_>>()).await
    }

    /// Forgets a data subject (GDPR Art. 17): every stream bound to it is shredded — its key
    /// destroyed in the vault, its events readable only as `data: null, erased: true` — and
    /// tombstones are written (`$erased` in each stream, `SubjectForgotten` in `$erasures`).
    /// Idempotent: forgetting a forgotten subject completes at once and shreds nothing new.
    /// If this fails part-way (vault unreachable, crash), the request is resumed by the next
    /// [`EventStore::resume_erasures`] — which every store runs at open and periodically.
    pub async fn forget(&self, subject: &SubjectId, reason: ErasureReason) -> Result<Erasure, Error> {
        let erasure = self.request_forget(subject, reason).await?;
        self.drive_erasure(erasure.id).await
    }

    /// Records a forget request without running it (it runs on [`EventStore::drive_erasure`]
    /// or the next resume). For callers that answer before the erasure is done.
    /// An active legal hold refuses the request: it is recorded as `refused` (with the hold's
    /// reason) and `Error::LegalHold` names it.
    pub async fn request_forget(&self, subject: &SubjectId, reason: ErasureReason) -> Result<Erasure, Error> {
        crate::model::check_reason(&reason)?;
        let mut erasure = Erasure::new(ErasureTarget::Subject(subject.clone()), reason);
        if let Some(hold) = self.inner.storage.hold(subject).await?
            && hold.is_active(chrono::Utc::now())
        {
            erasure.status = ErasureStatus::Refused;
            erasure.refused_reason = Some(hold.reason.clone());
            self.inner.storage.insert_erasure(&erasure).await?;
            tracing::info!(request_id = %erasure.id, subject = %subject, "erasure refused: legal hold");
            return Err(Error::LegalHold {
                request_id: erasure.id,
                until: hold.until,
            });
        }
        self.inner.storage.insert_erasure(&erasure).await?;
        tracing::info!(request_id = %erasure.id, subject = %subject, "erasure requested");
        Ok(erasure)
    }

    /// Erasure requests, newest first, optionally only those of one subject.
    pub async fn erasures(&self, subject: Option<&SubjectId>, limit: usize) -> Result<Vec<Erasure>, Error> {
        let filter = ErasureFilter {
            subject: subject.cloned(),
            limit,
            ..ErasureFilter::default()
        };
        self.list_erasures(&filter).await
    }

    /// Erasure requests matching a filter (subject, status, time range), newest first.
    pub async fn list_erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, Error> {
        if filter.limit == 0 || filter.limit > READ_PAGE_EVENTS_MAX {
            return Err(ValidationError::InvalidLimit {
                max: READ_PAGE_EVENTS_MAX,
            }
            .into());
        }
        Ok(self.inner.storage.erasures(filter).await?)
    }

    /// Places (or replaces) a legal hold: forgetting the subject is refused while it is active.
    pub async fn place_hold(
        &self,
        subject: &SubjectId,
        reason: &str,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<LegalHold, Error> {
        crate::model::check_text("hold reason", reason, crate::limits::REASON_LEN_MAX)?;
        if reason.trim().is_empty() {
            return Err(ValidationError::InvalidText {
                what: "hold reason",
                max: crate::limits::REASON_LEN_MAX,
            }
            .into());
        }
        let hold = LegalHold {
            subject: subject.clone(),
            reason: reason.to_owned(),
            until,
            placed_at: chrono::Utc::now(),
        };
        self.inner.storage.put_hold(&hold).await?;
        tracing::info!(subject = %subject, "legal hold placed");
        Ok(hold)
    }

    /// Lifts a subject's legal hold; false if it had none.
    pub async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, Error> {
        let lifted = self.inner.storage.lift_hold(subject).await?;
        if lifted {
            tracing::info!(subject = %subject, "legal hold lifted");
        }
        Ok(lifted)
    }

    /// Records `hold_expired` in the audit trail for each hold that has lapsed since the last
    /// call (each once, across processes); returns how many. Runs in the background loop.
    pub async fn audit_lapsed_holds(&self) -> Result<u64, Error> {
        let now = chrono::Utc::now().timestamp_micros();
        Ok(self.inner.storage.audit_lapsed_holds(now).await?)
    }

    /// The subject's active legal hold, if any (a hold past its `until` has lapsed).
    pub async fn active_hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, Error> {
        let hold = self.inner.storage.hold(subject).await?;
        Ok(hold.filter(|h| h.is_active(chrono::Utc::now())))
    }

    /// Shreds one stream (its key destroyed, a `$erased` tombstone, `StreamDeleted` in
    /// `$erasures`); appends to it then fail with `stream_deleted`.
    pub async fn delete_stream(&self, stream: &StreamName, reason: ErasureReason) -> Result<Erasure, Error> {
        crate::model::check_reason(&reason)?;
        let info = self
            .inner
            .storage
            .stream_info(stream)
            .await?
            .ok_or_else(|| Error::StreamNotFound {
                stream: stream.to_string(),
            })?;
        match info.status {
            StreamStatus::Active => {}
            StreamStatus::Erased => {
                return Err(Error::StreamErased {
                    stream: stream.to_string(),
                });
            }
            StreamStatus::Deleted => {
                return Err(Error::StreamDeleted {
                    stream: stream.to_string(),
                });
            }
        }
        if stream.is_system() {
            return Err(ValidationError::ReservedStreamName {
                stream: stream.to_string(),
            }
            .into());
        }
        let erasure = Erasure::new(ErasureTarget::Stream(stream.clone()), reason);
        self.inner.storage.insert_erasure(&erasure).await?;
        self.drive_erasure(erasure.id).await
    }

    /// An erasure request by id.
    pub async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, Error> {
        Ok(self.inner.storage.erasure(id).await?)
    }

    /// Drives every unfinished erasure to completion; returns how many it completed.
    /// One stuck request (say, its vault call failing) does not hold up the others; the first
    /// error is returned after all were tried.
    pub async fn resume_erasures(&self) -> Result<usize, Error> {
        let mut completed = 0;
        let mut first_error = None;
        for erasure in self.inner.storage.unfinished_erasures().await? {
            match self.drive_erasure(erasure.id).await {
                Ok(_) => completed += 1,
                Err(e) => {
                    tracing::warn!(request_id = %erasure.id, error = %e, "erasure not finished yet");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(completed),
        }
    }

    /// Drives a recorded erasure to completion (idempotent).
    pub async fn drive_erasure(&self, id: Uuid) -> Result<Erasure, Error> {
        let ctx = ErasureContext {
            storage: self.inner.storage.as_ref(),
            keyring: &self.inner.keyring,
            committer: &self.inner.committer,
            fault: self.inner.erasure_fault,
        };
        erasure::drive(&ctx, id).await
    }

    /// Every event of the subject's streams (Art. 15/20 export), decrypted where the stream is
    /// not shredded, streamed page by page.
    pub fn export_subject(
        &self,
        subject: SubjectId,
    ) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static + use<> {
        crate::export::export_subject(self.clone(), subject)
    }

    /// Streams bound to a subject.
    pub async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, Error> {
        Ok(self.inner.storage.subject_streams(subject).await?)
    }

    /// Whether the key vault answers.
    pub async fn vault_health(&self) -> Result<(), Error> {
        self.inner.keyring.vault().health().await.map_err(Error::KeyVault)
    }

    /// Counters of the DEK cache.
    pub fn key_cache_stats(&self) -> KeyCacheStats {
        self.inner.keyring.stats()
    }

    /// DEKs currently held in memory.
    pub fn cached_keys(&self) -> usize {
        self.inner.keyring.cached_keys()
    }

    /// The last committed position (0: empty log).
    pub async fn head(&self) -> Result<u64, Error> {
        Ok(self.inner.storage.head().await?)
    }

    /// Every event from position `from` (inclusive) matching `filter`: first those already
    /// stored (catch-up), then new ones as they are committed (live), with no gap and no
    /// duplicate between the two. Ends after yielding an error; resume from the last position
    /// seen + 1.
    pub fn subscribe(
        &self,
        from: u64,
        filter: LogFilter,
    ) -> impl Stream<Item = Result<crate::model::RecordedEvent, Error>> + Send + 'static + use<> {
        subscription::subscribe(self.clone(), from, filter)
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.committer.stats()
    }

    /// A receiver that changes whenever new events are committed.
    pub(crate) fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.clone()
    }

    /// Finishes every queued append, then closes the database connections.
    pub async fn close(&self) {
        let _ = self.inner.shutdown.send(true);
        let task = self.inner.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.storage.close().await;
    }
}

/// Checks a log filter: a legal prefix (any prefix of a legal name) and a bounded type list.
pub(crate) fn check_filter(filter: &LogFilter) -> Result<(), Error> {
    if filter.types.len() > FILTER_TYPES_MAX {
        return Err(ValidationError::TooManyTypes {
            count: filter.types.len(),
            max: FILTER_TYPES_MAX,
        }
        .into());
    }
    for event_type in &filter.types {
        check_event_type(event_type)?;
    }
    if let Some(prefix) = &filter.stream_prefix
        && (prefix.chars().count() > crate::limits::NAME_LEN_MAX || prefix.chars().any(char::is_control))
    {
        return Err(ValidationError::InvalidStreamName {
            stream: prefix.chars().take(64).collect(),
            reason: "is not a valid stream-name prefix",
        }
        .into());
    }
    Ok(())
}

fn check_limit(limit: usize) -> Result<(), Error> {
    if limit == 0 || limit > READ_PAGE_EVENTS_MAX {
        return Err(ValidationError::InvalidLimit {
            max: READ_PAGE_EVENTS_MAX,
        }
        .into());
    }
    Ok(())
}

/// Checks an append's shape before any I/O: sizes are checked while encoding.
fn validate_append(appends: &[StreamAppend]) -> Result<(), Error> {
    if appends.is_empty() {
        return Err(ValidationError::NoStreams.into());
    }
    if appends.len() > APPEND_STREAMS_MAX {
        return Err(ValidationError::TooManyStreams {
            count: appends.len(),
            max: APPEND_STREAMS_MAX,
        }
        .into());
    }
    let total: usize = appends.iter().map(|a| a.events.len()).sum();
    if total > APPEND_EVENTS_MAX {
        return Err(ValidationError::TooManyEvents {
            count: total,
            max: APPEND_EVENTS_MAX,
        }
        .into());
    }
    let mut streams = HashSet::new();
    let mut ids = HashSet::new();
    for append in appends {
        if append.events.is_empty() {
            return Err(ValidationError::NoEvents.into());
        }
        if !streams.insert(append.stream.as_str()) {
            return Err(ValidationError::DuplicateStreamInAppend {
                stream: append.stream.to_string(),
            }
            .into());
        }
        for (index, event) in append.events.iter().enumerate() {
            check_event_type(&event.event_type).map_err(|e| e.in_part(append.stream.as_str(), index))?;
            if let Some(id) = event.id
                && !ids.insert(id)
            {
                return Err(ValidationError::DuplicateEventIdInAppend { event_id: id }.into());
            }
        }
    }
    Ok(())
}

/// The stored state of the streams of many appends, read in one query.
struct StateReads {
    storage: Arc<dyn Storage>,
}

#[async_trait::async_trait]
impl Batched for StateReads {
    /// The streams of one append.
    type Request = Vec<String>;
    /// Those of them that exist.
    type Answer = HashMap<String, StreamState>;
    /// Names per query: a few appends' worth.
    const WEIGHT_MAX: usize = 4 * APPEND_STREAMS_MAX;

    fn weight(names: &Vec<String>) -> usize {
        names.len()
    }

    async fn call(&self, requests: &[&Vec<String>]) -> Result<Vec<HashMap<String, StreamState>>, Error> {
        let names: Vec<&str> = requests
            .iter()
            .flat_map(|names| names.iter().map(String::as_str))
            .collect();
        let states = self.storage.stream_states(&names).await?;
        Ok(requests
            .iter()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| states.get(name).map(|state| (name.clone(), state.clone())))
                    .collect()
            })
            .collect())
    }
}

/// Encrypts an append's events with their streams' keys. Nothing is stored if this fails.
/// Also answers the bytes of data and metadata it counted against the limits.
fn encode_append(
    appends: Vec<StreamAppend>,
    keys: &HashMap<String, (KeyId, Dek)>,
    sealed: bool,
) -> Result<(AtomicAppend, usize), Error> {
    let mut bytes = 0;
    let mut index = 0;
    let mut writes = Vec::with_capacity(appends.len());
    for append in appends {
        let (key_id, dek) = keys.get(append.stream.as_str()).ok_or_else(|| Error::Corrupt {
            detail: format!("no key for stream {:?}", append.stream.as_str()),
        })?;
        let mut events = Vec::with_capacity(append.events.len());
        // The DEK prepared once for all of this stream's events (not once per event).
        let cipher = sealed.then(|| DekCipher::new(dek));
        for (in_stream, event) in append.events.into_iter().enumerate() {
            let encoded =
                payload::encode(append.stream.as_str(), event, index, cipher.as_deref()).map_err(|e| match e {
                    Error::Invalid(v) => Error::Invalid(v.in_part(append.stream.as_str(), in_stream)),
                    other => other,
                })?;
            // Data and metadata as given: the envelope's own bytes do not count.
            let overhead = if sealed { lethe_keyvault::envelope::OVERHEAD } else { 0 };
            bytes += encoded.payload.len().saturating_sub(overhead) + encoded.metadata.len();
            if bytes > APPEND_BYTES_MAX {
                return Err(ValidationError::AppendTooLarge {
                    bytes,
                    max: APPEND_BYTES_MAX,
                }
                .into());
            }
            index += 1;
            events.push(encoded);
        }
        writes.push(StreamWrite {
            stream: append.stream,
            expected: append.expected_version,
            subject: append.subject,
            key_id: Some(key_id.0),
            sealed,
            events,
            allow_closed: false,
        });
    }
    Ok((AtomicAppend { writes }, bytes))
}

/// Retries unfinished erasures (and audits lapsed holds) at open and then every
/// [`ERASURE_RESUME_INTERVAL`], until the
/// store shuts down. Holds only a weak reference, so it never keeps a dropped store alive.
/// Pages of at least this many events are decoded on two threads ([`EventStore::decode`]).
const PARALLEL_DECODE_EVENTS_MIN: usize = 256;

async fn resume_erasures_periodically(inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = EventStore { inner };
        if let Err(e) = store.resume_erasures().await {
            tracing::warn!(error = %e, "resuming erasures failed; will retry");
        }
        if let Err(e) = store.audit_lapsed_holds().await {
            tracing::warn!(error = %e, "auditing lapsed holds failed; will retry");
        }
        drop(store);
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(ERASURE_RESUME_INTERVAL) => {}
        }
    }
}
