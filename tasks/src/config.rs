//! Task service configuration: the Go original's environment variables, each also a flag.
use std::time::Duration;

use clap::Parser;

/// Default gRPC port (the original's `PORT`).
pub const DEFAULT_PORT: u16 = 50051;
/// Default admin (metrics) port.
pub const DEFAULT_METRICS_PORT: u16 = 9091;

/// Configuration of `taskboard-tasks`.
/// How long one attempt to connect to a PostgreSQL host may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskboard-tasks",
    version,
    about = "Taskboard task service: gRPC (task.v1) over PostgreSQL, events relayed to NATS",
    long_about = "Taskboard task service.\n\nServes task.v1.TaskService, grpc.health.v1 and server \
reflection over plaintext gRPC. Every mutation commits the task row, the board's next sequence number \
and the event in one transaction; a relay publishes committed events to NATS (board.tasks.<id>.created|updated|\
deleted|..., and the original's tasks.created|updated|deleted) in per-board seq order. Migrations run at start-up under an advisory lock, so replicas can \
start together."
)]
pub struct Config {
    /// gRPC listen port.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address the gRPC port binds; loopback by default (only a gateway on the same host can call).
    /// `::` answers on every IPv6 and IPv4 address (the Helm chart sets it, and AUTH=on with a
    /// SERVICE_TOKEN keeps the port closed to anyone but the gateway).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1")]
    pub bind_addr: String,

    /// Admin port reserved for /metrics; 0 turns it off.
    #[arg(long, env = "METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Address the metrics port binds; loopback by default (`::` for a Prometheus elsewhere).
    #[arg(long, env = "METRICS_BIND_ADDR", default_value = "127.0.0.1")]
    pub metrics_bind_addr: String,

    /// `on`: every call (but grpc.health) must carry `authorization: Bearer <SERVICE_TOKEN>`, and
    /// calls made for a user see only that user's boards. `off`: anyone who reaches the port may
    /// do anything (development only; a warning is logged at start).
    #[arg(long, env = "AUTH", default_value = "on", value_parser = ["on", "off"])]
    pub auth: String,

    /// The token the gateway presents (shared with it; any long random string). Needed with
    /// AUTH=on.
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,

    /// A file holding SERVICE_TOKEN (a mounted secret), instead of the variable.
    #[arg(long, env = "SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<std::path::PathBuf>,

    /// HTTP/2 keepalive: a ping every this many seconds on each connection; a peer that does not
    /// answer within 20 s more is disconnected (dead gateways never pin connections). 0 = off.
    #[arg(long, env = "GRPC_KEEPALIVE_SECS", default_value_t = 30)]
    pub grpc_keepalive_secs: u64,

