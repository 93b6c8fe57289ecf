//! Lethe: an event store that can forget.
//!
//! Every stream's payloads are encrypted with a key of their own, held in a separate key vault;
//! forgetting a data subject destroys the keys of that subject's streams. This crate is the
//! event store: [`EventStore`] over SQLite (embedded) or PostgreSQL (production), its HTTP API
//! ([`http`]) and the `lethe serve` wiring ([`server`]).
//!
//! The modules form layers whose imports point one way, down (ARCHITECTURE.md has the map and
//! `tests/it/layers.rs` keeps it so):
//! 1. [`model`] and [`limits`]: the records, no I/O;
//! 2. [`error`]: the typed errors;
//! 3. `storage` (the event database), `crypto` (keys and sealing) and `journal` (the erasure
//!    journal), beside `coalesce` and `collections`;
//! 4. `core`: one open store's machinery — the append and read paths;
//! 5. `services`: erasure, tokens, consumers, audit, webhooks, subscriptions, catch-up,
//!    export, report;
//! 6. [`store`]: [`EventStore`], the façade;
//! 7. [`http`] and [`server`].

pub mod error;
pub mod http;
pub mod limits;
pub mod model;
pub mod server;
pub mod store;

mod coalesce;
mod collections;
mod core;
mod crypto;
mod journal;
mod services;
mod storage;

pub use error::{DatabaseError, Error, JournalError, StorageError};
pub use model::{
    AppendOutcome, AppendResult, Dependent, Direction, Erasure, ErasureFilter, ErasureReason, ErasureStatus,
    ErasureTarget, EventSchema, ExpectedVersion, LegalHold, LogFilter, LogPage, NewEvent, ReappliedErasure,
    ReconcileReport, RecordedEvent, RetentionAnchor, RetentionPolicy, RetentionStatus, RetentionSweep, SchemaMode,
    ShreddedStream, StreamAppend, StreamInfo, StreamName, StreamSlice, StreamStatus, SubjectId, ValidationError,
    VersionConflict,
};
pub use store::{EventStore, KeyCacheStats, StoreConfig, WriterStats};
