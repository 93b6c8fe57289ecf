//! The `file` KEK provider: one KEK file per epoch in the **keys directory**
//! (`--keys-dir` / `LETHE_KEYS_DIR`), the directory kept apart from the data directory so that a
//! backup of the data never carries the keys that unwrap it.
//!
//! Layout: `kek-<epoch, 10 zero-padded digits>.key`, each exactly 32 raw random bytes, mode
//! `0600`: the format of the legacy single `kek.key` ([`Kek::from_file`] reads either). Other
//! files in the directory (the erasure journal, temporary files) are not KEKs and are ignored.
//!
//! Architecture invariant: a KEK file is only ever created whole (written and synced under a
//! temporary name, then hard-linked into place) and never rewritten: an epoch's KEK either
//! exists with its final bytes or not at all, and destroying an epoch is deleting its file.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use subtle::ConstantTimeEq as _;

use super::{Epoch, Kek, KekError, KekProvider};
use crate::envelope::EnvelopeError;
use crate::keys::{Dek, KeyId, fill_random};

/// The provider's name in logs, reports and errors.
const KIND: &str = "file";
/// KEK file names: `kek-` ‖ the epoch as [`EPOCH_DIGITS`] decimal digits ‖ `.key`.
const FILE_PREFIX: &str = "kek-";
const FILE_SUFFIX: &str = ".key";
/// Enough digits for every `u32`, so names sort like the epochs they hold.
const EPOCH_DIGITS: usize = 10;

/// The KEKs of a keys directory, one file per epoch (see the module docs).
///
/// An epoch's KEK is read from its file once and then kept in memory (zeroized when the epoch
/// is destroyed or the provider dropped). An epoch whose file another process deleted leaves
/// this process's memory the next time the epochs are listed (each vault tick lists them).
pub struct FileKeks {
    dir: PathBuf,
    /// Loaded KEKs. The lock is held while a file is read, written or deleted, so a destroy
    /// never races a load that would bring the destroyed KEK back into memory.
    loaded: Mutex<HashMap<Epoch, Arc<Kek>>>,
}

// Hand-written: shows where the keys are and which epochs are loaded, never key bytes.
impl fmt::Debug for FileKeks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("FileKeks");
        debug.field("dir", &self.dir);
        // `try_lock`: formatting must never wait for (or deadlock on) a file operation.
        match self.loaded.try_lock() {
            Ok(loaded) => {
                let mut epochs: Vec<Epoch> = loaded.keys().copied().collect();
                epochs.sort_unstable();
                debug.field("loaded_epochs", &epochs)
            }
            Err(_) => debug.field("loaded_epochs", &"<busy>"),
        };
        debug.finish()
    }
}

impl FileKeks {
    /// Opens an existing keys directory. Refused ([`KekError::KeysDir`], naming the path) if it
    /// is missing, is not a directory, or is accessible by group or others: a KEK directory
    /// others can list or enter is as exposed as a readable KEK file.
    pub fn open(dir: &Path) -> Result<FileKeks, KekError> {
        let keys_dir = |detail: String| KekError::KeysDir {
            path: dir.to_path_buf(),
            detail,
        };
        let meta = std::fs::metadata(dir).map_err(|e| keys_dir(e.to_string()))?;
        if !meta.is_dir() {
            return Err(keys_dir("not a directory".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(keys_dir(format!(
                "has mode {mode:04o}; it must not be accessible by group or others (chmod 700)"
            )));
        }
        Ok(FileKeks {
            dir: dir.to_path_buf(),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// Creates the keys directory (and its missing parents) with mode `0700` if it does not
    /// exist, then [`FileKeks::open`]s it. An existing directory is never re-permissioned: one
    /// open to group or others is refused, not silently fixed.
    pub fn create_dir(dir: &Path) -> Result<FileKeks, KekError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| KekError::KeysDir {
                path: dir.to_path_buf(),
                detail: format!("cannot create it: {e}"),
            })?;
        FileKeks::open(dir)
    }

    /// The keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `epoch`'s KEK: `<dir>/kek-<epoch, 10 digits>.key`.
    pub fn epoch_path(&self, epoch: Epoch) -> PathBuf {
        self.dir.join(epoch_file_name(epoch))
    }

    /// Writes a given KEK as `epoch`'s file (atomically, mode `0600`): moves a legacy
    /// `kek.key` into the keys directory (`lethe keyvault move-keys`). Idempotent: if the
    /// epoch's file already holds exactly these bytes, nothing changes; if it holds a different
    /// KEK, [`KekError::Mismatch`] and the file is kept.
    pub fn import(&self, epoch: Epoch, kek: &Kek) -> Result<(), KekError> {
        let path = self.epoch_path(epoch);
        let mut loaded = self.lock();
        let existing = match Kek::from_file(&path) {
            Ok(existing) => Some(existing),
            Err(KekError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let existing = match existing {
            Some(existing) => existing,
            None => match write_key_file(&self.dir, &path, kek.expose_secret())? {
                Created::New => return Ok(()),
                // Another process created the epoch meanwhile: compare with what it wrote.
                Created::AlreadyThere => Kek::from_file(&path)?,
            },
        };
        if bool::from(existing.expose_secret().ct_eq(kek.expose_secret())) {
            loaded.entry(epoch).or_insert_with(|| Arc::new(existing));
            Ok(())
        } else {
            Err(KekError::Mismatch(format!(
                "{} already holds a different KEK for epoch {epoch}; it was not replaced",
                path.display()
            )))
        }
    }

    /// The epoch's KEK: from memory, else read from its file and kept.
    fn kek(&self, epoch: Epoch) -> Result<Arc<Kek>, KekError> {
        let mut loaded = self.lock();
        if let Some(kek) = loaded.get(&epoch) {
            return Ok(Arc::clone(kek));
        }
        let kek = match Kek::from_file(self.epoch_path(epoch)) {
            Ok(kek) => Arc::new(kek),
            Err(KekError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(KekError::EpochMissing { provider: KIND, epoch });
            }
            Err(e) => return Err(e),
        };
        loaded.insert(epoch, Arc::clone(&kek));
        Ok(kek)
    }

    /// The loaded KEKs. A panic while the lock was held cannot leave the map half-updated
    /// (every critical section changes it in one call), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<Epoch, Arc<Kek>>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dir_error(&self, source: std::io::Error) -> KekError {
        KekError::Io {
            path: self.dir.clone(),
            source,
        }
    }
}

impl KekProvider for FileKeks {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn manages_epochs(&self) -> bool {
        true
    }

    fn epochs(&self) -> Result<Vec<Epoch>, KekError> {
        let mut epochs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| self.dir_error(e))? {
            let entry = entry.map_err(|e| self.dir_error(e))?;
            if let Some(epoch) = entry.file_name().to_str().and_then(parse_epoch_file_name) {
                epochs.push(epoch);
            }
        }
        epochs.sort_unstable();
        // An epoch another process destroyed (its file deleted) leaves this process's memory
        // too, the next time the epochs are listed (every vault tick does).
        self.lock().retain(|epoch, _| epochs.binary_search(epoch).is_ok());
        Ok(epochs)
    }

    fn create_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        let path = self.epoch_path(epoch);
        let mut loaded = self.lock();
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KekError::Io { path, source }),
        }
        let kek = Kek::generate()?;
        match write_key_file(&self.dir, &path, kek.expose_secret())? {
            Created::New => {
                loaded.insert(epoch, Arc::new(kek));
            }
            // Another process (or another provider on this directory) won the race: its KEK is
            // the epoch's, ours is dropped (and zeroized) unused.
            Created::AlreadyThere => {}
        }
        Ok(())
    }

