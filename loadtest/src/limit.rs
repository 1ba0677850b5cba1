//! `limit`: the machine's ceiling for the same fan-out. A child process writes one pre-built frame
//! per event to N plain loopback TCP sockets (no WebSocket, no JSON, no routing, no async runtime),
//! coalescing every frame already due into one write per socket; this process reads them with the
//! same accounting and latency measurement, and measures the child's CPU.
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::accounting::{Totals, Tracker};
use crate::procstat::Sampler;
use crate::report::{Latencies, LatencySummary, RunResult};
use crate::wsclient;

#[derive(Args, Debug, Clone, Serialize)]
pub struct LimitArgs {
    /// Receiving sockets.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes per frame (like one event frame of the gateway).
    #[arg(long, default_value_t = 540)]
    pub frame_bytes: usize,
    /// Loopback source addresses to spread connections over.
    #[arg(long, default_value_t = 16)]
    pub source_ips: usize,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of the hidden child process that does the writing.
#[derive(Args, Debug, Clone)]
pub struct LimitServerArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub conns: usize,
    #[arg(long)]
    pub rate: f64,
    #[arg(long)]
    pub events: u64,
    #[arg(long)]
    pub frame_bytes: usize,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The child: accept `conns` sockets, then write every event's frame to each of them in turn.
pub fn serve(a: LimitServerArgs) -> Result<()> {
    let l = TcpListener::bind(("127.0.0.1", a.port))?;
    let mut socks: Vec<TcpStream> = Vec::with_capacity(a.conns);
    while socks.len() < a.conns {
        let (s, _) = l.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let size = a.frame_bytes.max(16);
    let mut batch: Vec<u8> = Vec::new();
    let start = Instant::now();
    let mut k = 0u64;
    while k < a.events {
        let intended = start + Duration::from_secs_f64(k as f64 / a.rate);
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Every event already due goes out in one write per socket, as a server that has fallen
        // behind would coalesce them: this is the ceiling, not a naive one-write-per-frame loop.
        let elapsed = start.elapsed().as_secs_f64();
        let due = ((elapsed * a.rate) as u64 + 1).clamp(k + 1, a.events);
        batch.clear();
        for e in k..due {
            let at = start + Duration::from_secs_f64(e as f64 / a.rate);
            let lateness = Instant::now().saturating_duration_since(at).as_micros() as u64;
            // Sequence number and intended send time (wall clock, µs), then padding.
            batch.extend_from_slice(&(e + 1).to_le_bytes());
            batch.extend_from_slice(&(unix_us() - lateness).to_le_bytes());
            batch.resize(batch.len() + size - 16, b'x');
        }
        for s in &mut socks {
            s.write_all(&batch)?;
        }
        k = due;
    }
    // Keep the sockets open until the reader has everything (it closes them).
    std::thread::sleep(Duration::from_secs(30));
    Ok(())
}

/// Runs the ceiling measurement.
///
/// # Errors
/// The child cannot be started or connected to.
pub async fn run(args: LimitArgs) -> Result<RunResult> {
    if args.subscribers == 0 || args.rate <= 0.0 {
        bail!("--subscribers and --rate must be positive");
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let events = (args.rate * args.duration).round() as u64;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "limit-server",
            "--port",
            &port.to_string(),
            "--conns",
            &args.subscribers.to_string(),
            "--rate",
            &args.rate.to_string(),
            "--events",
            &events.to_string(),
            "--frame-bytes",
            &args.frame_bytes.to_string(),
        ])
        .kill_on_drop(true)
        .spawn()
        .context("start limit-server")?;
    let pid = child.id().context("child pid")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let lat = Arc::new(Latencies::new(64));
    let delivered = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(&[pid]);
    let start_rss = sampler.rss_now();
    let started = Instant::now();
    let mut readers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..args.subscribers {
        let source = wsclient::source_ip(i, args.source_ips);
        // The child may not be listening yet: the first connection retries until it is.
        let s = loop {
            match wsclient::tcp(addr, source).await {
                Ok(s) => break s,
                Err(_) if i == 0 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e.context("connect to limit-server")),
            }
        };
        let (lat, delivered, size) = (lat.clone(), delivered.clone(), args.frame_bytes.max(16));
        readers.push(tokio::spawn(async move {
            let mut s = s;
            let mut t = Tracker::default();
            let mut buf = vec![0u8; size];
            for _ in 0..events {
                if s.read_exact(&mut buf).await.is_err() {
                    break;
                }
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let sent = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
                lat.record(i, unix_us().saturating_sub(sent));
                t.observe(1, seq as i64);
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            t
        }));
    }
    let mut totals = Totals::default();
    let expected = HashMap::from([(1, events)]);
    for r in readers {
        r.await?.settle(&expected, &[1], &mut totals);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server = sampler.finish(&start_rss);
    let _ = child.kill().await;
    let cpu: f64 = server.iter().map(|s| s.cpu_seconds).sum();
    Ok(RunResult {
        mode: "limit".into(),
        target: "tcp".into(),
        params: serde_json::to_value(&args)?,
        duration_s: elapsed,
        published: events,
        deliveries_per_s: totals.delivered as f64 / elapsed,
        latency: LatencySummary::of(&lat.merged()),
        connections: args.subscribers as u64,
        server_cpu_seconds: cpu,
        deliveries_per_server_cpu_s: (cpu > 0.0).then(|| totals.delivered as f64 / cpu),
        server,
        ok: totals.missing == 0 && totals.duplicates == 0 && totals.out_of_order == 0,
        deliveries: totals,
        ..Default::default()
    })
}
