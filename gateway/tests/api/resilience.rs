//! Failure handling: NATS outages, a missing task service, graceful shutdown.
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use taskboard_tasks::testing::{self, PrivateNats};

use crate::helpers::*;

#[tokio::test]
async fn events_committed_while_nats_is_down_are_delivered_once_it_is_back() {
    let mut nats = PrivateNats::start().await;
    let url = nats.url();
    let app = spawn_app_with(|t| t.nats_url = url.clone(), |g| g.nats_url = url.clone()).await;
    let mut ws = app.ws("board_id=1").await;
    app.create(1, "before outage").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 1);

    nats.kill();
    // Writes still succeed: the events wait in the outbox.
    for i in 0..3 {
        app.create(1, &format!("during outage {i}")).await;
    }
    // /ready reports NATS as down.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = app.http.get(app.url("/ready")).send().await.unwrap();
        if r.status() == 503 {
            let b: Value = r.json().await.unwrap();
            assert!(b["message"].as_str().unwrap().contains("nats"), "{b}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never noticed NATS was gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nats.restart().await;
    let evs = ws.events(3).await.unwrap();
    assert_eq!(evs.iter().map(seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(evs[0]["title"], "during outage 0");
    app.create(1, "after").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 5);
    // The reconnect is counted.
    let m = reqwest::get(format!("http://{}/metrics", app.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("taskboard_nats_reconnects_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_gateway_starts_without_the_task_service_and_reports_it_in_ready() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = gw_config(
        &format!("127.0.0.1:{port}"),
        &testing::unique("tbt"),
        &testing::nats_url(),
    );
    cfg.grpc_timeout_ms = 500;
    let app = spawn_gateway(cfg).await;
    let r = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["message"].as_str().unwrap().contains("task service"),
        "{b}"
    );
    // REST calls fail cleanly with 503 and no internal detail.
    let r = app.http.get(app.url("/api/tasks/1")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"error": "Task service unavailable", "code": "unavailable"})
    );
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_returns_promptly() {
    let mut app = spawn_app().await;
    let mut ws = app.ws("board_id=1").await;
    app.create(1, "x").await;
    ws.event().await.unwrap();
    let started = tokio::time::Instant::now();
    let stop = tokio::spawn(async move {
        let r = app.stop_gateway().await;
        (r, app)
    });
    match ws.next().await.unwrap() {
        Next::Close(code, reason) => {
            assert_eq!(code, 1001);
            assert_eq!(reason, "server shutting down");
        }
        other => panic!("expected close, got {other:?}"),
    }
    let (r, app) = stop.await.unwrap();
    r.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
    app.tasks.unwrap().stop().await.unwrap();
}

/// The real binary, stopped with a real SIGTERM.
#[tokio::test]
async fn the_whole_drain_shares_one_grace_period() {
    use tokio::io::AsyncWriteExt;
    let mut app = spawn_app_with(
        |_| {},
        |g| {
            g.shutdown_grace_secs = 1;
            g.body_timeout_ms = 60_000;
        },
    )
    .await;
    // An HTTP exchange that never finishes (its body stalls) and a WebSocket client that never
    // answers the server's close: each phase alone would use the whole grace period.
    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(b"POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let _silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _deaf = ws_handshake(stream, app.addr, "board_id=1").await.unwrap();
    let started = tokio::time::Instant::now();
    app.stop_gateway().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1600),
        "shutdown took {took:?} with a 1 s grace period"
    );
}

#[tokio::test]
async fn the_binary_raises_its_descriptor_limit_and_sizes_its_caps_from_it() {
    use tokio::io::AsyncBufReadExt;
    let hard: usize = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        .expect("hard limit");
    let port = testing::free_port();
    // Started with the usual soft limit of 1024, as a shell or a unit file would leave it.
    let mut child = tokio::process::Command::new("bash")
        .args([
            "-c",
            "ulimit -Sn 1024 && exec \"$0\"",
            env!("CARGO_BIN_EXE_taskboard-gateway"),
        ])
        .kill_on_drop(true)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HTTP_PORT", port.to_string())
        .env("METRICS_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("TASK_SERVICE_ADDR", "127.0.0.1:1")
        .env("AUTH", "off")
        .env("NATS_URL", testing::nats_url())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let caps = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("connection caps") {
                return l;
            }
        }
        String::new()
    })
    .await
    .expect("the caps are logged at start");
    let max: usize = caps
        .split_whitespace()
        .find_map(|w| w.strip_prefix("max_connections="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{caps}"));
    assert_eq!(max, hard.saturating_sub(512).max(64), "{caps}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn the_gateway_binary_drains_on_sigterm_and_exits_zero() {
    let tasks = testing::spawn_tasks(testing::test_config().await).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .kill_on_drop(true)
        .env_clear()
        .env("HTTP_PORT", port.to_string())
        .env("METRICS_PORT", metrics_port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("TASK_SERVICE_ADDR", tasks.grpc_addr())
        .env("AUTH", "off")
        .env("NATS_URL", testing::nats_url())
        .env("NATS_SUBJECT_PREFIX", &tasks.subject_prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ws = loop {
        match ws_connect(addr, "board_id=1").await {
            Ok(ws) => break ws,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("gateway binary never accepted a WebSocket: {e}"),
        }
    };
    // The admin port serves Prometheus text, with build info.
    let m = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(text.contains("taskboard_build_info{"), "{text}");
    assert!(text.contains("taskboard_ws_connections 1"), "{text}");
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    match ws.next().await.unwrap() {
        Next::Close(code, _) => assert_eq!(code, 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert!(status.success(), "{status}");
    tasks.stop().await.unwrap();
}

#[tokio::test]
async fn help_explains_every_setting_and_a_bad_config_exits_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "HTTP_PORT",
        "TASK_SERVICE_ADDR",
        "NATS_URL",
        "METRICS_PORT",
        "CORS_ORIGINS",
        "WS_QUEUE",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .env_clear()
        .env("WS_QUEUE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WS_QUEUE"));
}

/// A task service that accepts connections and never answers (a hung process, a black-holed
/// address): after `breaker_failures` calls that each waited for the deadline, the gateway stops
/// waiting and answers 503 with `Retry-After` at once.
#[tokio::test]
async fn a_task_service_that_never_answers_trips_the_breaker_and_calls_fail_fast() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let mut cfg = gw_config(
        &hole_addr.to_string(),
        &testing::unique("tbt"),
        &testing::nats_url(),
    );
    cfg.grpc_timeout_ms = 800;
    cfg.breaker_failures = 3;
    cfg.breaker_open_ms = 60_000;
    let app = spawn_gateway(cfg).await;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let r = app.http.get(app.url("/api/tasks/1")).send().await.unwrap();
        assert_eq!(r.status(), 504);
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        metric(app.metrics_addr, "taskboard_task_service_circuit_open").await,
        1.0
    );
    for path in ["/api/tasks/1", "/api/tasks?board_id=1"] {
        let t = std::time::Instant::now();
        let r = app.http.get(app.url(path)).send().await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "{path}");
        // Far below the 800 ms deadline: nothing waited for the task service.
        assert!(took < Duration::from_millis(300), "{path}: {took:?}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50..=60).contains(&retry), "Retry-After {retry}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(
            b,
            json!({"error": "Task service unavailable", "code": "unavailable"})
        );
    }
    assert_eq!(
        metric(
            app.metrics_addr,
            "taskboard_task_service_circuit_rejected_total"
        )
        .await,
        2.0
    );
    // Readiness still asks the task service itself.
    let r = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    holder.abort();
}

/// The breaker opens while the task service is cut off and closes by itself once a probe call
/// gets through again: no restart, no request waiting.
#[tokio::test]
async fn the_breaker_closes_by_itself_when_the_task_service_is_back() {
    let tc = testing::test_config().await;
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let proxy = testing::TcpProxy::start(tasks.addr).await;
    let mut cfg = gw_config(&proxy.addr.to_string(), &tasks.subject_prefix, &nats);
    cfg.breaker_failures = 2;
    cfg.breaker_open_ms = 300;
    let app = spawn_gateway(cfg).await;
    app.wait_ready().await;
    let first = app.create(7, "before the cut").await;

    proxy.cut();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let r = app
            .http
            .get(app.url("/api/tasks?board_id=7"))
            .send()
            .await
            .unwrap();
        answers.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
    }
    assert!(answers.iter().all(|a| *a == (503, true)), "{answers:?}");
    assert!(
        metric(
            app.metrics_addr,
            "taskboard_task_service_circuit_rejected_total"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(app.metrics_addr, "taskboard_task_service_circuit_open").await,
        1.0
    );

    proxy.restore();
    let back = eventually(WAIT, || async {
        let r = app
            .http
            .get(app.url("/api/tasks?board_id=7"))
            .send()
            .await
            .unwrap();
        r.status() == 200
    })
    .await;
    assert!(back, "the breaker never closed");
    assert_eq!(
        metric(app.metrics_addr, "taskboard_task_service_circuit_open").await,
        0.0
    );
    let r = app
        .http
        .get(app.url(&format!("/api/tasks/{}", first["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A task service whose connections are reset as they open (a proxy or load balancer in front of
/// a dead pod) is "unavailable", not an internal error of the gateway: 503 with Retry-After.
#[tokio::test]
async fn connections_reset_on_connect_are_unavailable_not_internal_errors() {
    // Accepts, lets the client's HTTP/2 preface arrive, then resets (SO_LINGER 0).
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = resetter.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = resetter.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let s = s.into_std().unwrap();
                let s = socket2::Socket::from(s);
                let _ = s.set_linger(Some(Duration::ZERO));
            });
        }
    });
    let mut cfg = gw_config(
        &addr.to_string(),
        &testing::unique("tbt"),
        &testing::nats_url(),
    );
    cfg.breaker_failures = 0;
    let app = spawn_gateway(cfg).await;
    for _ in 0..3 {
        let r = app
            .http
            .get(app.url("/api/tasks?board_id=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["code"], "unavailable");
    }
    task.abort();
}

/// A gRPC server of an older task service that knows no method (every call: UNIMPLEMENTED, after
/// `delay`), recording the path of every call.
async fn unimplemented_upstream(
    delay: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    log.lock().unwrap().push(req.uri().path().to_owned());
                    async move {
                        tokio::time::sleep(delay).await;
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "12")
                            .header("grpc-message", "unknown method")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_task_service_without_create_tasks_gets_one_call_per_create() {
    let (addr, seen) = unimplemented_upstream(Duration::from_millis(300)).await;
    let mut c = gw_config(
        &addr.to_string(),
        &testing::unique("tbt"),
        &testing::nats_url(),
    );
    c.create_calls = 1;
    c.breaker_failures = 0;
    let app = spawn_gateway(c).await;
    let create = |title: String| {
        let (http, url) = (app.http.clone(), app.url("/api/tasks"));
        async move {
            http.post(url)
                .json(&json!({"board_id": 1, "title": title}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let calls_of = |method: &str| {
        let path = format!("/task.v1.TaskService/{method}");
        seen.lock().unwrap().iter().filter(|p| **p == path).count()
    };
    // One goes alone; the 10 that arrive while it is out are gathered, refused as a whole, and
    // then sent one by one.
    let first = tokio::spawn(create("first".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = futures_util::future::join_all((0..10).map(|i| create(format!("t{i}")))).await;
    assert_eq!(
        first.await.unwrap(),
        500,
        "UNIMPLEMENTED is the service's fault"
    );
    assert!(rest.iter().all(|s| *s == 500), "{rest:?}");
    assert_eq!(calls_of("CreateTasks"), 1);
    assert_eq!(calls_of("CreateTask"), 11, "every create was still tried");

    // For a while after, creates go one per call, even many at once.
    let again = futures_util::future::join_all((0..5).map(|i| create(format!("u{i}")))).await;
    assert!(again.iter().all(|s| *s == 500), "{again:?}");
    assert_eq!(calls_of("CreateTasks"), 1, "no gathering right after");
    assert_eq!(calls_of("CreateTask"), 16);
}
