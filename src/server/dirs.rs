//! The two directories of a deployment, kept apart so that no backup holds both a wrapped key
//! and the KEK that unwraps it:
//!
//! - the **data directory** (`events.db`, `keyvault.db`, `admin.token`): what operators back up;
//!   created `0700`, its database files `0600`;
//! - the **keys directory** (the KEK epochs of the `file` provider and the erasure journal):
//!   what must never be restored from an old backup. Created `0700`; refused if it lies inside
//!   the data directory, or if group or others may access it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::ServerError;

/// The keys directory's default, beside (never inside) the default data directory.
pub const KEYS_DIR_DEFAULT: &str = "./lethe-keys";

/// The erasure journal's file name inside the keys directory.
pub const ERASURE_JOURNAL_FILE: &str = "erasures.journal";

/// The legacy KEK file name inside the data directory (releases before the keys directory).
pub const LEGACY_KEK_FILE: &str = "kek.key";

/// Creates the data directory (`0700`) if it does not exist. An existing one is left as it is,
/// with a warning if group or others may read it.
pub fn prepare_data_dir(dir: &Path) -> Result<(), ServerError> {
    let error = |source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:04o}"),
                    "the data directory is accessible by group or others; chmod 700 is advised"
                );
            }
            Ok(())
        }
        Ok(_) => Err(error(io::Error::other("not a directory"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(error),
        Err(e) => Err(error(e)),
    }
}

/// Creates an SQLite database file `0600` if it does not exist yet, so that neither it nor its
/// `-wal`/`-shm` files (SQLite gives them the database file's mode) are readable by others.
pub fn precreate_database_file(path: &Path) -> Result<(), ServerError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(ServerError::DataDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The SQLite file a `sqlite:` URL names, if it lies in `dir` (the embedded default's files).
pub fn sqlite_file_in(url: &str, dir: &Path) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = Path::new(path.split('?').next()?);
    (path.parent() == Some(dir)).then(|| path.to_path_buf())
}

/// Checks and creates the keys directory: refused inside (or equal to) the data directory,
/// created `0700` if missing, refused if group or others may access it. Returns its absolute
/// path.
pub fn prepare_keys_dir(keys_dir: &Path, data_dir: &Path) -> Result<PathBuf, ServerError> {
    let keys = absolute(keys_dir).map_err(|source| ServerError::KeysDir {
        path: keys_dir.to_path_buf(),
        problem: format!("cannot resolve the path: {source}"),
    })?;
    let data = absolute(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    if keys.starts_with(&data) {
        return Err(ServerError::KeysDir {
            path: keys_dir.to_path_buf(),
            problem: format!(
                "it lies inside the data directory {}; a backup of the data directory would then hold \
                 the KEKs that unwrap its keys. Choose a directory outside it",
                data_dir.display()
            ),
        });
    }
    match std::fs::metadata(&keys) {
        Ok(meta) if !meta.is_dir() => {
            return Err(ServerError::KeysDir {
                path: keys_dir.to_path_buf(),
                problem: "it is not a directory".into(),
            });
        }
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ServerError::KeysDir {
                    path: keys_dir.to_path_buf(),
                    problem: format!(
                        "it has mode {mode:04o}; it must not be accessible by group or others (chmod 700)"
                    ),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&keys)
                .map_err(|source| ServerError::KeysDir {
                    path: keys_dir.to_path_buf(),
                    problem: format!("cannot create it: {source}"),
                })?;
        }
        Err(source) => {
            return Err(ServerError::KeysDir {
                path: keys_dir.to_path_buf(),
                problem: source.to_string(),
            });
        }
    }
    Ok(keys)
}

/// `path` made absolute and normalised without requiring it to exist: the longest existing
/// ancestor is canonicalised (resolving symbolic links), the rest appended. So a keys directory
/// reached through a link into the data directory is still recognised as inside it.
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize()?;
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_directory_inside_the_data_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        for inside in [
            data.clone(),
            data.join("keys"),
            data.join("a/../keys"),
            tmp.path().join("x/../data/k"),
        ] {
            let err = prepare_keys_dir(&inside, &data).expect_err("inside refused");
            assert!(err.to_string().contains("inside the data directory"), "{err}");
        }
        let keys = prepare_keys_dir(&tmp.path().join("keys"), &data).expect("beside is fine");
        let mode = std::fs::metadata(&keys).expect("created").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_link_into_the_data_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("k")).expect("mkdir");
        std::os::unix::fs::symlink(data.join("k"), tmp.path().join("link")).expect("symlink");
        let err = prepare_keys_dir(&tmp.path().join("link"), &data).expect_err("refused");
        assert!(err.to_string().contains("inside the data directory"), "{err}");
    }

    #[test]
    fn a_keys_directory_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let keys = tmp.path().join("keys");
        std::fs::create_dir(&keys).expect("mkdir");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let err = prepare_keys_dir(&keys, &tmp.path().join("data")).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("0750") && text.contains("chmod 700"), "{text}");
    }

    #[test]
    fn the_data_directory_and_its_database_files_are_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("new/data");
        prepare_data_dir(&data).expect("created");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        let db = data.join("events.db");
        precreate_database_file(&db).expect("created");
        assert_eq!(mode(&db), 0o600);
        precreate_database_file(&db).expect("an existing file is kept");
        let url = format!("sqlite://{}", db.display());
        assert_eq!(sqlite_file_in(&url, &data), Some(db));
        assert_eq!(sqlite_file_in("postgres://x/y", &data), None);
    }
}
