//! The `pkcs11` KEK provider: each epoch's KEK is an AES-256 key object generated inside an HSM
//! token and used there through its PKCS#11 module (SoftHSM2 in tests). Wrapping and unwrapping
//! are `C_Encrypt`/`C_Decrypt` calls on the token; the KEK never leaves it.
//!
//! A wrapped DEK has exactly the layout a file KEK produces (AES-256-GCM, associated data = the
//! key id's 16 bytes, 128-bit tag), so `SECURITY.md` documents one format:
//!
//! ```text
//! 0x01 ‖ IV (12 bytes, OS random) ‖ ciphertext (32) ‖ tag (16)
//! ```
//!
//! Key objects: `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` true, `CKA_EXTRACTABLE` false,
//! `CKA_ENCRYPT`/`CKA_DECRYPT` true (and no other use), `CKA_LABEL` = `<prefix><epoch>` (decimal),
//! `CKA_ID` = the epoch as 4 big-endian bytes. Objects whose label does not start with the prefix
//! are never listed, used or destroyed.
//!
//! Architecture invariant: no KEK bytes ever exist in this process, and the PIN appears in no
//! error, log line or `Debug` output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::{Epoch, KekError, KekProvider};
use crate::envelope::{self, NONCE_LEN, TAG_LEN};
use crate::keys::{Dek, KEY_LEN, KeyId, fill_random};

/// The setting naming the PKCS#11 module (a shared library), in errors about loading it.
pub const PKCS11_MODULE_SETTING: &str = "LETHE_PKCS11_MODULE";
/// The setting naming the token by label, in errors about finding it.
pub const PKCS11_TOKEN_SETTING: &str = "LETHE_PKCS11_TOKEN";
/// The setting naming the token by slot id, in errors about finding it.
pub const PKCS11_SLOT_SETTING: &str = "LETHE_PKCS11_SLOT";
/// The setting naming the file that holds the user PIN, in errors about logging in.
pub const PKCS11_PIN_FILE_SETTING: &str = "LETHE_PKCS11_PIN_FILE";
/// The setting for [`Pkcs11Config::label_prefix`], in errors about it.
pub const PKCS11_LABEL_PREFIX_SETTING: &str = "LETHE_PKCS11_LABEL_PREFIX";
/// The default start of every KEK object's label: `lethe-kek-<epoch>`.
pub const DEFAULT_LABEL_PREFIX: &str = "lethe-kek-";

/// The provider's name in logs, reports and errors.
const KIND: &str = "pkcs11";
/// The longest PIN file read: PKCS#11 PINs are short; a larger file is not a PIN file.
const PIN_FILE_LEN_MAX: usize = 256;
/// The GCM tag length, in bits, as the envelope format has it.
const TAG_BITS: usize = TAG_LEN * 8;
/// A wrapped DEK: `0x01 ‖ IV ‖ ciphertext ‖ tag`.
const WRAPPED_LEN: usize = envelope::OVERHEAD + KEY_LEN;

/// Where the token is and how to log in to it.
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label. With neither this nor `slot`, the module must offer exactly one
    /// initialized token.
    pub token_label: Option<String>,
    /// The token's slot id (with `token_label` too, both must match).
    pub slot: Option<u64>,
    /// The user PIN ([`Pkcs11Config::pin_from_file`]).
    pub pin: Zeroizing<String>,
    /// The start of every KEK object's label ([`DEFAULT_LABEL_PREFIX`]); vaults sharing a token
    /// need different prefixes. Must not be empty.
    pub label_prefix: String,
}

// Hand-written: the PIN must never reach a log through `{:?}`.
impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("pin", &"<redacted>")
            .field("label_prefix", &self.label_prefix)
            .finish()
    }
}