    /// Most concurrent calls and streams on one connection (a client holding more waits).
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 1024)]
    pub max_streams_per_connection: u32,

    /// Full PostgreSQL URL; when set it wins over the DB_* variables. Several hosts, for a
    /// primary and its standbys: `postgres://u@h1:5432,h2:5432/db?target_session_attrs=read-write`
    /// (each connection goes to the first that takes writes, so a promoted standby is found by
    /// itself). A 5 s connect timeout applies unless the URL sets `connect_timeout`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL host; a comma list (primary, standbys) connects to whichever takes writes.
    #[arg(long, env = "DB_HOST", default_value = "localhost")]
    pub db_host: String,

    /// PostgreSQL port (the original ignored it and always used 5432).
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,

    /// PostgreSQL user.
    #[arg(long, env = "DB_USER", default_value = "taskboard")]
    pub db_user: String,

    /// PostgreSQL password [default: taskboard].
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true)]
    pub db_password: Option<String>,

    /// A file holding the PostgreSQL password (a mounted secret), instead of DB_PASSWORD. One
    /// trailing newline is ignored.
    #[arg(long, env = "DB_PASSWORD_FILE")]
    pub db_password_file: Option<std::path::PathBuf>,

    /// PostgreSQL database name.
    #[arg(long, env = "DB_NAME", default_value = "taskboard")]
    pub db_name: String,

    /// PostgreSQL sslmode; only `disable` is supported (use a sidecar or the network for TLS).
    #[arg(long, env = "DB_SSLMODE", default_value = "disable")]
    pub db_sslmode: String,

    /// Connections in the pool. Requests beyond that wait up to --db-acquire-timeout-ms, then get
    /// UNAVAILABLE.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How long a request waits for a pooled connection before failing with UNAVAILABLE.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub db_acquire_timeout_ms: u64,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://localhost:4222")]
    pub nats_url: String,

    /// First token of the event subjects: each event goes to its board's subject,
    /// `board.<prefix>.<board id>.<kind>` (gateways subscribe only to the boards they serve).
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "tasks")]
    pub nats_subject_prefix: String,

    /// `on`: every event is also published on the Go original's subject, `<prefix>.<kind>`
    /// (`tasks.created|updated|deleted`, ...), for consumers written against it and for gateways
    /// older than per-board subjects. `off` once nothing reads them: one publish per event instead
    /// of two.
    #[arg(long, env = "NATS_LEGACY_SUBJECTS", default_value = "on", value_parser = ["on", "off"])]
    pub nats_legacy_subjects: String,

    /// Most task changes committed together in one transaction (group commit: changes that arrive
    /// while a commit is in flight share the next one; 1 = every change its own transaction).
    #[arg(long, env = "WRITE_BATCH_MAX", default_value_t = 256)]
    pub write_batch_max: usize,

    /// How often the outbox relay scans for events no replica has published (a replica that
    /// stopped between commit and publish, NATS that was unreachable), and prunes.
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub relay_poll_interval_ms: u64,

    /// Published events older than this are pruned from the outbox (clients further behind get a
    /// `reset`).
    #[arg(long, env = "EVENT_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub event_retention_secs: u64,

    /// On SIGTERM, how long in-flight calls and streams get to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// Most gRPC connections open at once; more are closed at accept. 0 = the descriptor limit
    /// less a reserve of 512.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// A gRPC connection that sends nothing for this long after connecting is closed (idle sockets
    /// never pile up).
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
}

impl Config {
    /// The service token calls must carry: `None` with AUTH=off.
    ///
    /// # Errors
    /// AUTH=on without a token, or an unreadable token file.
    pub fn service_token(&self) -> Result<Option<String>, crate::Error> {
        let token = taskboard_telemetry::secret(
            self.service_token.as_deref(),
            self.service_token_file.as_deref(),
            "SERVICE_TOKEN",
        )
        .map_err(crate::Error::Config)?;
        match (self.auth.as_str(), token) {
            ("off", _) => Ok(None),
            (_, None) => Err(crate::Error::Config(
                "AUTH=on needs SERVICE_TOKEN (or SERVICE_TOKEN_FILE): the token the gateway \
                 presents. For development without authentication set AUTH=off"
                    .into(),
            )),
            (_, Some(t)) if t.len() < 16 => Err(crate::Error::Config(
                "SERVICE_TOKEN must be at least 16 characters".into(),
            )),
            (_, t) => Ok(t),
        }
    }

    /// The PostgreSQL connection settings this config names.
    ///
    /// # Errors
    /// A malformed `DATABASE_URL` or an unsupported `DB_SSLMODE`.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, crate::Error> {
        if let Some(url) = &self.database_url {
            let mut pg: tokio_postgres::Config = url
                .parse()
                .map_err(|e| crate::Error::Config(format!("invalid DATABASE_URL: {e}")))?;
            if pg.get_connect_timeout().is_none() {
                // A dead host (not a refused port) would otherwise hang each connection attempt
                // for the kernel's TCP timeout, minutes, before the next host is tried.
                pg.connect_timeout(CONNECT_TIMEOUT);
            }
            if pg.get_application_name().is_none() {
                pg.application_name("taskboard-tasks");
            }
            return Ok(pg);
        }
        if self.db_sslmode != "disable" {
            return Err(crate::Error::Config(format!(
                "DB_SSLMODE={} is not supported (only disable)",
                self.db_sslmode
            )));
        }
        let password = self.db_password()?;
        let mut pg = tokio_postgres::Config::new();
        let hosts: Vec<&str> = self.db_host.split(',').map(str::trim).collect();
        for h in &hosts {
            pg.host(*h);
        }
        if hosts.len() > 1 {
            pg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        pg.port(self.db_port)
            .user(&self.db_user)
            .password(&password)
            .dbname(&self.db_name)
            .application_name("taskboard-tasks")
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(pg)
    }

