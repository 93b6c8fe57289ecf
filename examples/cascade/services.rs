//! Three small services on Lethe, and the erasure cascade between them (the seed's example).
//!
//! - **users** writes `user-public-{id}` (ids, flags: survives erasure) and `user-private-{id}`
//!   (name, address: bound to subject `{id}`) in one atomic append;
//! - **accounts** writes `account-{n}` bound to its owner's subject, with transactions, and
//!   `transfer-{n}`: a *public* stream whose `MoneyTransferred` event names two subjects, its
//!   sender and its receiver. The event type's schema marks each name as personal data of its
//!   own subject, so Lethe encrypts each with that subject's key: forgetting the sender erases
//!   the sender's name only, and the receiver's name, the amount and every id stay readable;
//! - **ledger** is a read model: a durable, erasure-dependent consumer that keeps each
//!   transaction's purpose and amount (decrypted data) — until it reads a `SubjectForgotten`
//!   tombstone, deletes that subject's rows, and acknowledges, which completes the erasure.
//!
//! Everything goes over Lethe's HTTP API, as separate services would.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// A tiny client for the calls these services make.
#[derive(Clone)]
pub struct Lethe {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Lethe {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(self.http.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(self.http.get(format!("{}{path}", self.base))).await
    }
}

/// The users service: registers a user (public + private stream, one atomic append).
pub async fn register_user(lethe: &Lethe, id: &str, name: &str, address: &str) -> Result<(), String> {
    lethe
        .post(
            "/streams",
            json!({"appends": [
                {"stream": format!("user-public-{id}"), "expected_version": "no_stream",
                 "events": [{"type": "UserRegistered", "data": {"user_id": id}}]},
                {"stream": format!("user-private-{id}"), "expected_version": "no_stream", "subject": id,
                 "events": [{"type": "PersonalDataGiven", "data": {"name": name, "address": address}}]}
            ]}),
        )
        .await
        .map(drop)
}

/// The accounts service: opens an account bound to its owner and records transactions.
pub async fn open_account(lethe: &Lethe, number: u32, owner: &str, transactions: &[(&str, i64)]) -> Result<(), String> {
    let mut events = vec![json!({"type": "AccountOpened", "data": {"owner": owner}})];
    events.extend(
        transactions.iter().map(
            |(purpose, cents)| json!({"type": "TransactionRecorded", "data": {"purpose": purpose, "cents": cents}}),
        ),
    );
    lethe
        .post(
            &format!("/streams/account-{number}"),
            json!({"expected_version": "no_stream", "subject": owner, "events": events}),
        )
        .await
        .map(drop)
}

/// The schema of `MoneyTransferred` (JSON Schema 2020-12): each name is personal data of the
/// subject whose id is beside it; the sender's reads as `"[erased]"` once the sender is
/// forgotten, the receiver's as `null` once the receiver is.
pub fn transfer_schema() -> Value {
    json!({
        "type": "object",
        "required": ["from_account", "to_account", "sender_id", "receiver_id", "cents"],
        "properties": {
            "from_account": {"type": "string"},
            "to_account": {"type": "string"},
            "sender_id": {"type": "string"},
            "sender_name": {"type": "string", "x-lethe-personal": {"subject": "/sender_id"},
                            "x-lethe-erased": "[erased]"},
            "receiver_id": {"type": "string"},
            "receiver_name": {"type": "string", "x-lethe-personal": {"subject": "/receiver_id"}},
            "cents": {"type": "integer", "minimum": 1}
        }
    })
}

/// The accounts service registers the schema of its transfer events (an admin call: in a real
/// deployment, part of deploying the service), enforced: an event that does not match is refused.
pub async fn register_transfer_schema(lethe: &Lethe) -> Result<Value, String> {
    lethe
        .put(
            "/schemas/MoneyTransferred",
            json!({"schema": transfer_schema(), "mode": "enforce"}),
        )
        .await
}

/// One party of a transfer: its account, its owner's subject id and name.
pub struct Party<'a> {
    pub account: u32,
    pub subject: &'a str,
    pub name: &'a str,
}

/// The accounts service records a transfer in the public stream `transfer-{number}` (no
/// subject): the names are encrypted field by field, each with its subject's key.
pub async fn transfer(
    lethe: &Lethe,
    number: u32,
    sender: &Party<'_>,
    receiver: &Party<'_>,
    cents: i64,
) -> Result<(), String> {
    let data = json!({
        "from_account": format!("account-{}", sender.account),
        "to_account": format!("account-{}", receiver.account),
        "sender_id": sender.subject,
        "sender_name": sender.name,
        "receiver_id": receiver.subject,
        "receiver_name": receiver.name,
        "cents": cents,
    });
    lethe
        .post(
            &format!("/streams/transfer-{number}"),
            json!({"expected_version": "no_stream", "events": [{"type": "MoneyTransferred", "data": data}]}),
        )
        .await
        .map(drop)
}

/// One ledger row: a transaction with its (personal) purpose and amount.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub account: String,
    pub owner: String,
    pub purpose: String,
    pub cents: i64,
}

/// The ledger service's read model.
#[derive(Debug, Default)]
pub struct Ledger {
    pub rows: Vec<LedgerRow>,
    owners: HashMap<String, String>,
    pub erased_subjects: Vec<String>,
}

