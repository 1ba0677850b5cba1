//! Spawns the real task service and gateway on port 0 (fresh database, unique NATS subjects) and
//! gives tests an HTTP client and a WebSocket client.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use taskboard_gateway::Config as GwConfig;
pub use taskboard_tasks::testing::eventually;
use taskboard_tasks::testing::{self, TasksHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    /// The gateway's admin listener (`/metrics`).
    pub metrics_addr: SocketAddr,
    pub http: reqwest::Client,
    pub tasks: Option<TasksHandle>,
    pub gw_stop: Option<oneshot::Sender<()>>,
    pub gw_join: Option<JoinHandle<Result<(), taskboard_gateway::Error>>>,
}

/// Gateway config for a task service and subject prefix.
pub fn gw_config(tasks_addr: &str, prefix: &str, nats: &str) -> GwConfig {
    let mut c = GwConfig::for_addrs(tasks_addr, nats);
    c.nats_subject_prefix = prefix.to_owned();
    c.shutdown_grace_secs = 5;
    c
}

/// Both services with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, |_| {}).await
}

/// Both services, configs adjusted by the closures.
pub async fn spawn_app_with(
    tune_tasks: impl FnOnce(&mut taskboard_tasks::Config),
    tune_gw: impl FnOnce(&mut GwConfig),
) -> TestApp {
    let mut tc = testing::test_config().await;
    tune_tasks(&mut tc);
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let mut gc = gw_config(&tasks.grpc_addr(), &tasks.subject_prefix, &nats);
    tune_gw(&mut gc);
    let mut app = spawn_gateway(gc).await;
    app.tasks = Some(tasks);
    app.wait_ready().await;
    app
}

/// Only the gateway (e.g. with no task service behind it).
pub async fn spawn_gateway(config: GwConfig) -> TestApp {
    testing::init_test_logging();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = admin.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(taskboard_gateway::run_with_metrics(
        config,
        listener,
        Some(admin),
        async {
            let _ = rx.await;
        },
    ));
    TestApp {
        addr,
        metrics_addr,
        http: reqwest::Client::new(),
        tasks: None,
        gw_stop: Some(tx),
        gw_join: Some(join),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Polls /ready until 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST /api/tasks; returns the created task.
    pub async fn create(&self, board: i64, title: &str) -> Value {
        let r = self
            .http
            .post(self.url("/api/tasks"))
            .json(
                &json!({"board_id": board, "title": title, "description": "d", "created_by": 100}),
            )
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 201, "create failed");
        r.json().await.expect("json")
    }

    pub async fn update(&self, id: i64, body: Value) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/api/tasks/{id}")))
            .json(&body)
            .send()
            .await
            .expect("PUT")
    }

    pub async fn delete(&self, id: i64) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/api/tasks/{id}")))
            .send()
            .await
            .expect("DELETE")
    }

    /// Opens `/ws?{query}`.
    pub async fn ws(&self, query: &str) -> Ws {
        ws_connect(self.addr, query).await.expect("ws connect")
    }

    /// Stops the gateway (as SIGTERM would) and waits for `run` to return.
    pub async fn stop_gateway(&mut self) -> Result<(), taskboard_gateway::Error> {
        if let Some(s) = self.gw_stop.take() {
            let _ = s.send(());
        }
        match self.gw_join.take() {
            Some(j) => j.await.expect("gateway panicked"),
            None => Ok(()),
        }
    }
}

/// A WebSocket client with a tiny receive window (2 KiB), for slow-reader cases.
pub async fn ws_small_window(addr: std::net::SocketAddr, query: &str) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let ws = ws_handshake(stream, addr, query).await.unwrap();
    Ws {
        presence: Default::default(),
        ws: FragmentCollector::new(ws),
    }
}

pub struct Ws {
    pub ws: FragmentCollector<TokioIo<Upgraded>>,
    /// `presence` frames read while waiting for events (see [`Ws::presence`]).
    pub presence: std::collections::VecDeque<Value>,
}

/// Whether a text frame is a `presence` frame (who is viewing), which is not an event.
fn is_presence(payload: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .filter(|v| v["type"] == "presence")
}

struct SpawnExecutor;
impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// The client half of the handshake on a fresh TCP connection.
pub async fn ws_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    query: &str,
) -> Result<WebSocket<TokioIo<Upgraded>>> {
    Ok(ws_handshake_with(stream, addr, query, &[]).await?.0)
}

/// [`ws_handshake`] with extra request headers; also gives the 101's headers.
pub async fn ws_handshake_with(
    stream: TcpStream,
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocket<TokioIo<Upgraded>>, http::HeaderMap)> {
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}/ws?{query}"))
        .header("Host", addr.to_string())
        .header("Upgrade", "websocket")
        .header("Connection", "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let (ws, resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| anyhow!("handshake: {e}"))?;
    Ok((ws, resp.headers().clone()))
}

