//! The services: what Lethe does with an open store, each taking the core context
//! (`crate::core::Core`) and nothing above it.
//!
//! - [`erasure`]: forget and stream deletion as durable, resumable requests; legal holds.
//! - [`access`]: API tokens. [`consumers`]: durable consumers and their acknowledgements.
//! - [`audit`]: the tamper-evident trail. [`report`]: the erasure report.
//! - [`retention`]: retention policies, and the sweep that files erasure requests on schedule.
//! - [`webhooks`]: tombstones pushed to dependents.
//! - [`kek_epochs`]: the key vault's KEK rotations and destroyed epochs, in the audit trail.
//! - [`subscription`], [`catch_up`], [`export`]: reads that stream, decrypting lazily.
//!
//! Architecture invariant: a service imports the layers below it (core, storage, crypto,
//! model) and never another service, the façade or HTTP; `EventStore` (the façade) is what
//! puts them side by side.

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod catch_up;
pub(crate) mod consumers;
pub(crate) mod erasure;
pub(crate) mod export;
pub(crate) mod kek_epochs;
pub(crate) mod report;
pub(crate) mod retention;
pub(crate) mod schemas;
pub(crate) mod subscription;
pub(crate) mod webhooks;