    fn destroy_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        let path = self.epoch_path(epoch);
        let mut loaded = self.lock();
        // Dropping the map's reference zeroizes the KEK once no wrap or unwrap in flight
        // holds it any more.
        loaded.remove(&epoch);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(KekError::Io { path, source }),
        }
        // The deletion is only final once the directory entry is durable.
        sync_dir(&self.dir).map_err(|e| self.dir_error(e))
    }

    fn wrap(&self, epoch: Epoch, id: KeyId, dek: &Dek) -> Result<Vec<u8>, KekError> {
        self.kek(epoch)?.wrap_dek(id, dek).map_err(|e| match e {
            EnvelopeError::Random => KekError::Random,
            // Unreachable for a 32-byte DEK; says what failed, never what was wrapped.
            other => KekError::Mismatch(format!("wrapping a key under KEK epoch {epoch} failed: {other}")),
        })
    }

    fn unwrap(&self, epoch: Epoch, id: KeyId, wrapped: &[u8]) -> Result<Dek, KekError> {
        self.kek(epoch)?
            .unwrap_dek(id, wrapped)
            .map_err(|_| KekError::Unwrap { epoch })
    }

    fn legacy_check_value(&self, epoch: Epoch) -> Result<Option<[u8; 32]>, KekError> {
        Ok(Some(self.kek(epoch)?.check_value()))
    }
}

/// `kek-0000000007.key` for epoch 7.
fn epoch_file_name(epoch: Epoch) -> String {
    format!("{FILE_PREFIX}{epoch:0width$}{FILE_SUFFIX}", width = EPOCH_DIGITS)
}

/// The epoch of a KEK file name, or `None` for any other file (exactly the names
/// [`epoch_file_name`] makes).
fn parse_epoch_file_name(name: &str) -> Option<Epoch> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != EPOCH_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether [`write_key_file`] created the file or found one there.
pub(super) enum Created {
    New,
    AlreadyThere,
}

/// Creates `path` holding `bytes`, mode `0600`, atomically: written and synced to a
/// temporary file in `dir`, hard-linked into place (which fails rather than replace an
/// existing file), then the directory synced. A crash never leaves a short key file, and of
/// two writers racing for one path exactly one wins; the other gets [`Created::AlreadyThere`].
pub(super) fn write_key_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<Created, KekError> {
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix).map_err(|_| KekError::Random)?;
    let tmp = dir.join(format!(".kek-{}.tmp", hex::encode(suffix)));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name goes whether or not the link worked; a leftover would only be an
    // ignored file, so a failure to remove it is not worth failing the write for.
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Created::AlreadyThere),
        Err(source) => {
            return Err(KekError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    sync_dir(dir).map_err(|source| KekError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(Created::New)
}

/// Makes a directory's entries (a file created or deleted) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_names_round_trip_and_nothing_else_parses() {
        assert_eq!(epoch_file_name(7), "kek-0000000007.key");
        assert_eq!(epoch_file_name(Epoch::MAX), "kek-4294967295.key");
        for epoch in [0, 1, 7, 1_000_000, Epoch::MAX] {
            assert_eq!(parse_epoch_file_name(&epoch_file_name(epoch)), Some(epoch));
        }
        for other in [
            "kek.key",
            "erasures.journal",
            ".kek-0011223344556677.tmp",
            "kek-7.key",
            "kek-00000000007.key",
            "kek-000000000x.key",
            "kek-+000000007.key",
            "kek-4294967296.key",
            "kek-0000000007.key.tmp",
        ] {
            assert_eq!(parse_epoch_file_name(other), None, "{other}");
        }
    }
}
