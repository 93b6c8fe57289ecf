//! [`EventStore`]: the library's front door.
//!
//! A façade and nothing more: every method hands its work to the core (appends and reads,
//! `crate::core`) or to a service (`crate::services`: erasure, tokens, consumers, audit,
//! subscriptions, catch-up, export, report, schemas), and `open` starts the background loops. What a
//! method guarantees is documented here, where users read it; how it is done lives there.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::core::Core;
pub use crate::core::StoreConfig;
pub use crate::core::group_commit::WriterStats;
pub use crate::crypto::KeyCacheStats;
use crate::error::{Error, ValidationError};
use crate::model::{
    AppendOutcome, AppendResult, AuditEntry, AuditQuery, AuditVerification, Consumer, ConsumerBatch, Direction,
    Erasure, ErasureFilter, ErasureReason, ErasureReport, EventSchema, LegalHold, LogFilter, LogPage, NewAuditEntry,
    NewToken, ReconcileReport, RecordedEvent, RetentionAnchor, RetentionStatus, RetentionSweep, Role, SchemaMode,
    StreamAppend, StreamInfo, StreamName, StreamSlice, SubjectId, TokenRecord,
};
use crate::services::{
    access, audit, catch_up, consumers, erasure, export, kek_epochs, report, retention, schemas, subscription, webhooks,
};

/// An open event store. Cheap to clone; all clones share one writer and one pool.
#[derive(Clone)]
pub struct EventStore {
    core: Arc<Core>,
}

impl EventStore {
    /// Opens (and migrates) the event database, starts the writer, and resumes any erasure a
    /// previous run left unfinished (in the background, retrying until it completes); pending
    /// webhook deliveries are tried in the background too.
    ///
    /// With an erasure journal ([`StoreConfig::erasure_journal`]) its chain is verified (a
    /// broken one fails the opening, naming the line) and it is replayed before this returns:
    /// keys it lists that the vault holds live again are destroyed, requests the event database
    /// lacks are recorded again and carried out, each step audited `erasure_reapplied`. With
    /// [`StoreConfig::reconcile_at_open`] the two databases are then reconciled
    /// ([`EventStore::reconcile`]). Either needs the vault: if it cannot be reached, or a
    /// re-applied erasure fails, the store does not open (it would otherwise serve what a
    /// restored database brought back).
    pub async fn open(config: StoreConfig) -> Result<Self, Error> {
        let core = Core::open(config).await?;
        if let Err(e) = Self::reapply_lost_erasures(&core).await {
            core.close().await;
            return Err(e);
        }
        tokio::spawn(erasure::resume_periodically(Arc::downgrade(&core)));
        tokio::spawn(webhooks::deliver_periodically(Arc::downgrade(&core)));
        tokio::spawn(kek_epochs::audit_periodically(Arc::downgrade(&core)));
        tokio::spawn(retention::sweep_periodically(Arc::downgrade(&core)));
        Ok(Self { core })
    }

    /// The journal's replay, then reconciliation if configured.
    async fn reapply_lost_erasures(core: &Core) -> Result<(), Error> {
        erasure::replay(core).await?;
        if core.reconcile_at_open {
            erasure::reconcile(core).await?;
        }
        Ok(())
    }

    /// Records the key vault's finished KEK rotations (`kek_rotated`) and destroyed epochs
    /// (`kek_epoch_destroyed`) that the audit trail lacks; returns how many entries it
    /// appended. Runs by itself now and then; each fact is recorded once, across processes.
    pub async fn audit_kek_epochs(&self) -> Result<u64, Error> {
        kek_epochs::audit_epochs(&self.core).await
    }

