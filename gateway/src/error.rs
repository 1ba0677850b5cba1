//! Errors: the crate's typed error, and the one place where failures become HTTP answers
//! (`{"error", "message"?, "code"}`; 5xx bodies never carry internal text).
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use taskboard_proto::VERSION_METADATA;
use tonic::Code;

/// The `ETag` of a task at `version`: a strong tag, the version in quotes.
pub fn etag(version: i64) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// Gateway start-up and serving errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("nats: {0}")]
    Nats(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub message: Option<String>,
    pub code: &'static str,
    /// Answer with `Connection: close` (the rest of the request was not read).
    pub close: bool,
    /// Extra headers of the answer (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            message: None,
            code,
            close: false,
            headers: Vec::new(),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Closes the connection after this answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn with_message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", error)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Request body too large",
        )
        .with_message(format!("the limit is {limit} bytes"))
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&Body {
            error: &self.error,
            message: self.message.as_deref(),
            code: self.code,
        })
        .unwrap_or_else(|_| br#"{"error":"Internal server error","code":"internal"}"#.to_vec());
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        if self.close {
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        r
    }

    fn timed_out(s: &tonic::Status, what: &str) -> Self {
        tracing::warn!(op = what, status = %s, "task service timed out");
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "Task service timed out",
        )
    }

    /// Maps a task-service status to an answer. `what` names the operation for the log.
    pub fn from_status(s: &tonic::Status, what: &str) -> Self {
        use StatusCode as S;
        match s.code() {
            Code::InvalidArgument => Self::bad_request(s.message()),
            // The original's text for tasks; boards and members say what was not found.
            Code::NotFound if s.message().starts_with("Task ") => Self::not_found("Task not found"),
            Code::NotFound => Self::not_found("Not found").with_message(s.message()),
            Code::AlreadyExists => Self::new(S::CONFLICT, "already_exists", s.message()),
            // A stale If-Match: 412 with the task's current version as its ETag.
            Code::FailedPrecondition if s.metadata().get(VERSION_METADATA).is_some() => {
                let mut e = Self::new(
                    S::PRECONDITION_FAILED,
                    "precondition_failed",
                    "Precondition failed",
                )
                .with_message(s.message());
                if let Some(v) = s
                    .metadata()
                    .get(VERSION_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                {
                    e = e.with_header(http::header::ETAG, etag(v));
                }
                e
            }
            Code::FailedPrecondition | Code::Aborted => {
                Self::new(S::CONFLICT, "conflict", s.message())
            }
            // The task service refused the gateway itself: a deployment error, not the user's.
            Code::Unauthenticated => {
                tracing::error!(op = what, status = %s, "the task service refused this gateway's SERVICE_TOKEN");
                Self::new(
                    S::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error",
                )
            }
            Code::PermissionDenied => {
                Self::new(S::FORBIDDEN, "permission_denied", "Forbidden").with_message(s.message())
            }
            Code::ResourceExhausted => Self::new(
                S::TOO_MANY_REQUESTS,
                "resource_exhausted",
                "Too many requests",
            ),
            Code::DeadlineExceeded => Self::timed_out(s, what),
            Code::Cancelled if past_deadline(s) => Self::timed_out(s, what),
            // Retry-After: when the breaker lets calls through again, or a second. Cancelled,
            // when not the deadline, is a connection that closed under the call; Unknown with a
            // transport error underneath, one reset while connecting: no answer either way.
            Code::Unknown if !transport_failed(s) => Self::internal(s, what),
            Code::Unavailable | Code::Cancelled | Code::Unknown => {
                let refused = s
                    .metadata()
                    .get(crate::upstream::breaker::RETRY_AFTER_METADATA);
                if refused.is_none() {
                    tracing::warn!(op = what, status = %s, "task service unavailable");
                }
                let retry = refused
                    .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok())
                    .unwrap_or(http::HeaderValue::from_static("1"));
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Task service unavailable",
                )
                .with_header(http::header::RETRY_AFTER, retry)
            }
            _ => Self::internal(s, what),
        }
    }

    fn internal(s: &tonic::Status, what: &str) -> Self {
        tracing::error!(op = what, status = %s, "task service error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }
}

/// Whether a call failed in the transport (no answer from the service at all).
fn transport_failed(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether a call ended at the client's own deadline (tonic reports that as CANCELLED).
fn past_deadline(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 409),
            (Code::Unauthenticated, 500),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Cancelled, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
        ];
        for (code, http) in cases {
            let e = ApiError::from_status(&tonic::Status::new(code, "x"), "test");
            assert_eq!(e.status.as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn the_clients_own_deadline_is_a_504_and_a_closed_connection_a_503() {
        let s = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(s.code(), Code::Cancelled);
        assert_eq!(ApiError::from_status(&s, "test").status.as_u16(), 504);
        let e = ApiError::from_status(&tonic::Status::cancelled("connection closed"), "test");
        assert_eq!(e.status.as_u16(), 503);
        assert!(e
            .headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "1"));
    }

    #[test]
    fn server_errors_never_echo_internal_text() {
        let e = ApiError::from_status(
            &tonic::Status::internal("pq: relation \"tasks\" does not exist"),
            "test",
        );
        assert_eq!(e.error, "Internal server error");
        assert!(e.message.is_none());
    }

    #[test]
    fn invalid_argument_passes_the_validation_message_through() {
        let e = ApiError::from_status(&tonic::Status::invalid_argument("Title is required"), "t");
        assert_eq!(e.error, "Title is required");
        assert_eq!(e.code, "invalid_argument");
    }
}
