//! Reading: streams forward and backward with paging, the global log with filters, and
//! subscriptions that catch up and then go live without a gap or a duplicate.

use std::time::Duration;

use futures::StreamExt;
use lethe::{Direction, ExpectedVersion, LogFilter, NewEvent, StreamStatus, SubjectId};
use serde_json::json;

use crate::appends::{append, events, stream};
use crate::backend_tests;
use crate::support::TestDb;

backend_tests!(
    stream_reads_forward_backward_and_page,
    events_keep_everything_they_were_given,
    log_filters_by_stream_prefix_and_type,
    log_paging_skips_filtered_ranges,
    subscription_catches_up_then_goes_live,
);

async fn stream_reads_forward_backward_and_page(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("s", ExpectedVersion::NoStream, events(10, "e")))
        .await
        .unwrap();
    let s = stream("s");
    let versions = |slice: &lethe::StreamSlice| slice.events.iter().map(|e| e.version).collect::<Vec<_>>();

    let forward = store.read_stream(&s, 3, Direction::Forward, 4).await.unwrap();
    assert_eq!(versions(&forward), [3, 4, 5, 6]);
    assert_eq!(forward.info.version, Some(9));
    assert_eq!(forward.info.status, StreamStatus::Active);

    let backward = store.read_stream(&s, u64::MAX, Direction::Backward, 3).await.unwrap();
    assert_eq!(versions(&backward), [9, 8, 7]);
    let backward = store.read_stream(&s, 2, Direction::Backward, 10).await.unwrap();
    assert_eq!(versions(&backward), [2, 1, 0]);

    let past_end = store.read_stream(&s, 10, Direction::Forward, 10).await.unwrap();
    assert!(past_end.events.is_empty());
}

async fn events_keep_everything_they_were_given(db: TestDb) {
    let store = db.open().await;
    let id = uuid::Uuid::new_v4();
    let data = json!({"name": "Ada", "nested": {"list": [1, 2.5, null, "x"]}, "unicode": "ünï ✓"});
    let event = NewEvent::new("UserRegistered", data.clone())
        .with_id(id)
        .with_metadata(json!({"correlation": "c-1"}));
    let r = store
        .append(
            append("user-private-1", ExpectedVersion::NoStream, vec![event]).with_subject(SubjectId::new("1").unwrap()),
        )
        .await
        .unwrap();
    let slice = store
        .read_stream(&stream("user-private-1"), 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(slice.info.subject.as_ref().map(|s| s.as_str()), Some("1"));
    let e = &slice.events[0];
    assert_eq!(e.id, id);
    assert_eq!(e.stream, "user-private-1");
    assert_eq!((e.version, e.position), (0, r.first_position));
    assert_eq!(e.event_type, "UserRegistered");
    assert_eq!(e.data.as_ref(), Some(&data));
    assert_eq!(e.metadata, json!({"correlation": "c-1"}));
    assert!(!e.erased);
    let age = chrono::Utc::now() - e.recorded_at;
    assert!(age < chrono::Duration::minutes(1) && age >= chrono::Duration::zero());
}

async fn log_filters_by_stream_prefix_and_type(db: TestDb) {
    let store = db.open().await;
    for (name, kind) in [
        ("user-1", "Created"),
        ("order-1", "Created"),
        ("user-2", "Renamed"),
        ("user-1", "Renamed"),
    ] {
        store
            .append(append(name, ExpectedVersion::Any, events(1, kind)))
            .await
            .unwrap();
    }
    let check = |prefix: Option<&str>, types: &[&str]| {
        let store = store.clone();
        let filter = LogFilter {
            stream_prefix: prefix.map(str::to_owned),
            types: types.iter().map(|t| t.to_string()).collect(),
        };
        async move {
            let page = store.read_log(1, &filter, 100).await.unwrap();
            assert_eq!(page.head, 4);
            assert_eq!(page.next, 5);
            page.events.iter().map(|e| e.position).collect::<Vec<_>>()
        }
    };
    assert_eq!(check(None, &[]).await, [1, 2, 3, 4]);
    assert_eq!(check(Some("user-"), &[]).await, [1, 3, 4]);
    assert_eq!(check(None, &["Renamed"]).await, [3, 4]);
    assert_eq!(check(Some("user-1"), &["Created", "Renamed"]).await, [1, 4]);
    assert_eq!(check(Some("nothing"), &[]).await, Vec::<u64>::new());
    // LIKE wildcards in a prefix are plain characters.
    assert_eq!(check(Some("user_"), &[]).await, Vec::<u64>::new());
}

async fn log_paging_skips_filtered_ranges(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("a", ExpectedVersion::Any, events(5, "e")))
        .await
        .unwrap();
    store
        .append(append("b", ExpectedVersion::Any, events(5, "e")))
        .await
        .unwrap();
    let filter = LogFilter {
        stream_prefix: Some("b".into()),
        types: vec![],
    };
    let page = store.read_log(1, &filter, 2).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.position).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(page.next, 8);
    let page = store.read_log(page.next, &filter, 10).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.position).collect::<Vec<_>>(), [8, 9, 10]);
    assert_eq!(page.next, 11, "a short page has read up to the head");
    let empty = store.read_log(11, &filter, 10).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, 11);
}

async fn subscription_catches_up_then_goes_live(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("a", ExpectedVersion::Any, events(600, "e")))
        .await
        .unwrap();
    store
        .append(append("b", ExpectedVersion::Any, events(10, "skip")))
        .await
        .unwrap();

    let filter = LogFilter {
        stream_prefix: None,
        types: vec!["e".into()],
    };
    let mut sub = Box::pin(store.subscribe(2, filter));
    // Writers keep appending while the subscriber catches up across the switch to live.
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for i in 0..50 {
                store
                    .append(append("a", ExpectedVersion::Any, events(2, "e")))
                    .await
                    .unwrap();
                store
                    .append(append("b", ExpectedVersion::Any, events(1, "skip")))
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    let expected = 599 + 100;
    let mut positions = Vec::new();
    while positions.len() < expected {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("live events arrive")
            .expect("subscription continues")
            .unwrap();
        assert_eq!(event.event_type, "e");
        positions.push(event.position);
    }
    writer.await.unwrap();
    assert_eq!(positions[0], 2, "starts at the requested position");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
    let log = {
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let page = store
                .read_log(
                    from,
                    &LogFilter {
                        stream_prefix: Some("a".into()),
                        types: vec![],
                    },
                    1000,
                )
                .await
                .unwrap();
            if page.events.is_empty() {
                break all;
            }
            from = page.next;
            all.extend(page.events.into_iter().map(|e| e.position).filter(|p| *p >= 2));
        }
    };
    assert_eq!(positions, log, "no gap");
    // Nothing more arrives that should not.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err()
    );
}
