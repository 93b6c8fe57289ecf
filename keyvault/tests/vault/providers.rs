//! The KEK providers: the keys directory (`FileKeks`) and an HSM token through PKCS#11
//! (`Pkcs11Keks`, on SoftHSM2: see `softhsm.rs`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Barrier};

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use lethe_keyvault::kek::{PKCS11_MODULE_SETTING, PKCS11_PIN_FILE_SETTING, PKCS11_TOKEN_SETTING};
use lethe_keyvault::{Dek, Epoch, FileKeks, Kek, KekError, KekProvider, KeyId, Pkcs11Config, Pkcs11Keks};
use zeroize::Zeroizing;

use crate::softhsm::{self, SoftHsm};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn dek(byte: u8) -> Dek {
    ok(Dek::from_slice(&[byte; 32]))
}

fn mode(path: &Path) -> u32 {
    ok(std::fs::metadata(path)).permissions().mode() & 0o7777
}

/// A fresh keys directory (`<tmp>/keys`, 0700) and its provider.
fn keys_dir() -> (tempfile::TempDir, FileKeks) {
    let tmp = ok(tempfile::tempdir());
    let keks = ok(FileKeks::create_dir(&tmp.path().join("keys")));
    (tmp, keks)
}

/// Every provider: create, list, wrap and unwrap; the key id is bound; repeats are harmless.
fn check_round_trip(keks: &dyn KekProvider) {
    assert!(keks.manages_epochs());
    assert_eq!(ok(keks.epochs()), Vec::<Epoch>::new());
    ok(keks.create_epoch(2));
    ok(keks.create_epoch(1));
    ok(keks.create_epoch(2));
    assert_eq!(ok(keks.epochs()), vec![1, 2]);
    let id = KeyId::new_random();
    let wrapped = ok(keks.wrap(2, id, &dek(7)));
    assert_eq!(ok(keks.unwrap(2, id, &wrapped)).expose_secret(), &[7u8; 32]);
    assert_ne!(wrapped, ok(keks.wrap(2, id, &dek(7))), "a fresh IV per wrap");
    assert!(matches!(
        keks.unwrap(2, KeyId::new_random(), &wrapped),
        Err(KekError::Unwrap { epoch: 2 })
    ));
    let mut damaged = wrapped.clone();
    damaged[20] ^= 1;
    assert!(matches!(
        keks.unwrap(2, id, &damaged),
        Err(KekError::Unwrap { epoch: 2 })
    ));
    assert!(matches!(
        keks.unwrap(2, id, &wrapped[..30]),
        Err(KekError::Unwrap { epoch: 2 })
    ));
    assert!(matches!(
        keks.wrap(3, id, &dek(7)),
        Err(KekError::EpochMissing { epoch: 3, .. })
    ));
}

/// Two epochs never open each other's wraps.
fn check_epochs_are_separate(keks: &dyn KekProvider) {
    ok(keks.create_epoch(1));
    ok(keks.create_epoch(2));
    let id = KeyId::new_random();
    let under_1 = ok(keks.wrap(1, id, &dek(1)));
    let under_2 = ok(keks.wrap(2, id, &dek(2)));
    assert!(matches!(
        keks.unwrap(2, id, &under_1),
        Err(KekError::Unwrap { epoch: 2 })
    ));
    assert!(matches!(
        keks.unwrap(1, id, &under_2),
        Err(KekError::Unwrap { epoch: 1 })
    ));
    assert_eq!(ok(keks.unwrap(1, id, &under_1)).expose_secret(), &[1u8; 32]);
    assert_eq!(ok(keks.unwrap(2, id, &under_2)).expose_secret(), &[2u8; 32]);
}

