//! `taskboard-tasks`: parses the config, binds, and runs until SIGINT/SIGTERM.
use clap::Parser;
use taskboard_tasks::{run_with_metrics, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let otel = taskboard_telemetry::init_logging("taskboard-tasks");
    let code = serve().await;
    // Flushes the last spans (a blocking join of the exporter's thread).
    let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
    code
}

async fn serve() -> std::process::ExitCode {
    let config = Config::parse();
    // Take every descriptor the hard limit allows (the connection cap is computed from it).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the descriptor limit");
    }
    if let Err(e) = config.pg_config().and(config.service_token()) {
        eprintln!("taskboard-tasks: {e}");
        return std::process::ExitCode::from(64);
    }
    let listener = match taskboard_telemetry::bind(&config.bind_addr, config.port).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.bind_addr, port = config.port, error = %e, "cannot bind");
            return std::process::ExitCode::FAILURE;
        }
    };
    // METRICS_PORT=0 turns the admin listener off.
    let admin =
        match taskboard_telemetry::bind_metrics(&config.metrics_bind_addr, config.metrics_port)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    match run_with_metrics(
        config,
        listener,
        admin,
        taskboard_telemetry::shutdown_signal(),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "task service failed");
            std::process::ExitCode::FAILURE
        }
    }
}
