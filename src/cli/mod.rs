//! `lethe admin …`: the data-protection officer's client for a running server's admin API.
//!
//! Part of the binary only (anyhow is fine here). It talks HTTP to `LETHE_URL` with the bearer
//! token in `LETHE_TOKEN`, prints human-readable tables by default and the server's JSON with
//! `--json`, and never touches a database itself.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;
use serde_json::{Value, json};

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
        until: Option<String>,
        #[arg(long)]
        lift: bool,
    },
    /// What Lethe holds about a subject: bound streams, holds, erasure requests.
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
        from: Option<String>,
        /// Requests made before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Write CSV to this file.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
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
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(connection: &Connection) -> anyhow::Result<Self> {
        let token = connection
            .token
            .clone()
            .context("an admin token is needed: set LETHE_TOKEN or pass --token")?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: connection.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        bail!(
            "{} ({}): {}",
            problem["title"].as_str().unwrap_or("request failed"),
            status.as_u16(),
            problem["detail"].as_str().unwrap_or("")
        )
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.base)).query(query))
            .await?;
        Ok(response.json().await?)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await?;
        Ok(response.json().await?)
    }
}

/// Path segments are names and ids from the contract's charset; encode anything else anyway.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_erasure(e: &Value) {
    let mut t = table(&["field", "value"]);
    for key in [
        "request_id",
        "kind",
        "subject",
        "stream",
        "status",
        "keys_destroyed",
        "reason",
        "requested_by",
        "reference",
        "requested_at",
        "keys_destroyed_at",
        "completed_at",
        "deadline",
        "overdue",
        "refused_reason",
    ] {
        if let Some(v) = e.get(key) {
            t.add_row(vec![key.to_owned(), text(v)]);
        }
    }
    let streams = e["streams"].as_array().map_or(0, Vec::len);
    t.add_row(vec!["streams".to_owned(), streams.to_string()]);
    println!("{t}");
    if let Some(dependents) = e["dependents"].as_array().filter(|d| !d.is_empty()) {
        let mut d = table(&["dependent", "acknowledged_at", "removed_at"]);
        for dep in dependents {
            d.add_row(vec![
                text(&dep["consumer"]),
                text(&dep["acknowledged_at"]),
                text(&dep["removed_at"]),
            ]);
        }
        println!("{d}");
    }
}

