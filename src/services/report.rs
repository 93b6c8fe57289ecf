//! The erasure report for auditors and data-protection officers: what was erased in a period,
//! how long it took, what is overdue, and which dependents still owe an acknowledgement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::core::Core;
use crate::error::Error;
use crate::limits::REPORT_ERASURES_MAX;
use crate::model::{
    DurationStats, Erasure, ErasureFilter, ErasureReport, ErasureStatus, ErasureTarget, OriginFigures, OverdueRequest,
    RetentionPolicyFigures, WaitingDependent, WeekFigures,
};

/// The Monday starting the week of `at` (UTC).
fn week_of(at: DateTime<Utc>) -> chrono::NaiveDate {
    use chrono::Datelike;
    let day = at.date_naive();
    day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()))
}

/// Weeks from the first to the last one in `weeks` (a map week → durations of completed
/// requests, and request count), gaps filled with zeroes.
fn weekly_figures(weeks: &BTreeMap<chrono::NaiveDate, (u64, Vec<f64>)>) -> Vec<WeekFigures> {
    let (Some(first), Some(last)) = (weeks.keys().next(), weeks.keys().next_back()) else {
        return Vec::new();
    };
    let mut figures = Vec::new();
    let mut week = *first;
    while week <= *last {
        let (requests, mut durations) = weeks.get(&week).cloned().unwrap_or_default();
        durations.sort_by(f64::total_cmp);
        figures.push(WeekFigures {
            week,
            requests,
            completed: durations.len() as u64,
            median_secs_to_complete: quantile(&durations, 0.5),
        });
        week = week + chrono::Days::new(7);
    }
    figures
}

/// The value at quantile `q` (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// The erasure report over requests made in `[from, to)` (either end open).
pub(crate) async fn erasure_report(
    core: &Core,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<ErasureReport, Error> {
    let now = core.now();
    let erasures = core
        .storage
        .erasures(&ErasureFilter {
            from,
            to,
            limit: REPORT_ERASURES_MAX,
            ..ErasureFilter::default()
        })
        .await?;
    let mut by_status: BTreeMap<String, u64> = ErasureStatus::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
    let mut durations = Vec::new();
    let mut overdue = Vec::new();
    let mut unacknowledged = Vec::new();
    let mut keys_destroyed = 0;
    let mut subject_keys_destroyed = 0;
    let mut weeks: BTreeMap<chrono::NaiveDate, (u64, Vec<f64>)> = BTreeMap::new();
    let mut requested = OriginFigures {
        requests: 0,
        by_status: by_status.clone(),
    };
    let mut retention = requested.clone();
    let mut by_policy: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &erasures {
        *by_status.entry(e.status.as_str().to_owned()).or_default() += 1;
        let origin = match &e.retention_policy {
            Some(policy) => {
                *by_policy.entry(policy.as_str()).or_default() += 1;
                &mut retention
            }
            None => &mut requested,
        };
        origin.requests += 1;
        *origin.by_status.entry(e.status.as_str().to_owned()).or_default() += 1;
        keys_destroyed += e.keys_destroyed;
        if e.subject_key.is_some() && e.keys_destroyed_at.is_some() {
            subject_keys_destroyed += 1;
        }
        let week = weeks.entry(week_of(e.requested_at)).or_default();
        week.0 += 1;
        if let (ErasureStatus::Completed, Some(done)) = (e.status, e.completed_at) {
            let secs = (done - e.requested_at).num_milliseconds() as f64 / 1000.0;
            durations.push(secs);
            week.1.push(secs);
        }
        if e.is_overdue(now) {
            overdue.push(OverdueRequest {
                request_id: e.id,
                subject: subject_of(e),
                status: e.status.as_str().to_owned(),
                requested_at: e.requested_at,
                deadline: e.deadline(),
            });
        }
        if e.status == ErasureStatus::AwaitingAcknowledgements {
            for d in e
                .dependents
                .iter()
                .filter(|d| d.acknowledged_at.is_none() && d.removed_at.is_none())
            {
                unacknowledged.push(WaitingDependent {
                    request_id: e.id,
                    consumer: d.consumer.clone(),
                    waiting_since: e.keys_destroyed_at,
                    waiting_secs: e
                        .keys_destroyed_at
                        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
                });
            }
        }
    }
    durations.sort_by(f64::total_cmp);
    let mut retention_policies = Vec::new();
    for policy in core.storage.retention_policies().await? {
        let oldest = core.storage.retention_oldest_anchor(&policy).await?;
        retention_policies.push(RetentionPolicyFigures {
            requests: by_policy.get(policy.name.as_str()).copied().unwrap_or(0),
            next_due: policy.next_due(oldest),
            name: policy.name,
        });
    }
    Ok(ErasureReport {
        from,
        to,
        generated_at: now,
        requests: erasures.len() as u64,
        by_status,
        time_to_complete: DurationStats {
            count: durations.len() as u64,
            median_secs: quantile(&durations, 0.5),
            p95_secs: quantile(&durations, 0.95),
            max_secs: durations.last().copied(),
        },
        overdue,
        unacknowledged,
        keys_destroyed,
        subject_keys_destroyed,
        holds_active: core.storage.active_holds(now.timestamp_micros()).await?,
        weekly: weekly_figures(&weeks),
        requested,
        retention,
        retention_policies,
    })
}

fn subject_of(e: &Erasure) -> Option<String> {
    match &e.target {
        ErasureTarget::Subject(s) => Some(s.to_string()),
        ErasureTarget::Stream(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{quantile, week_of, weekly_figures};
    use std::collections::BTreeMap;

    #[test]
    fn weeks_start_on_monday_and_gaps_are_filled() {
        let thursday = chrono::DateTime::parse_from_rfc3339("2026-11-26T23:59:00Z")
            .unwrap()
            .to_utc();
        let monday = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(week_of(thursday), monday);
        let earlier = monday - chrono::Days::new(14);
        let weeks = BTreeMap::from([(earlier, (2, vec![30.0])), (monday, (1, vec![]))]);
        let figures = weekly_figures(&weeks);
        assert_eq!(figures.len(), 3);
        assert_eq!((figures[0].requests, figures[0].completed), (2, 1));
        assert_eq!(figures[0].median_secs_to_complete, Some(30.0));
        assert_eq!((figures[1].requests, figures[1].completed), (0, 0));
        assert_eq!(figures[2].week, monday);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        assert_eq!(quantile(&v, 0.95), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
    }
}
