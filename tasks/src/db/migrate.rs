//! Migrations: applied in order at start-up under an advisory lock (replicas starting together
//! take turns), each in its own transaction, each recorded with the SHA-256 of its text. A
//! migration edited after it was applied stops the service: changes go in a new file.
use super::pool::connect;
use crate::Error;

/// Migrations, applied in order; `version` is recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_members.sql")),
    (3, include_str!("../../migrations/0003_outbox_cursor.sql")),
    (4, include_str!("../../migrations/0004_idempotency.sql")),
    (5, include_str!("../../migrations/0005_outbox_runs.sql")),
    (6, include_str!("../../migrations/0006_event_actor.sql")),
    (7, include_str!("../../migrations/0007_search.sql")),
    (8, include_str!("../../migrations/0008_board_lifecycle.sql")),
    (9, include_str!("../../migrations/0009_task_fields.sql")),
    (10, include_str!("../../migrations/0010_access.sql")),
];

/// Advisory-lock key serialising migrations across replicas ("taskmig" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6173_6b6d_6967;

/// Applies pending migrations under an advisory lock, so replicas starting together take turns;
/// checks that those already applied are unchanged.
///
/// # Errors
/// The database is unreachable, a migration fails (the failing one is rolled back), or an applied
/// migration's text changed since ([`Error::MigrationEdited`]).
pub async fn migrate(pg: &tokio_postgres::Config) -> Result<(), Error> {
    let (mut client, conn) = connect(pg).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // `checksum` came after the first release: NULL there means "recorded by an older build".
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // SHA-256 of the text, computed by PostgreSQL (no hashing code of our own).
        let checksum: String = tx
            .query_one(
                "SELECT encode(sha256(convert_to($1::text, 'UTF8')), 'hex')",
                &[sql],
            )
            .await?
            .get(0);
        let recorded: Option<Option<String>> = tx
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .map(|r| r.get(0));
        match recorded {
            Some(Some(c)) if c == checksum => continue,
            Some(Some(c)) => {
                return Err(Error::MigrationEdited {
                    version: *version,
                    recorded: c,
                    now: checksum,
                })
            }
            Some(None) => {
                tx.execute(
                    "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                    &[version, &checksum],
                )
                .await?;
                tx.commit().await?;
                continue;
            }
            None => {}
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| Error::Migration {
                version: *version,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
            &[version, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}
