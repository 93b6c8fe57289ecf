//! Lethe: an event store that can forget.
//!
//! Every stream's payloads are encrypted with a key of their own, held in a separate key vault;
//! forgetting a data subject destroys the keys of that subject's streams. This crate is the
//! event store: [`EventStore`] over SQLite (embedded) or PostgreSQL (production).
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod access;
pub mod audit;
pub mod error;
pub mod limits;
pub mod model;
pub mod report;
pub mod server;
pub mod store;
pub mod webhooks;

mod catch_up;
mod coalesce;
mod crypto;
pub mod erasure;
mod export;
mod group_commit;
pub mod http;
pub mod metrics;
mod payload;
mod storage;
mod subscription;

pub use crypto::KeyCacheStats;
pub use erasure::{
    Dependent, Erasure, ErasureFilter, ErasureReason, ErasureStatus, ErasureTarget, LegalHold, ShreddedStream,
};
pub use error::{Error, StorageError, ValidationError, VersionConflict};
pub use group_commit::WriterStats;
pub use model::{
    AppendOutcome, AppendResult, Direction, ExpectedVersion, LogFilter, LogPage, NewEvent, RecordedEvent, StreamAppend,
    StreamInfo, StreamName, StreamSlice, StreamStatus, SubjectId,
};
pub use store::{EventStore, StoreConfig};
