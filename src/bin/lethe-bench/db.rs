//! Fresh databases for every round, and URL helpers.

use std::path::PathBuf;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection, raw_sql};
use uuid::Uuid;

use crate::Engine;

/// The event database and key vault database of one round, removed by
/// [`FreshDatabases::remove`]. SQLite: two files in a temporary directory. PostgreSQL: two
/// databases, `lethe_bench_<random>` and `lethe_bench_<random>_vault`.
pub struct FreshDatabases {
    pub url: String,
    pub vault_url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// A temporary directory holding the SQLite files.
    Dir(PathBuf),
    /// PostgreSQL databases, dropped through a connection to the server's `--postgres-url`.
    PgDatabases { server_url: String, names: Vec<String> },
}

/// A random suffix for database and directory names (`[a-z0-9]`, 12 characters).
pub fn suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

impl FreshDatabases {
    pub async fn create(engine: Engine, postgres_url: &str) -> anyhow::Result<Self> {
        let suffix = suffix();
        match engine {
            Engine::Sqlite => {
                let dir = std::env::temp_dir().join(format!("lethe-bench-{suffix}"));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite://{}/events.db", dir.display()),
                    vault_url: format!("sqlite://{}/keyvault.db", dir.display()),
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Engine::Postgres => {
                let name = format!("lethe_bench_{suffix}");
                let vault_name = format!("{name}_vault");
                create_pg_database(postgres_url, &name, None).await?;
                create_pg_database(postgres_url, &vault_name, None).await?;
                Ok(Self {
                    url: with_database(postgres_url, &name)?,
                    vault_url: with_database(postgres_url, &vault_name)?,
                    cleanup: Cleanup::PgDatabases {
                        server_url: postgres_url.to_owned(),
                        names: vec![name, vault_name],
                    },
                })
            }
        }
    }

    pub async fn remove(self) -> anyhow::Result<()> {
        match self.cleanup {
            Cleanup::Dir(dir) => std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display())),
            Cleanup::PgDatabases { server_url, names } => {
                for name in names {
                    drop_pg_database(&server_url, &name).await?;
                }
                Ok(())
            }
        }
    }
}

/// Creates database `name` (ours: `[a-z0-9_]` only) on the server, optionally from a template.
pub async fn create_pg_database(server_url: &str, name: &str, template: Option<&str>) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(server_url)
        .await
        .with_context(|| format!("connecting to {}", redact(server_url)))?;
    // The names are ours ([a-z0-9_] only), so formatting them into SQL is safe.
    let sql = match template {
        Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
        None => format!("CREATE DATABASE {name}"),
    };
    raw_sql(AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await?;
    Ok(())
}

/// Drops database `name`, ending any connection still open to it.
pub async fn drop_pg_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(server_url)
        .await
        .with_context(|| format!("connecting to {}", redact(server_url)))?;
    raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    conn.close().await?;
    Ok(())
}

/// `url` with its database (the path) replaced by `database`, query string kept.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("not a URL: {}", redact(url)))?;
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    Ok(match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    })
}

/// A URL for error messages: any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{}{user}:***@{host}{}", &url[..scheme_end], &url[authority_end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`) for a `postgres://` URL,
/// for the command-line tools Message DB's installer runs.
pub fn libpq_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .with_context(|| format!("not a URL: {}", redact(url)))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let mut env = Vec::new();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, password)) => {
                env.push(("PGUSER", user.to_owned()));
                env.push(("PGPASSWORD", password.to_owned()));
            }
            None => env.push(("PGUSER", userinfo.to_owned())),
        }
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => (host, Some(port)),
        _ => (hostport, None),
    };
    if !host.is_empty() {
        env.push(("PGHOST", host.trim_start_matches('[').trim_end_matches(']').to_owned()));
    }
    if let Some(port) = port {
        env.push(("PGPORT", port.to_owned()));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/db"),
            ("postgres://u@h:5432", "postgres://u@h:5432/db"),
            (
                "postgres://u:p@h/postgres?sslmode=disable",
                "postgres://u:p@h/db?sslmode=disable",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "db").unwrap(), expected);
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn libpq_environment_comes_from_the_url() {
        let env = libpq_env("postgres://u:p@127.0.0.1:5433/postgres").unwrap();
        assert_eq!(
            env,
            vec![
                ("PGUSER", "u".to_owned()),
                ("PGPASSWORD", "p".to_owned()),
                ("PGHOST", "127.0.0.1".to_owned()),
                ("PGPORT", "5433".to_owned()),
            ]
        );
        assert_eq!(libpq_env("postgres://h/db").unwrap(), vec![("PGHOST", "h".to_owned())]);
    }
}
