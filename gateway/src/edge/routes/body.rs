//! Request bodies: JSON of at most `MAX_BODY` bytes, all of it within a deadline; an oversized one
//! is drained (up to a bound) before its 413, so clients that write before they read get it.
use std::time::Duration;

use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted (answered with 413 beyond it).
pub const MAX_BODY: usize = 64 * 1024;
/// How much of an oversized body is read and discarded before the 413 is sent: clients that
/// write the whole body before reading (Python's urllib, many SDKs) would otherwise meet a reset
/// instead of the answer. Beyond this the connection is closed after the 413.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A state-changing request must say its body is JSON: a cross-site form or `text/plain` POST (a
/// "simple" request browsers send without a preflight) is refused before anything runs.
fn check_json(h: &http::HeaderMap) -> Result<(), ApiError> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Unsupported Media Type",
    )
    .with_message(format!(
        "send the body as JSON with Content-Type: application/json (got {:?})",
        ct
    )))
}

/// Reads a JSON body of at most `MAX_BODY` bytes, all of it within `deadline`.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    deadline: Duration,
) -> Result<T, ApiError> {
    let is_json = check_json(req.headers());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let read = async {
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large(&mut body, declared).await);
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("Invalid request body")
                    .with_message("the request body could not be read")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(too_large(&mut body, None).await);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    let body = tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "deadline_exceeded",
            "Request body timeout",
        )
        .with_message(format!(
            "the request body did not arrive within {} ms",
            deadline.as_millis()
        ))
        .closing()
    })??;
    // Checked once the body is read (within its bounds), so the connection stays usable.
    is_json?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("Invalid request body").with_message(e.to_string()))
}

/// The 413, after reading and discarding what is left of a body that fits in `DRAIN_LIMIT`, so
/// the client gets to read the answer; a larger one is not read (the connection closes).
async fn too_large(body: &mut Incoming, declared: Option<u64>) -> ApiError {
    let e = ApiError::too_large(MAX_BODY);
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return e.closing();
    }
    let mut drained = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            drained += data.len();
            if drained > DRAIN_LIMIT {
                return e.closing();
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_bodies_are_taken() {
        let mut h = http::HeaderMap::new();
        assert_eq!(check_json(&h).unwrap_err().status, 415);
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(check_json(&h).is_ok(), ok, "{ct}");
        }
    }
}
