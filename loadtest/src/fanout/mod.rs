//! `fanout`: N WebSocket subscribers over B boards, publishers creating events at a fixed rate,
//! latency from the intended send time (coordinated-omission aware) to the frame's arrival, and
//! exact delivery accounting. Targets: our gateway, the original's contract, or nats-server's own
//! WebSocket listener as the reference fan-out server.
mod publisher;
mod subscriber;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::accounting::{Totals, Tracker};
use crate::extract;
use crate::procstat::Sampler;
use crate::report::{Latencies, LatencySummary, RunResult};
use crate::wsclient;

use publisher::{publish_nats, publish_rest};
use subscriber::subscribe;

/// Which server the subscribers talk to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Our gateway: `/ws?board_id=B`, events checked by per-board seq.
    Gateway,
    /// Any implementation of the original's contract: plain `/ws` (every board), events checked by
    /// task id.
    Original,
    /// nats-server's WebSocket listener: subscribers SUB to a subject per board, the harness
    /// publishes over core NATS.
    NatsWs,
}

impl Target {
    /// The name `--target` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Original => "original",
            Target::NatsWs => "nats-ws",
        }
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// Base URL of the gateway (REST for publishing, /ws for subscribers).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Base URL the events are created through (REST POST), when not `--url`: another gateway
    /// replica in front of the same task service, so the measured gateway (`--server-pid`) only
    /// fans out what arrives from NATS, as nats-server does in a nats-ws run.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Bearer token for the gateway (AUTH=on): a service-role token (`taskboard-token --service`)
    /// reaches every board the suite uses.
    #[arg(long, env = "TASKBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What the subscribers connect to.
    #[arg(long, value_enum, default_value = "gateway")]
    pub target: Target,
    /// nats-server WebSocket address (target nats-ws).
    #[arg(long, default_value = "127.0.0.1:8222")]
    pub nats_ws: String,
    /// NATS URL the harness publishes to (target nats-ws).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Boards the subscribers are spread over (subscriber i watches board i mod B).
    #[arg(long, default_value_t = 1)]
    pub boards: usize,
    /// Events per second, over all boards.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Concurrent publishers (HTTP requests in flight).
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1, .2, …); 0 lets the kernel
    /// pick (for a gateway that is not on loopback, e.g. in scripts/cluster.sh's namespaces).
    #[arg(long, default_value_t = 16)]
    pub source_ips: usize,
    /// New connections per second while connecting (0: as fast as possible).
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u32,
    /// Server process(es) whose CPU and memory are measured (repeatable).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Payload size of the events published in nats-ws mode (ours are about this big).
    #[arg(long, default_value_t = 520)]
    pub payload_bytes: usize,
    /// First board id (default: a fresh range derived from the clock, so seqs start at 1).
    #[arg(long)]
    pub board_base: Option<i64>,
    /// Longest wait for the last deliveries after publishing ends, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// Gateway subscribers offer permessage-deflate (as browsers do) and inflate what comes
    /// compressed; a subscriber whose offer is declined fails. The report's "wire bytes" then
    /// counts the compressed frames.
    #[arg(long)]
    pub deflate: bool,
}

impl FanoutArgs {
    /// The defaults `--help` shows, for building arguments in code.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: FanoutArgs,
        }
        Wrap::parse_from(["fanout"]).a
    }
}

/// Whether the target's frames are keyed by per-board seq (so a gap names a seq).
fn target_is_seqs(t: Target) -> bool {
    t != Target::Original
}