impl Pkcs11Config {
    /// A configuration for `module` and `pin`: no token label or slot (the module's only
    /// token), the default label prefix.
    pub fn new(module: impl Into<PathBuf>, pin: Zeroizing<String>) -> Pkcs11Config {
        Pkcs11Config {
            module: module.into(),
            token_label: None,
            slot: None,
            pin,
            label_prefix: DEFAULT_LABEL_PREFIX.to_owned(),
        }
    }

    /// Reads a user PIN from a PIN file (`LETHE_PKCS11_PIN_FILE`): UTF-8, one trailing newline
    /// (`\n` or `\r\n`) removed, not empty. Refused, like a KEK file, if it is not a regular
    /// file or is accessible by group or others. Errors name the file, never its content.
    pub fn pin_from_file(path: &Path) -> Result<Zeroizing<String>, KekError> {
        let refuse = |detail: String| pin_error(format!("PIN file {}: {detail}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| refuse(e.to_string()))?;
        let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "has mode {mode:04o}; it must not be accessible by group or others (chmod 600)"
            )));
        }
        // Pre-sized and read at most one byte past the limit, so the PIN is never reallocated
        // (which would leave an unwiped copy) and an oversized file is detected.
        let mut bytes = Zeroizing::new(Vec::with_capacity(PIN_FILE_LEN_MAX + 1));
        file.take(PIN_FILE_LEN_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refuse(e.to_string()))?;
        if bytes.len() > PIN_FILE_LEN_MAX {
            return Err(refuse(format!("longer than {PIN_FILE_LEN_MAX} bytes")));
        }
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(refuse("empty".into()));
        }
        // `from_utf8` keeps the same allocation; on failure its bytes are wiped here.
        match String::from_utf8(std::mem::take(&mut *bytes)) {
            Ok(pin) => Ok(Zeroizing::new(pin)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(refuse("not UTF-8".into()))
            }
        }
    }
}

/// A provider's session, locked, with the module's lock held too.
struct Locked<'a> {
    _module: MutexGuard<'a, ()>,
    session: MutexGuard<'a, Session>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

/// KEKs held in an HSM token, one AES-256 key object per epoch (see the module docs).
///
/// One logged-in read-write session per provider, behind a mutex: a PKCS#11 session runs one
/// operation at a time. Key objects are looked up by label on every call rather than cached,
/// so an epoch destroyed by another process is seen at once.
pub struct Pkcs11Keks {
    session: Mutex<Session>,
    /// The process's entry for the module, shared with every other provider on it.
    shared: Arc<Module>,
    module: PathBuf,
    slot: u64,
    label_prefix: String,
    /// The setting that chose the token, named in errors about it.
    token_setting: &'static str,
}

// Hand-written: the session handle is of no use in a log; the PIN is not kept at all.
impl fmt::Debug for Pkcs11Keks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Keks")
            .field("module", &self.module)
            .field("slot", &self.slot)
            .field("label_prefix", &self.label_prefix)
            .finish()
    }
}