    /// DB_PASSWORD, or the contents of DB_PASSWORD_FILE, or the default.
    fn db_password(&self) -> Result<String, crate::Error> {
        match (&self.db_password, &self.db_password_file) {
            (Some(_), Some(_)) => Err(crate::Error::Config(
                "set DB_PASSWORD or DB_PASSWORD_FILE, not both".into(),
            )),
            (Some(p), None) => Ok(p.clone()),
            (None, Some(f)) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    crate::Error::Config(format!("DB_PASSWORD_FILE {}: {e}", f.display()))
                })?;
                let s = s.strip_suffix('\n').unwrap_or(&s);
                Ok(s.strip_suffix('\r').unwrap_or(s).to_owned())
            }
            (None, None) => Ok("taskboard".into()),
        }
    }

    /// Config for tests and embedding: the defaults, with the given database and NATS, and AUTH=off
    /// (set `auth` and `service_token` to test it on). Reads no environment variable.
    pub fn for_urls(database_url: &str, nats_url: &str) -> Self {
        Config {
            port: DEFAULT_PORT,
            bind_addr: "127.0.0.1".into(),
            metrics_port: DEFAULT_METRICS_PORT,
            metrics_bind_addr: "127.0.0.1".into(),
            auth: "off".into(),
            service_token: None,
            service_token_file: None,
            grpc_keepalive_secs: 30,
            max_streams_per_connection: 1024,
            database_url: Some(database_url.to_owned()),
            db_host: "localhost".into(),
            db_port: 5432,
            db_user: "taskboard".into(),
            db_password: None,
            db_password_file: None,
            db_name: "taskboard".into(),
            db_sslmode: "disable".into(),
            db_pool_size: 16,
            db_acquire_timeout_ms: 5000,
            nats_url: nats_url.to_owned(),
            nats_subject_prefix: "tasks".into(),
            nats_legacy_subjects: "on".into(),
            write_batch_max: 256,
            relay_poll_interval_ms: 1000,
            event_retention_secs: 7 * 24 * 3600,
            shutdown_grace_secs: 25,
            max_connections: 0,
            handshake_timeout_ms: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_db_hosts_connect_only_to_the_one_taking_writes() {
        use tokio_postgres::config::{Host, TargetSessionAttrs};
        let mut c = Config::for_urls("postgres://x@h/db", "nats://h");
        c.database_url = None;
        c.db_host = "pg-a, pg-b".into();
        let pg = c.pg_config().unwrap();
        assert_eq!(
            pg.get_hosts(),
            [Host::Tcp("pg-a".into()), Host::Tcp("pg-b".into())]
        );
        assert_eq!(pg.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
        c.db_host = "pg-a".into();
        let one = c.pg_config().unwrap();
        assert_eq!(one.get_target_session_attrs(), TargetSessionAttrs::Any);
    }

    #[test]
    fn the_db_password_comes_from_a_mounted_file() {
        let dir = std::env::temp_dir().join(format!("tb-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret pass\n").unwrap();
        let mut c = Config::for_urls("postgres://x@h/db", "nats://h");
        c.database_url = None;
        assert_eq!(
            c.pg_config().unwrap().get_password(),
            Some(&b"taskboard"[..])
        );
        c.db_password_file = Some(file.clone());
        assert_eq!(
            c.pg_config().unwrap().get_password(),
            Some(&b"s3cret pass"[..])
        );
        c.db_password = Some("other".into());
        let both = c.pg_config().unwrap_err().to_string();
        assert!(both.contains("not both"), "{both}");
        c.db_password = None;
        c.db_password_file = Some(dir.join("absent"));
        let absent = c.pg_config().unwrap_err().to_string();
        assert!(absent.contains("DB_PASSWORD_FILE"), "{absent}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_url_gets_a_connect_timeout_unless_it_sets_one() {
        let c = Config::for_urls("postgres://x@h1,h2/db?target_session_attrs=read-write", "n");
        let pg = c.pg_config().unwrap();
        assert_eq!(pg.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(pg.get_hosts().len(), 2);
        let c = Config::for_urls("postgres://x@h/db?connect_timeout=1", "n");
        assert_eq!(
            c.pg_config().unwrap().get_connect_timeout(),
            Some(&Duration::from_secs(1))
        );
    }

    /// The default clap would use for `--id` (from the definition, never the environment).
    fn cli_default(id: &str) -> String {
        use clap::CommandFactory;
        let cmd = Config::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no argument {id}"));
        arg.get_default_values()
            .first()
            .unwrap_or_else(|| panic!("{id} has no default"))
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn for_urls_matches_the_cli_defaults() {
        let built = Config::for_urls("postgres://x@h/db", "nats://n");
        // Everything but the bind address (tests stay on loopback) and the URLs must agree.
        assert_eq!(cli_default("db_pool_size"), built.db_pool_size.to_string());
        assert_eq!(
            cli_default("write_batch_max"),
            built.write_batch_max.to_string()
        );
        assert_eq!(
            cli_default("relay_poll_interval_ms"),
            built.relay_poll_interval_ms.to_string()
        );
        assert_eq!(
            cli_default("event_retention_secs"),
            built.event_retention_secs.to_string()
        );
        assert_eq!(
            cli_default("nats_subject_prefix"),
            built.nats_subject_prefix
        );
        assert_eq!(
            cli_default("db_acquire_timeout_ms"),
            built.db_acquire_timeout_ms.to_string()
        );
        assert_eq!(
            cli_default("shutdown_grace_secs"),
            built.shutdown_grace_secs.to_string()
        );
        assert_eq!(cli_default("port"), built.port.to_string());
        assert_eq!(
            cli_default("bind_addr"),
            "127.0.0.1",
            "loopback unless told"
        );
        assert_eq!(cli_default("metrics_bind_addr"), built.metrics_bind_addr);
        assert_eq!(
            cli_default("auth"),
            "on",
            "authentication is on unless turned off"
        );
        assert_eq!(
            cli_default("grpc_keepalive_secs"),
            built.grpc_keepalive_secs.to_string()
        );
        assert_eq!(cli_default("metrics_port"), built.metrics_port.to_string());
        assert_eq!(cli_default("nats_url"), "nats://localhost:4222");
        assert_eq!(
            cli_default("nats_legacy_subjects"),
            built.nats_legacy_subjects
        );
        assert_eq!(built.nats_url, "nats://n");
    }

    #[test]
    fn auth_on_needs_a_service_token() {
        let mut c = Config::for_urls("postgres://x@h/db", "nats://h");
        assert_eq!(c.service_token().unwrap(), None);
        c.auth = "on".into();
        assert!(c
            .service_token()
            .unwrap_err()
            .to_string()
            .contains("SERVICE_TOKEN"));
        c.service_token = Some("short".into());
        assert!(c.service_token().is_err());
        c.service_token = Some("0123456789abcdef".into());
        assert_eq!(
            c.service_token().unwrap().as_deref(),
            Some("0123456789abcdef")
        );
    }

    #[test]
    fn unsupported_sslmode_is_a_config_error() {
        let mut c = Config::for_urls("postgres://x@h/db", "nats://h");
        c.database_url = None;
        c.db_sslmode = "require".into();
        let err = c.pg_config().unwrap_err().to_string();
        assert!(err.contains("DB_SSLMODE=require"), "{err}");
    }
}
