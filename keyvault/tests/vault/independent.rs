//! An independent program (Python, `cryptography`'s AESGCM, written from SECURITY.md) reads a
//! wrapped DEK from the vault's SQLite file, unwraps it with the KEK, and decrypts an event
//! payload sealed by `envelope::seal` with the contract's associated data.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use lethe_keyvault::{Kek, envelope};

use crate::support::{Engine, nk, ok, run_on};

/// Python with `cryptography` available? In CI its absence is a failure, locally a skip.
fn python_ready() -> bool {
    let ready = Command::new("python3")
        .args(["-c", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ready {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with the `cryptography` package is required in CI");
        }
        crate::support::notice("independent format check skipped: python3 with `cryptography` not available");
    }
    ready
}

#[tokio::test]
async fn python_unwraps_a_stored_dek_and_decrypts_an_event_from_security_md() {
    if !python_ready() {
        return;
    }
    run_on(Engine::Sqlite, |db| async move {
        let kek_path = db.dir.path().join("kek.key");
        let kek_bytes = *Kek::generate().unwrap_or_else(|e| panic!("{e}")).expose_secret();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kek_path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&kek_bytes).unwrap_or_else(|e| panic!("{e}"));
        drop(f);

        let vault = db
            .open(Kek::from_file(&kek_path).unwrap_or_else(|e| panic!("{e}")))
            .await;
        let created = ok(vault.create_keys(&[nk("user-private-456", Some("456")), nk("other", None)])).await;
        let (id, dek) = &created[0];
        let event_id = uuid::Uuid::new_v4();
        let plaintext = br#"{"name":"Ada","address":"1 Analytical St"}"#;
        let sealed = envelope::seal(dek, &envelope::event_aad("user-private-456", &event_id), plaintext);
        drop(vault);

        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_unwrap.py");
        let out = Command::new("python3")
            .arg(script)
            .arg("--db")
            .arg(db.sqlite_path())
            .arg("--kek-file")
            .arg(&kek_path)
            .args(["--key-id", &id.to_string()])
            .args(["--stream", "user-private-456"])
            .args(["--event-id", &event_id.to_string()])
            .args(["--payload-hex", &hex::encode(&sealed)])
            .output()
            .unwrap_or_else(|e| panic!("running python3: {e}"));
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer["dek_hex"], hex::encode(dek.expose_secret()));
        assert_eq!(answer["plaintext_hex"], hex::encode(plaintext));

        // Moving the ciphertext to another event id must fail for the independent reader too.
        let out = Command::new("python3")
            .arg(script)
            .arg("--db")
            .arg(db.sqlite_path())
            .arg("--kek-file")
            .arg(&kek_path)
            .args(["--key-id", &id.to_string()])
            .args(["--stream", "user-private-456"])
            .args(["--event-id", &uuid::Uuid::new_v4().to_string()])
            .args(["--payload-hex", &hex::encode(&sealed)])
            .output()
            .unwrap_or_else(|e| panic!("running python3: {e}"));
        assert!(
            !out.status.success(),
            "a payload under another event id must not decrypt"
        );
    })
    .await;
}
