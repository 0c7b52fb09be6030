//! The metrics endpoint: a minimal HTTP/1.1 responder over a tokio listener, for Prometheus
//! to scrape `GET /metrics`. It reads one request head (bounded in size and time), answers
//! it and closes the connection; a few scrapes at once at most. What it serves comes from a
//! function it is given (`service::metrics` renders it); the answer to a request head is
//! decided by [`respond`], pure, tested without sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A request head larger than this is refused (a scrape's is a few hundred bytes).
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes answered at once; more wait for their turn.
const CONCURRENT: usize = 4;

/// What the endpoint serves, rendered at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The whole answer (head and body) to a request head: `GET` or `HEAD` of `/metrics` (a
/// query string is ignored) gets the rendered text; anything else a short error.
pub fn respond(head: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !version.starts_with("HTTP/1.") {
        ("400 Bad Request", "text/plain; charset=utf-8", "not an HTTP/1 request\n".to_string())
    } else if path != "/metrics" {
        ("404 Not Found", "text/plain; charset=utf-8", "dingdong serves /metrics only\n".to_string())
    } else if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET /metrics\n".to_string())
    } else {
        ("200 OK", CONTENT_TYPE, render())
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves `listener` until `stop`; each connection is a task of `tracker`.
pub fn serve(
    listener: TcpListener,
    render: Render,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let tracker = tracker.clone();
    async move {
        let permits = Arc::new(Semaphore::new(CONCURRENT));
        loop {
            let conn = tokio::select! {
                // cancel-safe: accept() loses no connection that it did not return
                r = listener.accept() => r,
                _ = stop.cancelled() => return,
            };
            let (stream, peer) = match conn {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "metrics: accept failed");
                    // A full file table: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (render, stop) = (render.clone(), stop.clone());
            tracker.spawn(async move {
                tokio::select! {
                    // cancel-safe: a scrape cut short at shutdown is simply not answered
                    r = tokio::time::timeout(IO_TIMEOUT, answer(stream, render)) => {
                        if !matches!(r, Ok(Ok(()))) {
                            debug!(%peer, "metrics: a scrape failed or timed out");
                        }
                    }
                    _ = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    }
}

/// Reads one request head and writes its answer.
async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            stream
                .write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
    }
    let out = respond(&head, || render());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn answers() {
        let ok = text(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || "a 1\n".into()));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("content-type: text/plain; version=0.0.4") && ok.contains("content-length: 4\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let head = text(respond(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", || "a 1\n".into()));
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        let rendered = std::cell::Cell::new(false);
        let nf = text(respond(b"GET / HTTP/1.1\r\n\r\n", || {
            rendered.set(true);
            String::new()
        }));
        assert!(nf.starts_with("HTTP/1.1 404") && !rendered.get(), "nothing rendered for other paths");
        assert!(text(respond(b"POST /metrics HTTP/1.1\r\n\r\n", String::new)).starts_with("HTTP/1.1 405"));
        assert!(text(respond(b"\x16\x03\x01 binary", String::new)).starts_with("HTTP/1.1 400"));
    }

    /// A real scrape over loopback, and the listener stops with its token.
    #[tokio::test]
    async fn serves_over_tcp_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let server = tokio::spawn(serve(listener, Arc::new(|| "up 1\n".to_string()), &tracker, stop.clone()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK") && got.ends_with("up 1\n"), "{got}");
        stop.cancel();
        server.await.unwrap();
        tracker.close();
        tracker.wait().await;
    }
}
