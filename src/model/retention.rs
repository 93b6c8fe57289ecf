//! Retention policies as records: how long a subject's data may be kept, and the pure rules
//! that decide when it is due. The sweep that files the erasure requests is
//! `services::retention`.
//!
//! A policy names a stream prefix, a period (`keep_for`, an ISO 8601 duration) and what the
//! period counts from (`after`: a stream's last event, or its first). A subject is *due* once
//! every active stream bound to it whose name starts with the prefix is past the period; Lethe
//! then files an erasure request for the subject (`requested_by: "retention:<name>"`), which
//! runs like any other.

use chrono::{DateTime, Months, Utc};

use super::validation::ValidationError;
use super::{StreamName, SubjectId};
use crate::limits::{NAME_LEN_MAX, RETENTION_KEEP_FOR_LEN_MAX, RETENTION_KEEP_FOR_YEARS_MAX};

/// What a policy's period counts from, for each stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionAnchor {
    /// The stream's last event: a stream appended to stays young.
    LastEvent,
    /// The stream's first event: the period runs from the stream's creation.
    FirstEvent,
}

impl RetentionAnchor {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionAnchor::LastEvent => "last_event",
            RetentionAnchor::FirstEvent => "first_event",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "last_event" => Ok(RetentionAnchor::LastEvent),
            "first_event" => Ok(RetentionAnchor::FirstEvent),
            _ => Err(ValidationError::InvalidRetentionPolicy {
                field: "after",
                reason: "it must be \"last_event\" or \"first_event\"",
            }),
        }
    }
}

/// A policy's period: an ISO 8601 duration (`P30D`, `P1Y6M`, `PT12H`, `P2W`), kept as given and
/// applied on the calendar (a month from January 31st ends on the last day of February).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPeriod {
    text: String,
    months: u32,
    days: u64,
    seconds: u64,
}

impl RetentionPeriod {
    /// Parses an ISO 8601 duration; refuses a malformed one (`P-1D`), a zero one (`PT0S`) and
    /// one longer than [`RETENTION_KEEP_FOR_YEARS_MAX`] years.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let invalid = |reason| ValidationError::InvalidRetentionPolicy {
            field: "keep_for",
            reason,
        };
        let malformed = || invalid("it must be an ISO 8601 duration such as \"P30D\" or \"P1Y6M\"");
        if text.len() > RETENTION_KEEP_FOR_LEN_MAX || !text.is_ascii() {
            return Err(malformed());
        }
        let (months, days, seconds) = parse_iso8601(text).ok_or_else(malformed)?;
        if months == 0 && days == 0 && seconds == 0 {
            return Err(invalid("it must be longer than zero"));
        }
        // Months as 1/12 of a year and days as 1/365.25: the bound is on the length, whichever
        // units spell it.
        let max_days = f64::from(RETENTION_KEEP_FOR_YEARS_MAX) * 365.25;
        let length_days = months as f64 * 365.25 / 12.0 + days as f64 + seconds as f64 / 86_400.0;
        if length_days > max_days {
            return Err(ValidationError::InvalidRetentionPolicy {
                field: "keep_for",
                reason: "it must not be longer than 100 years",
            });
        }
        Ok(Self::of(text, months, days, seconds))
    }

    /// A period as stored: its grammar checked, not today's limits, so that a stored policy
    /// stays readable should a later release narrow them. `None`: not a duration at all.
    pub fn parse_stored(text: &str) -> Option<Self> {
        let (months, days, seconds) = parse_iso8601(text)?;
        Some(Self::of(text, months, days, seconds))
    }

    fn of(text: &str, months: u64, days: u64, seconds: u64) -> Self {
        RetentionPeriod {
            text: text.to_owned(),
            // The checks before bound it; a stored value past it would only saturate.
            months: u32::try_from(months).unwrap_or(u32::MAX),
            days,
            seconds,
        }
    }

    /// The duration as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The instant this period before `t` (`None`: out of chrono's range).
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        t.checked_sub_months(Months::new(self.months))?
            .checked_sub_days(chrono::Days::new(self.days))?
            .checked_sub_signed(chrono::TimeDelta::try_seconds(i64::try_from(self.seconds).ok()?)?)
    }

    /// The instant this period after `t` (`None`: out of chrono's range).
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        t.checked_add_months(Months::new(self.months))?
            .checked_add_days(chrono::Days::new(self.days))?
            .checked_add_signed(chrono::TimeDelta::try_seconds(i64::try_from(self.seconds).ok()?)?)
    }
}

