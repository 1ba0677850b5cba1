//! OpenTelemetry: one change is one trace, from the REST request (continuing the caller's
//! `traceparent`) through gRPC to the commit (a span linked to the request) and the NATS message
//! (its `traceparent` header) to the WebSocket fan-out, exported over OTLP to a collector.
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use taskboard_tasks::testing;

use crate::helpers::*;

/// An OTLP collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                kept.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// The exporter runs on the runtime's I/O driver while a flush blocks its caller: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_one_trace_from_the_request_to_the_fan_out() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let otel = Arc::new(taskboard_telemetry::init_test_logging_to(
        "taskboard-test",
        &format!("http://{addr}"),
        "info",
    ));
    let app = spawn_app().await;
    let prefix = app.tasks.as_ref().unwrap().subject_prefix.clone();
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut ws = app.ws("board_id=31").await;

    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = app
        .http
        .post(app.url("/api/tasks"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"board_id": 31, "title": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(ws.event().await.unwrap()["type"], "created");
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    let tp = m.headers.unwrap().get("traceparent").unwrap().to_string();
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");

    let by_name = |name: &str| -> Option<Span> {
        collector
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && (hex(&s.trace_id) == trace || name == "db.commit"))
            .cloned()
    };
    let all_there = eventually(WAIT, || {
        let otel = otel.clone();
        let done = ["http", "grpc", "db.commit", "fanout"]
            .iter()
            .all(|n| by_name(n).is_some());
        async move {
            if !done {
                tokio::task::spawn_blocking(move || otel.flush())
                    .await
                    .unwrap();
            }
            done
        }
    })
    .await;
    let names: Vec<String> = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert!(all_there, "spans exported: {names:?}");
    let http = by_name("http").unwrap();
    assert_eq!(
        hex(&http.parent_span_id),
        caller,
        "the caller's trace continues"
    );
    let grpc = by_name("grpc").unwrap();
    assert_eq!(hex(&grpc.trace_id), trace);
    assert_eq!(
        grpc.parent_span_id, http.span_id,
        "gRPC under the HTTP request"
    );
    let commit = by_name("db.commit").unwrap();
    assert!(
        commit.links.iter().any(|l| hex(&l.trace_id) == trace),
        "the commit links to the request"
    );
    let fanout = by_name("fanout").unwrap();
    assert_eq!(
        hex(&fanout.trace_id),
        trace,
        "the fan-out continues the trace"
    );
}
