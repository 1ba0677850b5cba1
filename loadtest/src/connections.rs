//! `connections`: open N idle WebSocket connections at a ramp rate, hold them, and report the
//! server's memory and CPU per connection.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use fastwebsockets::{Frame, OpCode, Payload};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::fanout::Target;
use crate::natsproto;
use crate::procstat::Sampler;
use crate::report::RunResult;
use crate::wsclient;

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token for the gateway (AUTH=on): a service-role token (`taskboard-token --service`)
    /// reaches every board the suite uses.
    #[arg(long, env = "TASKBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// gateway, original, or nats-ws.
    #[arg(long, value_enum, default_value = "gateway")]
    pub target: Target,
    /// nats-server WebSocket address (target nats-ws).
    #[arg(long, default_value = "127.0.0.1:8222")]
    pub nats_ws: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 5000)]
    pub ramp: u32,
    /// Seconds to hold them all open (CPU per connection is measured over this).
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Boards the connections are spread over.
    #[arg(long, default_value_t = 100)]
    pub boards: usize,
    /// Loopback source addresses (each gives ~28k ephemeral ports).
    #[arg(long, default_value_t = 16)]
    pub source_ips: usize,
    /// Server process(es) to measure (repeatable).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Opens, holds, measures, closes.
///
/// # Errors
/// Bad arguments.
pub async fn run(args: ConnectionsArgs) -> Result<RunResult> {
    if args.connections == 0 || args.ramp == 0 {
        bail!("--connections and --ramp must be positive");
    }
    let fan = crate::fanout::FanoutArgs {
        url: args.url.clone(),
        target: args.target,
        nats_ws: args.nats_ws.clone(),
        ..crate::fanout::FanoutArgs::defaults()
    };
    let addr = crate::fanout::target_addr(&fan)?;
    let sampler = Sampler::start(&args.server_pid);
    let base_rss = sampler.rss_now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(Semaphore::new(512));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    let mut last_print = Instant::now();
    for i in 0..args.connections {
        let due = started + Duration::from_secs_f64(i as f64 / args.ramp as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = inflight.clone().acquire_owned().await?;
        let (open_c, failed_c, mut stop) = (open.clone(), failed.clone(), stop_rx.clone());
        let board = 1 + (i % args.boards.max(1)) as i64;
        let (target, source) = (args.target, wsclient::source_ip(i, args.source_ips));
        let auth = match target {
            Target::Gateway => args.token.as_ref().map(|t| format!("Bearer {t}")),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let path = match target {
                Target::Gateway => format!("/ws?board_id={board}"),
                Target::Original => "/ws".into(),
                Target::NatsWs => "/".into(),
            };
            let mut ws = match wsclient::connect(addr, &path, source, auth.as_deref()).await {
                Ok(ws) => ws,
                Err(e) => {
                    drop(permit);
                    tracing::debug!(error = %e, "connect failed");
                    failed_c.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if target == Target::NatsWs {
                let hello = natsproto::hello(&format!("idle.{board}"));
                if ws
                    .write_frame(Frame::binary(Payload::Owned(hello)))
                    .await
                    .is_err()
                {
                    failed_c.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            drop(permit);
            open_c.fetch_add(1, Ordering::Relaxed);
            // Idle: read only to answer pings (and NATS PINGs) until told to stop.
            loop {
                let f = tokio::select! {
                    _ = stop.changed() => break,
                    f = ws.read_frame() => f,
                };
                match f {
                    Ok(f) if f.opcode == OpCode::Close => break,
                    Ok(f)
                        if target == Target::NatsWs
                            && f.payload.windows(4).any(|w| w == b"PING") =>
                    {
                        let _ = ws
                            .write_frame(Frame::binary(Payload::Borrowed(b"PONG\r\n")))
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            open_c.fetch_sub(1, Ordering::Relaxed);
        }));
        if last_print.elapsed() > Duration::from_secs(1) {
            println!(
                "opening: {} open, {} failed, server rss {:.1} MiB",
                open.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                sampler.rss_now().iter().sum::<u64>() as f64 / 1048576.0
            );
            last_print = Instant::now();
        }
    }
    // Let the last handshakes finish.
    let settle = Instant::now() + Duration::from_secs(30);
    while open.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.connections as u64
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = open.load(Ordering::Relaxed);
    println!(
        "{opened} connections open ({} failed); holding {:.0} s",
        failed.load(Ordering::Relaxed),
        args.hold
    );
    let held_rss = sampler.rss_now();
    let cpu_before: Vec<f64> = args
        .server_pid
        .iter()
        .map(|p| crate::procstat::cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let hold_cpu: f64 = args
        .server_pid
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| crate::procstat::cpu_seconds(*p).unwrap_or(0.0) - b)
        .sum();
    let still_open = open.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let server = sampler.finish(&base_rss);
    let grown: i64 = held_rss.iter().sum::<u64>() as i64 - base_rss.iter().sum::<u64>() as i64;
    let cpu: f64 = server.iter().map(|s| s.cpu_seconds).sum();
    Ok(RunResult {
        mode: "connections".into(),
        target: args.target.name().to_owned(),
        params: serde_json::to_value(&args)?,
        duration_s: started.elapsed().as_secs_f64(),
        connections: opened,
        connect_errors: failed.load(Ordering::Relaxed),
        server_cpu_seconds: cpu,
        bytes_per_connection: (opened > 0 && !args.server_pid.is_empty())
            .then(|| grown as f64 / opened as f64),
        cpu_us_per_connection_s: (opened > 0 && !args.server_pid.is_empty())
            .then(|| hold_cpu * 1e6 / opened as f64 / args.hold),
        server,
        ok: opened == args.connections as u64 && still_open == opened,
        ..Default::default()
    })
}