impl Pkcs11Keks {
    /// Loads the module (once per process), finds the token, opens a read-write session and
    /// logs in as the user. Errors are [`KekError::Pkcs11`] naming the setting to check:
    /// [`PKCS11_MODULE_SETTING`] (missing or unloadable module), [`PKCS11_TOKEN_SETTING`] or
    /// [`PKCS11_SLOT_SETTING`] (no such token), [`PKCS11_PIN_FILE_SETTING`] (PIN refused).
    ///
    /// Login state belongs to the whole process, not to one session: a second provider on a
    /// token this process is already logged in to is accepted only with the same PIN.
    pub fn open(config: Pkcs11Config) -> Result<Pkcs11Keks, KekError> {
        if config.label_prefix.is_empty() {
            return Err(KekError::Pkcs11 {
                setting: PKCS11_LABEL_PREFIX_SETTING,
                detail: "the KEK label prefix must not be empty".into(),
            });
        }
        // A label is the prefix and the epoch's digits: a prefix ending in a digit would let
        // one vault take another's epochs (prefix `k-1`, epoch 2, reads as prefix `k-`, epoch 12).
        if config.label_prefix.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(KekError::Pkcs11 {
                setting: PKCS11_LABEL_PREFIX_SETTING,
                detail: "the KEK label prefix must not end in a digit".into(),
            });
        }
        let module = Module::get(&config.module)?;
        let (slot, token_setting) = select_slot(&module.ctx, &config)?;
        let token_error = |what: &str, e: CkError| KekError::Pkcs11 {
            setting: token_setting,
            detail: format!("{what} (slot {}): {e}", slot.id()),
        };
        let session = module
            .ctx
            .open_rw_session(slot)
            .map_err(|e| token_error("opening a read-write session", e))?;
        module.login(&session, slot.id(), &config.pin)?;
        Ok(Pkcs11Keks {
            session: Mutex::new(session),
            shared: module,
            module: config.module,
            slot: slot.id(),
            label_prefix: config.label_prefix,
            token_setting,
        })
    }

    /// The label of `epoch`'s key object.
    fn label(&self, epoch: Epoch) -> String {
        format!("{}{epoch}", self.label_prefix)
    }

    /// Every key object labelled for `epoch`: usually one, two if processes raced to create it.
    fn find_epoch(&self, session: &Session, epoch: Epoch) -> Result<Vec<ObjectHandle>, KekError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(self.label(epoch).into_bytes()),
        ];
        session
            .find_objects(&template)
            .map_err(|e| self.token_error("finding a KEK object", e))
    }

    /// The session, with the process's lock on the module (see `Module::operations`). A panic
    /// while they were held leaves no half-done state behind (each PKCS#11 call is complete or
    /// failed), so poisoned locks are still usable.
    fn lock(&self) -> Locked<'_> {
        let module = self.shared.operations.lock().unwrap_or_else(PoisonError::into_inner);
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        Locked {
            _module: module,
            session,
        }
    }

    fn token_error(&self, what: &str, e: CkError) -> KekError {
        KekError::Pkcs11 {
            setting: self.token_setting,
            detail: format!("{what} (slot {}): {e}", self.slot),
        }
    }
}

impl KekProvider for Pkcs11Keks {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn manages_epochs(&self) -> bool {
        true
    }

