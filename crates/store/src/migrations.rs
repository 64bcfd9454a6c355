//! Schema migrations: the ordered SQL files of `migrations/` (workspace root), compiled into the
//! binary, applied in order, each exactly once, and tracked in `schema_migrations`.
//!
//! [`migrate`] runs in one transaction under `pg_advisory_xact_lock`, so any number of services
//! may start at once: one applies, the others wait and then find nothing to do. An applied
//! migration whose text has changed since is refused (its checksum is recorded): never edit a
//! migration that has landed, add one.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

use crate::error::{MigrationError, StoreError};

/// One migration: `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The file name in `migrations/`.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }

    /// SHA-256 of the SQL text, as recorded in `schema_migrations.checksum`.
    pub fn checksum(&self) -> [u8; 32] {
        Sha256::digest(self.sql.as_bytes()).into()
    }
}

/// Every migration, in order. A unit test checks this list against the directory, so a file
/// cannot be forgotten here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "read_models",
        sql: include_str!("../../../migrations/0002_read_models.sql"),
    },
    Migration {
        version: 3,
        name: "bets_by_player",
        sql: include_str!("../../../migrations/0003_bets_by_player.sql"),
    },
    Migration {
        version: 4,
        name: "write_path",
        sql: include_str!("../../../migrations/0004_write_path.sql"),
    },
    Migration {
        version: 5,
        name: "write_path_keys",
        sql: include_str!("../../../migrations/0005_write_path_keys.sql"),
    },
    Migration {
        version: 6,
        name: "bets_found_through_round_stakes",
        sql: include_str!("../../../migrations/0006_bets_found_through_round_stakes.sql"),
    },
];

/// The key of the advisory lock that serialises migrators ("croupier" in ASCII, minus one,
/// so it differs from the test harness's template lock).
const MIGRATION_LOCK: i64 = 0x6372_6f75_7069_6571;

/// A short hex digest of every migration (versions, names and texts): it changes whenever a
/// migration is added or changed, so test templates and caches keyed on it are rebuilt.
pub fn migrations_fingerprint() -> String {
    let mut hasher = Sha256::new();
    for migration in MIGRATIONS {
        hasher.update(migration.version.to_be_bytes());
        hasher.update((migration.name.len() as u64).to_be_bytes());
        hasher.update(migration.name.as_bytes());
        hasher.update(migration.checksum());
    }
    let digest: [u8; 32] = hasher.finalize().into();
    hex::encode(&digest[..8])
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order (empty when the schema was up to date).
    pub applied: Vec<i32>,
    /// Versions recorded in the database that this build does not know (a newer build
    /// migrated it); they are left alone.
    pub unknown: Vec<i32>,
}

/// Applies every migration not yet applied, in order, in one transaction.
///
/// Concurrent callers serialise on an advisory lock; a changed checksum or name of an applied
/// migration is an error and nothing is applied. Takes `&mut Client` because it opens a
/// transaction: pass a pooled connection as `&mut **object`.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.schema_migrations (
             version    integer     NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bytea       NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let rows = tx
        .query(
            "SELECT version, name, checksum FROM public.schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let mut applied = std::collections::BTreeMap::new();
    for row in rows {
        let version: i32 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let checksum: Vec<u8> = row.try_get(2)?;
        applied.insert(version, (name, checksum));
    }

    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        if let Some((name, checksum)) = applied.remove(&migration.version) {
            if name != migration.name {
                return Err(MigrationError::NameMismatch {
                    version: migration.version,
                    applied: name,
                    expected: migration.name.to_string(),
                }
                .into());
            }
            let expected = migration.checksum();
            if checksum != expected {
                return Err(MigrationError::ChecksumMismatch {
                    version: migration.version,
                    name,
                    applied: hex::encode(&checksum),
                    expected: hex::encode(expected),
                }
                .into());
            }
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(|source| {
            match crate::error::classify(source) {
                StoreError::Database(source) => MigrationError::Failed {
                    version: migration.version,
                    name: migration.name.to_string(),
                    source,
                }
                .into(),
                other => other,
            }
        })?;
        tx.execute(
            "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &migration.checksum().as_slice(),
            ],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(migration.version);
    }
    report.unknown = applied.into_keys().collect();
    if !report.unknown.is_empty() {
        tracing::warn!(
            versions = ?report.unknown,
            "the database has migrations this build does not know; a newer build applied them"
        );
    }
    tx.commit().await?;
    Ok(report)
}

/// Connects to `url`, applies the migrations, and closes the connection before returning
/// (so the database can serve as a template right after, for instance).
pub async fn migrate_url(url: &str) -> Result<MigrationReport, StoreError> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = migrate(&mut client).await;
    drop(client);
    // The connection ends once the client is gone; wait for it so no session lingers.
    let _ = driver.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
    }

    #[test]
    fn the_migration_list_matches_the_migrations_directory() {
        let mut on_disk: Vec<String> = std::fs::read_dir(directory())
            .expect("migrations/ is readable")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(Migration::file_name).collect();
        assert_eq!(
            listed, on_disk,
            "every migrations/*.sql file must be listed in MIGRATIONS, in order"
        );
        for migration in MIGRATIONS {
            let text = std::fs::read_to_string(directory().join(migration.file_name()))
                .expect("migration file is readable");
            assert_eq!(
                text,
                migration.sql,
                "{} differs from what was compiled",
                migration.file_name()
            );
        }
    }

    #[test]
    fn migration_versions_start_at_one_and_have_no_holes() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(migration.version).ok(), Some(i + 1));
            assert!(
                migration
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "migration names are lower_snake_case: {}",
                migration.name
            );
        }
    }

    #[test]
    fn the_fingerprint_is_short_hex_and_stable() {
        let fingerprint = migrations_fingerprint();
        assert_eq!(fingerprint.len(), 16);
        assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fingerprint, migrations_fingerprint());
    }
}
