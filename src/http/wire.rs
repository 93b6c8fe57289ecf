//! The JSON shapes of the HTTP API are defined once, in the crate `lethe-wire` (shared with the
//! clients), and re-exported here; this module converts the store's types into them, so that
//! either side can change without silently changing the other.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use lethe_wire::*;

use crate::model::{AppendResult, EventSchema, ExpectedVersion, RecordedEvent, SchemaMode};

/// The wire form of an expectation (an `If-Match` header's, say).
pub fn wire_expectation(e: ExpectedVersion) -> ExpectedVersionWire {
    match e {
        ExpectedVersion::Any => ExpectedVersionWire::Any,
        ExpectedVersion::NoStream => ExpectedVersionWire::NoStream,
        ExpectedVersion::Exists => ExpectedVersionWire::Exists,
        ExpectedVersion::Exact(v) => ExpectedVersionWire::Exact(v),
    }
}

impl From<ExpectedVersionWire> for ExpectedVersion {
    fn from(e: ExpectedVersionWire) -> Self {
        match e {
            ExpectedVersionWire::Any => ExpectedVersion::Any,
            ExpectedVersionWire::NoStream => ExpectedVersion::NoStream,
            ExpectedVersionWire::Exists => ExpectedVersion::Exists,
            ExpectedVersionWire::Exact(v) => ExpectedVersion::Exact(v),
        }
    }
}

impl From<AppendResult> for AppendResponse {
    fn from(r: AppendResult) -> Self {
        Self {
            stream: r.stream.to_string(),
            first_version: r.first_version,
            last_version: r.last_version,
            first_position: r.first_position,
            last_position: r.last_position,
        }
    }
}

impl From<RecordedEvent> for EventOut {
    fn from(e: RecordedEvent) -> Self {
        Self {
            id: e.id,
            stream: e.stream,
            version: e.version,
            position: e.position,
            event_type: e.event_type,
            data: e.data.unwrap_or(Value::Null),
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            erased: e.erased,
            schema_version: e.schema_version,
            erased_fields: e.erased_fields,
        }
    }
}

/// The request as answered at `now` (the store's clock: whether it is overdue).
pub fn erasure_response(e: crate::model::Erasure, now: DateTime<Utc>) -> ErasureResponse {
    let (kind, subject, stream) = match &e.target {
        crate::model::ErasureTarget::Subject(s) => (ErasureKind::Subject, Some(s.to_string()), None),
        crate::model::ErasureTarget::Stream(s) => (ErasureKind::Stream, None, Some(s.to_string())),
    };
    let (deadline, overdue) = (e.deadline(), e.is_overdue(now));
    ErasureResponse {
        request_id: e.id,
        kind,
        subject,
        stream,
        status: e.status.as_str().to_owned(),
        already_erased: e.found_nothing(),
        streams: e.streams.iter().flatten().map(|s| s.stream.clone()).collect(),
        field_streams: e.field_streams,
        keys_destroyed: e.keys_destroyed,
        reason: e.reason.reason,
        requested_by: e.reason.requested_by,
        reference: e.reason.reference,
        requested_at: e.requested_at,
        keys_destroyed_at: e.keys_destroyed_at,
        completed_at: e.completed_at,
        tombstone_position: e.tombstone_position,
        deadline,
        overdue,
        refused_reason: e.refused_reason,
        dependents: e
            .dependents
            .into_iter()
            .map(|d| DependentOut {
                consumer: d.consumer,
                acknowledged_at: d.acknowledged_at,
                removed_at: d.removed_at,
                delivery_attempts: d.delivery_attempts,
                last_attempt_at: d.last_attempt_at,
                last_delivery_error: d.last_delivery_error,
            })
            .collect(),
        retention_policy: e.retention_policy,
    }
}

impl From<crate::model::LegalHold> for HoldOut {
    fn from(h: crate::model::LegalHold) -> Self {
        Self {
            subject: h.subject.to_string(),
            reason: h.reason,
            until: h.until,
            placed_at: h.placed_at,
        }
    }
}

impl From<SchemaModeWire> for SchemaMode {
    fn from(mode: SchemaModeWire) -> Self {
        match mode {
            SchemaModeWire::Enforce => SchemaMode::Enforce,
            SchemaModeWire::Warn => SchemaMode::Warn,
        }
    }
}

impl From<SchemaMode> for SchemaModeWire {
    fn from(mode: SchemaMode) -> Self {
        match mode {
            SchemaMode::Enforce => SchemaModeWire::Enforce,
            SchemaMode::Warn => SchemaModeWire::Warn,
        }
    }
}

