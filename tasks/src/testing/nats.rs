//! Private nats-servers for tests that stop, pause or kill them: one alone, or a cluster.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::free_port;

/// A private `nats-server` (the binary in `NATS_SERVER_BIN`, else `nats-server` on the PATH) on
/// a fixed free port, for tests that stop, pause or kill it. Killed on drop.
pub struct PrivateNats {
    pub port: u16,
    /// Its HTTP monitoring port (`/connz`, `/subsz`, ...).
    pub monitor_port: u16,
    /// Extra arguments (a cluster member's `--cluster` and `--routes`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts it and waits until it accepts connections.
    ///
    /// # Panics
    /// nats-server is not installed or does not start.
    pub async fn start() -> PrivateNats {
        let mut n = PrivateNats {
            port: free_port(),
            monitor_port: free_port(),
            extra: Vec::new(),
            child: None,
        };
        n.restart().await;
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (after [`PrivateNats::kill`]).
    ///
    /// # Panics
    /// As [`PrivateNats::start`].
    pub async fn restart(&mut self) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} failed");
        }
    }

    /// SIGSTOP: the server keeps its sockets (the kernel still takes bytes) but does nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`PrivateNats::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `path` from a nats-server's monitoring port (HTTP/1.0, the body only).
async fn monitor(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// Three (or `n`) nats-servers joined by routes into one cluster, as in production: a client
/// connected to any node gets what is published on any other.
pub struct NatsCluster {
    pub nodes: Vec<PrivateNats>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until every node has a route to every other.
    ///
    /// # Panics
    /// nats-server is not installed, or the routes do not form within 10 s.
    pub async fn start(n: usize) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in cluster_ports.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            let mut node = PrivateNats {
                port: free_port(),
                monitor_port: free_port(),
                extra: vec![
                    "--name".into(),
                    format!("node{i}"),
                    "--cluster_name".into(),
                    "tbtest".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    routes.join(","),
                ],
                child: None,
            };
            node.restart().await;
            nodes.push(node);
        }
        let c = NatsCluster { nodes };
        c.wait_routes().await;
        c
    }

    /// Waits until every running node has a route to every other running node.
    ///
    /// # Panics
    /// They do not within 10 s.
    pub async fn wait_routes(&self) {
        let up: Vec<&PrivateNats> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let want = format!("\"num_routes\": {}", up.len() - 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = true;
            for n in &up {
                let body = monitor(n.monitor_port, "/routez").await.unwrap_or_default();
                all &= body.contains(&want);
            }
            if all {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the NATS cluster's routes did not form"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node holding a client connection named `name` (async-nats sends the
    /// `name` set in its connect options; `/connz` lists it).
    pub async fn node_of(&self, name: &str) -> Option<usize> {
        let want = format!("\"name\": \"{name}\"");
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            if monitor(n.monitor_port, "/connz")
                .await
                .is_some_and(|b| b.contains(&want))
            {
                return Some(i);
            }
        }
        None
    }
}
