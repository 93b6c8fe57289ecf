//! The JSON Schemas of constrained values (names, types, free text, page sizes) are defined with
//! the wire types, in `lethe_wire::schemas`; the handlers' path parameters name them from here.

pub use lethe_wire::schemas::*;

#[cfg(test)]
mod tests {
    use crate::model::{ErasureStatus, RetentionAnchor, Role, StreamStatus};

    /// The documented names are the ones the server writes and parses.
    #[test]
    fn documented_names_are_the_models() {
        assert_eq!(
            super::ROLES,
            [Role::Reader, Role::Writer, Role::Admin].map(Role::as_str)
        );
        assert_eq!(super::ERASURE_STATUSES, ErasureStatus::ALL.map(ErasureStatus::as_str));
        assert_eq!(
            super::STREAM_STATUSES,
            [StreamStatus::Active, StreamStatus::Erased, StreamStatus::Deleted].map(StreamStatus::as_str)
        );
        assert_eq!(
            super::RETENTION_ANCHORS,
            [RetentionAnchor::LastEvent, RetentionAnchor::FirstEvent].map(RetentionAnchor::as_str)
        );
    }
}
