//! `/ready`: 200 when the task service answers and NATS has confirmed the event subscription,
//! else 503 with the reasons.
use std::time::Duration;

use http::StatusCode;

use super::{json, Resp};
use crate::error::ApiError;
use crate::AppState;

/// Deadline of the readiness probe of the task service.
const READY_DEADLINE: Duration = Duration::from_secs(1);

pub(super) async fn ready(state: &AppState) -> Resp {
    let mut problems = Vec::new();
    if let Err(e) = state.tasks.ready(READY_DEADLINE).await {
        problems.push(e);
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        problems.push(format!("nats: {}", state.nats.connection_state()));
    } else if !state.subscribed.load(std::sync::atomic::Ordering::Acquire) {
        problems.push("nats: event subscription not confirmed yet".into());
    }
    if problems.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Not ready")
            .with_message(problems.join("; "))
            .into_response()
    }
}
