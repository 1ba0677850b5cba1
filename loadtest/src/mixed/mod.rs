//! `mixed`: a Goose attack on the broadcast path itself. Watchers hold one board's WebSocket for a
//! session and resume from their last seq; browsers list a board, glance at its socket and leave;
//! writers create, complete and delete tasks. Boards are picked Zipf-distributed (a few hot, a
//! long tail). Every frame a watcher gets is checked by seq (missing, duplicated, out of order),
//! and each created frame's POST→frame latency is a request in Goose's own report.
mod summary;
mod users;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::Args;
use fastwebsockets::OpCode;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Exp, Zipf};
use tokio::sync::mpsc;

use crate::wsclient;
pub use summary::{markdown, BoardTotals, Summary};
use watch::{Read, Watch};

/// The name of the delivery-latency request in Goose's report.
pub const FRAME_REQUEST: &str = "created frame (POST→frame)";

#[derive(Args, Clone)]
pub struct MixedArgs {
    /// Bearer token for the gateway (AUTH=on): a service-role token (`taskboard-token --service`)
    /// reaches every board.
    #[arg(long, env = "TASKBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Boards; popularity (which one a user picks) is Zipf-distributed over them.
    #[arg(long, default_value_t = 1000)]
    pub boards: u64,
    /// Zipf exponent: 0 picks boards uniformly, ~1.1 is a few hot boards and a long tail.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// First board id (default: a fresh range per run, so no earlier run's events count).
    #[arg(long)]
    pub board_base: Option<u64>,
    /// Weight of the watcher scenario. Goose splits --users by the weights, so with --users equal
    /// to watchers + browsers + writers the weights are the counts.
    #[arg(long, default_value_t = 40)]
    pub watchers: usize,
    /// Weight of the browser scenario (list a board, open its socket for --browse-secs, leave).
    #[arg(long, default_value_t = 2)]
    pub browsers: usize,
    /// Weight of the writer scenario (create, complete, delete, --think-ms apart).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Mean watcher session, seconds (exponentially distributed); then it resumes with `since`.
    #[arg(long, default_value_t = 20.0)]
    pub session_mean_secs: f64,
    /// How long a browser keeps the board's socket open, seconds.
    #[arg(long, default_value_t = 2)]
    pub browse_secs: u64,
    /// A writer's think time between its requests, milliseconds (each request is one event):
    /// writers × 1000 / think-ms is the intended write rate.
    #[arg(long, default_value_t = 250)]
    pub think_ms: u64,
    /// After Goose stops: how long open watchers may take to receive the last events written.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Where to write the delivery summary (Markdown; the same as JSON beside it, with the
    /// extension `.summary.json`).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Goose's own options (--host, --users, --increase-rate, --run-time, --report-file, …).
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

struct Shared {
    addr: SocketAddr,
    authorization: Option<String>,
    base: Instant,
    board_base: i64,
    zipf: Zipf<f64>,
    session: Exp<f64>,
    browse: Duration,
    /// The highest seq a writer got back, per board.
    committed: Mutex<HashMap<i64, i64>>,
    /// Every watcher's state (each user also holds its own in its session data).
    watchers: Mutex<Vec<Arc<tokio::sync::Mutex<Watch>>>>,
    totals: Mutex<HashMap<i64, BoardTotals>>,
    summary: Mutex<Summary>,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn pick_board(&self) -> i64 {
        self.board_base + self.zipf.sample(&mut rand::rng()) as i64 - 1
    }

    fn committed(&self, board: i64) -> i64 {
        lock(&self.committed).get(&board).copied().unwrap_or(0)
    }

    fn wrote(&self, board: i64, seq: Option<i64>) {
        lock(&self.totals).entry(board).or_default().written += 1;
        if let Some(s) = seq {
            let mut c = lock(&self.committed);
            let e = c.entry(board).or_insert(0);
            *e = (*e).max(s);
        }
    }

