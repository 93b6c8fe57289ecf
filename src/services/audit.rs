//! The tamper-evident audit trail of admin actions: appending entries, reading them page by
//! page, and verifying the hash chain (the chain itself is `model::audit`).
//!
//! Admin handlers append entries with the caller's token name as actor; erasure steps append
//! theirs as `lethe`. Entries carry ids, counts and admin-typed reasons, never event data.

use crate::core::Core;
use crate::error::{Error, StorageError};
use crate::limits::{AUDIT_PAGE_MAX, TOKEN_NAME_LEN_MAX};
use crate::model::audit::ChainCheck;
use crate::model::validation::check_limit;
use crate::model::{AuditEntry, AuditQuery, AuditVerification, NewAuditEntry, ValidationError};
use crate::storage::{self, Storage};

/// Appends an entry to the audit trail.
pub(crate) async fn append(core: &Core, entry: NewAuditEntry) -> Result<AuditEntry, Error> {
    if entry.actor.is_empty() || entry.action.is_empty() {
        return Err(ValidationError::InvalidName {
            what: "audit actor/action",
            max: TOKEN_NAME_LEN_MAX,
        }
        .into());
    }
    Ok(core.storage.append_audit(&entry).await?)
}

/// Appends an entry, logging rather than failing if the trail cannot be written (the action it
/// records has already happened).
pub(crate) async fn append_quietly(core: &Core, entry: NewAuditEntry) {
    core.audit_quietly(&entry).await;
}

/// Entries of the audit trail, oldest first.
pub(crate) async fn entries(core: &Core, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
    check_limit(query.limit, AUDIT_PAGE_MAX)?;
    Ok(core.storage.audit_entries(query).await?)
}

/// Walks the whole chain and reports the first broken entry, if any.
pub(crate) async fn verify(core: &Core) -> Result<AuditVerification, Error> {
    verify_storage(core.storage.as_ref()).await.map_err(Error::from)
}

/// Verifies the chain of an event database directly (for `lethe audit verify`, offline).
pub async fn verify_database(database_url: &str) -> Result<AuditVerification, Error> {
    let storage = storage::open(database_url).await?;
    let verification = verify_storage(storage.as_ref()).await;
    storage.close().await;
    Ok(verification?)
}

/// Appends one entry to an event database's trail directly (for CLI actions that happen outside
/// a running server, such as `lethe keyvault rotate-kek`).
pub async fn append_to_database(database_url: &str, entry: &NewAuditEntry) -> Result<AuditEntry, Error> {
    let storage = storage::open(database_url).await?;
    let appended = storage.append_audit(entry).await;
    storage.close().await;
    Ok(appended?)
}

/// Like [`append_to_database`], at most once per `once_key` (see `Storage::append_audit_once`);
/// true if appended now.
pub async fn append_once_to_database(database_url: &str, once_key: &str, entry: &NewAuditEntry) -> Result<bool, Error> {
    let storage = storage::open(database_url).await?;
    let appended = storage.append_audit_once(once_key, entry).await;
    storage.close().await;
    Ok(appended?)
}

async fn verify_storage(storage: &dyn Storage) -> Result<AuditVerification, StorageError> {
    let head = storage.audit_head().await?;
    let mut check = ChainCheck::new();
    let mut after = 0;
    loop {
        let page = storage
            .audit_entries(&AuditQuery {
                after,
                limit: AUDIT_PAGE_MAX,
                ..AuditQuery::default()
            })
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.seq;
        page.iter().for_each(|entry| check.feed(entry));
    }
    Ok(check.finish(head))
}