/// Destroying an epoch: its wraps no longer open, other epochs are untouched, repeats are
/// harmless.
fn check_destroy(keks: &dyn KekProvider) {
    ok(keks.create_epoch(1));
    ok(keks.create_epoch(2));
    let id = KeyId::new_random();
    let under_1 = ok(keks.wrap(1, id, &dek(1)));
    let under_2 = ok(keks.wrap(2, id, &dek(2)));
    ok(keks.destroy_epoch(1));
    ok(keks.destroy_epoch(1));
    ok(keks.destroy_epoch(9));
    assert_eq!(ok(keks.epochs()), vec![2]);
    match keks.unwrap(1, id, &under_1) {
        Err(KekError::EpochMissing { provider, epoch: 1 }) => assert_eq!(provider, keks.kind()),
        other => panic!("a destroyed epoch must be missing, got {other:?}"),
    }
    assert!(matches!(
        keks.wrap(1, id, &dek(1)),
        Err(KekError::EpochMissing { epoch: 1, .. })
    ));
    assert_eq!(ok(keks.unwrap(2, id, &under_2)).expose_secret(), &[2u8; 32]);
}

// ---- file ----

#[test]
fn file_round_trip() {
    let (_tmp, keks) = keys_dir();
    assert_eq!(keks.kind(), "file");
    check_round_trip(&keks);
    // The same directory opened again holds the same KEKs.
    let again = ok(FileKeks::open(keks.dir()));
    let id = KeyId::new_random();
    let wrapped = ok(keks.wrap(1, id, &dek(9)));
    assert_eq!(ok(again.unwrap(1, id, &wrapped)).expose_secret(), &[9u8; 32]);
    assert_eq!(ok(again.epochs()), vec![1, 2]);
}

#[test]
fn file_epochs_are_separate() {
    let (_tmp, keks) = keys_dir();
    check_epochs_are_separate(&keks);
}

#[test]
fn file_dir_is_0700_and_key_files_0600_of_32_bytes() {
    let tmp = ok(tempfile::tempdir());
    let dir = tmp.path().join("a").join("keys");
    let keks = ok(FileKeks::create_dir(&dir));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        mode(&tmp.path().join("a")),
        0o700,
        "missing parents are created 0700 too"
    );
    ok(keks.create_epoch(7));
    let path = dir.join("kek-0000000007.key");
    assert_eq!(keks.epoch_path(7), path);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(ok(std::fs::metadata(&path)).len(), 32);
    // Only the key file: no temporary file left behind.
    assert_eq!(ok(std::fs::read_dir(&dir)).count(), 1);
    // create_dir on an existing directory just opens it.
    ok(FileKeks::create_dir(&dir));
}

#[test]
fn file_dir_open_to_group_or_others_is_refused_naming_it() {
    let tmp = ok(tempfile::tempdir());
    let dir = tmp.path().join("keys");
    ok(std::fs::create_dir(&dir));
    for bad in [0o750, 0o705, 0o755, 0o770, 0o777] {
        ok(std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(bad)));
        for result in [FileKeks::open(&dir), FileKeks::create_dir(&dir)] {
            match result {
                Err(e @ KekError::KeysDir { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(&dir.display().to_string()), "{message}");
                    assert!(message.contains(&format!("{bad:04o}")), "{message}");
                }
                other => panic!("mode {bad:o} must be refused, got {other:?}"),
            }
        }
    }
    ok(std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)));
    ok(FileKeks::open(&dir));
}

