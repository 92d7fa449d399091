//! A message over `limits.max_message_bytes` answered as what it is: RESOURCE_EXHAUSTED, naming
//! the limit. tonic refuses such a message before it is decoded, which is right, but answers
//! OUT_OF_RANGE; this layer rewrites that one status, in the headers of a unary call's answer and
//! in the trailers of a stream's, and leaves every other answer as it is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// What tonic's decoder says of a message over its limit, as it goes in `grpc-message`
/// (percent-encoded: tonic encodes spaces).
const TONIC_TOO_LARGE: &str = "decoded%20message%20length%20too%20large";
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// The layer, given the limit it names.
#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer {
    pub limit: usize,
}

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Oversize {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

type Answer<B, E> = Pin<Box<dyn Future<Output = Result<http::Response<Renamed<B>>, E>> + Send>>;

impl<S, Req, B> tower_service::Service<http::Request<Req>> for Oversize<S>
where
    S: tower_service::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = http::Response<Renamed<B>>;
    type Error = S::Error;
    type Future = Answer<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let limit = self.limit;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            rename(response.headers_mut(), limit);
            Ok(response.map(|inner| Renamed { inner, limit }))
        })
    }
}

/// A response body whose trailers get the same rewriting.
#[derive(Debug)]
pub struct Renamed<B> {
    inner: B,
    limit: usize,
}

impl<B: Body + Unpin> Body for Renamed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let limit = self.limit;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    rename(trailers, limit);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Rewrites tonic's OUT_OF_RANGE for an oversized message, and nothing else.
fn rename(headers: &mut HeaderMap, limit: usize) {
    let oversized = headers
        .get("grpc-status")
        .is_some_and(|s| s == OUT_OF_RANGE)
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains(TONIC_TOO_LARGE));
    if !oversized {
        return;
    }
    headers.insert(
        "grpc-status",
        http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
    );
    // ASCII without `%`: valid in `grpc-message` as it is.
    let message = format!(
        "the message is over limits.max_message_bytes ({limit} bytes) and was not read; send a smaller one"
    );
    if let Ok(value) = http::HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: &'static str, message: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
        headers
    }

    #[test]
    fn only_tonics_oversize_status_is_renamed() {
        let mut oversized = status(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%202097152%20bytes,%20the%20limit%20is:%201048576%20bytes",
        );
        rename(&mut oversized, 1_048_576);
        assert_eq!(oversized["grpc-status"], "8");
        assert!(
            oversized["grpc-message"]
                .to_str()
                .unwrap()
                .contains("limits.max_message_bytes (1048576 bytes)")
        );
        for (code, message) in [
            ("11", "page 3 is out of range"),
            ("3", "decoded%20message%20length%20too%20large"),
            ("0", ""),
        ] {
            let mut other = status(code, message);
            rename(&mut other, 1);
            assert_eq!(other, status(code, message));
        }
    }
}
