//! The data directory and the keys directory of `lethe serve`: created private, kept apart, the
//! KEK epochs in the keys directory, and a legacy `kek.key` in the data directory still read,
//! warned about, and moved out by `lethe keyvault move-keys`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use lethe::server::{ServeConfig, ServerError};
use serde_json::json;

const ADMIN: &str = "an-admin-token-of-32-characters!";

fn config(data: &Path, keys: &Path) -> ServeConfig {
    let mut config = ServeConfig::embedded(data);
    config.keys_dir = keys.to_path_buf();
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_token = Some(ADMIN.into());
    config
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn append(url: &str, stream: &str, subject: Option<&str>, name: &str) {
    let mut body = json!({ "events": [{ "type": "Named", "data": { "name": name } }] });
    if let Some(subject) = subject {
        body["subject"] = json!(subject);
    }
    let response = reqwest::Client::new()
        .post(format!("{url}/streams/{stream}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("append");
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap_or_default());
}

async fn read_name(url: &str, stream: &str) -> serde_json::Value {
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/streams/{stream}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    page["events"][0]["data"]["name"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_its_two_directories_private_and_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("lethe-data");
    let keys = tmp.path().join("lethe-keys");
    let server = lethe::server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_token: Some(ADMIN.into()),
        ..ServeConfig::embedded(&data)
    })
    .await
    .expect("start");
    assert_eq!(
        ServeConfig::embedded(&data).keys_dir,
        keys,
        "lethe-keys beside lethe-data"
    );
    append(&format!("http://{}", server.addr), "s-1", Some("p-1"), "Ada").await;
    server.stop().await.expect("stop");

    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&keys), 0o700);
    for file in ["events.db", "keyvault.db"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let names: Vec<String> = std::fs::read_dir(&data)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("kek")),
        "no KEK in the data directory: {names:?}"
    );
    let epoch_file = keys.join("kek-0000000001.key");
    assert_eq!(mode(&epoch_file), 0o600);
    assert_eq!(std::fs::metadata(&epoch_file).expect("epoch 1").len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_directory_inside_the_data_directory_or_open_to_others_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let Err(inside) = lethe::server::start(config(&data, &data.join("keys"))).await else {
        panic!("a keys directory inside the data directory was accepted");
    };
    assert!(matches!(inside, ServerError::KeysDir { .. }), "{inside}");
    let text = inside.to_string();
    assert!(
        text.contains("LETHE_KEYS_DIR") && text.contains("inside the data directory"),
        "{text}"
    );
    assert!(!data.join("events.db").exists(), "nothing was opened");

    let open = tmp.path().join("open-keys");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let Err(loose) = lethe::server::start(config(&data, &open)).await else {
        panic!("a keys directory readable by others was accepted");
    };
    let text = loose.to_string();
    assert!(text.contains("LETHE_KEYS_DIR") && text.contains("0755"), "{text}");
}

/// A deployment from before the keys directory (`kek.key` in the data directory) keeps
/// working; `lethe keyvault move-keys` moves the KEK into the keys directory as its epoch's
/// file, and the server then starts without it and reads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_kek_in_the_data_directory_keeps_working_and_move_keys_moves_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("lethe-data");
    let keys = tmp.path().join("lethe-keys");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    lethe_keyvault::Kek::load_or_create(data.join("kek.key")).expect("legacy KEK");

    let server = lethe::server::start(config(&data, &keys))
        .await
        .expect("start (legacy)");
    let url = format!("http://{}", server.addr);
    append(&url, "profile-1", Some("p-1"), "Ada").await;
    server.stop().await.expect("stop");
    assert!(
        !keys.join("kek-0000000001.key").exists(),
        "the legacy KEK is used as it is"
    );

    let moved = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["keyvault", "move-keys"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--keys-dir")
        .arg(&keys)
        .env_remove("LETHE_KEYVAULT_URL")
        .env_remove("LETHE_DATABASE_URL")
        .output()
        .expect("run move-keys");
    let stderr = String::from_utf8_lossy(&moved.stderr);
    assert!(moved.status.success(), "{stderr}");
    assert!(stderr.contains("epoch 1"), "{stderr}");
    assert!(!data.join("kek.key").exists(), "moved out of the data directory");
    assert_eq!(mode(&keys.join("kek-0000000001.key")), 0o600);

    let server = lethe::server::start(config(&data, &keys)).await.expect("start (moved)");
    let url = format!("http://{}", server.addr);
    assert_eq!(
        read_name(&url, "profile-1").await,
        "Ada",
        "written under the legacy KEK, read after the move"
    );
    append(&url, "profile-2", Some("p-2"), "Grace").await;
    assert_eq!(read_name(&url, "profile-2").await, "Grace");
    server.stop().await.expect("stop");

    let again = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["keyvault", "move-keys"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--keys-dir")
        .arg(&keys)
        .output()
        .expect("run move-keys");
    assert!(!again.status.success(), "nothing left to move");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no KEK to move"));
}

/// A damaged KEK file in the keys directory (here: one byte short) stops the start with an
/// error naming the file and what is wrong with it — never a partial start, never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_file_of_the_wrong_length_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("lethe-data");
    let keys = tmp.path().join("lethe-keys");
    let server = lethe::server::start(config(&data, &keys)).await.expect("start");
    append(&format!("http://{}", server.addr), "profile-1", Some("p-1"), "Ada").await;
    server.stop().await.expect("stop");

    let epoch = keys.join("kek-0000000001.key");
    let bytes = std::fs::read(&epoch).expect("epoch file");
    std::fs::write(&epoch, &bytes[..31]).expect("truncate");
    let Err(error) = lethe::server::start(config(&data, &keys)).await else {
        panic!("a 31-byte KEK was accepted");
    };
    let text = error.to_string();
    assert!(text.contains("kek-0000000001.key") && text.contains("31"), "{text}");
    assert!(!text.contains(&format!("{:?}", &bytes[..4])), "{text}");
}
