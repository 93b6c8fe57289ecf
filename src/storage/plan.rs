//! What a group of appends means, decided once for every engine.
//!
//! An engine loads what [`lookups`] names — the [`StreamState`] of every stream the group
//! touches, the [`ExistingEvent`] for every caller-chosen event id it carries, the subjects
//! being erased — under the commit-order lock (or, on PostgreSQL, optimistically, checked when
//! it writes), and hands them to [`plan_group`]. The plan says, per append, whether it is stored, is an
//! idempotent retry, or is rejected (and why); and lists exactly the rows to insert and the
//! stream rows to write. Appends are planned in order against a working copy of the state, so
//! two appends to one stream in the same group see each other, exactly as if they had been
//! committed one after the other.
//!
//! Pure code: no I/O, so the rules of Guarantees 1–3 are unit-testable here.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{AppendReply, AtomicAppend, EncodedEvent, TokenChecks};
use crate::error::{Error, VersionConflict};
use crate::model::{AppendOutcome, AppendResult, ExpectedVersion, StreamStatus};

/// What an engine must read for a group before [`plan_group`] can decide it.
pub struct Lookups<'a> {
    /// Every stream the group writes (their [`StreamState`]s).
    pub streams: Vec<&'a str>,
    /// The caller-chosen event ids (their [`ExistingEvent`]s): an id the store generated
    /// cannot be stored already (see `EncodedEvent::id_given`).
    pub given_ids: Vec<Uuid>,
    /// The subjects the group binds streams to or writes personal fields of (their
    /// [`SubjectErasure`]s).
    pub subjects: Vec<&'a str>,
}

/// Where a subject's erasure stands, for appends that name the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectErasure {
    /// An erasure request is unfinished: `erasure_in_progress`.
    InProgress,
    /// The subject was forgotten: `subject_forgotten`.
    Forgotten,
}

/// Folds `(subject, status)` rows of subject erasure requests (refused ones left out) into
/// each subject's [`SubjectErasure`]: any unfinished request makes it in progress.
pub fn subject_erasures(rows: impl IntoIterator<Item = (String, String)>) -> HashMap<String, SubjectErasure> {
    let mut states = HashMap::new();
    for (subject, status) in rows {
        let state = if status == "completed" {
            SubjectErasure::Forgotten
        } else {
            SubjectErasure::InProgress
        };
        let entry = states.entry(subject).or_insert(state);
        if state == SubjectErasure::InProgress {
            *entry = state;
        }
    }
    states
}

impl SubjectErasure {
    pub fn error(self, subject: &str) -> Error {
        match self {
            SubjectErasure::InProgress => Error::ErasureInProgress {
                subject: subject.to_owned(),
            },
            SubjectErasure::Forgotten => Error::SubjectForgotten {
                subject: subject.to_owned(),
            },
        }
    }
}

pub fn lookups(group: &[AtomicAppend]) -> Lookups<'_> {
    let writes = || group.iter().flat_map(|a| a.writes.iter());
    Lookups {
        streams: writes().map(|w| w.stream.as_str()).collect(),
        given_ids: writes()
            .flat_map(|w| w.events.iter())
            .filter(|e| e.id_given)
            .map(|e| e.id)
            .collect(),
        subjects: writes()
            .flat_map(|w| {
                w.subject
                    .iter()
                    .map(|s| s.as_str())
                    .chain(w.field_subjects.iter().map(|f| f.subject.as_str()))
            })
            .collect(),
    }
}

/// A stream as stored before the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// Last version; `None`: no events.
    pub version: Option<u64>,
    pub status: StreamStatus,
    pub subject: Option<String>,
    pub key_id: Option<Uuid>,
}

/// Where an already stored event id lives (for idempotent retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEvent {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub digest: Vec<u8>,
}

/// The subject key rows a group writes: each subject's field key id, each once (rows that
/// exist are ignored when inserted). The field index itself is the events' own
/// [`EncodedEvent::field_subjects`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FieldIndex<'a> {
    /// `(subject, key id)`.
    pub keys: Vec<(&'a str, Uuid)>,
}