impl From<EventSchema> for SchemaOut {
    fn from(s: EventSchema) -> Self {
        Self {
            event_type: s.event_type,
            version: s.version,
            mode: s.mode.into(),
            schema: s.schema,
            registered_at: s.registered_at,
        }
    }
}

impl From<crate::model::TokenRecord> for TokenOut {
    fn from(t: crate::model::TokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role.as_str().to_owned(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

impl From<crate::model::AuditEntry> for AuditEntryOut {
    fn from(e: crate::model::AuditEntry) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            request_id: e.request_id,
            details: e.details,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

impl From<crate::model::OriginFigures> for OriginFiguresOut {
    fn from(o: crate::model::OriginFigures) -> Self {
        Self {
            requests: o.requests,
            by_status: o.by_status,
        }
    }
}

impl From<crate::model::RetentionStatus> for RetentionPolicyOut {
    fn from(s: crate::model::RetentionStatus) -> Self {
        Self {
            name: s.policy.name,
            stream_prefix: s.policy.stream_prefix,
            keep_for: s.policy.keep_for.as_str().to_owned(),
            after: s.policy.after.as_str().to_owned(),
            created_at: s.policy.created_at,
            updated_at: s.policy.updated_at,
            next_due: s.next_due,
        }
    }
}

impl From<crate::model::RetentionSweep> for RetentionSweepOut {
    fn from(s: crate::model::RetentionSweep) -> Self {
        Self {
            policies: s.policies,
            due: s.due,
            filed: s.filed,
            refused: s.refused,
            batches: s.batches,
        }
    }
}

impl From<crate::model::ErasureReport> for ErasureReportOut {
    fn from(r: crate::model::ErasureReport) -> Self {
        Self {
            from: r.from,
            to: r.to,
            generated_at: r.generated_at,
            requests: r.requests,
            by_status: r.by_status,
            time_to_complete: DurationStatsOut {
                count: r.time_to_complete.count,
                median_secs: r.time_to_complete.median_secs,
                p95_secs: r.time_to_complete.p95_secs,
                max_secs: r.time_to_complete.max_secs,
            },
            overdue: r
                .overdue
                .into_iter()
                .map(|o| OverdueRequestOut {
                    request_id: o.request_id,
                    subject: o.subject,
                    status: o.status,
                    requested_at: o.requested_at,
                    deadline: o.deadline,
                })
                .collect(),
            unacknowledged: r
                .unacknowledged
                .into_iter()
                .map(|w| WaitingDependentOut {
                    request_id: w.request_id,
                    consumer: w.consumer,
                    waiting_since: w.waiting_since,
                    waiting_secs: w.waiting_secs,
                })
                .collect(),
            keys_destroyed: r.keys_destroyed,
            subject_keys_destroyed: r.subject_keys_destroyed,
            holds_active: r.holds_active,
            weekly: r
                .weekly
                .into_iter()
                .map(|w| WeekFiguresOut {
                    week: w.week,
                    requests: w.requests,
                    completed: w.completed,
                    median_secs_to_complete: w.median_secs_to_complete,
                })
                .collect(),
            requested: r.requested.into(),
            retention: r.retention.into(),
            retention_policies: r
                .retention_policies
                .into_iter()
                .map(|p| RetentionPolicyFiguresOut {
                    name: p.name,
                    requests: p.requests,
                    next_due: p.next_due,
                })
                .collect(),
        }
    }
}

impl From<&crate::model::ErasureTarget> for ErasureTargetOut {
    fn from(target: &crate::model::ErasureTarget) -> Self {
        match target {
            crate::model::ErasureTarget::Subject(s) => Self {
                kind: ErasureKind::Subject,
                subject: Some(s.to_string()),
                stream: None,
            },
            crate::model::ErasureTarget::Stream(s) => Self {
                kind: ErasureKind::Stream,
                subject: None,
                stream: Some(s.to_string()),
            },
        }
    }
}

impl From<crate::model::ReconcileReport> for ReconcileReportOut {
    fn from(r: crate::model::ReconcileReport) -> Self {
        Self {
            streams_checked: r.streams_checked,
            subject_keys_checked: r.subject_keys_checked,
            keys_destroyed: r.keys_destroyed,
            destroyed: r.destroyed.iter().map(ErasureTargetOut::from).collect(),
            streams_shredded: r.streams_shredded,
            requests: r
                .requests
                .into_iter()
                .map(|request| {
                    let target = ErasureTargetOut::from(&request.target);
                    ReappliedErasureOut {
                        request_id: request.request_id,
                        kind: target.kind,
                        subject: target.subject,
                        stream: target.stream,
                        streams: request.streams,
                    }
                })
                .collect(),
            keys_missing: r.keys_missing,
            keys_unreadable: r.keys_unreadable,
            truncated: r.truncated,
        }
    }
}
