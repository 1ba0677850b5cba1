//! `taskboard-gateway`: parses the config, binds, and runs until SIGINT/SIGTERM.
use clap::Parser;
use taskboard_gateway::{run, telemetry, Config};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("taskboard-gateway: {e}");
        return std::process::ExitCode::from(64);
    }
    let addr = format!("{}:{}", config.bind_addr, config.http_port);
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
