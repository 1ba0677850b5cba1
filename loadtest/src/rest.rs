//! `rest`: a Goose attack on the REST API. Readers list a board; writers create a task, complete
//! it and delete it (their own tasks only). Boards are spread or concentrated with `--boards`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use goose::config::GooseConfiguration;
use goose::goose::GooseResponse;
use goose::prelude::*;

#[derive(Args, Clone)]
pub struct RestArgs {
    /// Bearer token for the gateway (AUTH=on): a service-role token (`taskboard-token --service`)
    /// reaches every board the suite uses.
    #[arg(long, env = "TASKBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Boards the users spread over (1 concentrates everything on one board).
    #[arg(long, default_value_t = 100)]
    pub boards: u64,
    /// First board id.
    #[arg(long, default_value_t = 1_000_000)]
    pub board_base: u64,
    /// Weight of the reader scenario (lists a board).
    #[arg(long, default_value_t = 3)]
    pub readers: usize,
    /// Weight of the writer scenario (create, complete, delete).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Think time between a user's transactions, milliseconds (min).
    #[arg(long, default_value_t = 0)]
    pub think_min_ms: u64,
    /// Think time between a user's transactions, milliseconds (max).
    #[arg(long, default_value_t = 0)]
    pub think_max_ms: u64,
    /// Only create (no reads, no completes, no deletes): the create-throughput measurement.
    #[arg(long)]
    pub create_only: bool,
    /// Goose's own options (--host, --users, --increase-rate, --run-time, --report-file, …).
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

/// The id a writer is working on.
#[derive(Clone, Copy)]
struct Current(i64);

fn board_for(counter: &AtomicU64, base: u64, boards: u64) -> u64 {
    base + counter.fetch_add(1, Ordering::Relaxed) % boards.max(1)
}

fn fail(
    user: &mut GooseUser,
    request: &mut goose::metrics::GooseRequestMetric,
    what: &str,
) -> TransactionResult {
    user.set_failure(what, request, None, None)
}

/// An on-start transaction that gives the user a client sending `authorization` (AUTH=on) on
/// every request.
pub(crate) fn sign_in(authorization: Option<String>) -> Transaction {
    let f: TransactionFunction = Arc::new(move |user| {
        let auth = authorization.clone();
        Box::pin(async move {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(a) = auth.as_deref().and_then(|a| a.parse().ok()) {
                headers.insert(reqwest::header::AUTHORIZATION, a);
            }
            let builder = reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(60));
            user.set_client_builder(builder).await?;
            Ok(())
        })
    });
    Transaction::new(f).set_name("sign in").set_on_start()
}

/// `POST /api/tasks` with the JSON `body` (201 expected).
pub(crate) async fn create_task(
    user: &mut GooseUser,
    body: String,
) -> Result<GooseResponse, Box<TransactionError>> {
    let rb = user
        .get_request_builder(&GooseMethod::Post, "/api/tasks")?
        .header("content-type", "application/json")
        .body(body);
    let req = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/api/tasks")
        .name("/api/tasks")
        .expect_status_code(201)
        .set_request_builder(rb)
        .build();
    user.request(req).await
}