/// One event row to insert.
#[derive(Debug)]
pub struct EventRow<'a> {
    pub position: u64,
    pub version: u64,
    pub stream: &'a str,
    pub key_id: Option<Uuid>,
    pub event: &'a EncodedEvent,
    pub recorded_at_us: i64,
}

/// The state of a stream after the group, to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub name: String,
    pub state: StreamState,
    /// Not stored before this group: insert rather than update.
    pub is_new: bool,
}

/// What an engine must do for a group.
#[derive(Debug)]
pub struct GroupPlan<'a> {
    pub replies: Vec<AppendReply>,
    pub rows: Vec<EventRow<'a>>,
    pub streams: Vec<StreamRow>,
    /// Field index rows not known to be recorded yet.
    pub field_index: FieldIndex<'a>,
    /// The last position after the group (unchanged if nothing is written).
    pub head: u64,
    /// The time the group is recorded at (its events' `recorded_at`, new streams' `created_at`).
    pub now_us: i64,
}

/// Decides a group. `states` holds every stored stream the group names (absent: never
/// written); `existing` every stored event whose id the group carries; `head` the last
/// committed position.
/// `erasing` holds the erasure state of the subjects the group names (see
/// [`SubjectErasure`]): no new stream may be bound to them, and none of their personal fields
/// written, so that an erasure's lists of streams stay complete and a forgotten subject stays
/// forgotten.
pub fn plan_group<'a>(
    group: &'a [AtomicAppend],
    mut states: HashMap<String, StreamState>,
    mut existing: HashMap<Uuid, ExistingEvent>,
    erasing: &HashMap<String, SubjectErasure>,
    mut head: u64,
    now_us: i64,
) -> GroupPlan<'a> {
    let mut replies = Vec::with_capacity(group.len());
    let mut rows = Vec::new();
    // Streams this group writes, in first-touch order, and whether each is new.
    let mut touched: Vec<(String, bool)> = Vec::new();
    let mut touched_names: HashSet<String> = HashSet::new();
    let mut field_index = FieldIndex::default();
    let mut keys_seen = HashSet::new();

    for append in group {
        let reply = match check_retry(append, &states, &existing) {
            Retry::No => match check_append(append, &states, erasing) {
                Ok(()) => {
                    let mut results = Vec::with_capacity(append.writes.len());
                    for write in &append.writes {
                        let name = write.stream.as_str();
                        let state = match states.get_mut(name) {
                            Some(state) => state,
                            None => {
                                touched_names.insert(name.to_owned());
                                touched.push((name.to_owned(), true));
                                states.entry(name.to_owned()).or_insert(StreamState {
                                    version: None,
                                    status: StreamStatus::Active,
                                    subject: write.subject.as_ref().map(|s| s.as_str().to_owned()),
                                    key_id: write.key_id,
                                })
                            }
                        };
                        if touched_names.insert(name.to_owned()) {
                            touched.push((name.to_owned(), false));
                        }
                        if state.key_id.is_none() {
                            state.key_id = write.key_id;
                        }
                        let first_version = state.version.map_or(0, |v| v + 1);
                        let first_position = head + 1;
                        for (i, event) in write.events.iter().enumerate() {
                            head += 1;
                            let version = first_version + i as u64;
                            rows.push(EventRow {
                                position: head,
                                version,
                                stream: name,
                                // The key these events were sealed with (none for system
                                // events, which are stored in clear).
                                key_id: write.key_id.filter(|_| write.sealed),
                                event,
                                recorded_at_us: now_us,
                            });
                            existing.insert(
                                event.id,
                                ExistingEvent {
                                    stream: name.to_owned(),
                                    version,
                                    position: head,
                                    digest: event.digest.to_vec(),
                                },
                            );
                        }
                        for field in &write.field_subjects {
                            let subject = field.subject.as_str();
                            if !field.key_recorded && keys_seen.insert(subject) {
                                field_index.keys.push((subject, field.key_id));
                            }
                        }
                        let last_version = first_version + write.events.len() as u64 - 1;
                        state.version = Some(last_version);
                        results.push(AppendResult {
                            stream: write.stream.clone(),
                            first_version,
                            last_version,
                            first_position,
                            last_position: head,
                        });
                    }
                    Ok(AppendOutcome {
                        streams: results,
                        idempotent_retry: false,
                        // Filled in by the store, which serialized the events.
                        data_bytes: 0,
                    })
                }
                Err(e) => Err(e),
            },
            Retry::Same(results) => Ok(AppendOutcome {
                streams: results,
                idempotent_retry: true,
                data_bytes: 0,
            }),
            Retry::Invalid(e) => Err(e),
        };
        replies.push(reply);
    }

    let streams = touched
        .into_iter()
        .filter_map(|(name, is_new)| {
            let state = states.remove(&name)?;
            Some(StreamRow { name, state, is_new })
        })
        .collect();
    GroupPlan {
        replies,
        rows,
        streams,
        field_index,
        head,
        now_us,
    }
}

