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
    match state.tasks.ready(READY_DEADLINE).await {
        // Health is open to anyone: check that the service also takes this gateway's token.
        Ok(()) => {
            if let Err(e) = state.tasks.accepts_us(READY_DEADLINE).await {
                problems.push(e);
            }
        }
        Err(e) => problems.push(e),
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        problems.push(format!("nats: {}", state.nats.connection_state()));
    } else if !state.subscribed.load(std::sync::atomic::Ordering::Acquire) {
        problems.push("nats: event subscription not confirmed yet".into());
    }
    if problems.is_empty() {
        let body = match state.auth {
            Some(_) => serde_json::json!({"status": "ready", "auth": "on"}),
            None => serde_json::json!({
                "status": "ready",
                "auth": "off",
                "warning": "AUTH=off: anyone may read and change every board (development only)",
            }),
        };
        json(StatusCode::OK, &body)
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Not ready")
            .with_message(problems.join("; "))
            .into_response()
    }
}