#[test]
fn file_dir_must_exist_and_be_a_directory() {
    let tmp = ok(tempfile::tempdir());
    let missing = tmp.path().join("missing");
    let file = tmp.path().join("file");
    ok(std::fs::write(&file, b"x"));
    for path in [&missing, &file] {
        match FileKeks::open(path) {
            Err(e @ KekError::KeysDir { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{} must be refused, got {other:?}", path.display()),
        }
    }
    assert!(matches!(FileKeks::create_dir(&file), Err(KekError::KeysDir { .. })));
}

#[test]
fn file_destroy_deletes_the_file_then_epoch_missing() {
    let (_tmp, keks) = keys_dir();
    check_destroy(&keks);
    assert!(!keks.epoch_path(1).exists());
    assert!(keks.epoch_path(2).exists());
    // A provider that never loaded the epoch finds it missing too.
    let fresh = ok(FileKeks::open(keks.dir()));
    assert!(matches!(
        fresh.unwrap(1, KeyId::new_random(), &[1u8; 61]),
        Err(KekError::EpochMissing { epoch: 1, .. })
    ));
    assert!(matches!(
        fresh.legacy_check_value(1),
        Err(KekError::EpochMissing { .. })
    ));
}

#[test]
fn file_epochs_ignore_other_files() {
    let (_tmp, keks) = keys_dir();
    ok(keks.create_epoch(3));
    for other in [
        "erasures.journal",
        "kek.key",
        ".kek-0011223344556677.tmp",
        "kek-3.key",
        "kek-0000000004.key.tmp",
    ] {
        ok(std::fs::write(keks.dir().join(other), b"x"));
    }
    ok(std::fs::create_dir(keks.dir().join("sub")));
    assert_eq!(ok(keks.epochs()), vec![3]);
}

#[test]
fn file_racing_create_epoch_ends_with_one_key() {
    let (_tmp, first) = keys_dir();
    let second = ok(FileKeks::open(first.dir()));
    let providers = [Arc::new(first), Arc::new(second)];
    let epochs: Vec<Epoch> = (1..=20).collect();
    let barrier = Arc::new(Barrier::new(providers.len()));
    let threads: Vec<_> = providers
        .iter()
        .map(|keks| {
            let (keks, barrier, epochs) = (Arc::clone(keks), Arc::clone(&barrier), epochs.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for epoch in epochs {
                    ok(keks.create_epoch(epoch));
                }
            })
        })
        .collect();
    for thread in threads {
        ok(thread.join().map_err(|_| "a create_epoch thread panicked"));
    }
    let [first, second] = &providers;
    assert_eq!(ok(first.epochs()), epochs);
    // One file per epoch and nothing else.
    assert_eq!(ok(std::fs::read_dir(first.dir())).count(), epochs.len());
    for epoch in epochs {
        // Both providers (whichever won) use the KEK in the file.
        let file = ok(Kek::from_file(first.epoch_path(epoch)));
        let id = KeyId::new_random();
        for keks in [first, second] {
            let wrapped = ok(keks.wrap(epoch, id, &dek(5)));
            assert_eq!(ok(file.unwrap_dek(id, &wrapped)).expose_secret(), &[5u8; 32]);
            assert_eq!(ok(keks.legacy_check_value(epoch)), Some(file.check_value()));
        }
    }
}

#[test]
fn file_import_keeps_the_same_bytes_and_refuses_different_ones() {
    let (_tmp, keks) = keys_dir();
    let legacy = ok(Kek::from_slice(&[3u8; 32]));
    ok(keks.import(1, &legacy));
    assert_eq!(mode(&keks.epoch_path(1)), 0o600);
    assert_eq!(ok(std::fs::read(keks.epoch_path(1))), vec![3u8; 32]);
    assert_eq!(ok(keks.epochs()), vec![1]);
    // Again with the same bytes: fine, nothing changes.
    ok(keks.import(1, &legacy));
    // Different bytes for an existing epoch: refused, the file kept.
    match keks.import(1, &ok(Kek::from_slice(&[4u8; 32]))) {
        Err(KekError::Mismatch(message)) => {
            assert!(message.contains(&keks.epoch_path(1).display().to_string()), "{message}")
        }
        other => panic!("a different KEK must be refused, got {other:?}"),
    }
    assert_eq!(ok(std::fs::read(keks.epoch_path(1))), vec![3u8; 32]);
    // An epoch created here is not replaced by an import either.
    ok(keks.create_epoch(2));
    let created = ok(std::fs::read(keks.epoch_path(2)));
    assert!(matches!(keks.import(2, &legacy), Err(KekError::Mismatch(_))));
    assert_eq!(ok(std::fs::read(keks.epoch_path(2))), created);
    // The imported KEK wraps as the legacy KEK does.
    let id = KeyId::new_random();
    let wrapped = ok(legacy.wrap_dek(id, &dek(8)));
    assert_eq!(ok(keks.unwrap(1, id, &wrapped)).expose_secret(), &[8u8; 32]);
    assert_eq!(ok(keks.legacy_check_value(1)), Some(legacy.check_value()));
}

#[test]
fn file_wraps_open_with_the_kek_file_bytes() {
    let (_tmp, keks) = keys_dir();
    ok(keks.create_epoch(1));
    let id = KeyId::new_random();
    let wrapped = ok(keks.wrap(1, id, &dek(6)));
    assert_eq!(wrapped.len(), 1 + 12 + 32 + 16);
    assert_eq!(wrapped[0], 0x01);
    let bytes = ok(std::fs::read(keks.epoch_path(1)));
    let kek = ok(Kek::from_slice(&bytes));
    assert_eq!(ok(kek.unwrap_dek(id, &wrapped)).expose_secret(), &[6u8; 32]);
    assert_eq!(ok(keks.legacy_check_value(1)), Some(kek.check_value()));
}

#[test]
fn file_debug_shows_no_key_bytes() {
    let (_tmp, keks) = keys_dir();
    ok(keks.import(1, &ok(Kek::from_slice(&[0xAB; 32]))));
    ok(keks.wrap(1, KeyId::new_random(), &dek(1)));
    let shown = format!("{keks:?}");
    assert!(shown.contains("loaded_epochs: [1]"), "{shown}");
    for needle in ["171", "ab", "AB"] {
        assert!(!shown.contains(needle), "{shown}");
    }
}

// ---- pkcs11 ----

/// The test token, or `None` to skip (SoftHSM2 absent outside CI).
fn hsm() -> Option<&'static SoftHsm> {
    softhsm::softhsm()
}