    fn epochs(&self) -> Result<Vec<Epoch>, KekError> {
        let session = self.lock();
        let objects = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(true)])
            .map_err(|e| self.token_error("listing the KEK objects", e))?;
        let mut epochs = BTreeSet::new();
        for object in objects {
            let attributes = match session.get_attributes(object, &[AttributeType::Label]) {
                Ok(attributes) => attributes,
                // Destroyed by another process since it was found.
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                Err(e) => return Err(self.token_error("reading a key object's label", e)),
            };
            for attribute in attributes {
                if let Attribute::Label(label) = attribute
                    && let Some(epoch) = parse_label(&self.label_prefix, &label)
                {
                    epochs.insert(epoch);
                }
            }
        }
        Ok(epochs.into_iter().collect())
    }

    /// Idempotent within a process (the session lock orders the look-up and the generation).
    /// Two processes racing for one epoch can each create an object with its label; both then
    /// stay usable, as [`KekProvider::unwrap`] tries every object of an epoch and
    /// [`KekProvider::destroy_epoch`] destroys them all.
    fn create_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        let session = self.lock();
        if !self.find_epoch(&session, epoch)?.is_empty() {
            return Ok(());
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::new(KEY_LEN as _)),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(self.label(epoch).into_bytes()),
            Attribute::Id(epoch.to_be_bytes().to_vec()),
        ];
        session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| self.token_error(&format!("generating the KEK of epoch {epoch}"), e))?;
        Ok(())
    }

    fn destroy_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        let session = self.lock();
        for object in self.find_epoch(&session, epoch)? {
            match session.destroy_object(object) {
                // Destroyed by another process since it was found: just as good.
                Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                Err(e) => return Err(self.token_error(&format!("destroying the KEK of epoch {epoch}"), e)),
            }
        }
        Ok(())
    }

    fn wrap(&self, epoch: Epoch, id: KeyId, dek: &Dek) -> Result<Vec<u8>, KekError> {
        let session = self.lock();
        let Some(&key) = self.find_epoch(&session, epoch)?.first() else {
            return Err(KekError::EpochMissing { provider: KIND, epoch });
        };
        let mut iv = [0u8; NONCE_LEN];
        fill_random(&mut iv).map_err(|_| KekError::Random)?;
        let failed = |e| self.token_error(&format!("wrapping a key under KEK epoch {epoch}"), e);
        // The token could in principle write back an IV of its own: `iv` is read after the call.
        let sealed = {
            let params = GcmParams::new(&mut iv, id.0.as_bytes(), Ulong::new(TAG_BITS as _)).map_err(failed)?;
            session
                .encrypt(&Mechanism::AesGcm(params), key, dek.expose_secret())
                .map_err(failed)?
        };
        if sealed.len() != KEY_LEN + TAG_LEN {
            return Err(KekError::Pkcs11 {
                setting: self.token_setting,
                detail: format!(
                    "the token's AES-GCM output has {} bytes, not {}",
                    sealed.len(),
                    KEY_LEN + TAG_LEN
                ),
            });
        }
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.push(envelope::VERSION);
        wrapped.extend_from_slice(&iv);
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    fn unwrap(&self, epoch: Epoch, id: KeyId, wrapped: &[u8]) -> Result<Dek, KekError> {
        let session = self.lock();
        let keys = self.find_epoch(&session, epoch)?;
        if keys.is_empty() {
            return Err(KekError::EpochMissing { provider: KIND, epoch });
        }
        if wrapped.len() != WRAPPED_LEN || wrapped.first() != Some(&envelope::VERSION) {
            return Err(KekError::Unwrap { epoch });
        }
        let (iv_bytes, sealed) = wrapped[1..].split_at(NONCE_LEN);
        for key in keys {
            let mut iv = [0u8; NONCE_LEN];
            iv.copy_from_slice(iv_bytes);
            let params = GcmParams::new(&mut iv, id.0.as_bytes(), Ulong::new(TAG_BITS as _))
                .map_err(|e| self.token_error("preparing AES-GCM", e))?;
            match session.decrypt(&Mechanism::AesGcm(params), key, sealed) {
                Ok(plain) => {
                    let plain = Zeroizing::new(plain);
                    return Dek::from_slice(&plain).map_err(|_| KekError::Unwrap { epoch });
                }
                Err(e) if token_failed(&e) => {
                    return Err(self.token_error(&format!("unwrapping a key under KEK epoch {epoch}"), e));
                }
                // Not this object's wrap (or damaged bytes): try the epoch's next object.
                Err(_) => {}
            }
        }
        Err(KekError::Unwrap { epoch })
    }
}

/// Whether a failed call says the token or session is unusable (rather than that the
/// ciphertext did not authenticate).
fn token_failed(e: &CkError) -> bool {
    match e {
        CkError::Pkcs11(rv, _) => matches!(
            rv,
            RvError::CryptokiNotInitialized
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::HostMemory
                | RvError::OperationActive
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
        ),
        _ => true,
    }
}