    /// Opens `/ws?board_id=B&since=S` and starts its reader.
    async fn open(
        &self,
        board: i64,
        since: Option<i64>,
    ) -> Result<(mpsc::UnboundedReceiver<Read>, tokio::task::JoinHandle<()>)> {
        let path = match since {
            Some(s) => format!("/ws?board_id={board}&since={s}"),
            None => format!("/ws?board_id={board}"),
        };
        let mut ws = wsclient::connect(
            self.addr,
            &path,
            std::net::Ipv4Addr::UNSPECIFIED,
            self.authorization.as_deref(),
        )
        .await?;
        ws.set_auto_pong(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                match ws.read_frame().await {
                    Ok(f) => match f.opcode {
                        OpCode::Text | OpCode::Binary => {
                            let at = Instant::now();
                            if tx
                                .send(Read::Frame(at, Bytes::from(f.payload.to_vec())))
                                .is_err()
                            {
                                return;
                            }
                        }
                        OpCode::Close => {
                            let code = f
                                .payload
                                .get(..2)
                                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                            let _ = tx.send(Read::Closed(code));
                            return;
                        }
                        _ => {}
                    },
                    Err(e) => {
                        let _ = tx.send(Read::Failed(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok((rx, reader))
    }
}

/// Runs the attack (Goose prints its report; `--report-file` writes it), then the delivery
/// summary. Returns the summary.
///
/// # Errors
/// Goose rejects its options, the host is not an address, or the attack fails to start.
pub async fn run(args: MixedArgs) -> Result<Summary> {
    let mut config = args.goose.clone();
    let host = config
        .host
        .get_or_insert_with(|| "http://127.0.0.1:8080".into())
        .clone();
    let url = reqwest::Url::parse(&host).with_context(|| format!("--host {host:?}"))?;
    let addr = tokio::net::lookup_host((
        url.host_str()
            .ok_or_else(|| anyhow!("--host {host:?} has no host"))?,
        url.port_or_known_default().unwrap_or(80),
    ))
    .await
    .with_context(|| format!("resolve {host}"))?
    .next()
    .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    let board_base = args
        .board_base
        .unwrap_or_else(|| 10_000_000 + rand::rng().random_range(0..1_000_000) * 1000);
    let shared = Arc::new(Shared {
        addr,
        authorization: args.token.as_ref().map(|t| format!("Bearer {t}")),
        base: Instant::now(),
        board_base: board_base as i64,
        zipf: Zipf::new(args.boards.max(1) as f64, args.zipf.max(0.0))
            .map_err(|e| anyhow!("--zipf {}: {e}", args.zipf))?,
        session: Exp::new(1.0 / args.session_mean_secs.max(0.1))
            .map_err(|e| anyhow!("--session-mean-secs: {e}"))?,
        browse: Duration::from_secs(args.browse_secs),
        committed: Mutex::default(),
        watchers: Mutex::default(),
        totals: Mutex::default(),
        summary: Mutex::default(),
        latency: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        ),
    });

    let s = shared.clone();
    let watch: TransactionFunction = Arc::new(move |user| {
        let s = s.clone();
        Box::pin(async move { watch::slice(user, &s).await })
    });
    let s = shared.clone();
    let browser: TransactionFunction = Arc::new(move |user| {
        let s = s.clone();
        Box::pin(async move { users::browse(user, &s).await })
    });
    let s = shared.clone();
    let create_fn: TransactionFunction = Arc::new(move |user| {
        let s = s.clone();
        Box::pin(async move { users::create(user, &s).await })
    });
    let s = shared.clone();
    let complete_fn: TransactionFunction = Arc::new(move |user| {
        let s = s.clone();
        Box::pin(async move { users::complete(user, &s).await })
    });
    let s = shared.clone();
    let delete_fn: TransactionFunction = Arc::new(move |user| {
        let s = s.clone();
        Box::pin(async move { users::delete(user, &s).await })
    });
    let on_start = || crate::rest::sign_in(shared.authorization.clone());
    let think = Duration::from_millis(args.think_ms);
    let mut attack = GooseAttack::initialize_with_config(config).context("goose")?;
    if args.watchers > 0 {
        attack = attack.register_scenario(
            scenario!("Watcher")
                .set_weight(args.watchers)?
                .register_transaction(Transaction::new(watch).set_name("watch")),
        );
    }
    if args.browsers > 0 {
        attack = attack.register_scenario(
            scenario!("Browser")
                .set_weight(args.browsers)?
                .set_wait_time(Duration::from_millis(500), Duration::from_millis(1500))?
                .register_transaction(on_start())
                .register_transaction(Transaction::new(browser).set_name("browse")),
        );
    }
    if args.writers > 0 {
        attack = attack.register_scenario(
            scenario!("Writer")
                .set_weight(args.writers)?
                .set_wait_time(think, think)?
                .register_transaction(on_start())
                .register_transaction(
                    Transaction::new(create_fn)
                        .set_name("create")
                        .set_sequence(1),
                )
                .register_transaction(
                    Transaction::new(complete_fn)
                        .set_name("complete")
                        .set_sequence(2),
                )
                .register_transaction(
                    Transaction::new(delete_fn)
                        .set_name("delete")
                        .set_sequence(3),
                ),
        );
    }
    attack.execute().await.context("goose attack")?;
    watch::settle_all(&shared, Duration::from_secs(args.settle_secs)).await;

    let mut summary = std::mem::take(&mut *lock(&shared.summary));
    summary.watchers = lock(&shared.watchers).len() as u64;
    summary.latency_ms = crate::report::LatencySummary::of(&lock(&shared.latency));
    let mut boards: Vec<BoardTotals> = lock(&shared.totals)
        .iter()
        .map(|(b, t)| BoardTotals {
            board_id: *b,
            ..t.clone()
        })
        .collect();
    boards.sort_by_key(|t| std::cmp::Reverse((t.delivered, t.written)));
    // The run's totals are the boards' sums.
    for b in &boards {
        summary.written += b.written;
        summary.sessions += b.sessions;
        summary.delivered += b.delivered;
        summary.missing += b.missing;
        summary.duplicates += b.duplicates;
        summary.out_of_order += b.out_of_order;
        summary.unparsed += b.unparsed;
    }
    summary.boards = boards;
    // Linked from the summary by their names relative to it when they sit beside it.
    let here = args.summary.as_deref().and_then(std::path::Path::parent);
    summary.goose_reports = args
        .goose
        .report_file
        .iter()
        .map(|r| {
            let r = std::path::Path::new(r);
            match (here, r.parent(), r.file_name()) {
                (Some(h), Some(p), Some(name)) if h == p => name.to_string_lossy().into_owned(),
                _ => r.display().to_string(),
            }
        })
        .collect();
    if let Some(path) = &args.summary {
        summary::write(path, &summary)?;
    }
    print!("{}", markdown(&summary));
    Ok(summary)
}
