//! KEK sources: file permissions and length, creation, base64 from the environment.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use lethe_keyvault::{Kek, KekError};

fn write_file(path: &std::path::Path, bytes: &[u8], mode: u32) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    f.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn kek_file_with_group_or_other_access_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kek.key");
    for mode in [0o644, 0o640, 0o604, 0o660, 0o666] {
        write_file(&path, &[1u8; 32], mode);
        assert!(
            matches!(Kek::from_file(&path), Err(KekError::Permissions { .. })),
            "mode {mode:o} must be refused"
        );
        assert!(Kek::load_or_create(&path).is_err(), "load_or_create must refuse too");
    }
    write_file(&path, &[1u8; 32], 0o600);
    assert!(Kek::from_file(&path).is_ok());
    write_file(&path, &[1u8; 32], 0o400);
    assert!(Kek::from_file(&path).is_ok());
}

#[test]
fn kek_file_of_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kek.key");
    for len in [0usize, 16, 31, 33, 64] {
        write_file(&path, &vec![1u8; len], 0o600);
        match Kek::from_file(&path) {
            Err(KekError::WrongLength { len: got, .. }) => assert_eq!(got, len.min(33)),
            other => panic!("length {len} must be refused, got {other:?}"),
        }
    }
    assert!(matches!(
        Kek::from_file(dir.path().join("missing")),
        Err(KekError::Io { .. })
    ));
}

#[test]
fn load_or_create_makes_a_0600_file_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kek.key");
    let created = Kek::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let loaded = Kek::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.expose_secret(), loaded.expose_secret());
    assert_ne!(created.expose_secret(), &[0u8; 32]);
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 1);
}

#[test]
#[allow(unsafe_code)] // `std::env::set_var`, on variables no other thread touches.
fn kek_from_base64_env() {
    // Unique variable names: tests run in parallel threads of one process.
    let var = "LETHE_TEST_KEK_B64_OK";
    let b64 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    // SAFETY: no other thread reads or writes these test-only variables.
    unsafe { std::env::set_var(var, b64) };
    let k = Kek::from_base64_env(var).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.expose_secret(), &[1u8; 32]);
    let short = "LETHE_TEST_KEK_B64_SHORT";
    unsafe { std::env::set_var(short, "AQEB") };
    assert!(matches!(
        Kek::from_base64_env(short),
        Err(KekError::WrongLength { len: 3, .. })
    ));
    let junk = "LETHE_TEST_KEK_B64_JUNK";
    unsafe { std::env::set_var(junk, "not base64!") };
    assert!(matches!(Kek::from_base64_env(junk), Err(KekError::EnvNotBase64 { .. })));
    assert!(matches!(
        Kek::from_base64_env("LETHE_TEST_KEK_B64_UNSET"),
        Err(KekError::EnvMissing { .. })
    ));
}
