//! Key hygiene: no key-holding type prints key bytes through `{:?}` (or `{}` for errors).

use base64::Engine as _;
use clap::Parser;
use lethe_keyvault::cli::KeyvaultCommand;
use std::sync::Arc;

use lethe_keyvault::{GivenKeks, HttpVault, Kek, KeyLookup, NewKey, OpenOptions, VaultError};

use crate::support::{Engine, kek, nk, ok, run_on};

/// Every way the bytes could show up in text.
fn renderings(bytes: &[u8]) -> Vec<String> {
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        String::from_utf8_lossy(bytes).into_owned(),
        format!("{bytes:?}"),
        // Comma-separated decimal, as a derived Debug of an array would print it.
        bytes.iter().map(u8::to_string).collect::<Vec<_>>().join(", "),
    ]
}

fn assert_clean(what: &str, text: &str, secrets: &[&[u8]]) {
    for secret in secrets {
        for r in renderings(secret) {
            assert!(!text.contains(&r), "{what} leaks key bytes: {text}");
        }
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: KeyvaultCommand,
}

#[tokio::test]
async fn debug_output_never_contains_key_bytes() {
    run_on(Engine::Sqlite, |db| async move {
        // A KEK whose bytes are printable ASCII, so a raw leak would be visible in text too.
        let kek_bytes = *b"KEK-SECRET-0123456789abcdefghijk";
        let k = Kek::from_slice(&kek_bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_clean("Kek", &format!("{k:?}"), &[&kek_bytes]);
        let options = OpenOptions {
            kek: Some(k),
            other_keks: vec![kek(9)],
            token: Some("tok-SECRET-0123456789".into()),
            provider: Some(Arc::new(GivenKeks::new([(1, kek(8))]))),
            ..Default::default()
        };
        let given = GivenKeks::new([(1, Kek::from_slice(&kek_bytes).unwrap_or_else(|e| panic!("{e}")))]);
        assert_clean("GivenKeks", &format!("{given:?}"), &[&kek_bytes]);
        let opts_text = format!("{options:?}");
        assert_clean("OpenOptions", &opts_text, &[&kek_bytes, &[9u8; 32], &[8u8; 32]]);
        assert!(!opts_text.contains("tok-SECRET"), "{opts_text}");

        let vault = ok(lethe_keyvault::LocalVault::open(
            &db.url,
            options.kek.unwrap_or_else(|| kek(1)),
            vec![],
        ))
        .await;
        let created = ok(lethe_keyvault::KeyVault::create_keys(
            &vault,
            &[nk("a", Some("s")), nk("b", None)],
        ))
        .await;
        let dek = created[0].1.expose_secret().to_vec();
        let ids: Vec<_> = created.iter().map(|(id, _)| *id).collect();
        let fetched = ok(lethe_keyvault::KeyVault::fetch_keys(&vault, &ids)).await;
        let wrapped = db.wrapped_bytes(ids[0]).await.unwrap_or_else(|| panic!("no material"));
        let secrets: Vec<&[u8]> = vec![&kek_bytes, &dek, &wrapped];

        assert_clean("Dek", &format!("{:?}", created[0].1), &secrets);
        assert_clean("create result", &format!("{created:?}"), &secrets);
        assert_clean("fetch result", &format!("{fetched:?}"), &secrets);
        assert_clean(
            "KeyLookup",
            &format!("{:?}", KeyLookup::Live(created[0].1.clone())),
            &secrets,
        );
        assert_clean("LocalVault", &format!("{vault:?}"), &secrets);
        assert_eq!(format!("{:?}", created[0].1), "Dek(<redacted>)");

        // Errors, through Debug and Display.
        let mut errors: Vec<VaultError> = vec![
            vault
                .rotate_kek(Kek::from_slice(&kek_bytes).unwrap_or_else(|e| panic!("{e}")))
                .await
                .map(|_| ())
                .err()
                .unwrap_or(VaultError::Unauthorized),
            lethe_keyvault::KeyVault::create_keys(&vault, &[nk("a", Some("other"))])
                .await
                .err()
                .unwrap_or(VaultError::Unauthorized),
            lethe_keyvault::LocalVault::open(&db.url, kek(7), vec![])
                .await
                .err()
                .unwrap_or(VaultError::Unauthorized),
            VaultError::from(
                lethe_keyvault::envelope::open(&created[0].1, b"", &wrapped)
                    .err()
                    .unwrap_or(lethe_keyvault::envelope::EnvelopeError::Authentication),
            ),
        ];
        // A forgotten subject's refusal names the subject id and nothing else.
        ok(lethe_keyvault::KeyVault::destroy_subject_keys(&vault, "s")).await;
        let forgotten = lethe_keyvault::KeyVault::create_keys(&vault, &[NewKey::subject_key("s")])
            .await
            .err()
            .unwrap_or(VaultError::Unauthorized);
        assert_eq!(
            forgotten.to_string(),
            "subject \"s\" was forgotten; no key bound to it is created again"
        );
        errors.push(forgotten);
        for e in &errors {
            assert_clean("VaultError", &format!("{e:?} {e}"), &secrets);
        }

        let http = HttpVault::new("http://127.0.0.1:1", "tok-SECRET-0123456789").unwrap_or_else(|e| panic!("{e}"));
        let text = format!("{http:?}");
        assert!(!text.contains("tok-SECRET"), "{text}");

        let cli = Cli::try_parse_from([
            "x",
            "serve",
            "--database-url",
            "sqlite://x.db",
            "--token",
            "tok-SECRET-0123456789",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let text = format!("{:?}", cli.cmd);
        assert!(!text.contains("tok-SECRET"), "{text}");
    })
    .await;
}
