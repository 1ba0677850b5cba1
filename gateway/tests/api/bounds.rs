//! Memory bounds under hostile resumers, measured from /proc on the real gateway binary.
use std::process::Stdio;
use std::time::Duration;

use taskboard_tasks::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Resident memory of a process, in bytes (VmRSS of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A resumer that reads its 101 and then nothing, with a tiny receive buffer.
async fn stalled_resumer(addr: std::net::SocketAddr, board: i64) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /ws?board_id={board}&since=0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test]
async fn resumers_that_stop_reading_hold_at_most_a_page_each() {
    let tasks = testing::spawn_tasks(testing::test_config().await).await;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .kill_on_drop(true)
        .env_clear()
        .env("HTTP_PORT", port.to_string())
        .env("METRICS_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("TASK_SERVICE_ADDR", tasks.grpc_addr())
        .env("AUTH", "off")
        .env("NATS_URL", testing::nats_url())
        .env("NATS_SUBJECT_PREFIX", &tasks.subject_prefix)
        .env("WS_SEND_BUFFER", "4096")
        .env("WS_WRITE_TIMEOUT_MS", "60000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::new();
    let url = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while http
        .get(format!("{url}/ready"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A board of 120 events at the largest legal size (~40 KB each: 4.8 MB in all).
    let description = "😀".repeat(10_000);
    for i in 0..120 {
        let r = http
            .post(format!("{url}/api/tasks"))
            .json(&serde_json::json!({"board_id": 7, "title": format!("big {i}"), "description": description}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Warm up (pools, allocator), then measure.
    let warm = stalled_resumer(addr, 7).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);
    let n = 40;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(stalled_resumer(addr, 7).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss(pid).saturating_sub(before);
    let per = grown / n;
    eprintln!(
        "{n} stalled resumers: RSS +{} KiB ({} KiB each)",
        grown / 1024,
        per / 1024
    );
    // One replay page is at most 256 KiB of payload (plus its frames); a whole board (4.8 MB, or a
    // 4 MiB page before the bound) per resumer would be far above this.
    assert!(
        per < 1024 * 1024,
        "each stalled resumer holds {} KiB",
        per / 1024
    );
    drop((held, warm));
    let _ = child.kill().await;
}
