//! The mixed Goose scenario against the real services (fresh database, unique NATS subjects):
//! watchers, browsers and writers for a few seconds; every frame must arrive once and in order,
//! and Goose's own JSON report must carry the delivery-latency request.
use clap::Parser;
use taskboard_loadtest::mixed::{self, MixedArgs, FRAME_REQUEST};
use taskboard_tasks::testing;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: MixedArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mixed_run_delivers_every_frame_once_in_order_and_goose_reports_it() {
    let tc = testing::test_config().await;
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let mut gc = taskboard_gateway::Config::for_addrs(&tasks.grpc_addr(), &nats);
    gc.nats_subject_prefix = tasks.subject_prefix.clone();
    gc.shutdown_grace_secs = 2;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(taskboard_gateway::run_with_metrics(
        gc,
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let ready = format!("http://{addr}/ready");
    assert!(
        testing::eventually(std::time::Duration::from_secs(10), || async {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await,
        "the gateway never became ready"
    );

    let dir = std::env::temp_dir().join(testing::unique("mixed"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report = dir.join("goose.json");
    let summary = dir.join("delivery.md");
    let host = format!("http://{addr}");
    let cli = Cli::try_parse_from([
        "mixed",
        "--host",
        &host,
        "--users",
        "46",
        "--watchers",
        "40",
        "--browsers",
        "3",
        "--writers",
        "3",
        "--think-ms",
        "50",
        "--boards",
        "20",
        "--session-mean-secs",
        "2",
        "--browse-secs",
        "1",
        "--increase-rate",
        "46",
        "--run-time",
        "6s",
        "--quiet",
        "--report-file",
        report.to_str().expect("utf-8 path"),
        "--summary",
        summary.to_str().expect("utf-8 path"),
    ])
    .expect("the flags parse");
    let s = mixed::run(cli.args).await.expect("the attack runs");

    assert_eq!(s.watchers, 40, "Goose split the users by the weights");
    assert!(s.written > 100, "the writers wrote: {}", s.written);
    assert!(s.resumes > 0, "sessions ended and resumed with since");
    assert!(
        s.delivered > s.written,
        "watchers got frames: {}",
        s.delivered
    );
    assert_eq!(
        (s.missing, s.duplicates, s.out_of_order, s.unsettled),
        (0, 0, 0, 0),
        "every frame once and in order:\n{}",
        mixed::markdown(&s)
    );
    assert!(s.clean());
    assert!(s.latency_ms.count > 0 && s.latency_ms.p50_ms > 0.0);

    // Goose's own report carries the WebSocket requests.
    let goose: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("Goose wrote its report"))
            .expect("Goose's JSON");
    let requests = goose["raw_request_metrics"].as_array().expect("requests");
    let count = |name: &str| {
        requests
            .iter()
            .find(|r| r["method"] == "WS" && r["name"] == name)
            .and_then(|r| r["number_of_requests"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        count(FRAME_REQUEST) > 0,
        "no {FRAME_REQUEST:?} in {requests:?}"
    );
    assert!(count("resume") > 0, "no resume in {requests:?}");
    let md = std::fs::read_to_string(&summary).expect("the summary");
    assert!(md.contains("every frame arrived once, in order"), "{md}");
    assert!(
        md.contains("[goose.json](goose.json)"),
        "the summary links Goose's report: {md}"
    );
    assert!(dir.join("delivery.summary.json").exists());

    let _ = stop.send(());
    let _ = gateway.await;
    let _ = tasks.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