fn open_pkcs11(hsm: &SoftHsm, test: &str) -> Pkcs11Keks {
    ok(Pkcs11Keks::open(softhsm::config(hsm, test)))
}

#[test]
fn pkcs11_round_trip() {
    let Some(hsm) = hsm() else { return };
    let keks = open_pkcs11(hsm, "round-trip");
    assert_eq!(keks.kind(), "pkcs11");
    check_round_trip(&keks);
    assert_eq!(ok(keks.legacy_check_value(1)), None, "an HSM never computes it");
}

#[test]
fn pkcs11_wraps_have_the_envelope_layout() {
    let Some(hsm) = hsm() else { return };
    let keks = open_pkcs11(hsm, "layout");
    ok(keks.create_epoch(1));
    let id = KeyId::new_random();
    let wrapped = ok(keks.wrap(1, id, &dek(4)));
    // 0x01 ‖ IV (12) ‖ ciphertext (32) ‖ tag (16)
    assert_eq!(wrapped.len(), 61);
    assert_eq!(wrapped[0], 0x01);
    assert_ne!(&wrapped[13..45], &[4u8; 32][..], "the DEK is encrypted");
    let other = ok(keks.wrap(1, id, &dek(4)));
    assert_ne!(wrapped[1..13], other[1..13], "a fresh IV per wrap");
    // A wrong version byte is refused like any damage.
    let mut v2 = wrapped.clone();
    v2[0] = 0x02;
    assert!(matches!(keks.unwrap(1, id, &v2), Err(KekError::Unwrap { epoch: 1 })));
}

#[test]
fn pkcs11_wraps_are_byte_compatible_with_file_keks() {
    let Some(hsm) = hsm() else { return };
    // A key object of known value, planted under the provider's label for epoch 1 (the
    // provider itself only ever generates keys inside the token).
    let keks = open_pkcs11(hsm, "compatible");
    let known = ok(Kek::from_slice(&[0x5A; 32]));
    let session = softhsm::session(hsm, &keks);
    ok(session.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(b"lethe-kek-compatible-1".to_vec()),
        Attribute::Value(known.expose_secret().to_vec()),
    ]));
    assert_eq!(ok(keks.epochs()), vec![1]);
    let id = KeyId::new_random();
    // The token's AES-GCM wrap opens as a file KEK's wrap does, and the other way round.
    let by_token = ok(keks.wrap(1, id, &dek(0x11)));
    assert_eq!(ok(known.unwrap_dek(id, &by_token)).expose_secret(), &[0x11; 32]);
    let by_file = ok(known.wrap_dek(id, &dek(0x22)));
    assert_eq!(ok(keks.unwrap(1, id, &by_file)).expose_secret(), &[0x22; 32]);
    ok(keks.destroy_epoch(1));
}

