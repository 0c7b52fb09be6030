//! One APNs request on the wire: the per-lane header template, handing a request to h2, and
//! reading its answer. What a request's failure means (resend or retry) is said by
//! [`ReqError`]; what an answer means is decided in `codec::apns_http2`.

use crate::domain::{Environment, Message, Token};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderName, HeaderValue, Method, Request};

const DEVICE_PATH: &str = "/3/device/";

/// The parts of a request that are the same for every phone of a lane: built once.
pub(super) struct Prepared {
    authority: http::uri::Authority,
    /// `apns-topic`, `apns-push-type`, `apns-priority`, `apns-expiration`, `apns-collapse-id`
    /// and, with token auth, `authorization`: each request clones this map instead of hashing
    /// and inserting six headers.
    headers: http::HeaderMap,
    pub(super) payload: Bytes,
}

impl Prepared {
    pub(super) fn new(env: Environment, msg: &Message) -> Result<Prepared, String> {
        let mut headers = http::HeaderMap::with_capacity(8);
        headers.insert(
            HeaderName::from_static("apns-topic"),
            HeaderValue::from_str(&msg.topic)
                .map_err(|_| format!("apns-topic '{}' is not a header value", msg.topic))?,
        );
        headers.insert(HeaderName::from_static("apns-push-type"), HeaderValue::from_static("alert"));
        headers.insert(HeaderName::from_static("apns-priority"), HeaderValue::from(msg.priority as u16));
        headers.insert(HeaderName::from_static("apns-expiration"), HeaderValue::from(msg.expiration));
        headers.insert(
            HeaderName::from_static("apns-collapse-id"),
            HeaderValue::from_str(&msg.collapse_id).map_err(|_| "the collapse id is not a header value".to_string())?,
        );
        // The lane's own copy: requests clone it without touching a refcount other lanes share.
        let payload = Bytes::copy_from_slice(&msg.payload);
        Ok(Prepared { authority: http::uri::Authority::from_static(super::super::host(env)), headers, payload })
    }

    /// Puts the provider token into the template (or takes it out). Every request clones the
    /// template; inserting `authorization` into each clone would grow its table every time.
    pub(super) fn set_bearer(&mut self, bearer: Option<&HeaderValue>) {
        match bearer {
            Some(b) => {
                self.headers.insert(http::header::AUTHORIZATION, b.clone());
            }
            None => {
                self.headers.remove(http::header::AUTHORIZATION);
            }
        }
    }

    /// The request for `token`.
    fn request(&self, token: &Token) -> Result<Request<()>, ReqError> {
        let mut path = Vec::with_capacity(DEVICE_PATH.len() + 2 * token.bytes().len());
        path.extend_from_slice(DEVICE_PATH.as_bytes());
        token.write_hex(&mut path);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(path)).map_err(ReqError::failed)?);
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(ReqError::failed)?;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// Why a request got no answer.
pub(super) enum ReqError {
    /// The server did not process it (REFUSED_STREAM, above a GOAWAY's last stream id, or it
    /// was never handed over): safe to send again.
    Refused,
    /// Anything else: the server may have seen it.
    Failed(String),
}

impl ReqError {
    fn failed(e: impl std::fmt::Display) -> ReqError {
        ReqError::Failed(e.to_string())
    }

    /// Streams above a GOAWAY's last stream id and REFUSED_STREAM were not processed.
    fn h2(e: h2::Error) -> ReqError {
        if (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            ReqError::Refused
        } else {
            ReqError::Failed(e.to_string())
        }
    }
}

/// Hands one request to the connection: after this, the server may have processed it.
pub(super) async fn start(
    send: &mut SendRequest<Bytes>,
    prep: &Prepared,
    token: &Token,
) -> Result<h2::client::ResponseFuture, ReqError> {
    let req = prep.request(token)?;
    // Until the request is handed over, the server has not seen it: safe to resend.
    std::future::poll_fn(|cx| send.poll_ready(cx)).await.map_err(|_| ReqError::Refused)?;
    let (resp, mut body) = send.send_request(req, false).map_err(|_| ReqError::Refused)?;
    body.send_data(prep.payload.clone(), true).map_err(ReqError::h2)?;
    Ok(resp)
}

/// The answer to one request: status, headers and up to 4 KB of body.
pub(super) async fn answer(resp: h2::client::ResponseFuture) -> Result<(u16, http::HeaderMap, Bytes), ReqError> {
    let resp = resp.await.map_err(ReqError::h2)?;
    let status = resp.status().as_u16();
    let (parts, mut recv) = resp.into_parts();
    let mut data = Vec::new();
    // A 200 ends with its headers: nothing to wait for.
    while !recv.is_end_stream() {
        let Some(chunk) = recv.data().await else { break };
        let chunk = chunk.map_err(ReqError::h2)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        if data.len() < 4096 {
            data.extend_from_slice(&chunk);
        }
    }
    Ok((status, parts.headers, Bytes::from(data)))
}
