//! The reconciliation report as a record: what `services::erasure`'s reconciliation of the
//! event database with the key vault found and re-applied.

use uuid::Uuid;

use super::ErasureTarget;

/// What one reconciliation found and re-applied (`EventStore::reconcile`). Counts are whole;
/// the lists stop at [`RECONCILE_REPORT_IDS_MAX`](crate::limits::RECONCILE_REPORT_IDS_MAX)
/// entries each (`truncated`). Ids only: subject ids, stream names, request ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Streams with a key that were compared.
    pub streams_checked: u64,
    /// Subject keys (of subjects whose personal fields events carry) that were compared.
    pub subject_keys_checked: u64,
    /// Keys the vault still held live although the event database shows their stream erased
    /// or deleted, or their subject forgotten (a vault restored from an older backup): destroyed
    /// now, as the vault counted them.
    pub keys_destroyed: u64,
    /// Whose keys were destroyed again: forgotten subjects (all their keys) and deleted streams.
    pub destroyed: Vec<ErasureTarget>,
    /// Streams the event database showed active although the vault had destroyed their key (an
    /// event database restored from an older backup): shredded and tombstoned now.
    pub streams_shredded: u64,
    /// The erasure requests filed to shred them, each carried out like any other request.
    pub requests: Vec<ReappliedErasure>,
    /// Keys the event database names that the vault does not know at all (a vault restored from
    /// a backup older than the keys, or keys lost): their events cannot be read.
    pub keys_missing: u64,
    /// Keys the vault holds but cannot unwrap (wrapped only by KEK epochs that were destroyed),
    /// as the vault reports them; `None`: this vault does not report it.
    pub keys_unreadable: Option<u64>,
    /// `destroyed` or `requests` holds fewer entries than there were.
    pub truncated: bool,
}

/// An erasure request that reconciliation filed, because the vault had destroyed keys of
/// streams the event database showed active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReappliedErasure {
    pub request_id: Uuid,
    /// A subject (the vault had forgotten it) or one stream (its key alone was destroyed).
    pub target: ErasureTarget,
    /// The streams it shredded.
    pub streams: u64,
}

impl ReconcileReport {
    /// Whether it re-applied anything.
    pub fn reapplied_anything(&self) -> bool {
        self.keys_destroyed > 0 || self.streams_shredded > 0 || !self.requests.is_empty()
    }
}