/// The epoch of a key object labelled `<prefix><epoch>` (decimal, as [`Pkcs11Keks`] writes it:
/// no sign, no leading zeros), or `None` for any other label.
fn parse_label(prefix: &str, label: &[u8]) -> Option<Epoch> {
    let digits = std::str::from_utf8(label).ok()?.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// A PKCS#11 module loaded and initialized in this process. A module may be initialized only
/// once per process, so every provider on one module shares this entry.
struct Module {
    ctx: Pkcs11,
    /// Per slot, a keyed digest of the PIN this process last logged in with: login state is
    /// per process, so a later provider's wrong PIN is caught here when the token answers
    /// "already logged in".
    logins: Mutex<HashMap<u64, [u8; 32]>>,
    /// Held around every call a provider makes on the module: SoftHSM2 answered
    /// `CKR_GENERAL_ERROR` to key generation while other sessions of the process used the
    /// token (providers in parallel threads). A process normally has one provider, whose
    /// session runs one operation at a time anyway, so this costs nothing there.
    operations: Mutex<()>,
}

/// The modules loaded so far, by path (canonical where it resolves). Never emptied: modules
/// stay loaded and initialized for the life of the process.
static MODULES: Mutex<BTreeMap<PathBuf, Arc<Module>>> = Mutex::new(BTreeMap::new());

impl Module {
    /// The module at `path`, loaded and initialized on first use.
    fn get(path: &Path) -> Result<Arc<Module>, KekError> {
        let refuse = |detail: String| KekError::Pkcs11 {
            setting: PKCS11_MODULE_SETTING,
            detail,
        };
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = modules.get(&key) {
            return Ok(Arc::clone(module));
        }
        if !path.is_file() {
            return Err(refuse(format!("no module file at {}", path.display())));
        }
        let ctx = Pkcs11::new(path).map_err(|e| refuse(format!("cannot load {}: {e}", path.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Already initialized by other code in this process (e.g. through another path to
            // the same library): usable as it is.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(refuse(format!("cannot initialize {}: {e}", path.display()))),
        }
        let module = Arc::new(Module {
            ctx,
            logins: Mutex::new(HashMap::new()),
            operations: Mutex::new(()),
        });
        modules.insert(key, Arc::clone(&module));
        Ok(module)
    }

    /// Logs `session` in as the user (see [`Pkcs11Keks::open`] on login state).
    fn login(&self, session: &Session, slot: u64, pin: &Zeroizing<String>) -> Result<(), KekError> {
        let tag = pin_tag(pin)?;
        let auth = AuthPin::from(pin.as_str());
        // Held across the login, so the recorded digest always matches the login state.
        let mut logins = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => {
                logins.insert(slot, tag);
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => match logins.get(&slot) {
                Some(known) if !bool::from(known.ct_eq(&tag)) => Err(pin_error(
                    "this process is logged in to the token with a different PIN".into(),
                )),
                _ => Ok(()),
            },
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                Err(pin_error("the token refused the PIN".into()))
            }
            Err(CkError::Pkcs11(RvError::PinExpired, _)) => {
                Err(pin_error("the token refused the PIN: it has expired".into()))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(pin_error("the token's user PIN is locked".into())),
            Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(pin_error(
                "the token has no user PIN yet (set one with its SO PIN)".into(),
            )),
            // cryptoki's errors name the call and the return value, never the PIN.
            Err(e) => Err(pin_error(format!("logging in to the token failed: {e}"))),
        }
    }
}

/// Picks the one initialized token that the label and slot settings describe, and the setting
/// to name in errors about it.
fn select_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, &'static str), KekError> {
    let setting = match (&config.token_label, config.slot) {
        (None, Some(_)) => PKCS11_SLOT_SETTING,
        _ => PKCS11_TOKEN_SETTING,
    };
    let refuse = |detail: String| KekError::Pkcs11 { setting, detail };
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| refuse(format!("listing the module's slots: {e}")))?;
    let mut found = Vec::new();
    for slot in slots {
        if config.slot.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| refuse(format!("reading the token of slot {}: {e}", slot.id())))?;
        if !info.token_initialized() {
            continue;
        }
        if config.token_label.as_deref().is_some_and(|label| label != info.label()) {
            continue;
        }
        found.push(slot);
    }
    match found.as_slice() {
        [slot] => Ok((*slot, setting)),
        [] => Err(refuse(match (&config.token_label, config.slot) {
            (Some(label), Some(id)) => format!("no initialized token labelled {label:?} in slot {id}"),
            (Some(label), None) => format!("no initialized token labelled {label:?}"),
            (None, Some(id)) => format!("no initialized token in slot {id}"),
            (None, None) => "the module offers no initialized token".into(),
        })),
        many => {
            let ids: Vec<u64> = many.iter().map(Slot::id).collect();
            Err(refuse(format!(
                "{} tokens match (slots {ids:?}); choose one with {PKCS11_TOKEN_SETTING} or {PKCS11_SLOT_SETTING}",
                many.len()
            )))
        }
    }
}

/// `HMAC-SHA256(per-process random key, PIN)`: compares PINs without keeping one.
fn pin_tag(pin: &str) -> Result<[u8; 32], KekError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = match KEY.get() {
        Some(key) => key,
        None => {
            let mut fresh = [0u8; 32];
            fill_random(&mut fresh).map_err(|_| KekError::Random)?;
            // A racing thread's key may win; either is as good, as long as all use the same.
            KEY.get_or_init(|| fresh)
        }
    };
    Ok(envelope::hmac_sha256(key, pin.as_bytes()))
}

