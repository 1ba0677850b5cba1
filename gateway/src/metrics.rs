//! The gateway's metrics (prefix `taskboard_`, base units). Hot-path handles are registered once
//! and shared through the hub, so a delivery only adds to atomics: no lookup, no allocation.
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

/// Registers every gateway metric's help text and unit (shown by `/metrics`).
pub fn describe() {
    describe_counter!(
        "taskboard_access_changes_total",
        "Access changes (member removed or downgraded, board deleted) of boards this gateway carries, whether or not they reached an open WebSocket (those closed: taskboard_ws_disconnects_total{reason=\"access_changed\"})"
    );
    describe_counter!(
        "taskboard_ws_token_refreshes_total",
        "In-band token refreshes ({\"type\":\"auth\"} messages) on WebSockets, by outcome (ok, refused, throttled, other_principal)"
    );
    describe_counter!(
        "taskboard_jwks_refreshes_total",
        "Fetches of the identity provider's signing keys (JWT_JWKS_URL or discovery), by outcome (ok, error) and cause (schedule, unknown_kid, startup)"
    );
    describe_gauge!(
        "taskboard_jwks_keys",
        "Signing keys in the gateway's cached key set"
    );
    describe_gauge!(
        "taskboard_jwks_age_seconds",
        "Age of the cached key set (since the last successful fetch)"
    );
    describe_counter!(
        "taskboard_replay_reads_shared_total",
        "Replay pages a resuming WebSocket got from a read another resumer had in flight"
    );
    describe_counter!(
        "taskboard_rate_limited_total",
        "Requests and WebSocket attempts refused with 429, by limit (address, user_writes, user_connects)"
    );
    describe_counter!(
        "taskboard_http_requests_total",
        "HTTP requests by route template, method and status class"
    );
    describe_histogram!(
        "taskboard_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request handling time by route template and method"
    );
    describe_counter!(
        "taskboard_grpc_client_requests_total",
        "Calls to the task service by method and gRPC code"
    );
    describe_histogram!(
        "taskboard_grpc_client_request_duration_seconds",
        Unit::Seconds,
        "Task service call time by method, as the gateway sees it"
    );
    describe_gauge!(
        "taskboard_task_service_circuit_open",
        "1 while the circuit breaker refuses task service calls (it stopped answering), else 0"
    );
    describe_counter!(
        "taskboard_task_service_circuit_rejected_total",
        "API calls answered 503 by the open circuit breaker without calling the task service"
    );
    describe_gauge!("taskboard_ws_connections", "Open WebSocket connections");
    describe_counter!(
        "taskboard_ws_connects_total",
        "WebSocket connections accepted"
    );
    describe_counter!(
        "taskboard_ws_disconnects_total",
        "WebSocket connections ended, by reason"
    );
    describe_counter!(
        "taskboard_ws_frames_sent_total",
        "Event frames written to WebSocket clients (live and replayed)"
    );
    describe_counter!(
        "taskboard_ws_bytes_sent_total",
        Unit::Bytes,
        "Bytes of event frames written to WebSocket clients"
    );
    describe_counter!(
        "taskboard_ws_frames_deflated_total",
        "Compressed (permessage-deflate) frames built: one per event that a client which negotiated compression receives, however many do, plus one per replayed event such a client reads"
    );
    describe_counter!(
        "taskboard_ws_direct_writes_total",
        "Event frames the fan-out wrote to an idle connection's socket itself, without waking its task (counted in frames sent too)"
    );
    describe_counter!(
        "taskboard_creates_gathered_total",
        "Creates that went to the task service gathered with others in one CreateTasks call (CREATE_CALLS)"
    );
    describe_counter!(
        "taskboard_ws_slow_consumers_total",
        "Clients closed with 1013 for falling behind"
    );
    describe_counter!(
        "taskboard_ws_resumes_total",
        "Connections that asked to resume with since"
    );
    describe_counter!(
        "taskboard_ws_events_replayed_total",
        "Events sent from the task service's log (resume or gap fill)"
    );
    describe_counter!(
        "taskboard_nats_messages_received_total",
        "Messages received on the event subjects"
    );
    describe_counter!(
        "taskboard_nats_unsequenced_total",
        "Events without Taskboard headers (as the Go original's task service publishes them), delivered without seq"
    );
    describe_counter!(
        "taskboard_nats_dropped_total",
        "Messages on the event subjects that could not be routed (no headers and no board_id in the payload)"
    );
    describe_counter!(
        "taskboard_connections_rejected_total",
        "Sockets refused at a cap, by kind (socket: MAX_CONNECTIONS, websocket: MAX_WEBSOCKETS)"
    );
    describe_gauge!(
        "taskboard_ws_boards",
        "Boards with at least one WebSocket subscriber (per-board channels held)"
    );
    describe_counter!(
        "taskboard_events_recovered_total",
        "Events the gateway found missing (lost on the way from the task service) and brought to subscribers from the log"
    );
    describe_counter!(
        "taskboard_events_window_total",
        "Events committed while a board's NATS subscription was being made (first subscriber here), brought to subscribers from the log once the server confirmed it"
    );
    describe_gauge!(
        "taskboard_nats_board_subscriptions",
        "Boards this gateway holds a NATS subscription for (watched here, or lingering after the last client left)"
    );
    describe_gauge!(
        "taskboard_nats_connected",
        "1 while the NATS connection is up"
    );
    // Exported from the start (as 0), so dashboards and alerts see the series before the first
    // reconnect.
    counter!("taskboard_nats_reconnects_total").increment(0);
    describe_counter!(
        "taskboard_nats_reconnects_total",
        "NATS reconnections after the first connection"
    );
    describe_histogram!(
        "taskboard_event_lag_seconds",
        Unit::Seconds,
        "Commit in the task service to receipt by the gateway, per event"
    );
    describe_histogram!(
        "taskboard_fanout_seconds",
        Unit::Seconds,
        "NATS receipt to the last subscriber's frame written, per event (events whose last subscriber left first are not counted)"
    );
    describe_histogram!(
        "taskboard_end_to_end_lag_seconds",
        Unit::Seconds,
        "Commit in the task service to the last subscriber's frame written, per event"
    );
}