/// Whether an append repeats one already stored.
enum Retry {
    /// None of its event ids is stored: a new append.
    No,
    /// Every event is stored exactly where this append would have put it: its original result.
    Same(Vec<AppendResult>),
    /// Some ids are stored, but not as this append says.
    Invalid(Error),
}

fn check_retry(
    append: &AtomicAppend,
    states: &HashMap<String, StreamState>,
    existing: &HashMap<Uuid, ExistingEvent>,
) -> Retry {
    let first_stored = append
        .writes
        .iter()
        .flat_map(|w| w.events.iter())
        .find(|e| existing.contains_key(&e.id));
    let Some(first_stored_id) = first_stored.map(|e| e.id) else {
        return Retry::No;
    };
    let mut results = Vec::with_capacity(append.writes.len());
    let mut conflicts = Vec::new();
    for write in &append.writes {
        let name = write.stream.as_str();
        let mut first: Option<&ExistingEvent> = None;
        let mut last: Option<&ExistingEvent> = None;
        for (i, event) in write.events.iter().enumerate() {
            let Some(stored) = existing.get(&event.id) else {
                // Partly stored: never half-apply a retry.
                return Retry::Invalid(Error::DuplicateEventId {
                    event_id: first_stored_id,
                });
            };
            let in_place = stored.stream == name
                && stored.digest == event.digest
                && first.is_none_or(|f| stored.version == f.version + i as u64)
                && first.is_none_or(|f| stored.position == f.position + i as u64);
            if !in_place {
                return Retry::Invalid(Error::DuplicateEventId { event_id: event.id });
            }
            first.get_or_insert(stored);
            last = Some(stored);
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Retry::Invalid(Error::Invalid(crate::error::ValidationError::NoEvents));
        };
        // "At the same versions": the expectation must describe the stream as it was then.
        let before = first.version.checked_sub(1);
        if !write.expected.is_satisfied_by(before) && write.expected != ExpectedVersion::Any {
            conflicts.push(VersionConflict {
                stream: name.to_owned(),
                expected: write.expected,
                current: states.get(name).and_then(|s| s.version),
            });
        }
        results.push(AppendResult {
            stream: write.stream.clone(),
            first_version: first.version,
            last_version: last.version,
            first_position: first.position,
            last_position: last.position,
        });
    }
    if conflicts.is_empty() {
        Retry::Same(results)
    } else {
        Retry::Invalid(Error::WrongExpectedVersion { conflicts })
    }
}

/// What [`check_writes`] needs to know of one stream's part of an append.
#[derive(Debug, Clone, Copy)]
pub struct WriteHead<'a> {
    pub stream: &'a str,
    pub expected: ExpectedVersion,
    pub subject: Option<&'a str>,
    pub allow_closed: bool,
}

/// Checks a new append against the current state of its streams.
fn check_append(
    append: &AtomicAppend,
    states: &HashMap<String, StreamState>,
    erasing: &HashMap<String, SubjectErasure>,
) -> Result<(), Error> {
    for write in &append.writes {
        if let Some(subject) = &write.subject
            && !states.contains_key(write.stream.as_str())
            && let Some(state) = erasing.get(subject.as_str())
        {
            return Err(state.error(subject.as_str()));
        }
        for field in &write.field_subjects {
            if let Some(state) = erasing.get(field.subject.as_str()) {
                return Err(state.error(field.subject.as_str()));
            }
        }
    }
    let heads: Vec<WriteHead<'_>> = append
        .writes
        .iter()
        .map(|w| WriteHead {
            stream: w.stream.as_str(),
            expected: w.expected,
            subject: w.subject.as_ref().map(|s| s.as_str()),
            allow_closed: w.allow_closed,
        })
        .collect();
    check_writes(&heads, states)
}