fn pin_error(detail: String) -> KekError {
    KekError::Pkcs11 {
        setting: PKCS11_PIN_FILE_SETTING,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_only_as_written() {
        let prefix = DEFAULT_LABEL_PREFIX;
        for epoch in [0, 1, 42, Epoch::MAX] {
            assert_eq!(parse_label(prefix, format!("{prefix}{epoch}").as_bytes()), Some(epoch));
        }
        for other in [
            "lethe-kek-",
            "lethe-kek-01",
            "lethe-kek-+1",
            "lethe-kek-1a",
            "lethe-kek-other-1",
            "lethe-kek-4294967296",
            "other-1",
            "LETHE-KEK-1",
        ] {
            assert_eq!(parse_label(prefix, other.as_bytes()), None, "{other}");
        }
        assert_eq!(parse_label(prefix, b"lethe-kek-\xff"), None);
    }

    #[test]
    fn pin_files_are_checked_and_trimmed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("pin");
        let write = |content: &[u8], mode: u32| {
            std::fs::write(&path, content).unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("{e}"));
        };
        for (content, pin) in [
            (&b"1234\n"[..], "1234"),
            (b"1234\r\n", "1234"),
            (b"1234", "1234"),
            (b" 12 34 \n", " 12 34 "),
        ] {
            write(content, 0o600);
            let got = Pkcs11Config::pin_from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.as_str(), pin);
        }
        let refused = |content: &[u8], mode: u32| {
            write(content, mode);
            match Pkcs11Config::pin_from_file(&path) {
                Err(KekError::Pkcs11 { setting, detail }) => {
                    assert_eq!(setting, PKCS11_PIN_FILE_SETTING);
                    assert!(detail.contains(&path.display().to_string()), "{detail}");
                    assert!(!detail.contains("secretpin"), "{detail}");
                    detail
                }
                other => panic!("{other:?}"),
            }
        };
        assert!(refused(b"secretpin\n", 0o640).contains("mode 0640"));
        assert!(refused(b"secretpin\n", 0o604).contains("mode 0604"));
        assert!(refused(b"\n", 0o600).contains("empty"));
        assert!(refused(b"secretpin\xff", 0o600).contains("UTF-8"));
        assert!(refused(&[b'1'; PIN_FILE_LEN_MAX + 1], 0o600).contains("longer"));
        write(&[b'1'; PIN_FILE_LEN_MAX], 0o600);
        assert!(Pkcs11Config::pin_from_file(&path).is_ok());
    }

    #[test]
    fn debug_redacts_the_pin() {
        let config = Pkcs11Config::new("/nonexistent.so", Zeroizing::new("secretpin".to_owned()));
        let shown = format!("{config:?}");
        assert!(!shown.contains("secretpin"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