/// Runs one `lethe admin` command.
pub async fn run(connection: Connection, command: AdminCommand) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    match command {
        AdminCommand::Forget {
            subject,
            reason,
            requested_by,
            reference,
        } => {
            let body = json!({ "reason": reason, "requested_by": requested_by, "reference": reference });
            let erasure = client
                .post(&format!("/admin/subjects/{}/forget", segment(&subject)), body)
                .await?;
            if connection.json {
                print_json(&erasure)?;
            } else {
                print_erasure(&erasure);
            }
        }
        AdminCommand::Erasures { id: Some(id), .. } => {
            let erasure = client.get(&format!("/admin/erasures/{}", segment(&id)), &[]).await?;
            if connection.json {
                print_json(&erasure)?;
            } else {
                print_erasure(&erasure);
            }
        }
        AdminCommand::Erasures {
            id: None,
            status,
            subject,
        } => {
            let mut query = Vec::new();
            if let Some(status) = status {
                query.push(("status", status));
            }
            if let Some(subject) = subject {
                query.push(("subject", subject));
            }
            let list = client.get("/admin/erasures", &query).await?;
            if connection.json {
                return print_json(&list);
            }
            let mut t = table(&[
                "request",
                "subject/stream",
                "status",
                "keys",
                "requested_at",
                "completed_at",
            ]);
            for e in list["erasures"].as_array().into_iter().flatten() {
                let target = if e["subject"].is_null() {
                    &e["stream"]
                } else {
                    &e["subject"]
                };
                t.add_row(vec![
                    text(&e["request_id"]),
                    text(target),
                    text(&e["status"]),
                    text(&e["keys_destroyed"]),
                    text(&e["requested_at"]),
                    text(&e["completed_at"]),
                ]);
            }
            println!("{t}");
        }
        AdminCommand::Hold {
            subject,
            reason,
            until,
            lift,
        } => {
            let path = format!("{}/admin/subjects/{}/hold", client.base, segment(&subject));
            if lift {
                client.send(client.http.delete(path)).await?;
                println!("hold on {subject} lifted");
            } else {
                let body = json!({ "reason": reason, "until": until });
                let hold: Value = client.send(client.http.put(path).json(&body)).await?.json().await?;
                if connection.json {
                    print_json(&hold)?;
                } else {
                    println!("hold on {subject} placed (until {})", text(&hold["until"]));
                }
            }
        }
        AdminCommand::Subject { subject } => {
            let view = client
                .get(&format!("/admin/subjects/{}", segment(&subject)), &[])
                .await?;
            if connection.json {
                return print_json(&view);
            }
            let mut t = table(&["stream", "status", "version"]);
            for s in view["streams"].as_array().into_iter().flatten() {
                t.add_row(vec![text(&s["stream"]), text(&s["status"]), text(&s["version"])]);
            }
            println!("{t}");
            if !view["hold"].is_null() {
                println!(
                    "legal hold: {} (until {})",
                    text(&view["hold"]["reason"]),
                    text(&view["hold"]["until"])
                );
            }
            println!("erasure requests: {}", view["erasures"].as_array().map_or(0, Vec::len));
        }
        AdminCommand::Export { subject, output } => export(&client, &subject, output).await?,
        AdminCommand::Report { from, to, csv } => report(&client, &connection, from, to, csv).await?,
        AdminCommand::Audit { verify: true, .. } => {
            let verification = client.get("/admin/audit/verify", &[]).await?;
            if connection.json {
                return print_json(&verification);
            }
            if verification["intact"] == true {
                println!("audit trail intact: {} entries", text(&verification["entries"]));
            } else {
                bail!(
                    "audit trail BROKEN at entry {}",
                    text(&verification["first_broken_seq"])
                );
            }
        }
        AdminCommand::Audit {
            verify: false,
            action,
            subject,
        } => {
            let mut query = vec![("limit", "1000".to_owned())];
            if let Some(action) = action {
                query.push(("action", action));
            }
            if let Some(subject) = subject {
                query.push(("subject", subject));
            }
            let page = client.get("/admin/audit", &query).await?;
            if connection.json {
                return print_json(&page);
            }
            let mut t = table(&["seq", "at", "actor", "action", "subject", "request"]);
            for e in page["entries"].as_array().into_iter().flatten() {
                t.add_row(vec![
                    text(&e["seq"]),
                    text(&e["at"]),
                    text(&e["actor"]),
                    text(&e["action"]),
                    text(&e["subject"]),
                    text(&e["request_id"]),
                ]);
            }
            println!("{t}");
        }
        AdminCommand::Consumers { remove: Some(name) } => {
            client
                .send(
                    client
                        .http
                        .delete(format!("{}/consumers/{}", client.base, segment(&name))),
                )
                .await?;
            println!("consumer {name} removed");
        }
        AdminCommand::Consumers { remove: None } => {
            let list = client.get("/consumers", &[]).await?;
            if connection.json {
                return print_json(&list);
            }
            let mut t = table(&["consumer", "erasure_dependent", "checkpoint", "lag", "webhook"]);
            for c in list["consumers"].as_array().into_iter().flatten() {
                t.add_row(vec![
                    text(&c["name"]),
                    text(&c["erasure_dependent"]),
                    text(&c["checkpoint"]),
                    text(&c["lag"]),
                    text(&c["webhook_url"]),
                ]);
            }
            println!("{t}");
        }
        AdminCommand::Tokens(TokensCommand::List) => {
            let list = client.get("/admin/tokens", &[]).await?;
            if connection.json {
                return print_json(&list);
            }
            let mut t = table(&["id", "name", "role", "created_at", "revoked_at"]);
            for tok in list["tokens"].as_array().into_iter().flatten() {
                t.add_row(vec![
                    text(&tok["id"]),
                    text(&tok["name"]),
                    text(&tok["role"]),
                    text(&tok["created_at"]),
                    text(&tok["revoked_at"]),
                ]);
            }
            println!("{t}");
        }
        AdminCommand::Tokens(TokensCommand::Create { name, role }) => {
            let token = client
                .post("/admin/tokens", json!({ "name": name, "role": role }))
                .await?;
            if connection.json {
                print_json(&token)?;
            } else {
                println!("{}", text(&token["token"]));
            }
        }
        AdminCommand::Tokens(TokensCommand::Revoke { id }) => {
            client
                .send(
                    client
                        .http
                        .delete(format!("{}/admin/tokens/{}", client.base, segment(&id))),
                )
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// Streams an export to a file or stdout, with a progress spinner on stderr.
async fn export(client: &Client, subject: &str, output: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let url = format!("{}/admin/subjects/{}/export", client.base, segment(subject));
    let response = client.send(client.http.get(url)).await?;
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
    let mut body = response.bytes_stream();
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

/// `lethe admin report`: a table, the JSON, or CSV written to a file.
async fn report(
    client: &Client,
    connection: &Connection,
    from: Option<String>,
    to: Option<String>,
    csv: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(from) = from {
        query.push(("from", from));
    }
    if let Some(to) = to {
        query.push(("to", to));
    }
    if let Some(path) = csv {
        query.push(("format", "csv".to_owned()));
        let url = format!("{}/admin/reports/erasures", client.base);
        let body = client.send(client.http.get(url).query(&query)).await?.text().await?;
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
        return Ok(());
    }
    let report = client.get("/admin/reports/erasures", &query).await?;
    if connection.json {
        return print_json(&report);
    }
    let mut t = table(&["figure", "value"]);
    t.add_row(vec!["requests".to_owned(), text(&report["requests"])]);
    for (status, count) in report["by_status"].as_object().into_iter().flatten() {
        t.add_row(vec![format!("  {status}"), text(count)]);
    }
    let ttc = &report["time_to_complete"];
    t.add_row(vec![
        "time to complete, median (s)".to_owned(),
        text(&ttc["median_secs"]),
    ]);
    t.add_row(vec!["time to complete, p95 (s)".to_owned(), text(&ttc["p95_secs"])]);
    t.add_row(vec!["time to complete, max (s)".to_owned(), text(&ttc["max_secs"])]);
    let count = |key: &str| report[key].as_array().map_or(0, Vec::len).to_string();
    t.add_row(vec!["overdue".to_owned(), count("overdue")]);
    t.add_row(vec!["unacknowledged dependents".to_owned(), count("unacknowledged")]);
    t.add_row(vec!["keys destroyed".to_owned(), text(&report["keys_destroyed"])]);
    t.add_row(vec!["legal holds active".to_owned(), text(&report["holds_active"])]);
    println!("{t}");
    Ok(())
}