/// The rules for appending to streams in their current state: closed streams refuse, a named
/// subject must be the bound one, and every expectation must hold (all conflicts are listed).
/// Also used before an append is encrypted, to fail fast without calling the vault.
pub fn check_writes(writes: &[WriteHead<'_>], states: &HashMap<String, StreamState>) -> Result<(), Error> {
    for write in writes {
        let Some(state) = states.get(write.stream) else {
            continue;
        };
        if !write.allow_closed {
            match state.status {
                StreamStatus::Active => {}
                StreamStatus::Erased => {
                    return Err(Error::StreamErased {
                        stream: write.stream.to_owned(),
                    });
                }
                StreamStatus::Deleted => {
                    return Err(Error::StreamDeleted {
                        stream: write.stream.to_owned(),
                    });
                }
            }
        }
        // A later append may omit the subject; naming one must name the bound one.
        if let Some(subject) = write.subject
            && state.subject.as_deref() != Some(subject)
        {
            return Err(Error::SubjectMismatch {
                stream: write.stream.to_owned(),
            });
        }
    }
    let conflicts: Vec<VersionConflict> = writes
        .iter()
        .filter_map(|write| {
            let current = states.get(write.stream).and_then(|s| s.version);
            (!write.expected.is_satisfied_by(current)).then(|| VersionConflict {
                stream: write.stream.to_owned(),
                expected: write.expected,
                current,
            })
        })
        .collect();
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::WrongExpectedVersion { conflicts })
    }
}

