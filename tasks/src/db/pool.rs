//! The bb8 pool: connections that prepare every statement once when opened, and the time a call
//! waits for one (`taskboard_db_pool_wait_seconds`).
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, NoTls};

use super::statements::Statements;
use crate::Error;

/// A pooled connection with its prepared statements.
pub struct PgConn {
    pub client: Client,
    pub stmts: Statements,
}

/// bb8 manager: bb8-postgres connects, then the statements are prepared on the new connection.
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConn, tokio_postgres::Error> {
        let client = self.inner.connect().await?;
        let stmts = Statements::prepare(&client).await?;
        Ok(PgConn { client, stmts })
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// The connection pool.
pub type Pool = bb8::Pool<Manager>;

/// A pooled connection; the wait is `taskboard_db_pool_wait_seconds`.
pub(super) async fn acquire(pool: &Pool) -> Result<bb8::PooledConnection<'_, Manager>, Error> {
    let start = std::time::Instant::now();
    let c = pool.get().await;
    metrics::histogram!("taskboard_db_pool_wait_seconds").record(start.elapsed().as_secs_f64());
    Ok(c?)
}

/// Builds the pool (lazily: connections open on first use and statements are prepared then).
pub fn pool(pg: tokio_postgres::Config, size: u32, acquire_timeout: Duration) -> Pool {
    bb8::Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(acquire_timeout)
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        .idle_timeout(Some(Duration::from_secs(5 * 60)))
        .build_unchecked(Manager {
            inner: PostgresConnectionManager::new(pg, NoTls),
        })
}

/// Opens one connection outside the pool (for migrations and the relay's LISTEN session).
///
/// # Errors
/// Connecting fails.
pub async fn connect(
    pg: &tokio_postgres::Config,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    Error,
> {
    Ok(pg.connect(NoTls).await?)
}
