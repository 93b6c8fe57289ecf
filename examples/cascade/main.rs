//! `cargo run --example cascade`: starts Lethe (embedded default, in a temporary directory),
//! runs the users, accounts and ledger services against it, forgets user 456, and shows the
//! tombstone cascade complete — and that a transfer from 456 to 789 in a public stream loses
//! 456's name only. See `services.rs`.

mod services;

use lethe::server::{ServeConfig, start};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = "cascade-example-admin-token-0123456789";
    let mut config = ServeConfig::embedded(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_token = Some(token.to_owned());
    let server = start(config).await?;
    let lethe = services::Lethe::new(&format!("http://{}", server.addr), token);

    let report = services::run(&lethe).await.map_err(anyhow::Error::msg)?;
    println!("ledger rows before the erasure: {}", report.ledger_rows_before);
    println!("ledger rows after:              {}", report.ledger_rows_after);
    println!("erasure request:                {}", report.erasure["status"]);
    println!(
        "public user stream:             {}",
        report.public_user["events"][0]["data"]
    );
    println!(
        "private user stream:            data = {}",
        report.private_user["events"][0]["data"]
    );
    println!("account-1:                      status = {}", report.account["status"]);
    println!(
        "transfer-1 before:              {}",
        report.transfer_before["events"][0]["data"]
    );
    println!(
        "transfer-1 after:               {}",
        report.transfer_after["events"][0]["data"]
    );
    println!(
        "                                erased_fields = {}",
        report.transfer_after["events"][0]["erased_fields"]
    );
    println!("erasure field_streams:          {}", report.erasure["field_streams"]);
    println!("subject 789 field_streams:      {}", report.receiver["field_streams"]);
    server.stop().await?;
    Ok(())
}