pub const LEDGER_CONSUMER: &str = "ledger";

impl Ledger {
    /// Registers the ledger as an erasure-dependent consumer of the account streams and the
    /// erasures stream.
    pub async fn register(lethe: &Lethe) -> Result<(), String> {
        lethe
            .put(
                &format!("/consumers/{LEDGER_CONSUMER}"),
                json!({"erasure_dependent": true}),
            )
            .await
            .map(drop)
    }

    fn apply(&mut self, event: &Value) {
        let stream = event["stream"].as_str().unwrap_or_default();
        match event["type"].as_str() {
            Some("AccountOpened") => {
                if let Some(owner) = event["data"]["owner"].as_str() {
                    self.owners.insert(stream.to_owned(), owner.to_owned());
                }
            }
            Some("TransactionRecorded") => {
                if let (Some(owner), Some(purpose)) = (self.owners.get(stream), event["data"]["purpose"].as_str()) {
                    self.rows.push(LedgerRow {
                        account: stream.to_owned(),
                        owner: owner.clone(),
                        purpose: purpose.to_owned(),
                        cents: event["data"]["cents"].as_i64().unwrap_or_default(),
                    });
                }
            }
            // The cascade: erase what was derived from the forgotten subject's data.
            Some("SubjectForgotten") => {
                if let Some(subject) = event["data"]["subject"].as_str() {
                    self.rows.retain(|row| row.owner != subject);
                    self.owners.retain(|_, owner| owner != subject);
                    self.erased_subjects.push(subject.to_owned());
                }
            }
            _ => {}
        }
    }

    /// Reads the next batch (long poll), applies it, and acknowledges it. Returns how many
    /// events were applied.
    pub async fn poll(&mut self, lethe: &Lethe, wait: Duration) -> Result<usize, String> {
        let batch = lethe
            .get(&format!(
                "/consumers/{LEDGER_CONSUMER}/events?limit=100&wait_ms={}",
                wait.as_millis()
            ))
            .await?;
        let events = batch["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            self.apply(event);
        }
        if let Some(last) = events.last().and_then(|e| e["position"].as_u64()) {
            lethe
                .post(&format!("/consumers/{LEDGER_CONSUMER}/ack"), json!({"position": last}))
                .await?;
        }
        Ok(events.len())
    }
}

/// What the cascade did, for the example to print and the test to check.
#[derive(Debug)]
pub struct CascadeReport {
    pub ledger_rows_before: usize,
    pub ledger_rows_after: usize,
    pub erasure: Value,
    pub public_user: Value,
    pub private_user: Value,
    pub account: Value,
    /// `transfer-1` before the forget: both names readable.
    pub transfer_before: Value,
    /// `transfer-1` after: the sender's name reads as its replacement, listed in
    /// `erased_fields`; the receiver's name, the amount and the ids are intact.
    pub transfer_after: Value,
    /// `GET /admin/subjects/789` (the receiver) after the forget.
    pub receiver: Value,
}

/// The whole story: register, transact, transfer from 456 to 789, forget user 456, the ledger
/// erases and acknowledges, the request completes; the transfer keeps 789's name.
pub async fn run(lethe: &Lethe) -> Result<CascadeReport, String> {
    Ledger::register(lethe).await?;
    let mut ledger = Ledger::default();

    register_user(lethe, "456", "Ada Lovelace", "12 St James's Square").await?;
    register_user(lethe, "789", "Charles Babbage", "1 Dorset Street").await?;
    open_account(lethe, 1, "456", &[("rent", -120_000), ("salary", 450_000)]).await?;
    open_account(lethe, 2, "789", &[("gears", -9_900)]).await?;
    register_transfer_schema(lethe).await?;
    let ada = Party {
        account: 1,
        subject: "456",
        name: "Ada Lovelace",
    };
    let charles = Party {
        account: 2,
        subject: "789",
        name: "Charles Babbage",
    };
    transfer(lethe, 1, &ada, &charles, 25_000).await?;
    let transfer_before = lethe.get("/streams/transfer-1").await?;
    while ledger.poll(lethe, Duration::from_millis(200)).await? > 0 {}
    let ledger_rows_before = ledger.rows.len();

    // The data-protection officer files the erasure request.
    let filed = lethe
        .post(
            "/admin/subjects/456/forget",
            json!({"reason": "Art. 17 request by the data subject", "requested_by": "dpo@bank.example"}),
        )
        .await?;
    let id = filed["request_id"].as_str().unwrap_or_default().to_owned();

    // The ledger consumes the tombstone, deletes the rows, acknowledges: the request completes.
    let mut erasure = filed;
    for _ in 0..50 {
        ledger.poll(lethe, Duration::from_millis(200)).await?;
        erasure = lethe.get(&format!("/admin/erasures/{id}")).await?;
        if erasure["status"] == "completed" {
            break;
        }
    }
    Ok(CascadeReport {
        ledger_rows_before,
        ledger_rows_after: ledger.rows.len(),
        erasure,
        public_user: lethe.get("/streams/user-public-456").await?,
        private_user: lethe.get("/streams/user-private-456").await?,
        account: lethe.get("/streams/account-1").await?,
        transfer_before,
        transfer_after: lethe.get("/streams/transfer-1").await?,
        receiver: lethe.get("/admin/subjects/789").await?,
    })
}