#[test]
fn pkcs11_epochs_are_separate() {
    let Some(hsm) = hsm() else { return };
    check_epochs_are_separate(&open_pkcs11(hsm, "separate"));
}

#[test]
fn pkcs11_destroy_then_epoch_missing() {
    let Some(hsm) = hsm() else { return };
    check_destroy(&open_pkcs11(hsm, "destroy"));
}

#[test]
fn pkcs11_key_objects_stay_in_the_token() {
    let Some(hsm) = hsm() else { return };
    let keks = open_pkcs11(hsm, "extractable");
    ok(keks.create_epoch(5));
    // Look at the object with a session of our own, as any other program on the token could.
    let session = softhsm::session(hsm, &keks);
    let objects = ok(session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(b"lethe-kek-extractable-5".to_vec()),
    ]));
    assert_eq!(objects.len(), 1);
    let attributes = ok(session.get_attributes(
        objects[0],
        &[
            AttributeType::Value,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Id,
            AttributeType::ValueLen,
        ],
    ));
    assert!(
        !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
        "CKA_VALUE must not be readable: {attributes:?}"
    );
    let has = |want: Attribute| attributes.iter().any(|a| format!("{a:?}") == format!("{want:?}"));
    assert!(has(Attribute::Sensitive(true)), "{attributes:?}");
    assert!(has(Attribute::Extractable(false)), "{attributes:?}");
    assert!(has(Attribute::Token(true)), "{attributes:?}");
    assert!(has(Attribute::Private(true)), "{attributes:?}");
    assert!(has(Attribute::Id(5u32.to_be_bytes().to_vec())), "{attributes:?}");
    assert!(has(Attribute::ValueLen(32u64.into())), "{attributes:?}");
    // Nor can the value be asked for directly.
    let value = session.get_attributes(objects[0], &[AttributeType::Value]);
    assert!(
        value.as_ref().map_or(true, |v| v.is_empty()),
        "CKA_VALUE must not be readable: {value:?}"
    );
}

/// A wrong PIN is refused naming `LETHE_PKCS11_PIN_FILE`, never showing a PIN.
fn check_wrong_pin_refused(hsm: &SoftHsm) {
    let mut config = softhsm::config(hsm, "wrong-pin");
    let wrong = "wrong-pin-8265";
    config.pin = Zeroizing::new(wrong.to_owned());
    match Pkcs11Keks::open(config) {
        Err(e @ KekError::Pkcs11 { setting, .. }) => {
            assert_eq!(setting, PKCS11_PIN_FILE_SETTING);
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(shown.contains("LETHE_PKCS11_PIN_FILE"), "{shown}");
            assert!(!shown.contains(wrong) && !debug.contains(wrong), "{shown} / {debug}");
            assert!(
                !shown.contains(softhsm::PIN) && !debug.contains(softhsm::PIN),
                "{shown}"
            );
        }
        other => panic!("a wrong PIN must be refused, got {other:?}"),
    }
}

#[test]
fn pkcs11_wrong_pin_names_the_pin_file_setting_not_the_pin() {
    let Some(hsm) = hsm() else { return };
    // The token refuses it (unless another test happens to be logged in right now).
    check_wrong_pin_refused(hsm);
    // Login state is the process's: while it is logged in, the token would accept any session
    // without a PIN check, so the provider compares the PIN with the one it logged in with.
    let keks = open_pkcs11(hsm, "wrong-pin");
    check_wrong_pin_refused(hsm);
    assert!(!format!("{keks:?}").contains(softhsm::PIN));
    // The right PIN still works alongside.
    open_pkcs11(hsm, "wrong-pin");
}

