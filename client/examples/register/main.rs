//! The seed's "register a user" through the Rust client: an atomic two-stream append, a
//! subscription, an erasure request, and the reads that show what was forgotten.
//!
//! ```sh
//! cargo run --release -- serve                      # in one terminal
//! LETHE_TOKEN=$(cat lethe-data/admin.token) cargo run -p lethe-client --example register
//! ```

mod flow;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("LETHE_URL").unwrap_or_else(|_| "http://127.0.0.1:2113".to_owned());
    let token = std::env::var("LETHE_TOKEN").map_err(|_| anyhow::anyhow!("set LETHE_TOKEN to an admin token"))?;
    let lethe = lethe_client::Client::builder(url).token(token).build()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let outcome = flow::run(&lethe, &id).await?;
    for line in &outcome.followed {
        println!("followed: {line}");
    }
    println!("erasure request: {}", outcome.erasure_status);
    println!("private stream erased: {}", outcome.private_erased);
    println!("public stream intact: {}", outcome.public_data);
    Ok(())
}
