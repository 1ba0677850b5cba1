//! A private PostgreSQL primary with a synchronous streaming standby, for failover tests.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, unique};

/// The directory of PostgreSQL's server binaries: `PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BIN_DIR") {
        return d.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries not found (install Debian's postgresql, or set PG_BIN_DIR)",
    )
}

/// A primary and a standby that streams from it with synchronous commit, so a commit the
/// primary acknowledged is on the standby too. Both are stopped and their files removed on drop.
pub struct PostgresPair {
    pub primary_port: u16,
    pub standby_port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PostgresPair {
    /// Runs `program` from the server binaries, as the `postgres` user when this is root (the
    /// server refuses to run as root). Returns whether it succeeded.
    fn pg(&self, program: &str, args: &[&str]) -> bool {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn data(&self, which: &str) -> String {
        self.dir.join(which).display().to_string()
    }

    fn start_server(&self, which: &str, port: u16) {
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.dir.display()
        );
        let log = self.dir.join(format!("{which}.log")).display().to_string();
        let data = self.data(which);
        assert!(
            self.pg(
                "pg_ctl",
                &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"]
            ),
            "PostgreSQL {which} did not start: see {log}"
        );
    }

    /// initdb, the primary, pg_basebackup, the standby; returns once the standby streams as the
    /// synchronous one.
    ///
    /// # Panics
    /// The binaries are missing or a step fails (the message names the log to read).
    pub async fn start() -> PostgresPair {
        let dir = std::env::temp_dir().join(unique("tb_pgpair"));
        std::fs::create_dir_all(&dir).expect("create the pair's directory");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {} failed", dir.display());
        }
        let pair = PostgresPair {
            primary_port: free_port(),
            standby_port: free_port(),
            dir,
            bin: bin_dir(),
        };
        let primary = pair.data("primary");
        assert!(
            pair.pg(
                "initdb",
                &["-D", &primary, "-U", "postgres", "--auth=trust", "-N"]
            ),
            "initdb failed"
        );
        append(
            &Path::new(&primary).join("postgresql.conf"),
            "wal_level = replica\nmax_wal_senders = 5\nsynchronous_commit = on\n\
             synchronous_standby_names = 'standby'\n",
        );
        pair.start_server("primary", pair.primary_port);
        let standby = pair.data("standby");
        let port = pair.primary_port.to_string();
        assert!(
            pair.pg(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-D",
                    &standby,
                    "-R"
                ]
            ),
            "pg_basebackup failed"
        );
        append(
            &Path::new(&standby).join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=standby'\n\
                 # Once promoted it has no standby of its own to wait for (pg_basebackup copied the\n\
                 # primary's setting, which would make every commit wait forever).\n\
                 synchronous_standby_names = ''\n"
            ),
        );
        pair.start_server("standby", pair.standby_port);
        let synced = super::eventually(Duration::from_secs(20), || async {
            pair.query(
                pair.primary_port,
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .await
            .is_some_and(|n| n == 1)
        })
        .await;
        assert!(synced, "the standby did not become synchronous");
        pair
    }

    /// The first column of the first row of `sql` (a count) on the server at `port`.
    async fn query(&self, port: u16, sql: &str) -> Option<i64> {
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let n = client.query_one(sql, &[]).await.ok()?.get::<_, i64>(0);
        drop(client);
        let _ = driver.await;
        Some(n)
    }

    /// Creates database `name` on the primary (the standby replays it).
    ///
    /// # Panics
    /// The primary is down.
    pub async fn create_database(&self, name: &str) {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = driver.await;
    }

    /// A URL naming both servers, that connects only to the one taking writes (tokio-postgres
    /// tries the hosts in order): what a task service is given.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary_port, self.standby_port
        )
    }

    /// SIGKILL to the primary's postmaster: no shutdown, no checkpoint, as when its node dies.
    ///
    /// # Panics
    /// Its pid file cannot be read.
    pub fn kill_primary(&self) {
        let pidfile = self.dir.join("primary").join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile).expect("the primary's postmaster.pid");
        let pid = text.lines().next().unwrap_or_default().trim().to_owned();
        let ok = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid} failed");
    }

    /// Promotes the standby to primary and waits until it takes writes.
    ///
    /// # Panics
    /// The promotion fails.
    pub fn promote(&self) {
        let data = self.data("standby");
        assert!(
            self.pg("pg_ctl", &["-D", &data, "-w", "promote"]),
            "pg_ctl promote failed"
        );
    }
}

impl Drop for PostgresPair {
    fn drop(&mut self) {
        for which in ["standby", "primary"] {
            let data = self.data(which);
            self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
