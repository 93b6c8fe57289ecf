//! The records: the library's vocabulary, with no I/O.
//!
//! Streams, subjects, events and what appends and reads return ([`stream`], [`event`]);
//! erasure requests and legal holds ([`erasure`]); tokens and consumers ([`access`]); the audit
//! chain ([`audit`]); the erasure report ([`report`]); the reconciliation report
//! ([`reconcile`]); retention policies ([`retention`]); event schemas and their personal fields ([`schema`]); the webhook signature
//! ([`webhook`]); and
//! [`ValidationError`] with the pure checks that raise it ([`validation`]). They are validated
//! on construction (a `StreamName` is always a legal name), so code further in never re-checks
//! them.
//!
//! Architecture invariant: this layer does no I/O and imports nothing of Lethe but
//! `crate::limits`. Storage rows and HTTP JSON are separate types in their own layers.

pub mod access;
pub mod audit;
pub mod erasure;
pub mod event;
pub mod reconcile;
pub mod report;
pub mod retention;
pub mod schema;
pub mod stream;
pub mod validation;
pub mod webhook;

pub use access::{Consumer, ConsumerBatch, NewToken, Role, TOKEN_PREFIX, TokenRecord, hash_token, hashes_match};
pub use audit::{AuditEntry, AuditQuery, AuditVerification, HashedFields, NewAuditEntry, SYSTEM_ACTOR, entry_hash};
pub use erasure::{
    Dependent, ERASED_EVENT_TYPE, ERASURES_STREAM, Erasure, ErasureFault, ErasureFilter, ErasureReason, ErasureStatus,
    ErasureTarget, LegalHold, STREAM_DELETED_EVENT_TYPE, SUBJECT_FORGOTTEN_EVENT_TYPE, ShreddedStream,
};
pub use event::{
    AppendOutcome, AppendResult, LogPage, NewEvent, RecordedEvent, StreamAppend, StreamSlice, VersionConflict,
};
pub use reconcile::{ReappliedErasure, ReconcileReport};
pub use report::{
    DurationStats, ErasureReport, OriginFigures, OverdueRequest, RetentionPolicyFigures, WaitingDependent, WeekFigures,
};
pub use retention::{RetentionAnchor, RetentionPeriod, RetentionPolicy, RetentionStatus, RetentionSweep};
pub use schema::{EventSchema, PersonalField, SchemaMode, SubjectSource};
pub use stream::{Direction, ExpectedVersion, LogFilter, StreamInfo, StreamName, StreamStatus, SubjectId};
pub use validation::{ValidationError, check_webhook};
pub use webhook::{SIGNATURE_HEADER, signature};
