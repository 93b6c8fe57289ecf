//! The erasure report, checked against a known set of requests.

use serde_json::json;

use crate::backend_tests;
use crate::http_support::{Server, events};
use crate::support::TestDb;

backend_tests!(the_erasure_report_adds_up);

async fn the_erasure_report_adds_up(db: TestDb) {
    let server = Server::start(&db).await;
    let forget = json!({"reason": "Art. 17", "requested_by": "dpo"});
    // Three completed requests that took 10, 20 and 60 seconds (times set below).
    for id in ["1", "2", "3"] {
        server
            .append(&format!("user-private-{id}"), json!("any"), Some(id), events(1, "P"))
            .await;
        server
            .post(&format!("/admin/subjects/{id}/forget"), &server.admin, &forget)
            .await
            .assert_status(202);
    }
    // One refused by a hold (which stays active).
    server
        .put(
            "/admin/subjects/4/hold",
            &server.admin,
            &json!({"reason": "litigation"}),
        )
        .await
        .assert_status(200);
    server
        .post("/admin/subjects/4/forget", &server.admin, &forget)
        .await
        .assert_problem(409, "legal_hold");
    // One waiting for a dependent.
    server
        .put("/consumers/ledger", &server.admin, &json!({"erasure_dependent": true}))
        .await
        .assert_status(200);
    server
        .append("user-private-5", json!("any"), Some("5"), events(1, "P"))
        .await;
    let waiting = server.post("/admin/subjects/5/forget", &server.admin, &forget).await;
    assert_eq!(waiting.body["status"], "awaiting_acknowledgements");

    let second = 1_000_000_i64;
    for (id, secs) in [("1", 10), ("2", 20), ("3", 60)] {
        db.execute(&format!(
            "UPDATE erasure_requests SET completed_at = requested_at + {} WHERE subject = '{id}'",
            secs * second
        ))
        .await;
    }
    // Request 5 was made 40 days ago: it is overdue.
    db.execute(&format!(
        "UPDATE erasure_requests SET requested_at = requested_at - {} WHERE subject = '5'",
        40 * 86_400 * second
    ))
    .await;

    let report = server.get("/admin/reports/erasures", &server.admin).await;
    report.assert_status(200);
    let r = &report.body;
    assert_eq!(r["requests"], 5);
    assert_eq!(r["by_status"]["completed"], 3);
    assert_eq!(r["by_status"]["refused"], 1);
    assert_eq!(r["by_status"]["awaiting_acknowledgements"], 1);
    assert_eq!(r["by_status"]["pending"], 0);
    assert_eq!(r["time_to_complete"]["count"], 3);
    assert_eq!(r["time_to_complete"]["median_secs"], 20.0);
    assert_eq!(r["time_to_complete"]["p95_secs"], 60.0);
    assert_eq!(r["time_to_complete"]["max_secs"], 60.0);
    assert_eq!(r["keys_destroyed"], 4);
    assert_eq!(r["holds_active"], 1);
    let overdue = r["overdue"].as_array().unwrap();
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0]["subject"], "5");
    let unacknowledged = r["unacknowledged"].as_array().unwrap();
    assert_eq!(unacknowledged.len(), 1);
    assert_eq!(unacknowledged[0]["consumer"], "ledger");
    assert!(unacknowledged[0]["waiting_secs"].as_f64().unwrap() >= 0.0);
    // Weekly figures for the chart: the old request's week, the empty weeks since, this week.
    let weekly = r["weekly"].as_array().unwrap();
    let monday = |at: chrono::DateTime<chrono::Utc>| {
        use chrono::Datelike;
        at.date_naive() - chrono::Days::new(u64::from(at.weekday().num_days_from_monday()))
    };
    let (this_week, old_week) = (
        monday(chrono::Utc::now()),
        monday(chrono::Utc::now() - chrono::Duration::days(40)),
    );
    assert_eq!(weekly.len() as i64, (this_week - old_week).num_days() / 7 + 1);
    assert_eq!(weekly[0]["week"], old_week.to_string());
    assert_eq!(
        (weekly[0]["requests"].as_u64(), weekly[0]["completed"].as_u64()),
        (Some(1), Some(0))
    );
    let last = weekly.last().unwrap();
    assert_eq!(last["week"], this_week.to_string());
    assert_eq!(
        (last["requests"].as_u64(), last["completed"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(last["median_secs_to_complete"], 20.0);
    let total: u64 = weekly.iter().map(|w| w["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 5);

    // A range that excludes the old request, and CSV.
    let recent = server
        .get(
            &format!(
                "/admin/reports/erasures?from={}",
                (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            &server.admin,
        )
        .await;
    assert_eq!(recent.body["requests"], 4);
    let csv = server.get("/admin/reports/erasures?format=csv", &server.admin).await;
    csv.assert_status(200);
    assert!(csv.content_type().starts_with("text/csv"));
    let text = csv.body.as_str().unwrap();
    assert!(text.starts_with("section,key,value\n"));
    assert!(text.contains("by_status,completed,3\n"));
    assert!(text.contains("time_to_complete,median_secs,20.000\n"));
    server
        .get("/admin/reports/erasures?format=xml", &server.admin)
        .await
        .assert_problem(400, "invalid_request");
    server.stop().await;
}
