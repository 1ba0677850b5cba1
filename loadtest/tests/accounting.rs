//! The harness's own accounting, against a scripted server that loses, repeats and reorders
//! events on purpose: the report must say exactly that.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, Payload};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use taskboard_loadtest::fanout::{self, FanoutArgs, Target};
use tokio::sync::broadcast;

const BOARD: i64 = 77;

/// Seqs sent for the k-th create: 2 twice (duplicate), nothing for 3 until after 4 (reordered),
/// and 5 never (missing).
fn script(k: usize) -> Vec<i64> {
    match k {
        1 => vec![1],
        2 => vec![2, 2],
        3 => vec![],
        4 => vec![4, 3],
        _ => vec![],
    }
}

async fn fake_gateway() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _) = broadcast::channel::<Bytes>(64);
    let posts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (tx, posts) = (tx.clone(), posts.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let (tx, posts) = (tx.clone(), posts.clone());
                    async move {
                        if req.uri().path() == "/ws" {
                            let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                            let mut rx = tx.subscribe();
                            tokio::spawn(async move {
                                let mut ws = fut.await.unwrap();
                                while let Ok(f) = rx.recv().await {
                                    if ws
                                        .write_frame(Frame::text(Payload::Borrowed(&f)))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            });
                            let (parts, _) = resp.into_parts();
                            return Ok::<_, std::convert::Infallible>(Response::from_parts(
                                parts,
                                Full::new(Bytes::new()),
                            ));
                        }
                        // POST /api/tasks: answer 201 and emit this create's scripted frames.
                        let k = posts.fetch_add(1, Ordering::SeqCst) + 1;
                        for seq in script(k) {
                            let _ = tx.send(Bytes::from(format!(
                                r#"{{"type":"created","task_id":{seq},"board_id":{BOARD},"title":"lt 1","seq":{seq}}}"#
                            )));
                        }
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = hyper::StatusCode::CREATED;
                        Ok(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// One subscriber of board `BOARD` on the gateway at `addr`, 50 creates/s for `secs`.
fn one_subscriber(addr: std::net::SocketAddr, secs: f64, drain: f64) -> FanoutArgs {
    let mut args = FanoutArgs::defaults();
    args.url = format!("http://{addr}");
    args.target = Target::Gateway;
    args.subscribers = 1;
    args.boards = 1;
    args.board_base = Some(BOARD);
    args.rate = 50.0;
    args.duration = secs;
    args.publishers = 1;
    args.drain = drain;
    args
}

#[tokio::test]
async fn gaps_duplicates_and_reordering_injected_by_a_server_are_reported() {
    let addr = fake_gateway().await;
    let r = fanout::run(one_subscriber(addr, 0.1, 1.0)).await.unwrap(); // 5 creates
    assert_eq!(r.published, 5);
    let d = r.deliveries;
    assert_eq!(d.delivered, 5, "1, 2, 2, 4, 3");
    assert_eq!(d.duplicates, 1);
    assert_eq!(d.out_of_order, 1);
    assert_eq!(d.missing, 1, "seq 5 never arrived");
    assert!(!r.ok);
}

#[tokio::test]
async fn a_clean_run_against_the_limit_server_is_ok() {
    // The limit mode re-executes its own binary as the writer, so the test runs the real binary.
    let exe = env!("CARGO_BIN_EXE_taskboard-loadtest");
    let out = tokio::process::Command::new(exe)
        .args([
            "limit",
            "--subscribers",
            "5",
            "--rate",
            "200",
            "--duration",
            "0.25",
            "--frame-bytes",
            "64",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The report's lines with their padding squeezed: the words and numbers are what count.
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("deliveries 250 of 250 expected")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l == "missing/dup/order 0 / 0 / 0"),
        "{text}"
    );
}

/// A gateway that closes every fresh subscriber with 1013 after its second event, and serves a
/// resume (`since=S`) with everything after S, then live events. Returns the queries of `/ws`.
async fn shedding_gateway() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _) = broadcast::channel::<i64>(64);
    let log = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = queries.clone();
    let frame = |seq: i64| {
        format!(
            r#"{{"type":"created","task_id":{seq},"board_id":{BOARD},"title":"lt 1","seq":{seq}}}"#
        )
    };
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (tx, log, seen) = (tx.clone(), log.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let (tx, log, seen) = (tx.clone(), log.clone(), seen.clone());
                    async move {
                        if req.uri().path() == "/ws" {
                            let query = req.uri().query().unwrap_or_default().to_owned();
                            seen.lock().unwrap().push(query.clone());
                            let since = query
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("since="))
                                .map(|v| v.parse::<i64>().unwrap());
                            let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                            let mut rx = tx.subscribe();
                            let backlog: Vec<i64> = match since {
                                Some(s) => log
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .copied()
                                    .filter(|q| *q > s)
                                    .collect(),
                                None => Vec::new(),
                            };
                            tokio::spawn(async move {
                                let mut ws = fut.await.unwrap();
                                let mut last = since.unwrap_or(0);
                                for seq in backlog {
                                    ws.write_frame(Frame::text(Payload::Owned(
                                        frame(seq).into_bytes(),
                                    )))
                                    .await
                                    .unwrap();
                                    last = seq;
                                }
                                while let Ok(seq) = rx.recv().await {
                                    if seq <= last {
                                        continue;
                                    }
                                    if since.is_none() && seq > 2 {
                                        let _ =
                                            ws.write_frame(Frame::close(1013, b"too slow")).await;
                                        return;
                                    }
                                    let f = Frame::text(Payload::Owned(frame(seq).into_bytes()));
                                    if ws.write_frame(f).await.is_err() {
                                        return;
                                    }
                                    last = seq;
                                }
                            });
                            let (parts, _) = resp.into_parts();
                            return Ok::<_, std::convert::Infallible>(Response::from_parts(
                                parts,
                                Full::new(Bytes::new()),
                            ));
                        }
                        let seq = {
                            let mut l = log.lock().unwrap();
                            let seq = l.len() as i64 + 1;
                            l.push(seq);
                            seq
                        };
                        let _ = tx.send(seq);
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = hyper::StatusCode::CREATED;
                        Ok(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, queries)
}

#[tokio::test]
async fn a_subscriber_closed_as_too_slow_resumes_from_its_last_seq_and_misses_nothing() {
    let (addr, queries) = shedding_gateway().await;
    let r = fanout::run(one_subscriber(addr, 0.2, 2.0)).await.unwrap(); // 10 creates
    assert_eq!(r.published, 10);
    let d = r.deliveries;
    assert_eq!(d.resumed, 1);
    assert_eq!(
        (d.missing, d.duplicates, d.out_of_order),
        (0, 0, 0),
        "{d:?}"
    );
    assert!(r.ok);
    assert_eq!(
        *queries.lock().unwrap(),
        [
            format!("board_id={BOARD}"),
            format!("board_id={BOARD}&since=2")
        ]
    );
}
