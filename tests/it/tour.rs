//! The README's five-minute tour, run verbatim against the real binary: start, register a user
//! (public + private stream in one call), read, subscribe, forget, read again, set a retention
//! policy.

use std::process::{Command, Stdio};
use std::time::Duration;

/// The shell block between `<!-- tour:begin -->` and `<!-- tour:end -->` in README.md.
fn tour_script() -> String {
    let readme = include_str!("../../README.md");
    let start = readme.find("<!-- tour:begin -->").expect("tour begin marker");
    let end = readme.find("<!-- tour:end -->").expect("tour end marker");
    let block = &readme[start..end];
    let code_start = block.find("```sh\n").expect("sh block") + "```sh\n".len();
    let code_end = block[code_start..].find("```").expect("end of block") + code_start;
    block[code_start..code_end].to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_runs_verbatim() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI needs curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_lethe"))
            .arg("serve")
            .current_dir(dir.path())
            .env("LETHE_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("LETHE_ADMIN_TOKEN")
            .env_remove("LETHE_DATA_DIR")
            .env_remove("LETHE_DATABASE_URL")
            .env_remove("LETHE_KEYVAULT_URL")
            .env_remove("LETHE_KEK_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lethe serve"),
    );
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "server did not come up");

    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &tour_script()])
        .current_dir(dir.path())
        .env("LETHE", &url)
        .output()
        .expect("run the tour");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tour failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let registered = &lines[0]["appends"];
    assert_eq!(registered[0]["stream"], "user-public-456");
    assert_eq!(
        registered[1]["first_position"], 2,
        "both streams in one contiguous append"
    );
    let private_before = &lines[2];
    assert_eq!(private_before["events"][0]["data"]["name"], "Ada Lovelace");
    assert!(
        stdout.contains("id: 1\n"),
        "the subscription delivered events with SSE ids"
    );
    let forget = &lines[4];
    assert_eq!(forget["status"], "completed");
    assert_eq!(forget["keys_destroyed"], 1);
    let private_after = &lines[5];
    assert_eq!(private_after["status"], "erased");
    assert_eq!(private_after["events"][0]["data"], serde_json::Value::Null);
    assert_eq!(private_after["events"][0]["erased"], true);
    assert!(
        !stdout[stdout.find("\"request_id\"").unwrap()..].contains("Ada Lovelace"),
        "gone after forget"
    );
    let public_after = &lines[6];
    assert_eq!(
        public_after["events"][0]["data"]["user_id"], "456",
        "the public stream reads in full"
    );
    let policy = &lines[7];
    assert_eq!(policy["name"], "users-2y");
    assert_eq!(policy["keep_for"], "P2Y");
    assert_eq!(
        policy["next_due"],
        serde_json::Value::Null,
        "subject 456 was forgotten already"
    );
    assert_eq!(public_after["events"].as_array().unwrap().len(), 2);
}

/// `lethe token create --role R` writes a usable token straight into the event database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_cli_makes_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let created = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["token", "create", "--role", "reader", "--name", "dashboards"])
        .current_dir(dir.path())
        .env_remove("LETHE_DATA_DIR")
        .env_remove("LETHE_DATABASE_URL")
        .env_remove("LETHE_KEYVAULT_URL")
        .env_remove("LETHE_KEK_FILE")
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("lethe_"), "{token}");

    let mut config = lethe::server::ServeConfig::embedded(dir.path().join("lethe-data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some("an-admin-token-of-32-characters!".into());
    let server = lethe::server::start(config).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}", server.addr);
    let read = client
        .get(format!("{url}/log"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "a reader may read");
    let write = client
        .post(format!("{url}/streams/s"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"events": [{"type": "e", "data": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "but not write");
    let bad = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["token", "create", "--role", "root"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an unknown role is refused");
    server.stop().await.unwrap();
}

/// A client that never finishes its request headers is cut off (slow-loris), and the server
/// keeps serving others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_a_1s_header_timeout(dir.path()).await;

    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let healthy = reqwest::get(format!("http://{}/healthz", server.addr)).await.unwrap();
    assert_eq!(healthy.status(), 200, "others are served while one client dawdles");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was closed by the server");
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "and the request was never served"
    );
    server.stop().await.unwrap();
}

/// A client that connects and never sends a byte is cut off by the header timeout too, and so
/// is one that goes silent after a request on a kept-alive connection. (Regression: the
/// server waited without a timeout for the first bytes, to tell HTTP/1 from HTTP/2, so 4,096
/// silent connections took every connection slot for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_off_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_a_1s_header_timeout(dir.path()).await;
    assert_silent_connections_are_cut_off(server.addr).await;
    server.stop().await.unwrap();
}

/// The embedded default on a free port, with a one-second header timeout.
async fn start_with_a_1s_header_timeout(dir: &std::path::Path) -> lethe::server::RunningServer {
    let mut config = lethe::server::ServeConfig::embedded(dir.join("lethe-data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some("an-admin-token-of-32-characters!".into());
    config.header_timeout_secs = 1;
    lethe::server::start(config).await.unwrap()
}

/// The same for the key vault's server (`lethe keyvault serve`), which Lethe's accept loop
/// serves with the vault's limits. (Regression: it used `axum::serve`, which has no header
/// timeout, so such connections were kept forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_server_cuts_off_silent_connections_too() {
    let dir = tempfile::tempdir().unwrap();
    let kek = lethe_keyvault::Kek::load_or_create(dir.path().join("kek.key")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("keyvault.db").display());
    let options = lethe_keyvault::OpenOptions {
        kek: Some(kek),
        ..lethe_keyvault::OpenOptions::default()
    };
    let vault = lethe_keyvault::open(&url, options).await.unwrap();
    let app = lethe_keyvault::server::router(vault, "a-vault-token-of-32-characters!!").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // `lethe keyvault serve`'s limits, with a shorter header timeout to keep the test short.
    let limits = lethe::server::ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        ..lethe::server::ConnectionLimits::keyvault()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(lethe::server::serve_router(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    assert_silent_connections_are_cut_off(addr).await;
    let _ = stop.send(());
    served.await.unwrap();
}

/// Opens a silent connection and a kept-alive one gone silent after a request; both must be
/// closed by the server while others are served.
async fn assert_silent_connections_are_cut_off(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let healthy = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200, "others are served meanwhile");
    for (name, stream) in [("silent", &mut silent), ("kept alive", &mut kept)] {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the {name} connection was closed by the server");
    }
}