/// Parses an ISO 8601 duration of whole units — `P[nY][nM][nW][nD][T[nH][nM][nS]]`, at least
/// one unit, in that order — into (months, days, seconds). By hand: the `iso8601` crate accepts
/// trailing text (`P1Y-1M` reads as one year), which for a retention period is the wrong way to
/// fail. Fractions and negative values are refused.
fn parse_iso8601(text: &str) -> Option<(u64, u64, u64)> {
    let mut rest = text.strip_prefix('P')?;
    let (mut months, mut days, mut secs) = (0u64, 0u64, 0u64);
    let mut units = 0;
    let mut time = false;
    // Each unit at most once, in order: the index of the next unit allowed.
    let (date_units, time_units) = (['Y', 'M', 'W', 'D'], ['H', 'M', 'S']);
    let mut next = 0;
    while !rest.is_empty() {
        if !time && let Some(after) = rest.strip_prefix('T') {
            (time, next, rest) = (true, 0, after);
            if rest.is_empty() {
                return None;
            }
            continue;
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        rest = &rest[digits + unit.len_utf8()..];
        let allowed: &[char] = if time { &time_units } else { &date_units };
        let at = next + allowed[next..].iter().position(|u| *u == unit)?;
        next = at + 1;
        units += 1;
        match (time, unit) {
            (false, 'Y') => months = months.checked_add(n.checked_mul(12)?)?,
            (false, 'M') => months = months.checked_add(n)?,
            (false, 'W') => days = days.checked_add(n.checked_mul(7)?)?,
            (false, 'D') => days = days.checked_add(n)?,
            (true, 'H') => secs = secs.checked_add(n.checked_mul(3600)?)?,
            (true, 'M') => secs = secs.checked_add(n.checked_mul(60)?)?,
            (true, 'S') => secs = secs.checked_add(n)?,
            _ => return None,
        }
    }
    (units > 0).then_some((months, days, secs))
}

/// A retention policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub name: String,
    /// Streams whose names start with it are counted; 1 to [`NAME_LEN_MAX`] characters of the
    /// stream-name charset, never starting with `$` (system streams have no subject).
    pub stream_prefix: String,
    pub keep_for: RetentionPeriod,
    pub after: RetentionAnchor,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RetentionPolicy {
    /// When this policy next files a request, given the oldest anchor among its subjects not
    /// yet filed (see [`RetentionStatus::next_due`]).
    pub fn next_due(&self, oldest_anchor_us: Option<i64>) -> Option<DateTime<Utc>> {
        let anchor = DateTime::from_timestamp_micros(oldest_anchor_us?)?;
        self.keep_for.after(anchor)
    }

    /// The `requested_by` of the erasure requests this policy files.
    pub fn requested_by(&self) -> String {
        requested_by(&self.name)
    }
}

/// `retention:<name>`: who Lethe names as having asked for a policy's erasure requests.
pub fn requested_by(policy: &str) -> String {
    format!("retention:{policy}")
}

/// A policy with when it next files a request: the earliest time at which a subject it
/// covers, with no erasure request yet, is (or was) due. In the past while a legal hold
/// defers that subject, or until the next sweep; `None` when it covers no such subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionStatus {
    pub policy: RetentionPolicy,
    pub next_due: Option<DateTime<Utc>>,
}

/// What one retention sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSweep {
    /// Policies swept.
    pub policies: u64,
    /// Subjects found due (with no erasure request yet, or only a refused one).
    pub due: u64,
    /// Erasure requests filed (including those a legal hold refused at once).
    pub filed: u64,
    /// Of `filed`, refused by an active legal hold (filed again once the hold lapses).
    pub refused: u64,
    /// Transactions the sweep took: one per batch of subjects.
    pub batches: u64,
}

/// Checks a policy's name: the stream-name charset, 1 to [`NAME_LEN_MAX`] characters.
pub fn check_policy_name(name: &str) -> Result<(), ValidationError> {
    SubjectId::new(name)
        .map(drop)
        .map_err(|_| ValidationError::InvalidRetentionPolicy {
            field: "name",
            reason: "it must be 1 to 200 characters of A-Z a-z 0-9 _ . : @ -",
        })
}

/// Checks a policy's stream prefix: the stream-name charset, 1 to [`NAME_LEN_MAX`]
/// characters, not starting with `$`.
pub fn check_stream_prefix(prefix: &str) -> Result<(), ValidationError> {
    if prefix.starts_with('$') {
        return Err(ValidationError::InvalidRetentionPolicy {
            field: "stream_prefix",
            reason: "system streams ('$…') have no subject",
        });
    }
    if prefix.chars().count() > NAME_LEN_MAX || StreamName::new(prefix).is_err() {
        return Err(ValidationError::InvalidRetentionPolicy {
            field: "stream_prefix",
            reason: "it must be 1 to 200 characters of A-Z a-z 0-9 _ . : @ -",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_are_refused() {
        for ok in [
            "P30D",
            "P1Y6M",
            "PT12H",
            "P2W",
            "P100Y",
            "PT1S",
            "P1DT1H",
            "P1Y2M3W4DT5H6M7S",
            "PT90M",
        ] {
            assert!(RetentionPeriod::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "P-1D",
            "PT0S",
            "P0D",
            "P101Y",
            "P1201M",
            "P36526D",
            "",
            "P",
            "30D",
            "P30D ",
            "1 day",
            "P1Y-1M",
            "PT",
            "P1DT",
            "P1D1Y",
            "P1M1M",
            "P1H",
            "PT1D",
            "P1.5D",
            "P99999999999999999999D",
            "p30d",
            "P30Dx",
        ] {
            let err = RetentionPeriod::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_retention_policy", "{bad}");
        }
    }

    #[test]
    fn periods_apply_on_the_calendar() {
        let t = DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z").unwrap().to_utc();
        let month = RetentionPeriod::parse("P1M").unwrap();
        assert_eq!(month.before(t).unwrap().to_rfc3339(), "2026-02-28T12:00:00+00:00");
        let mixed = RetentionPeriod::parse("P1DT2H").unwrap();
        assert_eq!(mixed.after(t).unwrap().to_rfc3339(), "2026-04-01T14:00:00+00:00");
        assert_eq!(mixed.before(mixed.after(t).unwrap()).unwrap(), t);
    }

    #[test]
    fn anchors_and_prefixes() {
        assert_eq!(
            RetentionAnchor::parse("first_event").unwrap(),
            RetentionAnchor::FirstEvent
        );
        assert!(RetentionAnchor::parse("creation").is_err());
        assert!(check_stream_prefix("user-private-").is_ok());
        for bad in ["", "$erasures", "with space", "ü"] {
            assert!(check_stream_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_policy_name("customers-7y").is_ok());
        assert!(check_policy_name("").is_err());
    }
}