/// A WebSocket client connected with extra handshake headers (a token, an Origin).
pub async fn ws_connect_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, http::HeaderMap)> {
    let stream = TcpStream::connect(addr).await?;
    let (ws, h) = ws_handshake_with(stream, addr, query, headers).await?;
    Ok((
        Ws {
            ws: FragmentCollector::new(ws),
            presence: Default::default(),
        },
        h,
    ))
}

pub async fn ws_connect(addr: SocketAddr, query: &str) -> Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    let ws = ws_handshake(stream, addr, query).await?;
    Ok(Ws {
        presence: Default::default(),
        ws: FragmentCollector::new(ws),
    })
}

/// What the next frame was.
#[derive(Debug)]
pub enum Next {
    Event(Value),
    Close(u16, String),
}

impl Ws {
    /// The next text frame as JSON, or the close frame.
    pub async fn next(&mut self) -> Result<Next> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.read_frame())
                .await
                .context("no frame in time")?
                .map_err(|e| anyhow!("read: {e}"))?;
            match frame.opcode {
                OpCode::Text => {
                    if let Some(p) = is_presence(&frame.payload) {
                        self.presence.push_back(p);
                        continue;
                    }
                    return Ok(Next::Event(serde_json::from_slice(&frame.payload)?));
                }
                OpCode::Close => {
                    let p = &frame.payload;
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    let reason =
                        String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                    return Ok(Next::Close(code, reason));
                }
                _ => continue,
            }
        }
    }

    /// Waits (up to [`WAIT`]) for a `presence` frame listing exactly `users`; events read
    /// meanwhile are dropped.
    pub async fn presence(&mut self, users: &[i64]) -> Result<()> {
        let want = serde_json::json!(users);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(p) = self.presence.pop_front() {
                if p["users"] == want {
                    return Ok(());
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.ws.read_frame())
                .await
                .with_context(|| format!("no presence {users:?} in time"))?
                .map_err(|e| anyhow!("read: {e}"))?;
            if frame.opcode == OpCode::Text {
                if let Some(p) = is_presence(&frame.payload) {
                    self.presence.push_back(p);
                }
            }
        }
    }

    /// The next event; fails on close.
    pub async fn event(&mut self) -> Result<Value> {
        match self.next().await? {
            Next::Event(v) => Ok(v),
            Next::Close(c, r) => bail!("closed with {c}: {r}"),
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event().await?);
        }
        Ok(out)
    }

    /// Asserts that nothing arrives within `d` and the connection stays open: an event, a close
    /// frame or a read error all fail it (only pings and pongs may pass).
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(r) = tokio::time::timeout_at(deadline, self.ws.read_frame()).await {
            match r {
                Ok(f) if matches!(f.opcode, OpCode::Ping | OpCode::Pong) => continue,
                Ok(f) if f.opcode == OpCode::Text && is_presence(&f.payload).is_some() => continue,
                Ok(f) => panic!(
                    "expected silence, got {:?}: {}",
                    f.opcode,
                    String::from_utf8_lossy(&f.payload)
                ),
                Err(e) => panic!("expected silence, the connection failed: {e}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.write_frame(Frame::close(1000, b"bye")).await;
    }

    /// Sends `v` as a text message (a client's in-band message, such as a token refresh).
    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        let text = serde_json::to_vec(v)?;
        self.ws
            .write_frame(Frame::text(fastwebsockets::Payload::Owned(text)))
            .await
            .map_err(|e| anyhow!("write: {e}"))
    }

    /// Sends `{"type":"auth","token":…}` and gives the gateway's answer (`auth_ok` or
    /// `auth_error`), skipping events that arrive first.
    pub async fn refresh(&mut self, token: &str) -> Result<Value> {
        self.send_json(&json!({"type": "auth", "token": token}))
            .await?;
        loop {
            match self.next().await? {
                Next::Event(v) if v["type"] == "auth_ok" || v["type"] == "auth_error" => {
                    return Ok(v)
                }
                Next::Event(_) => continue,
                Next::Close(code, reason) => bail!("closed instead ({code} {reason})"),
            }
        }
    }
}

/// The seq of an event.
pub fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

/// The value of the sample `name{labels…}` (labels in any order); `None` if absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<&str> = rest.split(',').filter(|s| !s.is_empty()).collect();
        let all = labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()));
        (all && have.len() == labels.len()).then(|| value.parse().ok())?
    })
}

pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text().await.unwrap()
}

/// The value of an unlabelled metric on the gateway's (or task service's) admin listener, 0 when
/// it is not exported yet.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    sample(&scrape(addr).await, name, &[]).unwrap_or(0.0)
}
