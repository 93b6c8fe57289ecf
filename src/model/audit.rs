//! The audit trail's records and its hash chain.
//!
//! Each entry `{seq, at, actor, action, subject?, request_id?, details}` is chained:
//! `hash = SHA-256(prev_hash ‖ canonical JSON of the entry)`, where canonical JSON has sorted
//! keys, no whitespace, and `at` in unix microseconds; the first entry's `prev_hash` is 32 zero
//! bytes. Changing, removing or reordering any entry breaks every hash after it, and
//! [`ChainCheck`] names the first broken entry. Entries never carry personal data: subjects
//! appear by their pseudonymous ids, actors by token name, and details are ids, counts and the
//! reasons the admins typed.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::SubjectId;

/// The actor of actions Lethe takes by itself (erasure steps, lapsed holds).
pub const SYSTEM_ACTOR: &str = "lethe";

/// An entry to append (seq, time and hashes are assigned by the chain).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub actor: String,
    pub action: String,
    pub subject: Option<SubjectId>,
    pub request_id: Option<Uuid>,
    pub details: Value,
}

/// An entry of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub request_id: Option<Uuid>,
    pub details: Value,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries with `seq` greater than this.
    pub after: u64,
    pub limit: usize,
    pub action: Option<String>,
    pub subject: Option<SubjectId>,
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub entries: u64,
    /// The first entry whose link or hash does not hold (`None`: the chain is intact).
    pub first_broken: Option<u64>,
    pub head_seq: u64,
}

impl AuditVerification {
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// What an entry's hash covers (everything but the hashes).
pub struct HashedFields<'a> {
    pub seq: u64,
    pub at_us: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: Option<&'a str>,
    pub request_id: Option<Uuid>,
    pub details: &'a Value,
}

/// The hash of an entry given its predecessor's.
pub fn entry_hash(prev_hash: &[u8; 32], fields: &HashedFields<'_>) -> [u8; 32] {
    // serde_json's map keeps keys sorted, so this serialization is canonical.
    let canonical = json!({
        "seq": fields.seq,
        "at": fields.at_us,
        "actor": fields.actor,
        "action": fields.action,
        "subject": fields.subject,
        "request_id": fields.request_id,
        "details": fields.details,
    })
    .to_string();
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical.as_bytes());
    hasher.finalize().into()
}

impl AuditEntry {
    /// Whether this entry's hash is what its content says.
    pub fn hash_holds(&self) -> bool {
        let fields = HashedFields {
            seq: self.seq,
            at_us: self.at.timestamp_micros(),
            actor: &self.actor,
            action: &self.action,
            subject: self.subject.as_deref(),
            request_id: self.request_id,
            details: &self.details,
        };
        entry_hash(&self.prev_hash, &fields) == self.hash
    }
}

/// Walks the chain entry by entry (so a long trail never has to be in memory at once).
pub(crate) struct ChainCheck {
    expected_prev: [u8; 32],
    expected_seq: u64,
    entries: u64,
    first_broken: Option<u64>,
}

impl ChainCheck {
    pub(crate) fn new() -> Self {
        Self {
            expected_prev: [0u8; 32],
            expected_seq: 1,
            entries: 0,
            first_broken: None,
        }
    }

    pub(crate) fn feed(&mut self, entry: &AuditEntry) {
        if self.first_broken.is_some() {
            return;
        }
        self.entries += 1;
        if entry.seq != self.expected_seq || entry.prev_hash != self.expected_prev || !entry.hash_holds() {
            self.first_broken = Some(self.expected_seq.min(entry.seq));
            return;
        }
        self.expected_prev = entry.hash;
        self.expected_seq += 1;
    }

    /// Entries cut off the end show as a head that points past the last one.
    pub(crate) fn finish(self, (head_seq, head_hash): (u64, [u8; 32])) -> AuditVerification {
        let last = self.expected_seq - 1;
        let tail_ok = head_seq == last && (head_seq == 0 || head_hash == self.expected_prev);
        AuditVerification {
            entries: self.entries,
            first_broken: self.first_broken.or((!tail_ok).then_some(self.expected_seq)),
            head_seq,
        }
    }
}