/// `PUT /api/tasks/{id}` completing the task (200 expected).
pub(crate) async fn complete_task(
    user: &mut GooseUser,
    id: i64,
) -> Result<GooseResponse, Box<TransactionError>> {
    let path = format!("/api/tasks/{id}");
    let rb = user
        .get_request_builder(&GooseMethod::Put, &path)?
        .header("content-type", "application/json")
        .body(r#"{"completed":true}"#);
    let req = GooseRequest::builder()
        .method(GooseMethod::Put)
        .path(path.as_str())
        .name("/api/tasks/{id}")
        .expect_status_code(200)
        .set_request_builder(rb)
        .build();
    user.request(req).await
}

/// `DELETE /api/tasks/{id}` (204 expected).
pub(crate) async fn delete_task(
    user: &mut GooseUser,
    id: i64,
) -> Result<GooseResponse, Box<TransactionError>> {
    let path = format!("/api/tasks/{id}");
    let req = GooseRequest::builder()
        .method(GooseMethod::Delete)
        .path(path.as_str())
        .name("/api/tasks/{id}")
        .expect_status_code(204)
        .build();
    user.request(req).await
}

/// Runs the attack and prints Goose's report.
///
/// # Errors
/// Goose rejects its options or the attack fails to start.
pub async fn run(args: RestArgs) -> Result<()> {
    let mut config = args.goose.clone();
    if config.host.is_none() {
        config.host = Some("http://127.0.0.1:8080".into());
    }
    let counter = Arc::new(AtomicU64::new(0));
    let (base, boards) = (args.board_base, args.boards);
    let think = (
        Duration::from_millis(args.think_min_ms),
        Duration::from_millis(args.think_max_ms.max(args.think_min_ms)),
    );

    let c = counter.clone();
    let list: TransactionFunction = Arc::new(move |user| {
        let board = board_for(&c, base, boards);
        Box::pin(async move {
            let path = format!("/api/tasks?board_id={board}&page_size=20");
            let req = GooseRequest::builder()
                .path(path.as_str())
                .name("/api/tasks")
                .build();
            let _ = user.request(req).await?;
            Ok(())
        })
    });
    let c = counter.clone();
    let create: TransactionFunction = Arc::new(move |user| {
        let board = board_for(&c, base, boards);
        Box::pin(async move {
            let body = format!(
                r#"{{"board_id":{board},"title":"goose task","description":"load test","created_by":1}}"#
            );
            let r = create_task(user, body).await?;
            let GooseResponse {
                mut request,
                response,
            } = r;
            let id = match response {
                Ok(resp) => resp
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_i64()),
                Err(_) => None,
            };
            match id {
                Some(id) => user.set_session_data(Current(id)),
                None => return fail(user, &mut request, "create answered without an id"),
            }
            Ok(())
        })
    });
    let complete: TransactionFunction = Arc::new(move |user| {
        Box::pin(async move {
            let Some(&Current(id)) = user.get_session_data::<Current>() else {
                return Ok(());
            };
            let _ = complete_task(user, id).await?;
            Ok(())
        })
    });
    let delete: TransactionFunction = Arc::new(move |user| {
        Box::pin(async move {
            let Some(&Current(id)) = user.get_session_data::<Current>() else {
                return Ok(());
            };
            let _ = delete_task(user, id).await?;
            Ok(())
        })
    });

    // AUTH=on: every request carries the token (one client per user, built at its start).
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let on_start = || sign_in(auth.clone());

    let mut attack = GooseAttack::initialize_with_config(config).context("goose")?;
    if args.create_only {
        attack = attack.register_scenario(
            scenario!("Creator")
                .set_wait_time(think.0, think.1)?
                .register_transaction(on_start())
                .register_transaction(Transaction::new(create).set_name("create")),
        );
    } else {
        attack = attack
            .register_scenario(
                scenario!("BoardReader")
                    .set_weight(args.readers.max(1))?
                    .set_wait_time(think.0, think.1)?
                    .register_transaction(on_start())
                    .register_transaction(Transaction::new(list).set_name("list")),
            )
            .register_scenario(
                scenario!("TaskWriter")
                    .set_weight(args.writers.max(1))?
                    .set_wait_time(think.0, think.1)?
                    .register_transaction(on_start())
                    .register_transaction(
                        Transaction::new(create).set_name("create").set_sequence(1),
                    )
                    .register_transaction(
                        Transaction::new(complete)
                            .set_name("complete")
                            .set_sequence(2),
                    )
                    .register_transaction(
                        Transaction::new(delete).set_name("delete").set_sequence(3),
                    ),
            );
    }
    let metrics = attack.execute().await.context("goose attack")?;
    let _ = metrics;
    Ok(())
}
