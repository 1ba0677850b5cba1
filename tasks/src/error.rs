//! The task service's error type and its single mapping to gRPC statuses.
use tonic::Status;

/// Everything that can go wrong in the task service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message is safe to show to the caller.
    #[error("{0}")]
    InvalidArgument(String),
    /// The task (or board) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing already exists (an idempotency key used for another request).
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this; the message says why.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the state does not allow it (e.g. removing a board's last owner).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Bad configuration (reported at start-up, exit code 64).
    #[error("configuration: {0}")]
    Config(String),
    /// A query failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection could be had in time, or connecting failed.
    #[error("database pool: {0}")]
    Pool(#[from] bb8::RunError<tokio_postgres::Error>),
    /// A migration failed.
    #[error("migration {version}: {source}")]
    Migration {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A migration already applied to the database is not the one in this build: changes to the
    /// schema belong in a new migration file.
    #[error("migration {version} was edited after it was applied (recorded sha256 {recorded}, this build's {now}); put changes in a new migration")]
    MigrationEdited {
        version: i32,
        recorded: String,
        now: String,
    },
    /// The task is not at the version the caller expected (If-Match): nothing was changed.
    #[error("task {id} is at version {current}, not {expected}: it was changed meanwhile")]
    VersionMismatch {
        id: i64,
        current: i64,
        expected: i64,
    },
    /// The connection failed while committing: the change may or may not have been applied.
    #[error("the database connection was lost while committing; the change may or may not have been applied")]
    CommitUnknown,
    /// The service is stopping and takes no more changes.
    #[error("the task service is shutting down")]
    ShuttingDown,
    /// NATS could not be reached or configured.
    #[error("nats: {0}")]
    Nats(String),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::CommitUnknown | Error::ShuttingDown => Status::unavailable(e.to_string()),
            Error::VersionMismatch { current, .. } => {
                let mut meta = tonic::metadata::MetadataMap::new();
                meta.insert(
                    taskboard_proto::VERSION_METADATA,
                    tonic::metadata::MetadataValue::from(current),
                );
                Status::with_metadata(tonic::Code::FailedPrecondition, e.to_string(), meta)
            }
            // A task change on an archived or deleted board (our own message, migration 0008).
            Error::Db(ref inner)
                if inner.code()
                    == Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) =>
            {
                let m = inner
                    .as_db_error()
                    .map_or("the board is read-only", |d| d.message());
                Status::failed_precondition(m)
            }
            // Internal details go to the log, never to the caller.
            Error::Pool(ref inner) => {
                tracing::warn!(error = %inner, "database pool unavailable");
                Status::unavailable("database unavailable")
            }
            Error::Db(ref inner) if inner.is_closed() || inner.as_db_error().is_none() => {
                tracing::warn!(error = %inner, "database connection error");
                Status::unavailable("database unavailable")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
