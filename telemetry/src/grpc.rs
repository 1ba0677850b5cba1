//! gRPC metrics as one tower layer, for the server and the client alike: every call, present RPC
//! or future one, is counted by method and status code and timed, with no wrapper per method.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;

use crate::Side;

/// The label of calls to paths outside the known RPCs (bounded label values).
const OTHER: &str = "other";

/// Adds [`GrpcMetrics`] to a service.
#[derive(Clone, Copy)]
pub struct GrpcMetricsLayer {
    side: Side,
    method_of: fn(&str) -> Option<&'static str>,
}

impl GrpcMetricsLayer {
    /// `method_of` names the method of a request path (`None` = not one of ours).
    pub fn new(side: Side, method_of: fn(&str) -> Option<&'static str>) -> Self {
        GrpcMetricsLayer { side, method_of }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            layer: *self,
        }
    }
}

/// Records `taskboard_grpc_{server,client}_requests_total{method,code}` and
/// `…_request_duration_seconds{method}` for every call through it (time to the response headers;
/// for a stream, until it starts).
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

/// The status of a response: a `grpc-status` header (a trailers-only answer: an error, or an
/// immediate OK) or, when absent, OK (the status then follows in the trailers of a success).
pub fn code_of<B>(r: &http::Response<B>) -> Code {
    r.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The code of a call that failed below gRPC (no answer at all).
pub fn code_of_error(e: &(dyn std::error::Error + 'static)) -> Code {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return Code::DeadlineExceeded;
        }
        if let Some(s) = err.downcast_ref::<tonic::Status>() {
            return s.code();
        }
        source = err.source();
    }
    Code::Unavailable
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = (self.layer.method_of)(req.uri().path()).unwrap_or(OTHER);
        let side = self.layer.side;
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await.map_err(Into::into);
            let code = match &r {
                Ok(resp) => code_of(resp),
                Err(e) => code_of_error(e.as_ref()),
            };
            crate::grpc(side, method, code, start.elapsed());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_from_the_grpc_status_header_or_is_ok() {
        let ok = http::Response::new(());
        assert_eq!(code_of(&ok), Code::Ok);
        let mut nf = http::Response::new(());
        nf.headers_mut().insert("grpc-status", "5".parse().unwrap());
        assert_eq!(code_of(&nf), Code::NotFound);
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(code_of_error(e.as_ref()), Code::DeadlineExceeded);
    }
}
