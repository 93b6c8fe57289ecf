//! `lethe admin …`: the data-protection officer's client for a running server's admin API.
//!
//! Part of the binary only (anyhow is fine here). It talks to `LETHE_URL` through the Rust
//! client (`lethe-client`) with the bearer token in `LETHE_TOKEN`, prints human-readable tables
//! by default and the server's answer as JSON with `--json`, and never touches a database
//! itself.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use lethe::model::SubjectSource;
use lethe_client::wire::{
    AuditQueryParams, ErasureKind, ErasureReportOut, ErasureResponse, ErasureTargetOut, ErasuresQuery, ForgetRequest,
    HoldRequest, ReconcileReportOut, ReportQuery, RetentionPolicyIn, RetentionPolicyOut, SchemaModeWire, SchemaOut,
    SchemaRequest, TokenRequest,
};

/// Where the server is and who we are.
#[derive(Args, Clone)]
pub struct Connection {
    /// The server's base URL.
    #[arg(long, env = "LETHE_URL", default_value = "http://127.0.0.1:2113", global = true)]
    pub url: String,
    /// An admin token.
    #[arg(long, env = "LETHE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// File an erasure request for a data subject (GDPR Art. 17).
    Forget {
        subject: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        requested_by: String,
        #[arg(long)]
        reference: Option<String>,
    },
    /// List erasure requests, or show one with its timeline and dependents.
    Erasures {
        /// Show this request only.
        id: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Place a legal hold on a subject (or lift it with --lift).
    Hold {
        subject: String,
        #[arg(long, required_unless_present = "lift")]
        reason: Option<String>,
        /// RFC 3339 time at which the hold lapses.
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[arg(long)]
        lift: bool,
    },
    /// What Lethe holds about a subject: bound streams, streams holding its personal fields,
    /// holds, erasure requests.
    Subject { subject: String },
    /// Export every event of a subject (Art. 15/20) as JSON.
    Export {
        subject: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// The audit trail (newest page), or `--verify` the whole chain.
    Audit {
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Durable consumers: list them (with checkpoint and lag), or remove one.
    Consumers {
        /// Remove this consumer (as a dependent it stops holding up erasures).
        #[arg(long)]
        remove: Option<String>,
    },
    /// The erasure report (as a table, `--json`, or CSV to a file).
    Report {
        /// Requests made at or after (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Requests made before (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Write CSV to this file.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// Compare the event database with the key vault and re-apply the erasures one of them
    /// lacks (after a restore from a backup); prints what it did (`--json`: the report).
    Reconcile,
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Event schemas: what an event type's data must look like, and its personal fields.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Retention policies: Lethe files erasure requests itself for subjects whose data is past
    /// its period.
    #[command(subcommand)]
    Retention(RetentionCommand),
}

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Every retention policy, with when it next files an erasure request.
    List,
    /// One retention policy.
    Get {
        /// The policy's name.
        name: String,
    },
    /// Create or replace a retention policy: a subject whose every active bound stream whose
    /// name starts with PREFIX is older than DURATION gets an erasure request filed by Lethe.
    Put {
        /// The policy's name.
        name: String,
        /// The streams it covers: those whose names start with this.
        #[arg(long, value_name = "PREFIX")]
        prefix: String,
        /// How long data is kept: an ISO 8601 duration (`P30D`, `P1Y6M`, `PT12H`, `P2W`).
        #[arg(long, value_name = "DURATION")]
        keep_for: String,
        /// What the period counts from, for each stream. Default: last_event.
        #[arg(long, value_parser = ["last_event", "first_event"])]
        after: Option<String>,
    },
    /// Remove a retention policy (the requests it filed run on).
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Sweep the policies now: file an erasure request for every subject found due.
    Sweep,
}

#[derive(Subcommand)]
pub enum SchemasCommand {
    /// The latest schema of every event type that has one.
    List,
    /// Every version of one event type's schema.
    Get {
        /// The event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
    },
    /// Register the next version of an event type's schema (nothing changes if the latest
    /// version already has this schema and mode).
    Put {
        /// The event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// A file holding the JSON Schema (2020-12) document itself, or `-` for standard input.
        #[arg(long, value_name = "PATH")]
        file: String,
        /// `enforce` refuses an event that does not match; `warn` stores it and counts it.
        /// Default: enforce.
        #[arg(long, value_parser = ["enforce", "warn"])]
        mode: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    List,
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
    },
    Revoke {
        id: String,
    },
}

struct Client {
    api: lethe_client::Client,
    /// Print the server's answers as JSON instead of tables.
    json: bool,
}

impl Client {
    fn new(connection: &Connection) -> anyhow::Result<Self> {
        let token = connection
            .token
            .clone()
            .context("an admin token is needed: set LETHE_TOKEN or pass --token")?;
        let api = lethe_client::Client::builder(connection.url.clone())
            .token(token)
            .build()
            .map_err(explain)?;
        Ok(Self {
            api,
            json: connection.json,
        })
    }

    /// Prints an answer: with `--json` as JSON, otherwise as `render` draws it.
    fn show<T: Serialize>(&self, answer: T, render: impl FnOnce(T) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(());
        }
        render(answer)
    }
}

/// A client error as the command reports it: the problem's title, status and detail.
fn explain(e: lethe_client::Error) -> anyhow::Error {
    match e.problem() {
        Some(problem) => anyhow::anyhow!("{} ({}): {}", problem.title, problem.status, problem.detail),
        None => anyhow::Error::new(e),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

/// A value as a table cell: `-` when there is none.
fn text(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A time as the server writes it (RFC 3339, UTC).
fn time(t: Option<DateTime<Utc>>) -> String {
    text(t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
}

/// Names, one a line (`none` for none).
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join("\n")
    }
}

/// A number of seconds as the server writes it.
fn seconds(v: Option<f64>) -> String {
    text(v.map(Value::from))
}

/// Who filed an erasure request: the retention policy's name, or `request` (a person).
fn origin(e: &ErasureResponse) -> String {
    e.retention_policy.clone().unwrap_or_else(|| "request".to_owned())
}

fn print_erasure(e: &ErasureResponse) {
    let kind = match e.kind {
        ErasureKind::Subject => "subject",
        ErasureKind::Stream => "stream",
    };
    let mut t = table(&["field", "value"]);
    let rows = [
        ("request_id", e.request_id.to_string()),
        ("kind", kind.to_owned()),
        ("subject", text(e.subject.as_ref())),
        ("stream", text(e.stream.as_ref())),
        ("status", e.status.clone()),
        ("origin", origin(e)),
        ("keys_destroyed", e.keys_destroyed.to_string()),
        ("reason", text(e.reason.as_ref())),
        ("requested_by", text(e.requested_by.as_ref())),
        ("reference", text(e.reference.as_ref())),
        ("requested_at", time(Some(e.requested_at))),
        ("keys_destroyed_at", time(e.keys_destroyed_at)),
        ("completed_at", time(e.completed_at)),
        ("deadline", time(Some(e.deadline))),
        ("overdue", e.overdue.to_string()),
        ("refused_reason", text(e.refused_reason.as_ref())),
        ("streams", list(&e.streams)),
        (
            "field_streams",
            e.field_streams.as_deref().map_or_else(|| "-".to_owned(), list),
        ),
    ];
    for (key, value) in rows {
        t.add_row(vec![key.to_owned(), value]);
    }
    println!("{t}");
    if !e.dependents.is_empty() {
        let mut d = table(&["dependent", "acknowledged_at", "removed_at"]);
        for dep in &e.dependents {
            d.add_row(vec![
                dep.consumer.clone(),
                time(dep.acknowledged_at),
                time(dep.removed_at),
            ]);
        }
        println!("{d}");
    }
}

/// Runs one `lethe admin` command.
pub async fn run(connection: Connection, command: AdminCommand) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    let api = &client.api;
    match command {
        AdminCommand::Forget {
            subject,
            reason,
            requested_by,
            reference,
        } => {
            let body = ForgetRequest {
                reason,
                requested_by,
                reference,
            };
            let erasure = api.forget(&subject, &body).await.map_err(explain)?;
            client.show(erasure, |e| {
                print_erasure(&e);
                Ok(())
            })?;
        }
        AdminCommand::Erasures { id: Some(id), .. } => {
            let id = Uuid::parse_str(&id).context("an erasure request id is a UUID")?;
            let erasure = api.erasure(id).await.map_err(explain)?;
            client.show(erasure, |e| {
                print_erasure(&e);
                Ok(())
            })?;
        }
        AdminCommand::Erasures {
            id: None,
            status,
            subject,
        } => {
            let query = ErasuresQuery {
                status,
                subject,
                ..ErasuresQuery::default()
            };
            let list = api.erasures(&query).await.map_err(explain)?;
            client.show(list, |list| {
                let mut t = table(&[
                    "request",
                    "subject/stream",
                    "status",
                    "origin",
                    "keys",
                    "requested_at",
                    "completed_at",
                ]);
                for e in list.erasures {
                    let origin = origin(&e);
                    t.add_row(vec![
                        e.request_id.to_string(),
                        text(e.subject.or(e.stream)),
                        e.status,
                        origin,
                        e.keys_destroyed.to_string(),
                        time(Some(e.requested_at)),
                        time(e.completed_at),
                    ]);
                }
                println!("{t}");
                Ok(())
            })?;
        }
        AdminCommand::Hold {
            subject,
            reason,
            until,
            lift,
        } => {
            if lift {
                api.lift_hold(&subject).await.map_err(explain)?;
                println!("hold on {subject} lifted");
            } else {
                let body = HoldRequest {
                    reason: reason.context("--reason is needed to place a hold")?,
                    until,
                };
                let hold = api.place_hold(&subject, &body).await.map_err(explain)?;
                client.show(hold, |hold| {
                    println!("hold on {subject} placed (until {})", time(hold.until));
                    Ok(())
                })?;
            }
        }
        AdminCommand::Subject { subject } => {
            let view = api.subject(&subject).await.map_err(explain)?;
            client.show(view, |view| {
                let mut t = table(&["bound stream", "status", "version"]);
                for s in view.streams {
                    t.add_row(vec![s.stream, s.status, text(s.version)]);
                }
                println!("{t}");
                let mut f = table(&["stream holding personal fields"]);
                for stream in view.field_streams {
                    f.add_row(vec![stream]);
                }
                println!("{f}");
                if let Some(hold) = view.hold {
                    println!("legal hold: {} (until {})", hold.reason, time(hold.until));
                }
                println!("erasure requests: {}", view.erasures.len());
                Ok(())
            })?;
        }
        AdminCommand::Export { subject, output } => export(&client, &subject, output).await?,
        AdminCommand::Report { from, to, csv } => report(&client, from, to, csv).await?,
        AdminCommand::Reconcile => {
            let report = api.reconcile().await.map_err(explain)?;
            client.show(report, print_reconcile)?;
        }
        AdminCommand::Audit { verify: true, .. } => {
            let verification = api.verify_audit().await.map_err(explain)?;
            client.show(verification, |v| {
                if v.intact {
                    println!("audit trail intact: {} entries", v.entries);
                    Ok(())
                } else {
                    bail!("audit trail BROKEN at entry {}", text(v.first_broken_seq))
                }
            })?;
        }
        AdminCommand::Audit {
            verify: false,
            action,
            subject,
        } => {
            let query = AuditQueryParams {
                limit: Some(lethe_client::wire::limits::AUDIT_PAGE_MAX),
                action,
                subject,
                ..AuditQueryParams::default()
            };
            let page = api.audit(&query).await.map_err(explain)?;
            client.show(page, |page| {
                let mut t = table(&["seq", "at", "actor", "action", "subject", "request"]);
                for e in page.entries {
                    t.add_row(vec![
                        e.seq.to_string(),
                        time(Some(e.at)),
                        e.actor,
                        e.action,
                        text(e.subject),
                        text(e.request_id),
                    ]);
                }
                println!("{t}");
                Ok(())
            })?;
        }
        AdminCommand::Consumers { remove: Some(name) } => {
            api.delete_consumer(&name).await.map_err(explain)?;
            println!("consumer {name} removed");
        }
        AdminCommand::Consumers { remove: None } => {
            let list = api.consumers().await.map_err(explain)?;
            client.show(list, |list| {
                let mut t = table(&["consumer", "erasure_dependent", "checkpoint", "lag", "webhook"]);
                for c in list.consumers {
                    t.add_row(vec![
                        c.name,
                        c.erasure_dependent.to_string(),
                        c.checkpoint.to_string(),
                        c.lag.to_string(),
                        text(c.webhook_url),
                    ]);
                }
                println!("{t}");
                Ok(())
            })?;
        }
        AdminCommand::Schemas(command) => schemas(&client, command).await?,
        AdminCommand::Retention(command) => retention(&client, command).await?,
        AdminCommand::Tokens(TokensCommand::List) => {
            let list = api.tokens().await.map_err(explain)?;
            client.show(list, |list| {
                let mut t = table(&["id", "name", "role", "created_at", "revoked_at"]);
                for tok in list.tokens {
                    t.add_row(vec![
                        tok.id.to_string(),
                        tok.name,
                        tok.role,
                        time(Some(tok.created_at)),
                        time(tok.revoked_at),
                    ]);
                }
                println!("{t}");
                Ok(())
            })?;
        }
        AdminCommand::Tokens(TokensCommand::Create { name, role }) => {
            let token = api.create_token(&TokenRequest { name, role }).await.map_err(explain)?;
            client.show(token, |token| {
                println!("{}", token.token);
                Ok(())
            })?;
        }
        AdminCommand::Tokens(TokensCommand::Revoke { id }) => {
            let parsed = Uuid::parse_str(&id).context("a token id is a UUID")?;
            api.revoke_token(parsed).await.map_err(explain)?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// `lethe admin schemas …`.
async fn schemas(client: &Client, command: SchemasCommand) -> anyhow::Result<()> {
    let api = &client.api;
    match command {
        SchemasCommand::List => {
            let list = api.schemas().await.map_err(explain)?;
            client.show(list, |list| {
                let mut t = table(&["type", "version", "mode", "registered_at", "personal fields"]);
                for s in list.schemas {
                    t.add_row(schema_row(s));
                }
                println!("{t}");
                Ok(())
            })
        }
        SchemasCommand::Get { event_type } => {
            let versions = api.schema_versions(&event_type).await.map_err(explain)?;
            client.show(versions, |versions| {
                let mut t = table(&["type", "version", "mode", "registered_at", "personal fields"]);
                let latest = versions.versions.last().map(|v| v.schema.clone());
                for s in versions.versions {
                    t.add_row(schema_row(s));
                }
                println!("{t}");
                if let Some(schema) = latest {
                    println!("latest version:\n{}", serde_json::to_string_pretty(&schema)?);
                }
                Ok(())
            })
        }
        SchemasCommand::Put { event_type, file, mode } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the schema from standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let schema: Value = serde_json::from_str(&text).context("the schema file is not JSON")?;
            let mode = match mode.as_deref() {
                None => None,
                Some("warn") => Some(SchemaModeWire::Warn),
                Some(_) => Some(SchemaModeWire::Enforce),
            };
            let put = api
                .put_schema(&event_type, &SchemaRequest { schema, mode })
                .await
                .map_err(explain)?;
            let created = put.created;
            client.show(put.value, |s| {
                let what = if created { "registered" } else { "unchanged: already" };
                println!("{what} {} version {} ({})", s.event_type, s.version, mode_name(s.mode));
                Ok(())
            })
        }
    }
}

/// `lethe admin retention …`.
async fn retention(client: &Client, command: RetentionCommand) -> anyhow::Result<()> {
    let api = &client.api;
    match command {
        RetentionCommand::List => {
            let list = api.retention_policies().await.map_err(explain)?;
            client.show(list, |list| {
                print_policies(&list.policies);
                Ok(())
            })
        }
        RetentionCommand::Get { name } => {
            let policy = api.retention_policy(&name).await.map_err(explain)?;
            client.show(policy, |policy| {
                print_policies(std::slice::from_ref(&policy));
                Ok(())
            })
        }
        RetentionCommand::Put {
            name,
            prefix,
            keep_for,
            after,
        } => {
            let body = RetentionPolicyIn {
                stream_prefix: prefix,
                keep_for,
                after,
            };
            let put = api.put_retention_policy(&name, &body).await.map_err(explain)?;
            let created = put.created;
            client.show(put.value, |policy| {
                let what = if created { "created" } else { "replaced" };
                println!("{what} retention policy {}", policy.name);
                print_policies(std::slice::from_ref(&policy));
                Ok(())
            })
        }
        RetentionCommand::Delete { name } => {
            api.delete_retention_policy(&name).await.map_err(explain)?;
            println!("retention policy {name} removed");
            Ok(())
        }
        RetentionCommand::Sweep => {
            let sweep = api.sweep_retention().await.map_err(explain)?;
            client.show(sweep, |s| {
                let mut t = table(&["figure", "value"]);
                for (figure, value) in [
                    ("policies swept", s.policies),
                    ("subjects due", s.due),
                    ("erasure requests filed", s.filed),
                    ("of them refused (legal hold)", s.refused),
                    ("batches", s.batches),
                ] {
                    t.add_row(vec![figure.to_owned(), value.to_string()]);
                }
                println!("{t}");
                Ok(())
            })
        }
    }
}

/// Retention policies as a table, with when each next files an erasure request.
fn print_policies(policies: &[RetentionPolicyOut]) {
    let mut t = table(&["name", "prefix", "keep_for", "after", "next_due", "updated_at"]);
    for p in policies {
        t.add_row(vec![
            p.name.clone(),
            p.stream_prefix.clone(),
            p.keep_for.clone(),
            p.after.clone(),
            time(p.next_due),
            time(Some(p.updated_at)),
        ]);
    }
    println!("{t}");
}

fn mode_name(mode: SchemaModeWire) -> &'static str {
    match mode {
        SchemaModeWire::Enforce => "enforce",
        SchemaModeWire::Warn => "warn",
    }
}

/// One schema version as a table row; its personal fields as `pointer ← subject`.
fn schema_row(s: SchemaOut) -> Vec<String> {
    let personal = match lethe::model::schema::personal_fields(&s.schema) {
        Ok(fields) if fields.is_empty() => "none".to_owned(),
        Ok(fields) => fields
            .iter()
            .map(|f| match &f.subject {
                SubjectSource::Pointer(pointer) => format!("{} ← {pointer}", f.pointer),
                SubjectSource::Stream => format!("{} ← $stream", f.pointer),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => "?".to_owned(),
    };
    vec![
        s.event_type,
        s.version.to_string(),
        mode_name(s.mode).to_owned(),
        time(Some(s.registered_at)),
        personal,
    ]
}

/// Streams an export to a file or stdout, with a progress spinner on stderr.
async fn export(client: &Client, subject: &str, output: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let mut body = client.api.export_bytes(subject).await.map_err(explain)?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} exporting {msg}: {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    progress.set_message(subject.to_owned());
    let mut sink: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the export was cut off")?;
        sink.write_all(&chunk)?;
        progress.inc(chunk.len() as u64);
    }
    sink.flush()?;
    progress.finish_and_clear();
    if let Some(path) = output {
        eprintln!("exported {subject} to {}", path.display());
    }
    Ok(())
}

/// `lethe admin reconcile`'s summary: what was compared, then what was re-applied, by id.
fn print_reconcile(report: ReconcileReportOut) -> anyhow::Result<()> {
    let target = |t: &ErasureTargetOut| match t.kind {
        ErasureKind::Subject => format!("subject {}", text(t.subject.as_deref())),
        ErasureKind::Stream => format!("stream {}", text(t.stream.as_deref())),
    };
    println!(
        "compared {} streams and {} subject keys with the key vault",
        report.streams_checked, report.subject_keys_checked
    );
    if report.keys_destroyed == 0 && report.streams_shredded == 0 && report.requests.is_empty() {
        println!("the event database and the key vault agree: nothing to re-apply");
    }
    if report.keys_destroyed > 0 {
        println!(
            "destroyed {} keys the vault still held (restored vault?):",
            report.keys_destroyed
        );
        for destroyed in &report.destroyed {
            println!("  {}", target(destroyed));
        }
    }
    if !report.requests.is_empty() {
        println!(
            "shredded {} streams the event database showed active (restored event database?):",
            report.streams_shredded
        );
        let mut t = table(&["request", "target", "streams"]);
        for request in &report.requests {
            let of = ErasureTargetOut {
                kind: request.kind,
                subject: request.subject.clone(),
                stream: request.stream.clone(),
            };
            t.add_row(vec![
                request.request_id.to_string(),
                target(&of),
                request.streams.to_string(),
            ]);
        }
        println!("{t}");
    }
    if report.truncated {
        println!("(lists cut short; the counts are whole)");
    }
    if report.keys_missing > 0 {
        println!(
            "WARNING: {} keys named by the event database are unknown to the key vault (their events cannot be read)",
            report.keys_missing
        );
    }
    match report.keys_unreadable {
        Some(0) | None => {}
        Some(n) => println!("WARNING: {n} keys in the vault cannot be unwrapped (their KEK epochs were destroyed)"),
    }
    Ok(())
}

/// `lethe admin report`: a table, the JSON, or CSV written to a file.
async fn report(
    client: &Client,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    csv: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let query = ReportQuery { from, to, format: None };
    if let Some(path) = csv {
        let body = client.api.erasure_report_csv(&query).await.map_err(explain)?;
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
        return Ok(());
    }
    let report = client.api.erasure_report(&query).await.map_err(explain)?;
    client.show(report, |report: ErasureReportOut| {
        let mut t = table(&["figure", "value"]);
        t.add_row(vec!["requests".to_owned(), report.requests.to_string()]);
        for (status, count) in &report.by_status {
            t.add_row(vec![format!("  {status}"), count.to_string()]);
        }
        t.add_row(vec![
            "of them requested by a person".to_owned(),
            report.requested.requests.to_string(),
        ]);
        t.add_row(vec![
            "of them filed by retention policies".to_owned(),
            report.retention.requests.to_string(),
        ]);
        let ttc = &report.time_to_complete;
        t.add_row(vec![
            "time to complete, median (s)".to_owned(),
            seconds(ttc.median_secs),
        ]);
        t.add_row(vec!["time to complete, p95 (s)".to_owned(), seconds(ttc.p95_secs)]);
        t.add_row(vec!["time to complete, max (s)".to_owned(), seconds(ttc.max_secs)]);
        t.add_row(vec!["overdue".to_owned(), report.overdue.len().to_string()]);
        t.add_row(vec![
            "unacknowledged dependents".to_owned(),
            report.unacknowledged.len().to_string(),
        ]);
        t.add_row(vec!["keys destroyed".to_owned(), report.keys_destroyed.to_string()]);
        t.add_row(vec![
            "of them subject keys".to_owned(),
            report.subject_keys_destroyed.to_string(),
        ]);
        t.add_row(vec!["legal holds active".to_owned(), report.holds_active.to_string()]);
        println!("{t}");
        if !report.retention_policies.is_empty() {
            let mut p = table(&["retention policy", "requests", "next_due"]);
            for policy in &report.retention_policies {
                p.add_row(vec![
                    policy.name.clone(),
                    policy.requests.to_string(),
                    time(policy.next_due),
                ]);
            }
            println!("{p}");
        }
        Ok(())
    })
}