#[test]
fn pkcs11_missing_module_names_the_module_setting() {
    let tmp = ok(tempfile::tempdir());
    let missing = tmp.path().join("libmissing-pkcs11.so");
    let not_a_module = tmp.path().join("not-a-module.so");
    ok(std::fs::write(&not_a_module, b"not a shared library"));
    for module in [missing, not_a_module] {
        let config = Pkcs11Config::new(&module, Zeroizing::new("1234".to_owned()));
        match Pkcs11Keks::open(config) {
            Err(e @ KekError::Pkcs11 { setting, .. }) => {
                assert_eq!(setting, PKCS11_MODULE_SETTING);
                let shown = e.to_string();
                assert!(shown.contains("LETHE_PKCS11_MODULE"), "{shown}");
                assert!(shown.contains(&module.display().to_string()), "{shown}");
            }
            other => panic!("{} must be refused, got {other:?}", module.display()),
        }
    }
}

#[test]
fn pkcs11_unknown_token_names_the_token_setting() {
    let Some(hsm) = hsm() else { return };
    let mut config = softhsm::config(hsm, "unknown-token");
    config.token_label = Some("no-such-token".into());
    match Pkcs11Keks::open(config) {
        Err(KekError::Pkcs11 { setting, detail }) => {
            assert_eq!(setting, PKCS11_TOKEN_SETTING);
            assert!(detail.contains("no-such-token"), "{detail}");
        }
        other => panic!("an unknown token must be refused, got {other:?}"),
    }
}

#[test]
fn pkcs11_second_provider_shares_epochs_and_wraps() {
    let Some(hsm) = hsm() else { return };
    let first = open_pkcs11(hsm, "shared");
    ok(first.create_epoch(1));
    ok(first.create_epoch(2));
    let id = KeyId::new_random();
    let wrapped = ok(first.wrap(2, id, &dek(3)));
    let second = open_pkcs11(hsm, "shared");
    assert_eq!(ok(second.epochs()), vec![1, 2]);
    assert_eq!(ok(second.unwrap(2, id, &wrapped)).expose_secret(), &[3u8; 32]);
    // Creating an existing epoch through the second one keeps the first one's key.
    ok(second.create_epoch(2));
    assert_eq!(ok(first.unwrap(2, id, &wrapped)).expose_secret(), &[3u8; 32]);
    // The first one closing does not log the second one out.
    drop(first);
    assert_eq!(ok(second.unwrap(2, id, &wrapped)).expose_secret(), &[3u8; 32]);
    // Another prefix sees none of these epochs.
    assert_eq!(ok(open_pkcs11(hsm, "shared-other").epochs()), Vec::<Epoch>::new());
}

/// An epoch another process destroyed leaves this process's memory at the next listing (each
/// vault tick lists the epochs), so a KEK kept in memory does not outlive its file.
#[test]
fn file_epoch_destroyed_elsewhere_leaves_memory_at_the_next_listing() {
    let (_tmp, keks) = keys_dir();
    ok(keks.create_epoch(1));
    let id = KeyId::new_random();
    let wrapped = ok(keks.wrap(1, id, &dek(7)));
    let elsewhere = ok(FileKeks::open(keks.dir()));
    ok(elsewhere.destroy_epoch(1));
    assert_eq!(ok(keks.epochs()), Vec::<Epoch>::new());
    assert!(matches!(
        keks.unwrap(1, id, &wrapped),
        Err(KekError::EpochMissing { epoch: 1, .. })
    ));
}

/// A label is the prefix and the epoch's digits, so a prefix ending in a digit (`…-1` with
/// epoch 2 reads as `…-` with epoch 12) is refused, naming its setting.
#[test]
fn pkcs11_label_prefix_ending_in_a_digit_is_refused() {
    let Some(hsm) = hsm() else { return };
    let mut config = softhsm::config(hsm, "digit");
    config.label_prefix = "lethe-kek-digit-1".into();
    let Err(error) = Pkcs11Keks::open(config) else {
        panic!("a prefix ending in a digit was accepted");
    };
    assert!(error.to_string().contains("LETHE_PKCS11_LABEL_PREFIX"), "{error}");
}
