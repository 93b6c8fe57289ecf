//! The erasure report as a record: what `services::report` computes for a period.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct DurationStats {
    /// Completed requests measured.
    pub count: u64,
    pub median_secs: Option<f64>,
    pub p95_secs: Option<f64>,
    pub max_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverdueRequest {
    pub request_id: Uuid,
    pub subject: Option<String>,
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WaitingDependent {
    pub request_id: Uuid,
    pub consumer: String,
    /// Since when the tombstone has waited for this dependent (the keys' destruction).
    pub waiting_since: Option<DateTime<Utc>>,
    pub waiting_secs: Option<f64>,
}

/// `GET /admin/reports/erasures`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureReport {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub generated_at: DateTime<Utc>,
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub time_to_complete: DurationStats,
    pub overdue: Vec<OverdueRequest>,
    pub unacknowledged: Vec<WaitingDependent>,
    pub keys_destroyed: u64,
    /// Of `keys_destroyed`, subjects' field keys (one per forgotten subject whose personal
    /// fields were stored in events).
    pub subject_keys_destroyed: u64,
    pub holds_active: u64,
    /// Requests per week (weeks start on Monday, UTC), oldest first, with the weeks in between
    /// that had none, so a chart of it has no holes.
    pub weekly: Vec<WeekFigures>,
    /// Of `requests`, those a person (or Lethe re-applying a lost erasure) filed.
    pub requested: OriginFigures,
    /// Of `requests`, those retention policies filed.
    pub retention: OriginFigures,
    /// Every retention policy: its requests in the period and when it next files one.
    pub retention_policies: Vec<RetentionPolicyFigures>,
}

/// Requests of one origin ([`ErasureReport::requested`], [`ErasureReport::retention`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OriginFigures {
    pub requests: u64,
    /// Every status, zeroes included.
    pub by_status: BTreeMap<String, u64>,
}

/// One retention policy in the erasure report.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicyFigures {
    pub name: String,
    /// Requests it filed in the period.
    pub requests: u64,
    /// When it next files a request (see `RetentionStatus::next_due`).
    pub next_due: Option<DateTime<Utc>>,
}

/// One week of [`ErasureReport::weekly`].
#[derive(Debug, Clone, PartialEq)]
pub struct WeekFigures {
    /// The Monday that starts the week (`YYYY-MM-DD`, UTC).
    pub week: chrono::NaiveDate,
    /// Requests made that week.
    pub requests: u64,
    /// Of those, completed (by now).
    pub completed: u64,
    /// Median time from request to completion of those completed.
    pub median_secs_to_complete: Option<f64>,
}

impl ErasureReport {
    /// The report as CSV: one `section,key,value` row per figure.
    pub fn to_csv(&self) -> String {
        let mut rows = vec!["section,key,value".to_owned()];
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.3}"));
        rows.push(format!("summary,requests,{}", self.requests));
        rows.push(format!("summary,keys_destroyed,{}", self.keys_destroyed));
        rows.push(format!(
            "summary,subject_keys_destroyed,{}",
            self.subject_keys_destroyed
        ));
        rows.push(format!("summary,holds_active,{}", self.holds_active));
        for (status, count) in &self.by_status {
            rows.push(format!("by_status,{status},{count}"));
        }
        for (origin, figures) in [("requested", &self.requested), ("retention", &self.retention)] {
            rows.push(format!("{origin},requests,{}", figures.requests));
            for (status, count) in &figures.by_status {
                rows.push(format!("{origin}_by_status,{status},{count}"));
            }
        }
        for p in &self.retention_policies {
            rows.push(format!("retention_policy_requests,{},{}", p.name, p.requests));
            let next_due = p.next_due.map_or_else(String::new, |t| t.to_rfc3339());
            rows.push(format!("retention_policy_next_due,{},{next_due}", p.name));
        }
        rows.push(format!("time_to_complete,count,{}", self.time_to_complete.count));
        rows.push(format!(
            "time_to_complete,median_secs,{}",
            opt(self.time_to_complete.median_secs)
        ));
        rows.push(format!(
            "time_to_complete,p95_secs,{}",
            opt(self.time_to_complete.p95_secs)
        ));
        rows.push(format!(
            "time_to_complete,max_secs,{}",
            opt(self.time_to_complete.max_secs)
        ));
        for o in &self.overdue {
            rows.push(format!("overdue,{},{}", o.request_id, o.deadline.to_rfc3339()));
        }
        for w in &self.unacknowledged {
            rows.push(format!(
                "unacknowledged,{}:{},{}",
                w.request_id,
                w.consumer,
                opt(w.waiting_secs)
            ));
        }
        for w in &self.weekly {
            rows.push(format!("weekly_requests,{},{}", w.week, w.requests));
            rows.push(format!("weekly_completed,{},{}", w.week, w.completed));
        }
        rows.join("\n") + "\n"
    }
}