/// Shared counters of a run.
struct Shared {
    base: Instant,
    /// `Authorization` for the gateway's REST and WebSocket.
    auth: Option<String>,
    delivered: AtomicU64,
    /// Bytes of delivered frames on the wire (headers included, compressed if so).
    wire: AtomicU64,
    /// Subscribers offer permessage-deflate (`--deflate`).
    deflate: bool,
    lat: Latencies,
    /// REST publishes: intended send time → 201.
    answered: Latencies,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Records one delivered frame for a subscriber of `board`.
    fn on_frame(&self, t: &mut Tracker, shard: usize, board: i64, target: Target, frame: &[u8]) {
        let f = extract::fields(frame);
        if let Some(sent) = f.sent_us {
            self.lat.record(shard, self.now_us().saturating_sub(sent));
        }
        match (target, f.seq, f.task_id) {
            (Target::Original, _, Some(id)) => t.observe(0, id),
            (Target::Gateway | Target::NatsWs, Some(seq), _) => {
                t.observe(f.board_id.unwrap_or(board), seq)
            }
            _ => t.unparsed(),
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs a fan-out measurement.
///
/// # Errors
/// Bad arguments, or no subscriber could connect.
pub async fn run(args: FanoutArgs) -> Result<RunResult> {
    if args.subscribers == 0 || args.boards == 0 || args.rate <= 0.0 {
        bail!("--subscribers, --boards and --rate must be positive");
    }
    let board_base = args.board_base.unwrap_or_else(|| {
        // Fresh boards per run (seconds since 2020 × 1000 leaves room for 1000 boards per run).
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ((secs - 1_577_836_800) as i64) * 1000
    });
    let boards: Vec<i64> = (0..args.boards as i64).map(|i| board_base + i).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        auth: args.token.as_ref().map(|t| format!("Bearer {t}")),
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        wire: AtomicU64::new(0),
        deflate: args.deflate,
        lat: Latencies::new(64),
        answered: Latencies::new(8),
        stop: stop_rx,
    });

    // 1. Subscribers.
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(256));
    let mut subs = Vec::with_capacity(args.subscribers);
    let started_connecting = Instant::now();
    let addr = target_addr(&args)?;
    for i in 0..args.subscribers {
        if args.connect_rate > 0 {
            let due =
                started_connecting + Duration::from_secs_f64(i as f64 / args.connect_rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let board = boards[i % boards.len()];
        let permit = permits.clone().acquire_owned().await?;
        let (shared, ready, failed) = (shared.clone(), ready.clone(), failed.clone());
        let (target, source) = (args.target, wsclient::source_ip(i, args.source_ips));
        let prefix = nats_prefix(board_base);
        subs.push(tokio::spawn(async move {
            let mut t = Tracker::default();
            let r = subscribe(
                &shared,
                &mut t,
                addr,
                target,
                board,
                source,
                &prefix,
                i,
                move || {
                    drop(permit);
                    ready.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await;
            if let Err(e) = r {
                failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "subscriber ended");
            }
            t
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.subscribers {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = ready.load(Ordering::Relaxed);
    println!(
        "{connected} of {} subscribers connected in {:.1} s ({} failed)",
        args.subscribers,
        started_connecting.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    if connected == 0 {
        bail!("no subscriber could connect to {addr}");
    }

    // 2. Publish at the fixed rate, measuring the server meanwhile.
    let sampler = Sampler::start(&args.server_pid);
    let start_rss = sampler.rss_now();
    let total = (args.rate * args.duration).round() as u64;
    let published: Arc<Vec<AtomicU64>> =
        Arc::new(boards.iter().map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let run_start = Instant::now();
    let progress = spawn_progress(shared.clone(), published.clone(), errors.clone());
    let pub_base = Instant::now();
    match args.target {
        Target::NatsWs => {
            publish_nats(
                &args, &boards, board_base, &shared, pub_base, total, &published, &errors,
            )
            .await?
        }
        _ => {
            publish_rest(
                &args, &boards, &shared, pub_base, total, &published, &errors,
            )
            .await?
        }
    }

    // 3. Wait for the last deliveries.
    let per_board: HashMap<i64, u64> = boards
        .iter()
        .zip(published.iter())
        .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
        .collect();
    let all_events: u64 = per_board.values().sum();
    let expected_total: u64 = (0..args.subscribers)
        .map(|i| match args.target {
            Target::Original => all_events,
            _ => per_board[&boards[i % boards.len()]],
        })
        .sum::<u64>()
        * connected as u64
        / args.subscribers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.delivered.load(Ordering::Relaxed) < expected_total
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = run_start.elapsed().as_secs_f64();
    let server = sampler.finish(&start_rss);
    let _ = stop_tx.send(true);
    progress.abort();

    // 4. Account.
    let mut totals = Totals::default();
    for (i, s) in subs.into_iter().enumerate() {
        let t = s.await?;
        let watched = match args.target {
            Target::Original => vec![0],
            _ => vec![boards[i % boards.len()]],
        };
        let expected = match args.target {
            Target::Original => HashMap::from([(0, all_events)]),
            _ => per_board.clone(),
        };
        let missing_before = totals.missing;
        t.settle(&expected, &watched, &mut totals);
        if totals.missing > missing_before && target_is_seqs(args.target) {
            let b = watched[0];
            eprintln!(
                "subscriber {i} (board {b}): {} of {} events missing; seqs never received: {:?}, highest received {}",
                totals.missing - missing_before,
                expected.get(&b).copied().unwrap_or(0),
                t.gaps(b, 20),
                t.last(b)
            );
        }
    }
    let latency = LatencySummary::of(&shared.lat.merged());
    let answered = shared.answered.merged();
    let publish_latency = (!answered.is_empty()).then(|| LatencySummary::of(&answered));
    let cpu: f64 = server.iter().map(|s| s.cpu_seconds).sum();
    let publish_errors = errors.load(Ordering::Relaxed);
    let ok = totals.missing == 0
        && totals.duplicates == 0
        && totals.out_of_order == 0
        && publish_errors == 0
        && failed.load(Ordering::Relaxed) == 0;
    let wire = shared.wire.load(Ordering::Relaxed);
    if totals.delivered > 0 {
        println!(
            "wire bytes          {wire} ({:.1} per delivery{})",
            wire as f64 / totals.delivered as f64,
            if args.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        );
    }
    Ok(RunResult {
        mode: "fanout".into(),
        target: args.target.name().to_owned(),
        params: serde_json::to_value(&args)?,
        duration_s: elapsed,
        published: all_events,
        publish_errors,
        deliveries_per_s: totals.delivered as f64 / elapsed,
        deliveries: totals,
        latency,
        publish_latency,
        connections: connected as u64,
        connect_errors: failed.load(Ordering::Relaxed) as u64,
        server_cpu_seconds: cpu,
        deliveries_per_server_cpu_s: (cpu > 0.0).then(|| totals.delivered as f64 / cpu),
        server,
        bytes_per_connection: None,
        cpu_us_per_connection_s: None,
        wire_bytes: Some(wire),
        ok,
    })
}

/// The address the subscribers connect to.
pub fn target_addr(args: &FanoutArgs) -> Result<SocketAddr> {
    let hostport = match args.target {
        Target::NatsWs => args.nats_ws.trim_start_matches("ws://").to_owned(),
        _ => args
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
    };
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("address {hostport}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("no IPv4 address for {hostport}"))
}

fn nats_prefix(board_base: i64) -> String {
    format!("bench{board_base}")
}

fn spawn_progress(
    shared: Arc<Shared>,
    published: Arc<Vec<AtomicU64>>,
    errors: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let d = shared.delivered.load(Ordering::Relaxed);
            let p: u64 = published.iter().map(|a| a.load(Ordering::Relaxed)).sum();
            let p99 = shared.lat.merged().value_at_quantile(0.99) as f64 / 1000.0;
            println!(
                "t={:>4.0}s published={p} errors={} delivered={d} ({}/s) p99={p99:.1}ms",
                start.elapsed().as_secs_f64(),
                errors.load(Ordering::Relaxed),
                d - last
            );
            last = d;
        }
    })
}