/// WebSocket metrics touched per connection or per delivery.
pub struct WsMetrics {
    pub connections: Gauge,
    pub connects: Counter,
    pub frames_sent: Counter,
    pub bytes_sent: Counter,
    /// Frames the hub wrote to a parked session's socket itself (included in `frames_sent`).
    pub direct_writes: Counter,
    /// Compressed frames built (one per event, shared by every socket that negotiated it).
    pub frames_deflated: Counter,
    pub slow_consumers: Counter,
    pub resumes: Counter,
    pub events_replayed: Counter,
    pub nats_received: Counter,
    /// Per-board channels held (boards someone watches).
    pub boards: Gauge,
    /// NATS receipt → the last recipient's frame written, per event.
    pub fanout: Histogram,
    /// Commit in the task service → the last recipient's frame written, per event.
    pub end_to_end: Histogram,
}

impl WsMetrics {
    pub fn new() -> Self {
        WsMetrics {
            connections: gauge!("taskboard_ws_connections"),
            connects: counter!("taskboard_ws_connects_total"),
            frames_sent: counter!("taskboard_ws_frames_sent_total"),
            bytes_sent: counter!("taskboard_ws_bytes_sent_total"),
            direct_writes: counter!("taskboard_ws_direct_writes_total"),
            frames_deflated: counter!("taskboard_ws_frames_deflated_total"),
            slow_consumers: counter!("taskboard_ws_slow_consumers_total"),
            resumes: counter!("taskboard_ws_resumes_total"),
            events_replayed: counter!("taskboard_ws_events_replayed_total"),
            nats_received: counter!("taskboard_nats_messages_received_total"),
            boards: gauge!("taskboard_ws_boards"),
            fanout: histogram!("taskboard_fanout_seconds"),
            end_to_end: histogram!("taskboard_end_to_end_lag_seconds"),
        }
    }
}

impl Default for WsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `taskboard_connections_rejected_total{kind}`: a socket refused at a cap.
pub fn rejected(kind: &'static str) {
    counter!("taskboard_connections_rejected_total", "kind" => kind).increment(1);
}

/// An access change of a board this gateway carries (applied to whichever sockets it reaches).
pub fn access_change() {
    counter!("taskboard_access_changes_total").increment(1);
}

/// `taskboard_ws_token_refreshes_total{outcome}`: an in-band `auth` message answered.
pub fn token_refresh(outcome: &'static str) {
    counter!("taskboard_ws_token_refreshes_total", "outcome" => outcome).increment(1);
}

/// `taskboard_ws_disconnects_total{reason}`.
pub fn disconnect(reason: &'static str) {
    counter!("taskboard_ws_disconnects_total", "reason" => reason).increment(1);
}

/// One HTTP exchange, by route template (never the raw path) and status class.
pub fn http(route: &'static str, method: &'static str, status: u16, secs: f64) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!("taskboard_http_requests_total", "route" => route, "method" => method, "status" => class)
        .increment(1);
    histogram!("taskboard_http_request_duration_seconds", "route" => route, "method" => method)
        .record(secs);
}

/// Commit (in the task service) → receipt here, per event.
pub fn event_lag(secs: f64) {
    histogram!("taskboard_event_lag_seconds").record(secs.max(0.0));
}

/// NATS connection state; `reconnect` when this is not the first connection.
pub fn nats_connected(up: bool, reconnect: bool) {
    gauge!("taskboard_nats_connected").set(if up { 1.0 } else { 0.0 });
    if up && reconnect {
        counter!("taskboard_nats_reconnects_total").increment(1);
    }
}
