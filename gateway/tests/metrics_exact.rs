//! Both services' `/metrics` after real traffic: the counters moved by exactly the right amounts,
//! and `promtool check metrics` accepts the exposition. A test binary of its own: the metrics
//! recorder is global to a process, so exact counts hold only where no other test's services run
//! beside this one (under `cargo test` as under nextest).
use std::time::Duration;

use serde_json::json;

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;

#[tokio::test]
async fn metrics_count_real_traffic_and_pass_promtool() {
    let app = spawn_app().await;
    let mut ws = app.ws("board_id=1").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create(1, &format!("m{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    app.update(ids[0], json!({"completed": true})).await;
    let r = app
        .http
        .get(app.url("/api/tasks/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    ws.events(4).await.unwrap();

    // The relay marks events published just after NATS has them: wait for that count.
    let tasks = app.tasks.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let t = scrape(tasks.metrics_addr).await;
        if sample(&t, "taskboard_outbox_published_total", &[]) == Some(4.0) {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never reported 4 published:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gw = scrape(app.metrics_addr).await;
    // Gateway (both services share the process's registry here, so either scrape has both).
    let post = [
        ("route", "/api/tasks"),
        ("method", "POST"),
        ("status", "2xx"),
    ];
    assert_eq!(
        sample(&gw, "taskboard_http_requests_total", &post),
        Some(3.0)
    );
    let missing = [
        ("route", "/api/tasks/{id}"),
        ("method", "GET"),
        ("status", "4xx"),
    ];
    assert_eq!(
        sample(&gw, "taskboard_http_requests_total", &missing),
        Some(1.0)
    );
    let created = [("method", "CreateTask"), ("code", "OK")];
    assert_eq!(
        sample(&gw, "taskboard_grpc_client_requests_total", &created),
        Some(3.0)
    );
    assert_eq!(sample(&gw, "taskboard_ws_connections", &[]), Some(1.0));
    assert_eq!(
        sample(&gw, "taskboard_ws_frames_sent_total", &[]),
        Some(4.0)
    );
    assert!(sample(&gw, "taskboard_ws_bytes_sent_total", &[]).unwrap() > 4.0 * 200.0);
    // The subscriber is idle between events: the fan-out writes to its socket itself (all four
    // unless one arrives while the session is awake for another reason).
    let direct = sample(&gw, "taskboard_ws_direct_writes_total", &[]).unwrap_or(0.0);
    assert!((1.0..=4.0).contains(&direct), "direct writes: {direct}");
    assert_eq!(
        sample(&gw, "taskboard_nats_messages_received_total", &[]),
        Some(4.0)
    );
    assert_eq!(
        sample(&gw, "taskboard_event_lag_seconds_count", &[]),
        Some(4.0)
    );
    assert_eq!(sample(&gw, "taskboard_nats_connected", &[]), Some(1.0));
    // One subscriber wrote all four: each live event's fan-out and end-to-end time was recorded
    // once. The board's NATS subscription is made when the socket arrives, so the first create can
    // commit before NATS confirms it: that event comes from the log (counted as a window event,
    // untimed) and its NATS copy is then a duplicate. Live plus window is exactly four.
    let window = sample(&gw, "taskboard_events_window_total", &[]).unwrap_or(0.0);
    assert!(window <= 3.0, "window events: {window}");
    assert_eq!(
        sample(&gw, "taskboard_fanout_seconds_count", &[]),
        Some(4.0 - window)
    );
    assert_eq!(
        sample(&gw, "taskboard_end_to_end_lag_seconds_count", &[]),
        Some(4.0 - window)
    );
    // Task service.
    assert_eq!(
        sample(&text, "taskboard_grpc_server_requests_total", &created),
        Some(3.0)
    );
    let nf = [("method", "GetTask"), ("code", "NOT_FOUND")];
    assert_eq!(
        sample(&text, "taskboard_grpc_server_requests_total", &nf),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "taskboard_outbox_publish_lag_seconds_count", &[]),
        Some(4.0)
    );
    assert_eq!(sample(&text, "taskboard_relay_leader", &[]), Some(1.0));
    assert!(text.contains("taskboard_build_info{"));
    // Histogram buckets resolve 100 µs.
    assert!(text.contains("taskboard_grpc_server_request_duration_seconds_bucket{method=\"CreateTask\",le=\"0.0001\"}"), "{text}");

    // promtool accepts it (scripts/test.sh installs Debian's prometheus package for promtool).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => assert!(
            std::env::var_os("TASKBOARD_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here: {e}"
        ),
    }

    // Closing the socket is counted by reason.
    ws.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let gw = scrape(app.metrics_addr).await;
        if sample(
            &gw,
            "taskboard_ws_disconnects_total",
            &[("reason", "client_closed")],
        ) == Some(1.0)
            && sample(&gw, "taskboard_ws_connections", &[]) == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "disconnect not counted:\n{gw}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_sample_reader_matches_labels_in_any_order() {
    let t = "# HELP x y\nx_total{a=\"1\",b=\"2\"} 5\nx_total{a=\"1\"} 7\n";
    assert_eq!(sample(t, "x_total", &[("b", "2"), ("a", "1")]), Some(5.0));
    assert_eq!(sample(t, "x_total", &[("a", "1")]), Some(7.0));
    assert_eq!(sample(t, "x_total", &[("a", "2")]), None);
}
