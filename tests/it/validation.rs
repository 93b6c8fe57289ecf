//! Bad input gets a distinct, stable error and changes nothing.

use lethe::limits::{APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, EVENT_BYTES_MAX, READ_PAGE_EVENTS_MAX};
use lethe::{Direction, ExpectedVersion, LogFilter, NewEvent, StreamAppend, StreamName, SubjectId, ValidationError};
use serde_json::json;
use uuid::Uuid;

use crate::appends::{append, events, stream};
use crate::backend_tests;
use crate::support::TestDb;

fn name_error(name: &str) -> Option<&'static str> {
    StreamName::new(name).err().map(|e| match e {
        ValidationError::InvalidStreamName { .. } => "invalid",
        ValidationError::ReservedStreamName { .. } => "reserved",
        _ => "other",
    })
}

#[test]
fn stream_names() {
    let long_ok = "a".repeat(200);
    let too_long = "a".repeat(201);
    let cases: &[(&str, Option<&str>)] = &[
        ("user-public-456", None),
        ("a", None),
        ("A.b:c@d_e-9", None),
        (&long_ok, None),
        ("", Some("invalid")),
        (&too_long, Some("invalid")),
        ("has space", Some("invalid")),
        ("slash/no", Some("invalid")),
        ("ünicode", Some("invalid")),
        ("new\nline", Some("invalid")),
        ("$erasures", Some("reserved")),
        ("$", Some("reserved")),
    ];
    for (name, expected) in cases {
        assert_eq!(name_error(name), *expected, "stream name {name:?}");
    }
    assert!(
        StreamName::parse_readable("$erasures").is_ok(),
        "system streams can be read"
    );
    assert!(StreamName::parse_readable("$bad name").is_err());
    assert_eq!(StreamName::new("").unwrap_err().code(), "invalid_stream_name");
}

#[test]
fn subject_ids() {
    for ok in ["456", "user@example", "a.b:c-d_e"] {
        assert!(SubjectId::new(ok).is_ok(), "{ok}");
    }
    for bad in ["", "has space", "$x", &"x".repeat(201)] {
        let err = SubjectId::new(bad).unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{bad:?}");
    }
}

backend_tests!(invalid_appends_are_refused_and_change_nothing);

async fn invalid_appends_are_refused_and_change_nothing(db: TestDb) {
    let store = db.open().await;
    let id = Uuid::new_v4();
    let big = NewEvent::new("e", json!({ "blob": "x".repeat(EVENT_BYTES_MAX) }));
    let cases: Vec<(&str, Vec<StreamAppend>, &str)> = vec![
        ("no streams", vec![], "invalid_request"),
        (
            "no events",
            vec![append("s", ExpectedVersion::Any, vec![])],
            "invalid_request",
        ),
        (
            "empty type",
            vec![append("s", ExpectedVersion::Any, vec![NewEvent::new("", json!({}))])],
            "invalid_request",
        ),
        (
            "type too long",
            vec![append(
                "s",
                ExpectedVersion::Any,
                vec![NewEvent::new("t".repeat(201), json!({}))],
            )],
            "invalid_request",
        ),
        (
            "control character in type",
            vec![append(
                "s",
                ExpectedVersion::Any,
                vec![NewEvent::new("a\u{0}b", json!({}))],
            )],
            "invalid_request",
        ),
        (
            "too many events",
            vec![append("s", ExpectedVersion::Any, events(APPEND_EVENTS_MAX + 1, "e"))],
            "invalid_request",
        ),
        (
            "event too large",
            vec![append("s", ExpectedVersion::Any, vec![big])],
            "payload_too_large",
        ),
        (
            "append too large",
            vec![append(
                "s",
                ExpectedVersion::Any,
                (0..6)
                    .map(|_| NewEvent::new("e", json!({ "blob": "x".repeat(EVENT_BYTES_MAX - 100) })))
                    .collect(),
            )],
            "payload_too_large",
        ),
        (
            "same id twice",
            vec![append(
                "s",
                ExpectedVersion::Any,
                vec![
                    NewEvent::new("e", json!({})).with_id(id),
                    NewEvent::new("e", json!({})).with_id(id),
                ],
            )],
            "invalid_request",
        ),
        (
            "same stream twice",
            vec![
                append("s", ExpectedVersion::Any, events(1, "e")),
                append("s", ExpectedVersion::Any, events(1, "e")),
            ],
            "invalid_request",
        ),
        (
            "too many streams",
            (0..=APPEND_STREAMS_MAX)
                .map(|i| append(&format!("s{i}"), ExpectedVersion::Any, events(1, "e")))
                .collect(),
            "invalid_request",
        ),
    ];
    for (what, appends, code) in cases {
        let err = store.append_multi(appends).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    assert_eq!(store.head().await.unwrap(), 0, "nothing was stored");

    for limit in [0, READ_PAGE_EVENTS_MAX + 1] {
        let err = store.read_log(1, &LogFilter::default(), limit).await.unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        let err = store
            .read_stream(&stream("s"), 0, Direction::Forward, limit)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_request");
    }
}