/// Records, of the subjects a group looked up in `erasure_requests` (those
/// [`TokenChecks::unchecked`] left under the `subject_erasure_filed` token the plan read), the
/// ones that have no erasure request (absent from `erasing`), as found under `token`.
pub fn record_clear_subjects(
    checks: &TokenChecks<String>,
    token: i64,
    looked_up: &[&str],
    erasing: &HashMap<String, SubjectErasure>,
) {
    checks.found_clear(
        token,
        looked_up
            .iter()
            .filter(|s| !erasing.contains_key(**s))
            .map(|s| (*s).to_owned()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StreamName, SubjectId};
    use crate::storage::StreamWrite;

    fn event(id: u128, digest: u8) -> EncodedEvent {
        EncodedEvent {
            id: Uuid::from_u128(id),
            id_given: true,
            event_type: "t".into(),
            payload: vec![],
            metadata: "{}".into(),
            digest: [digest; 32],
            schema_version: None,
            field_subjects: Vec::new(),
        }
    }

    fn write(stream: &str, expected: ExpectedVersion, events: Vec<EncodedEvent>) -> StreamWrite {
        StreamWrite {
            stream: StreamName::new(stream).unwrap(),
            expected,
            subject: None,
            key_id: None,
            sealed: false,
            events,
            allow_closed: false,
            field_subjects: Vec::new(),
        }
    }

    fn single(w: StreamWrite) -> AtomicAppend {
        AtomicAppend { writes: vec![w] }
    }

    fn state(version: Option<u64>) -> StreamState {
        StreamState {
            version,
            status: StreamStatus::Active,
            subject: None,
            key_id: None,
        }
    }

    fn code(reply: &AppendReply) -> &'static str {
        match reply {
            Ok(o) if o.idempotent_retry => "retry",
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    /// One case: the stream `s` at `current`, an append to it with `expected`.
    fn check(current: Option<u64>, expected: ExpectedVersion, want: &str) {
        let group = [single(write("s", expected, vec![event(1, 1)]))];
        let states = current.map(|v| ("s".to_owned(), state(Some(v)))).into_iter().collect();
        let plan = plan_group(&group, states, HashMap::new(), &HashMap::new(), 10, 0);
        assert_eq!(code(&plan.replies[0]), want, "current {current:?}, expected {expected}");
    }

    #[test]
    fn expected_version_rules() {
        use ExpectedVersion::*;
        check(None, Any, "ok");
        check(Some(3), Any, "ok");
        check(None, NoStream, "ok");
        check(Some(0), NoStream, "wrong_expected_version");
        check(None, Exists, "wrong_expected_version");
        check(Some(0), Exists, "ok");
        check(Some(3), Exact(3), "ok");
        check(Some(3), Exact(2), "wrong_expected_version");
        check(None, Exact(0), "wrong_expected_version");
    }

    #[test]
    fn appends_in_one_group_see_each_other() {
        let group = [
            single(write("s", ExpectedVersion::NoStream, vec![event(1, 1), event(2, 2)])),
            single(write("s", ExpectedVersion::Exact(1), vec![event(3, 3)])),
            single(write("s", ExpectedVersion::Exact(1), vec![event(4, 4)])),
        ];
        let plan = plan_group(&group, HashMap::new(), HashMap::new(), &HashMap::new(), 7, 0);
        assert_eq!(code(&plan.replies[0]), "ok");
        assert_eq!(code(&plan.replies[1]), "ok");
        assert_eq!(code(&plan.replies[2]), "wrong_expected_version");
        let positions: Vec<_> = plan.rows.iter().map(|r| (r.position, r.version)).collect();
        assert_eq!(positions, vec![(8, 0), (9, 1), (10, 2)]);
        assert_eq!(plan.head, 10);
        assert_eq!(plan.streams.len(), 1);
        assert!(plan.streams[0].is_new);
        assert_eq!(plan.streams[0].state.version, Some(2));
    }

    #[test]
    fn retry_returns_original_result_and_writes_nothing() {
        let group = [single(write(
            "s",
            ExpectedVersion::NoStream,
            vec![event(1, 1), event(2, 2)],
        ))];
        let first = plan_group(&group, HashMap::new(), HashMap::new(), &HashMap::new(), 0, 0);
        let existing: HashMap<_, _> = first
            .rows
            .iter()
            .map(|r| {
                (
                    r.event.id,
                    ExistingEvent {
                        stream: "s".into(),
                        version: r.version,
                        position: r.position,
                        digest: r.event.digest.to_vec(),
                    },
                )
            })
            .collect();
        let states: HashMap<_, _> = [("s".to_owned(), state(Some(1)))].into();
        let again = plan_group(&group, states.clone(), existing.clone(), &HashMap::new(), 2, 0);
        assert_eq!(code(&again.replies[0]), "retry");
        assert!(again.rows.is_empty());
        assert_eq!(
            again.replies[0].as_ref().unwrap().streams,
            first.replies[0].as_ref().unwrap().streams
        );

        // Same id, different content.
        let changed = [single(write(
            "s",
            ExpectedVersion::NoStream,
            vec![event(1, 9), event(2, 2)],
        ))];
        let plan = plan_group(&changed, states.clone(), existing.clone(), &HashMap::new(), 2, 0);
        assert_eq!(code(&plan.replies[0]), "duplicate_event_id");

        // Partly stored.
        let partial = [single(write("s", ExpectedVersion::Any, vec![event(2, 2), event(5, 5)]))];
        let plan = plan_group(&partial, states.clone(), existing.clone(), &HashMap::new(), 2, 0);
        assert_eq!(code(&plan.replies[0]), "duplicate_event_id");
        assert!(plan.rows.is_empty());

        // Same ids in another stream.
        let elsewhere = [single(write("t", ExpectedVersion::Any, vec![event(1, 1), event(2, 2)]))];
        let plan = plan_group(&elsewhere, states, existing, &HashMap::new(), 2, 0);
        assert_eq!(code(&plan.replies[0]), "duplicate_event_id");
    }

    #[test]
    fn closed_streams_and_subjects() {
        let mut erased = state(Some(0));
        erased.status = StreamStatus::Erased;
        let mut bound = state(Some(0));
        bound.subject = Some("456".into());
        let states: HashMap<_, _> = [("e".to_owned(), erased), ("b".to_owned(), bound)].into();

        let mut to_bound_other = write("b", ExpectedVersion::Any, vec![event(1, 1)]);
        to_bound_other.subject = Some(SubjectId::new("789").unwrap());
        let mut to_bound_same = write("b", ExpectedVersion::Any, vec![event(2, 1)]);
        to_bound_same.subject = Some(SubjectId::new("456").unwrap());
        let group = [
            single(write("e", ExpectedVersion::Any, vec![event(3, 1)])),
            single(to_bound_other),
            single(to_bound_same),
            single(write("b", ExpectedVersion::Any, vec![event(4, 1)])),
        ];
        let plan = plan_group(&group, states, HashMap::new(), &HashMap::new(), 5, 0);
        let codes: Vec<_> = plan.replies.iter().map(code).collect();
        assert_eq!(codes, ["stream_erased", "subject_mismatch", "ok", "ok"]);
    }

    #[test]
    fn multi_stream_append_is_all_or_nothing_and_lists_every_conflict() {
        let states: HashMap<_, _> = [("a".to_owned(), state(Some(4))), ("b".to_owned(), state(Some(1)))].into();
        let group = [
            AtomicAppend {
                writes: vec![
                    write("a", ExpectedVersion::Exact(3), vec![event(1, 1)]),
                    write("b", ExpectedVersion::NoStream, vec![event(2, 1)]),
                    write("c", ExpectedVersion::NoStream, vec![event(3, 1)]),
                ],
            },
            AtomicAppend {
                writes: vec![
                    write("c", ExpectedVersion::NoStream, vec![event(4, 1)]),
                    write("a", ExpectedVersion::Exact(4), vec![event(5, 1), event(6, 1)]),
                ],
            },
        ];
        let plan = plan_group(&group, states, HashMap::new(), &HashMap::new(), 100, 0);
        match &plan.replies[0] {
            Err(Error::WrongExpectedVersion { conflicts }) => {
                let got: Vec<_> = conflicts.iter().map(|c| (c.stream.as_str(), c.current)).collect();
                assert_eq!(got, vec![("a", Some(4)), ("b", Some(1))]);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let ok = plan.replies[1].as_ref().unwrap();
        assert_eq!(ok.streams[0].first_position, 101);
        assert_eq!(ok.streams[1].first_position, 102);
        assert_eq!(ok.streams[1].last_position, 103);
        assert_eq!(plan.rows.len(), 3);
        assert_eq!(plan.streams.len(), 2, "the failed append touched nothing");
    }

    #[test]
    fn field_subjects_are_indexed_once_and_refused_while_erased() {
        let field = |subject: &str, recorded: bool| crate::storage::FieldSubject {
            subject: SubjectId::new(subject).unwrap(),
            key_id: Uuid::from_u128(7),
            key_recorded: recorded,
        };
        let mut a = write("a", ExpectedVersion::Any, vec![event(1, 1)]);
        a.field_subjects = vec![field("alice", false), field("bob", true)];
        let mut again = write("a", ExpectedVersion::Any, vec![event(2, 1)]);
        again.field_subjects = vec![field("alice", false)];
        let group = [single(a.clone()), single(again)];
        assert_eq!(lookups(&group).subjects, vec!["alice", "bob", "alice"]);
        let plan = plan_group(&group, HashMap::new(), HashMap::new(), &HashMap::new(), 0, 0);
        assert_eq!(
            plan.field_index,
            FieldIndex {
                keys: vec![("alice", Uuid::from_u128(7))],
            }
        );
        for (status, code_wanted) in [("pending", "erasure_in_progress"), ("completed", "subject_forgotten")] {
            let erasing = subject_erasures([("bob".to_owned(), status.to_owned())]);
            let group = [single(a.clone())];
            let plan = plan_group(&group, HashMap::new(), HashMap::new(), &erasing, 0, 0);
            assert_eq!(code(&plan.replies[0]), code_wanted);
            assert!(plan.rows.is_empty() && plan.field_index == FieldIndex::default());
        }
        // An unfinished request wins over a completed one.
        let states = subject_erasures([
            ("x".to_owned(), "completed".to_owned()),
            ("x".to_owned(), "keys_destroyed".to_owned()),
        ]);
        assert_eq!(states["x"], SubjectErasure::InProgress);
    }
}
