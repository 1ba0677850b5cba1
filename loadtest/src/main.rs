//! `taskboard-loadtest`: one subcommand per measurement; each prints a progress line while it runs,
//! a summary at the end, and (with `--json FILE`) a machine-readable result.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use taskboard_loadtest::{connections, fanout, limit, mixed, plot, rest};

#[derive(Parser)]
#[command(
    name = "taskboard-loadtest",
    version,
    about = "Load and fan-out benchmarks for Taskboard"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A Goose attack on the REST API: board readers and task writers over many boards or one
    /// (Goose's options included, e.g. --users 64 --increase-rate 64 --run-time 30s
    /// --report-file report.html).
    Rest(Box<rest::RestArgs>),
    /// A Goose attack on the broadcast path: watchers holding board sockets (and resuming),
    /// browsers, writers, boards Zipf-distributed; every frame checked by seq, POST→frame latency
    /// in Goose's report (e.g. --users 2100 --watchers 2000 --browsers 50 --writers 50
    /// --increase-rate 500 --run-time 60s --report-file mixed.html --summary mixed.md). Exits 2
    /// when a frame was lost, doubled or reordered.
    Mixed(Box<mixed::MixedArgs>),
    /// WebSocket fan-out: N subscribers over B boards, events published at a fixed rate; latency
    /// (publish → frame) and exactly-once, in-order delivery checks.
    Fanout(fanout::FanoutArgs),
    /// Open N idle WebSocket connections, hold them, report server memory and CPU per connection.
    Connections(connections::ConnectionsArgs),
    /// The ceiling: one process writing a pre-built frame to N plain TCP sockets.
    Limit(limit::LimitArgs),
    /// (internal) the writing side of `limit`.
    #[command(hide = true)]
    LimitServer(limit::LimitServerArgs),
    /// Turn result JSON files into an HTML page with latency CDFs and throughput bars.
    Plot {
        /// The page to write.
        #[arg(long)]
        out: PathBuf,
        /// Result files (from --json).
        files: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    if let Cmd::LimitServer(a) = cli.cmd {
        return limit::serve(a);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (result, json) = match cli.cmd {
            Cmd::Fanout(a) => {
                let json = a.json.clone();
                (fanout::run(a).await?, json)
            }
            Cmd::Connections(a) => {
                let json = a.json.clone();
                (connections::run(a).await?, json)
            }
            Cmd::Limit(a) => {
                let json = a.json.clone();
                (limit::run(a).await?, json)
            }
            Cmd::Plot { out, files } => return plot::write(&out, &files),
            Cmd::Rest(a) => return rest::run(*a).await,
            Cmd::Mixed(a) => {
                if !mixed::run(*a).await?.clean() {
                    std::process::exit(2);
                }
                return Ok(());
            }
            Cmd::LimitServer(_) => unreachable!("handled above"),
        };
        result.print();
        result.write(json.as_deref())?;
        if !result.ok {
            std::process::exit(2);
        }
        Ok(())
    })
}