    // Appends

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
        self.core.append(appends).await
    }

    // Reads

    /// Reads up to `limit` events of a stream from version `from` (inclusive). Backward reads
    /// with `from = u64::MAX` start at the end.
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, Error> {
        self.core.read_stream(stream, from, direction, limit).await
    }

    /// Reads up to `limit` events of the global log from position `from` (inclusive).
    pub async fn read_log(&self, from: u64, filter: &LogFilter, limit: usize) -> Result<LogPage, Error> {
        self.core.read_log(from, filter, limit).await
    }

    /// Reads the global log from position `from` (inclusive) to the head, as a stream of pages
    /// of up to `page_size` events (at most
    /// [`READ_PAGE_EVENTS_MAX`](crate::limits::READ_PAGE_EVENTS_MAX)), every event decrypted as
    /// by [`EventStore::read_log`]: a shredded stream's events come back with `data: None,
    /// erased: true`. The pages are those a loop over `read_log` with the same filter and
    /// `limit` would read: each event once, in log order.
    ///
    /// While the caller handles one page, the following ones are being read — the next page's
    /// query, the keys of the one after the current — so a catch-up costs about the slowest of
    /// database, vault and decryption time per page rather than their sum. Pages read ahead
    /// (at most three) are kept encrypted and decrypted only when the caller takes them, so a
    /// forget that completes in between is honoured.
    ///
    /// The stream ends after the first page that reaches the head seen by its read
    /// (`next > head`, which includes an empty page), or after the first error. It yields at
    /// least one page (possibly empty, to tell the head). Events committed later are not
    /// waited for: continue with `read_log_pages(last_page.next, …)`, or follow the log live
    /// with [`EventStore::subscribe`]. The reading starts when the stream is first polled
    /// (within a Tokio runtime, like every read); dropping the stream stops it.
    pub fn read_log_pages(
        &self,
        from: u64,
        filter: LogFilter,
        page_size: usize,
    ) -> impl Stream<Item = Result<LogPage, Error>> + Send + 'static {
        catch_up::read_log_pages(self.core.clone(), from, filter, page_size)
    }

    /// Every event from position `from` (inclusive) matching `filter`: first those already
    /// stored (catch-up), then new ones as they are committed (live), with no gap and no
    /// duplicate between the two. Ends after yielding an error; resume from the last position
    /// seen + 1.
    pub fn subscribe(
        &self,
        from: u64,
        filter: LogFilter,
    ) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static + use<> {
        subscription::subscribe(self.core.clone(), from, filter)
    }

    /// The time on the store's clock ([`StoreConfig::clock`]): what deadlines, retention and
    /// holds are measured against, and what appends record.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.core.now()
    }

    /// The last position of the log that readers can read up to (0: empty log): every position
    /// up to it is committed or, with parallel group writers, a gap that stays empty.
    pub async fn head(&self) -> Result<u64, Error> {
        self.core.head().await
    }

    /// Streams bound to a subject.
    pub async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, Error> {
        self.core.subject_streams(subject).await
    }

    /// Streams holding personal fields of a subject (declared by event schemas), by name.
    pub async fn subject_field_streams(&self, subject: &SubjectId) -> Result<Vec<String>, Error> {
        Ok(self.core.storage.field_streams(subject).await?)
    }

    /// The subject's data (Art. 15/20 export), streamed page by page: every event of its
    /// streams, decrypted where the stream is not shredded; then every event of other streams
    /// that carries its personal fields, with other subjects' personal fields left out.
    pub fn export_subject(
        &self,
        subject: SubjectId,
    ) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static + use<> {
        export::export_subject(self.core.clone(), subject)
    }

    // Event schemas

    /// Registers the next version of an event type's schema (a JSON Schema 2020-12 document,
    /// possibly declaring personal fields with `x-lethe-personal`), audited as
    /// `schema_registered` by `actor`. Versions are immutable; registering the latest version's
    /// schema and mode again stores nothing and answers that version with `false`.
    pub async fn register_schema(
        &self,
        event_type: &str,
        schema: &serde_json::Value,
        mode: SchemaMode,
        actor: &str,
    ) -> Result<(EventSchema, bool), Error> {
        schemas::register(&self.core, event_type, schema, mode, actor).await
    }

    /// The latest version of every event type's schema, by type.
    pub async fn schemas(&self) -> Result<Vec<EventSchema>, Error> {
        schemas::latest(&self.core).await
    }

    /// Every version of an event type's schema, oldest first (`not_found` if it has none).
    pub async fn schema_versions(&self, event_type: &str) -> Result<Vec<EventSchema>, Error> {
        schemas::versions(&self.core, event_type).await
    }

    /// Events stored in `warn` mode although they did not match their schema, since open.
    pub fn schema_violations(&self) -> u64 {
        self.core.schemas.violations()
    }

    // Erasure

    /// Forgets a data subject (GDPR Art. 17): every stream bound to it is shredded — its key
    /// destroyed in the vault, its events readable only as `data: null, erased: true` — and
    /// tombstones are written (`$erased` in each stream, `SubjectForgotten` in `$erasures`).
    /// Idempotent: forgetting a forgotten subject completes at once and shreds nothing new.
    /// If this fails part-way (vault unreachable, crash), the request is resumed by the next
    /// [`EventStore::resume_erasures`] — which every store runs at open and periodically.
    pub async fn forget(&self, subject: &SubjectId, reason: ErasureReason) -> Result<Erasure, Error> {
        let erasure = erasure::request_forget(&self.core, subject, reason).await?;
        erasure::drive(&self.core, erasure.id).await
    }

    /// Records a forget request without running it (it runs on [`EventStore::drive_erasure`]
    /// or the next resume). For callers that answer before the erasure is done.
    /// An active legal hold refuses the request: it is recorded as `refused` (with the hold's
    /// reason) and `Error::LegalHold` names it.
    pub async fn request_forget(&self, subject: &SubjectId, reason: ErasureReason) -> Result<Erasure, Error> {
        erasure::request_forget(&self.core, subject, reason).await
    }

    /// Shreds one stream (its key destroyed, a `$erased` tombstone, `StreamDeleted` in
    /// `$erasures`); appends to it then fail with `stream_deleted`.
    pub async fn delete_stream(&self, stream: &StreamName, reason: ErasureReason) -> Result<Erasure, Error> {
        erasure::delete_stream(&self.core, stream, reason).await
    }

    /// Drives a recorded erasure to completion (idempotent).
    pub async fn drive_erasure(&self, id: Uuid) -> Result<Erasure, Error> {
        erasure::drive(&self.core, id).await
    }

    /// Drives every unfinished erasure to completion; returns how many it completed.
    /// One stuck request (say, its vault call failing) does not hold up the others; the first
    /// error is returned after all were tried.
    pub async fn resume_erasures(&self) -> Result<usize, Error> {
        erasure::resume(&self.core).await
    }

    /// An erasure request by id.
    pub async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, Error> {
        erasure::get(&self.core, id).await
    }

    /// Erasure requests, newest first, optionally only those of one subject.
    pub async fn erasures(&self, subject: Option<&SubjectId>, limit: usize) -> Result<Vec<Erasure>, Error> {
        let filter = ErasureFilter {
            subject: subject.cloned(),
            limit,
            ..ErasureFilter::default()
        };
        erasure::list(&self.core, &filter).await
    }

    /// Erasure requests matching a filter (subject, status, time range), newest first.
    pub async fn list_erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, Error> {
        erasure::list(&self.core, filter).await
    }

    /// Places (or replaces) a legal hold: forgetting the subject is refused while it is active.
    pub async fn place_hold(
        &self,
        subject: &SubjectId,
        reason: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<LegalHold, Error> {
        erasure::place_hold(&self.core, subject, reason, until).await
    }

    /// Lifts a subject's legal hold; false if it had none.
    pub async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, Error> {
        erasure::lift_hold(&self.core, subject).await
    }

    /// The subject's active legal hold, if any (a hold past its `until` has lapsed).
    pub async fn active_hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, Error> {
        erasure::active_hold(&self.core, subject).await
    }

    /// Records `hold_expired` in the audit trail for each hold that has lapsed since the last
    /// call (each once, across processes); returns how many. Runs in the background loop.
    pub async fn audit_lapsed_holds(&self) -> Result<u64, Error> {
        erasure::audit_lapsed_holds(&self.core).await
    }

    /// Compares the event database with the key vault and re-applies the erasures one of them
    /// lacks — after either was restored from a backup taken before a forget: keys the vault
    /// holds live for streams the event database shows erased or deleted (or subjects it shows
    /// forgotten) are destroyed; active streams whose keys the vault destroyed are shredded and
    /// tombstoned through erasure requests Lethe files itself (the subject's forget if the vault
    /// forgot the subject, otherwise the stream's deletion). Each step is audited
    /// `erasure_reapplied`; keys the vault does not know are counted, never an error. Runs at
    /// open with [`StoreConfig::reconcile_at_open`]; idempotent.
    pub async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        erasure::reconcile(&self.core).await
    }

    // Retention

    /// Creates or replaces the retention policy `name`: a subject whose every active bound
    /// stream whose name starts with `stream_prefix` is older than `keep_for` (an ISO 8601
    /// duration, counted from each stream's last or first event) gets an erasure request filed
    /// by Lethe (`requested_by: "retention:<name>"`). Audited (`retention_policy_set`) as
    /// `actor`. The answer says whether it was created. At most
    /// [`crate::limits::RETENTION_POLICIES_MAX`] policies; a malformed field is
    /// `invalid_retention_policy`, and nothing is stored.
    pub async fn put_retention_policy(
        &self,
        name: &str,
        stream_prefix: &str,
        keep_for: &str,
        after: RetentionAnchor,
        actor: &str,
    ) -> Result<(RetentionStatus, bool), Error> {
        retention::put(&self.core, name, stream_prefix, keep_for, after, actor).await
    }

    /// Every retention policy, by name, with when it next files a request.
    pub async fn retention_policies(&self) -> Result<Vec<RetentionStatus>, Error> {
        retention::list(&self.core).await
    }

    /// One retention policy with when it next files a request (`not_found` if there is none).
    pub async fn retention_policy(&self, name: &str) -> Result<RetentionStatus, Error> {
        retention::get(&self.core, name).await
    }

    /// Removes a retention policy, audited (`retention_policy_removed`); false if there was
    /// none. The requests it filed run on; it files no more.
    pub async fn delete_retention_policy(&self, name: &str, actor: &str) -> Result<bool, Error> {
        retention::delete(&self.core, name, actor).await
    }

    /// Sweeps every retention policy once, filing an erasure request (audited
    /// `retention_erasure_filed`) for each subject due; the erasure workflow then carries them
    /// out. Runs in the background every [`StoreConfig::retention_sweep_every`]; several
    /// processes may sweep at once and each request is filed once.
    pub async fn sweep_retention(&self) -> Result<RetentionSweep, Error> {
        retention::sweep(&self.core).await
    }

    /// The erasure report over requests made in `[from, to)` (either end open).
    pub async fn erasure_report(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<ErasureReport, Error> {
        report::erasure_report(&self.core, from, to).await
    }

    // API tokens

    /// Creates an API token; its secret is in the result and nowhere else.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<NewToken, Error> {
        access::create_token(&self.core, name, role).await
    }

    /// The first admin token: if no unrevoked admin token exists, stores `secret` (when given,
    /// from `LETHE_ADMIN_TOKEN`) or a generated one, and returns it. `None`: one exists already.
    pub async fn bootstrap_admin_token(&self, secret: Option<Zeroizing<String>>) -> Result<Option<NewToken>, Error> {
        access::bootstrap_admin_token(&self.core, secret).await
    }

    /// The unrevoked token with this secret, if any. A verified token is remembered for
    /// [`StoreConfig::token_cache_ttl`], so a busy client costs no query per request.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>, Error> {
        access::authenticate(&self.core, secret).await
    }

    /// Revokes a token; false if it does not exist or was revoked already. The last active
    /// admin token cannot be revoked (the API would be locked for good): create another first.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, Error> {
        access::revoke_token(&self.core, id).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        access::tokens(&self.core).await
    }

    // Consumers

    /// Creates or updates a durable consumer (its checkpoint is kept on update).
    pub async fn put_consumer(
        &self,
        name: &str,
        filter: LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, Error> {
        consumers::put(&self.core, name, filter, erasure_dependent).await
    }

    pub async fn consumer(&self, name: &str) -> Result<Option<Consumer>, Error> {
        consumers::get(&self.core, name).await
    }

    pub async fn consumers(&self) -> Result<Vec<Consumer>, Error> {
        consumers::list(&self.core).await
    }

    /// Up to `limit` events after the consumer's checkpoint that match its filter; when there
    /// are none, waits up to `wait` for new commits (long poll).
    pub async fn consumer_events(&self, name: &str, limit: usize, wait: Duration) -> Result<ConsumerBatch, Error> {
        consumers::events(&self.core, name, limit, wait).await
    }

    /// Gives a consumer a webhook (tombstones are pushed to it, signed with `secret`), or with
    /// `None` takes it away.
    pub async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<Consumer, Error> {
        consumers::set_webhook(&self.core, name, webhook).await
    }

    /// Deletes a consumer. As a dependent of unfinished erasures it stops holding them up
    /// (they may complete). False if there was no such consumer.
    pub async fn delete_consumer(&self, name: &str) -> Result<bool, Error> {
        consumers::delete(&self.core, name).await
    }

    /// Acknowledges everything up to `position`: the checkpoint moves there (never back).
    pub async fn ack_consumer(&self, name: &str, position: u64) -> Result<Consumer, Error> {
        consumers::ack(&self.core, name, position).await
    }

    // The audit trail

    /// Appends an entry to the audit trail.
    pub async fn audit(&self, entry: NewAuditEntry) -> Result<AuditEntry, Error> {
        audit::append(&self.core, entry).await
    }

    /// Appends an entry, logging rather than failing if the trail cannot be written (the
    /// action it records has already happened).
    pub(crate) async fn audit_quietly(&self, entry: NewAuditEntry) {
        audit::append_quietly(&self.core, entry).await;
    }

    /// Entries of the audit trail, oldest first.
    pub async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        audit::entries(&self.core, query).await
    }

    /// Walks the whole chain and reports the first broken entry, if any.
    pub async fn verify_audit(&self) -> Result<AuditVerification, Error> {
        audit::verify(&self.core).await
    }

    // Operations

    /// Whether the key vault answers.
    pub async fn vault_health(&self) -> Result<(), Error> {
        self.core.vault_health().await
    }

    /// Keys the vault holds wrapped only by KEK epochs it no longer has — destroyed after their
    /// retention, or a vault database restored from a backup older than rotation + retention:
    /// their events read as `data: null` for good. Reported by `/readyz`, the metrics and
    /// reconciliation.
    pub async fn keys_unreadable(&self) -> Result<u64, Error> {
        self.core.keys_unreadable().await
    }

    /// Counters of the DEK cache.
    pub fn key_cache_stats(&self) -> KeyCacheStats {
        self.core.key_cache_stats()
    }

    /// DEKs currently held in memory.
    pub fn cached_keys(&self) -> usize {
        self.core.cached_keys()
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.core.writer_stats()
    }

    /// Finishes every queued append, then closes the database connections.
    pub async fn close(&self) {
        self.core.close().await;
    }
}

/// Verifies the audit chain of an event database directly, without opening a store (for
/// `lethe audit verify`, offline).
pub async fn verify_audit_database(database_url: &str) -> Result<AuditVerification, Error> {
    audit::verify_database(database_url).await
}

/// Appends one entry to an event database's audit trail directly, without opening a store (for
/// CLI actions that happen outside a running server, such as `lethe keyvault rotate-kek`).
pub async fn append_audit_to_database(database_url: &str, entry: &NewAuditEntry) -> Result<AuditEntry, Error> {
    audit::append_to_database(database_url, entry).await
}

/// Records a finished KEK rotation away from `from_epoch` (`kek_rotated`) directly in an event
/// database's audit trail, unless it is recorded already (a running store records the vault's
/// rotations by itself, under the same once-key); true if recorded now.
pub async fn audit_kek_rotation_in_database(
    database_url: &str,
    from_epoch: u32,
    entry: &NewAuditEntry,
) -> Result<bool, Error> {
    audit::append_once_to_database(database_url, &kek_epochs::rotated_key(from_epoch), entry).await
}
