//! SoftHSM2 for the PKCS#11 tests: one throw-away token per test process.
//!
//! SoftHSM reads its configuration (`SOFTHSM2_CONF`) and its list of tokens when the module is
//! initialized, which happens once per process. So [`softhsm`] writes a configuration pointing
//! at a fresh token directory, sets `SOFTHSM2_CONF`, and creates the one token with
//! `softhsm2-util`, all before any test loads the module. Tests share that token and keep out
//! of each other's way with their own KEK label prefix ([`config`]).
//!
//! Without SoftHSM2 the PKCS#11 tests skip (saying so on stderr), except in CI (`CI` set), where
//! they fail: CI installs it (`.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use lethe_keyvault::{Pkcs11Config, Pkcs11Keks};
use zeroize::Zeroizing;

/// Overrides the module path (default: Debian's SoftHSM2).
pub const MODULE_ENV: &str = "LETHE_TEST_PKCS11_MODULE";
const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const UTIL: &str = "softhsm2-util";
/// The test token's label and PINs (a throw-away token: the PINs guard nothing).
pub const TOKEN_LABEL: &str = "lethe-test";
pub const PIN: &str = "lethe-test-user-pin";
const SO_PIN: &str = "lethe-test-so-pin";
/// Token directories live in `target/tmp/lethe-softhsm-*`.
const TOKEN_DIR_PREFIX: &str = "lethe-softhsm-";
/// A token directory this old is a leftover: a process's lives as long as the process.
const TOKEN_DIR_AGE_MAX: Duration = Duration::from_secs(3600);

/// The test process's token.
#[derive(Debug)]
pub struct SoftHsm {
    pub module: PathBuf,
    /// The token directory and configuration; kept for the life of the process.
    _dir: tempfile::TempDir,
}

/// The process's SoftHSM token, created on first use; `None` (the test should return) where
/// SoftHSM2 is absent outside CI.
pub fn softhsm() -> Option<&'static SoftHsm> {
    static HSM: OnceLock<Option<SoftHsm>> = OnceLock::new();
    HSM.get_or_init(set_up).as_ref()
}

/// A configuration for the test token, with a KEK label prefix of the test's own
/// (`lethe-kek-<test>-`), so tests running at once never see each other's epochs.
pub fn config(hsm: &SoftHsm, test: &str) -> Pkcs11Config {
    let mut config = Pkcs11Config::new(hsm.module.clone(), Zeroizing::new(PIN.to_owned()));
    config.token_label = Some(TOKEN_LABEL.to_owned());
    config.label_prefix = format!("lethe-kek-{test}-");
    config
}

/// A logged-in read-write session on the test token of our own, to look at (or plant) key
/// objects as any other program on the token could.
///
/// Takes an open provider as a witness: login state belongs to the process, so with a provider
/// open this session joins its login instead of logging in itself. A login made here, unseen
/// by the providers, would let a provider opened meanwhile with a wrong PIN pass unchecked
/// (the token answers "already logged in") and break the wrong-PIN test running alongside.
pub fn session(hsm: &SoftHsm, _logged_in: &Pkcs11Keks) -> Session {
    let ctx = Pkcs11::new(&hsm.module).unwrap_or_else(|e| panic!("{e}"));
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slots = ctx.get_slots_with_token().unwrap_or_else(|e| panic!("{e}"));
    let slot = slots
        .into_iter()
        .find(|slot| ctx.get_token_info(*slot).is_ok_and(|info| info.label() == TOKEN_LABEL))
        .unwrap_or_else(|| panic!("no token labelled {TOKEN_LABEL}"));
    let session = ctx.open_rw_session(slot).unwrap_or_else(|e| panic!("{e}"));
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        other => panic!("the provider's login should cover this session, got {other:?}"),
    }
    session
}

fn set_up() -> Option<SoftHsm> {
    let module = std::env::var_os(MODULE_ENV).map_or_else(|| PathBuf::from(DEFAULT_MODULE), PathBuf::from);
    let util_runs = Command::new(UTIL)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !module.is_file() || !util_runs {
        let why = format!(
            "SoftHSM2 not found (module {}: {}; {UTIL}: {}); install Debian's softhsm2 or set {MODULE_ENV}",
            module.display(),
            if module.is_file() { "found" } else { "missing" },
            if util_runs { "found" } else { "missing" },
        );
        if std::env::var_os("CI").is_some() {
            panic!("{why}: in CI the PKCS#11 tests must run");
        }
        eprintln!("PKCS#11 tests skipped: {why}");
        return None;
    }
    remove_old_token_dirs();
    let dir = tempfile::Builder::new()
        .prefix(TOKEN_DIR_PREFIX)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap_or_else(|e| panic!("temp dir for SoftHSM: {e}"));
    let conf = write_config(dir.path());
    set_conf_env(&conf);
    let out = Command::new(UTIL)
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {UTIL}: {e}"));
    assert!(
        out.status.success(),
        "{UTIL} --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(SoftHsm { module, _dir: dir })
}

/// Removes the token directories of earlier test processes (statics are never dropped, so each
/// process leaves its own behind), sparing any young enough to belong to a run still going.
fn remove_old_token_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > TOKEN_DIR_AGE_MAX));
        if old && entry.file_name().to_string_lossy().starts_with(TOKEN_DIR_PREFIX) {
            // Best effort: a leftover only costs a few kilobytes.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `<dir>/softhsm2.conf`, with the tokens in `<dir>/tokens`.
fn write_config(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap_or_else(|e| panic!("{}: {e}", tokens.display()));
    let conf = dir.join("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    conf
}

#[allow(unsafe_code)] // `std::env::set_var`, once, before any PKCS#11 module is initialized.
fn set_conf_env(conf: &Path) {
    // SAFETY: set once per process inside a `OnceLock` initializer; SoftHSM reads it (getenv)
    // only when initialized, which every test does after this returns. No other test reads or
    // writes this variable.
    unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
}
