//! Schema migrations, embedded in the binary from the files under `migrations/`.
//!
//! sqlx's `migrate!` macro would need the `macros` feature (and its compile time); a small
//! `MigrationSource` over `include_str!` gives the same versioned, checksummed migrations.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::SqlSafeStr;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(version, description, sql)` of each migration, in order.
type MigrationFile = (i64, &'static str, &'static str);

pub(crate) const SQLITE: &[MigrationFile] = &[
    (1, "events", include_str!("../../migrations/sqlite/0001_events.sql")),
    (2, "erasures", include_str!("../../migrations/sqlite/0002_erasures.sql")),
    (3, "access", include_str!("../../migrations/sqlite/0003_access.sql")),
    (
        4,
        "erasure workflow",
        include_str!("../../migrations/sqlite/0004_erasure_workflow.sql"),
    ),
    (5, "audit", include_str!("../../migrations/sqlite/0005_audit.sql")),
    (
        6,
        "hold_lapses",
        include_str!("../../migrations/sqlite/0006_hold_lapses.sql"),
    ),
    (
        8,
        "personal_fields",
        include_str!("../../migrations/sqlite/0008_personal_fields.sql"),
    ),
    (
        9,
        "audit_once",
        include_str!("../../migrations/sqlite/0009_audit_once.sql"),
    ),
    (
        10,
        "retention",
        include_str!("../../migrations/sqlite/0010_retention.sql"),
    ),
    (
        13,
        "change_tokens",
        include_str!("../../migrations/sqlite/0013_change_tokens.sql"),
    ),
    (
        14,
        "field_index",
        include_str!("../../migrations/sqlite/0014_field_index.sql"),
    ),
];

pub(crate) const POSTGRES: &[MigrationFile] = &[
    (1, "events", include_str!("../../migrations/postgres/0001_events.sql")),
    (
        2,
        "erasures",
        include_str!("../../migrations/postgres/0002_erasures.sql"),
    ),
    (3, "access", include_str!("../../migrations/postgres/0003_access.sql")),
    (
        4,
        "erasure workflow",
        include_str!("../../migrations/postgres/0004_erasure_workflow.sql"),
    ),
    (5, "audit", include_str!("../../migrations/postgres/0005_audit.sql")),
    (
        6,
        "hold_lapses",
        include_str!("../../migrations/postgres/0006_hold_lapses.sql"),
    ),
    (
        7,
        "write_generation",
        include_str!("../../migrations/postgres/0007_write_generation.sql"),
    ),
    (
        8,
        "personal_fields",
        include_str!("../../migrations/postgres/0008_personal_fields.sql"),
    ),
    (
        9,
        "audit_once",
        include_str!("../../migrations/postgres/0009_audit_once.sql"),
    ),
    (
        10,
        "retention",
        include_str!("../../migrations/postgres/0010_retention.sql"),
    ),
    (
        11,
        "log_reservations",
        include_str!("../../migrations/postgres/0011_log_reservations.sql"),
    ),
    (
        12,
        "field_subjects",
        include_str!("../../migrations/postgres/0012_field_subjects.sql"),
    ),
    (
        13,
        "change_tokens",
        include_str!("../../migrations/postgres/0013_change_tokens.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [MigrationFile]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A migrator for one engine's embedded migrations.
pub(crate) async fn migrator(files: &'static [MigrationFile]) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(files)).await
}
