//! Reading: streams forward and backward with paging, the global log with filters, and
//! subscriptions that catch up and then go live without a gap or a duplicate.

use std::time::Duration;

use futures::StreamExt;
use lethe::{Direction, ErasureReason, ErasureStatus, ExpectedVersion, LogFilter, NewEvent, StreamStatus, SubjectId};
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
    read_log_pages_reads_every_event_once_to_the_head,
    read_log_pages_erases_a_stream_forgotten_between_pages,
    read_log_pages_past_the_head_yields_one_empty_page,
    read_log_pages_reads_across_a_gap,
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

async fn read_log_pages_reads_every_event_once_to_the_head(db: TestDb) {
    let store = db.open().await;
    for (name, n) in [("a", 7), ("b", 5), ("a", 6)] {
        store
            .append(append(name, ExpectedVersion::Any, events(n, "e")))
            .await
            .unwrap();
    }
    let pages: Vec<_> = store
        .read_log_pages(1, LogFilter::default(), 5)
        .map(Result::unwrap)
        .collect()
        .await;
    // 18 events: pages of 5, 5, 5 and 3; the last one reaches the head and ends the stream.
    let sizes: Vec<usize> = pages.iter().map(|p| p.events.len()).collect();
    assert_eq!(sizes, [5, 5, 5, 3]);
    let positions: Vec<u64> = pages.iter().flat_map(|p| p.events.iter().map(|e| e.position)).collect();
    assert_eq!(positions, (1..=18).collect::<Vec<_>>());
    for page in &pages {
        assert_eq!(page.head, 18);
        assert_eq!(page.next, page.events.last().unwrap().position + 1);
        assert!(page.events.iter().all(|e| e.data.is_some() && !e.erased));
    }
    // The same pages as a `read_log` loop reads, event for event.
    let mut from = 1;
    for page in &pages {
        assert_eq!(&store.read_log(from, &LogFilter::default(), 5).await.unwrap(), page);
        from = page.next;
    }

    // Filtered, from the middle: a short page has read up to the head and ends the stream.
    let filter = LogFilter {
        stream_prefix: Some("b".into()),
        types: vec![],
    };
    let pages: Vec<_> = store.read_log_pages(3, filter, 2).map(Result::unwrap).collect().await;
    let positions: Vec<Vec<u64>> = pages
        .iter()
        .map(|p| p.events.iter().map(|e| e.position).collect())
        .collect();
    assert_eq!(positions, [vec![8, 9], vec![10, 11], vec![12]]);
    assert_eq!(pages.last().map(|p| (p.next, p.head)), Some((19, 18)));

    // Invalid arguments fail the first page, like `read_log`.
    let failed: Vec<_> = store.read_log_pages(1, LogFilter::default(), 0).collect().await;
    assert!(matches!(failed.as_slice(), [Err(_)]), "{failed:?}");
}

async fn read_log_pages_erases_a_stream_forgotten_between_pages(db: TestDb) {
    let store = db.open().await;
    let private = "user-private-9";
    store
        .append(append("public-a", ExpectedVersion::NoStream, events(3, "e")))
        .await
        .unwrap();
    store
        .append(append(private, ExpectedVersion::NoStream, events(6, "p")).with_subject(SubjectId::new("9").unwrap()))
        .await
        .unwrap();
    store
        .append(append("public-b", ExpectedVersion::NoStream, events(3, "e")))
        .await
        .unwrap();
    // Positions 1-3 public, 4-9 private, 10-12 public; pages of 4.
    let mut pages = Box::pin(store.read_log_pages(1, LogFilter::default(), 4));
    let first = pages.next().await.unwrap().unwrap();
    assert_eq!(
        first.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(
        first.events.iter().all(|e| e.data.is_some()),
        "read before the forget: decrypted"
    );
    // Let the following pages (the stream still active when they are read) be read ahead,
    // keys and all: the forget must still be honoured when they are handed out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let erasure = store
        .forget(&SubjectId::new("9").unwrap(), ErasureReason::default())
        .await
        .unwrap();
    assert_eq!(erasure.status, ErasureStatus::Completed);

    let mut events = first.events;
    let mut last = first.next;
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        last = page.next;
        events.extend(page.events);
    }
    // Every event once, in order, up to the head its last read saw: at least the 12 events
    // there were when it started (pages read ahead before the forget end there), at most up
    // to the forget's tombstones.
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..last).collect::<Vec<_>>());
    assert!(
        last > 12 && last <= store.head().await.unwrap() + 1,
        "ended before {last}"
    );
    for event in &events[4..] {
        if event.stream == private && event.event_type == "p" {
            assert!(
                event.data.is_none() && event.erased,
                "position {} decrypted after its stream was forgotten",
                event.position
            );
        } else {
            assert!(event.data.is_some() && !event.erased, "position {}", event.position);
        }
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.stream == private && e.event_type == "p")
            .count(),
        6
    );
}

async fn read_log_pages_past_the_head_yields_one_empty_page(db: TestDb) {
    let store = db.open().await;
    let empty: Vec<_> = store
        .read_log_pages(1, LogFilter::default(), 10)
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(
        empty
            .iter()
            .map(|p| (p.events.len(), p.next, p.head))
            .collect::<Vec<_>>(),
        [(0, 1, 0)]
    );
    store
        .append(append("a", ExpectedVersion::Any, events(3, "e")))
        .await
        .unwrap();
    let past: Vec<_> = store
        .read_log_pages(4, LogFilter::default(), 10)
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(
        past.iter()
            .map(|p| (p.events.len(), p.next, p.head))
            .collect::<Vec<_>>(),
        [(0, 4, 3)]
    );
}

/// Positions have no gaps unless rows were removed by hand; a page that meets one still comes
/// back full (PostgreSQL reads the exact range first, then falls back to the open range).
async fn read_log_pages_reads_across_a_gap(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("a", ExpectedVersion::Any, events(18, "e")))
        .await
        .unwrap();
    db.execute("DELETE FROM events WHERE position IN (3, 4)").await;
    let pages: Vec<_> = store
        .read_log_pages(1, LogFilter::default(), 5)
        .map(Result::unwrap)
        .collect()
        .await;
    let positions: Vec<Vec<u64>> = pages
        .iter()
        .map(|p| p.events.iter().map(|e| e.position).collect())
        .collect();
    assert_eq!(
        positions,
        [
            vec![1, 2, 5, 6, 7],
            vec![8, 9, 10, 11, 12],
            vec![13, 14, 15, 16, 17],
            vec![18]
        ]
    );
    assert_eq!(pages.last().map(|p| (p.next, p.head)), Some((19, 18)));
}
