//! What the FCM and Web Push simulators share: TLS with the simulator's certificate, hyper's
//! server speaking HTTP/2 or HTTP/1.1 (whichever the client chose by ALPN; HTTP/1.1 only
//! when asked, as many real push services), one task per connection, and small answers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Largest request body read; push services refuse more than 4 KiB anyway.
pub const MAX_BODY: usize = 64 * 1024;

/// A request as a handler sees it: head and whole body (or `None` when it was too large).
pub struct Req {
    pub parts: http::request::Parts,
    pub body: Option<Bytes>,
}

pub type Resp = Response<Full<Bytes>>;

/// A response with a JSON body.
pub fn json(status: u16, body: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    r
}

/// A response with a raw body (Google's error JSON, plain text).
pub fn bytes(status: u16, body: Vec<u8>, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Adds `Retry-After: secs`.
pub fn retry_after(mut r: Resp, secs: u64) -> Resp {
    r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// A header as text.
pub fn header<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Serves `handle` over TLS on `listener` until `cancel`; returns the bound address.
pub async fn listen<H, Fut>(
    listener: std::net::TcpListener,
    creds: &super::SimCredentials,
    http1_only: bool,
    cancel: CancellationToken,
    handle: H,
) -> Result<SocketAddr, String>
where
    H: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let alpn: &[&[u8]] = if http1_only { &[b"http/1.1"] } else { &[b"h2", b"http/1.1"] };
    let acceptor = TlsAcceptor::from(creds.server_config(false, alpn)?);
    let handle = Arc::new(handle);
    super::listen_on(listener, cancel, move |tcp| {
        let (acceptor, handle) = (acceptor.clone(), handle.clone());
        async move {
            let _ = tcp.set_nodelay(true);
            let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = Limited::new(body, MAX_BODY).collect().await.ok().map(|b| b.to_bytes());
                    Ok::<_, Infallible>(handle(Req { parts, body }).await)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000).initial_stream_window_size(1 << 20);
            builder.http2().initial_connection_window_size(1 << 22);
            let builder = if http1_only { builder.http1_only() } else { builder };
            builder.serve_connection(TokioIo::new(tls), service).await.map_err(|e| e.to_string())
        }
    })
    .await
}
