//! The response builders every handler shares (REST routes, the page, the WebSocket upgrade): a
//! leaf module, so the edge and the upgrade both use it without importing each other.
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::error::ApiError;

/// Every answer the gateway gives: a complete body.
pub type Resp = Response<Full<Bytes>>;

pub fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "serialising a response failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            )
            .into_response()
        }
    }
}

/// Adds the seq of the event a mutation committed, so a client can match its own change.
pub fn with_seq(mut r: Resp, seq: i64) -> Resp {
    if seq > 0 {
        r.headers_mut()
            .insert("Taskboard-Seq", HeaderValue::from(seq));
    }
    r
}

pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// 405 with the `Allow` header listing what the route takes.
pub fn not_allowed(allow: &'static str) -> Resp {
    let mut r = ApiError::method_not_allowed().into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
