//! The legacy binary provider protocol as pure bytes: notifications in commands 0 (simple),
//! 1 (enhanced) and 2 (frame), the 6-byte error-response, the status codes and what each one
//! means for a phone ([`Status::outcome`]), and feedback-service tuples with a streaming parser
//! that keeps partial tuples across reads.
//!
//! No sockets here (like mini-redis `frame.rs`): `sender`, `feedback` and the simulator do the
//! I/O. Nothing in this file panics on any input; the tests feed it random bytes.

use crate::domain::{Outcome, Reason};
use bytes::{Buf, BytesMut};

pub const CMD_SIMPLE: u8 = 0;
pub const CMD_ENHANCED: u8 = 1;
pub const CMD_FRAME: u8 = 2;
pub const CMD_ERROR: u8 = 8;
/// `u8 8 | u8 status | u32 identifier`.
pub const ERROR_RESPONSE_LEN: usize = 6;
/// Apple's device tokens on the legacy gateway are exactly 32 bytes.
pub const TOKEN_LEN: usize = 32;
/// Apple raised the legacy payload limit from 256 bytes to 2 KB for every command in 2014.
pub const MAX_PAYLOAD: usize = 2048;
/// Larger than any valid frame (five items, a 2 KB payload, a generous token): a frame that
/// claims more is a protocol error, not a reason to buffer megabytes.
pub const MAX_FRAME: usize = 4096;

/// Frame item ids (command 2).
pub mod item {
    pub const TOKEN: u8 = 1;
    pub const PAYLOAD: u8 = 2;
    pub const IDENTIFIER: u8 = 3;
    pub const EXPIRY: u8 = 4;
    pub const PRIORITY: u8 = 5;
}

/// Which command carries the notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Command 0: no identifier, no expiry; errors cannot be attributed.
    Simple,
    /// Command 1: identifier and expiry.
    Enhanced,
    /// Command 2: items, with priority.
    Frame,
}

impl Format {
    pub fn has_identifiers(self) -> bool {
        !matches!(self, Format::Simple)
    }
}

/// One notification, borrowed from wherever it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification<'a> {
    pub token: &'a [u8],
    pub payload: &'a [u8],
    /// Ignored by command 0.
    pub identifier: u32,
    /// UNIX seconds; 0 = do not store. Ignored by command 0.
    pub expiry: u32,
    /// Only command 2 carries it (10 now, 5 power-saving); commands 0 and 1 imply 10.
    pub priority: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("token is {0} bytes; the protocol carries at most 65535")]
    TokenTooLong(usize),
    #[error("payload is {0} bytes; the legacy gateway accepts at most {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    #[error("unknown command {0}")]
    UnknownCommand(u8),
    #[error("frame claims {0} bytes; no valid frame is larger than {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("frame item {id} is {len} bytes; it must be {expected}")]
    ItemLength { id: u8, len: usize, expected: usize },
    #[error("frame item {0} appears twice")]
    DuplicateItem(u8),
    #[error("unknown frame item {0}")]
    UnknownItem(u8),
    #[error("frame item runs past the end of its frame")]
    TruncatedItem,
}

impl CodecError {
    /// The status the gateway answers a malformed notification with.
    pub fn status(&self) -> Status {
        match self {
            CodecError::TokenTooLong(_) => Status::InvalidTokenSize,
            CodecError::PayloadTooLarge(_) => Status::InvalidPayloadSize,
            _ => Status::ProtocolError,
        }
    }
}

fn put_u16(dst: &mut Vec<u8>, v: usize) {
    dst.extend_from_slice(&(v as u16).to_be_bytes());
}

/// Appends `n` in `format` to `dst`. Checks only what the wire can carry (and Apple's payload
/// limit); whether Apple likes the token is Apple's business.
pub fn encode(format: Format, n: &Notification, dst: &mut Vec<u8>) -> Result<(), CodecError> {
    if n.token.len() > u16::MAX as usize {
        return Err(CodecError::TokenTooLong(n.token.len()));
    }
    if n.payload.len() > MAX_PAYLOAD {
        return Err(CodecError::PayloadTooLarge(n.payload.len()));
    }
    match format {
        Format::Simple => {
            dst.push(CMD_SIMPLE);
            put_u16(dst, n.token.len());
            dst.extend_from_slice(n.token);
            put_u16(dst, n.payload.len());
            dst.extend_from_slice(n.payload);
        }
        Format::Enhanced => {
            dst.push(CMD_ENHANCED);
            dst.extend_from_slice(&n.identifier.to_be_bytes());
            dst.extend_from_slice(&n.expiry.to_be_bytes());
            put_u16(dst, n.token.len());
            dst.extend_from_slice(n.token);
            put_u16(dst, n.payload.len());
            dst.extend_from_slice(n.payload);
        }
        Format::Frame => {
            let len = 5 * 3 + n.token.len() + n.payload.len() + 4 + 4 + 1;
            dst.push(CMD_FRAME);
            dst.extend_from_slice(&(len as u32).to_be_bytes());
            let mut it = |id: u8, data: &[u8]| {
                dst.push(id);
                put_u16(dst, data.len());
                dst.extend_from_slice(data);
            };
            it(item::TOKEN, n.token);
            it(item::PAYLOAD, n.payload);
            it(item::IDENTIFIER, &n.identifier.to_be_bytes());
            it(item::EXPIRY, &n.expiry.to_be_bytes());
            it(item::PRIORITY, &[n.priority]);
        }
    }
    Ok(())
}

/// A notification as the gateway read it; absent items are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub command: u8,
    pub token: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub identifier: Option<u32>,
    pub expiry: Option<u32>,
    pub priority: Option<u8>,
}

/// Big-endian reads that report "need more bytes" instead of panicking.
struct Reader<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.src.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reads one notification from the front of `src`: `Ok(None)` until it is complete, then the
/// notification and how many bytes it took. Used by the simulator (Apple's side).
pub fn parse(src: &[u8]) -> Result<Option<(Decoded<'_>, usize)>, CodecError> {
    let mut r = Reader { src, pos: 0 };
    let Some(command) = r.u8() else { return Ok(None) };
    let blank = Decoded { command, token: None, payload: None, identifier: None, expiry: None, priority: None };
    let decoded = match command {
        CMD_SIMPLE | CMD_ENHANCED => {
            let mut d = blank;
            if command == CMD_ENHANCED {
                let (Some(id), Some(exp)) = (r.u32(), r.u32()) else { return Ok(None) };
                d.identifier = Some(id);
                d.expiry = Some(exp);
            }
            let Some(tlen) = r.u16() else { return Ok(None) };
            let Some(token) = r.take(tlen) else { return Ok(None) };
            let Some(plen) = r.u16() else { return Ok(None) };
            let Some(payload) = r.take(plen) else { return Ok(None) };
            d.token = Some(token);
            d.payload = Some(payload);
            d
        }
        CMD_FRAME => {
            let Some(len) = r.u32() else { return Ok(None) };
            let len = len as usize;
            if len > MAX_FRAME {
                return Err(CodecError::FrameTooLarge(len));
            }
            let Some(body) = r.take(len) else { return Ok(None) };
            parse_items(body, blank)?
        }
        other => return Err(CodecError::UnknownCommand(other)),
    };
    Ok(Some((decoded, r.pos)))
}

fn parse_items<'a>(body: &'a [u8], mut d: Decoded<'a>) -> Result<Decoded<'a>, CodecError> {
    let mut r = Reader { src: body, pos: 0 };
    while r.pos < body.len() {
        let (Some(id), Some(len)) = (r.u8(), r.u16()) else { return Err(CodecError::TruncatedItem) };
        let data = r.take(len).ok_or(CodecError::TruncatedItem)?;
        let fixed = |expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(CodecError::ItemLength { id, len, expected })
            }
        };
        let dup = |present: bool| if present { Err(CodecError::DuplicateItem(id)) } else { Ok(()) };
        match id {
            item::TOKEN => {
                dup(d.token.is_some())?;
                d.token = Some(data);
            }
            item::PAYLOAD => {
                dup(d.payload.is_some())?;
                d.payload = Some(data);
            }
            item::IDENTIFIER => {
                dup(d.identifier.is_some())?;
                fixed(4)?;
                d.identifier = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            }
            item::EXPIRY => {
                dup(d.expiry.is_some())?;
                fixed(4)?;
                d.expiry = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            }
            item::PRIORITY => {
                dup(d.priority.is_some())?;
                fixed(1)?;
                d.priority = Some(data[0]);
            }
            other => return Err(CodecError::UnknownItem(other)),
        }
    }
    Ok(d)
}

/// Apple's checks on a well-formed notification, in Apple's order: the status it answers, or
/// `Ok` if only the token's validity remains to be judged.
pub fn check(d: &Decoded) -> Result<(), Status> {
    let token = d.token.ok_or(Status::MissingToken)?;
    if token.is_empty() {
        return Err(Status::MissingToken);
    }
    if token.len() != TOKEN_LEN {
        return Err(Status::InvalidTokenSize);
    }
    let payload = d.payload.ok_or(Status::MissingPayload)?;
    if payload.is_empty() {
        return Err(Status::MissingPayload);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(Status::InvalidPayloadSize);
    }
    if d.priority.is_some_and(|p| p != 10 && p != 5) {
        return Err(Status::ProcessingError);
    }
    Ok(())
}

/// The status byte of an error-response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    NoError,
    ProcessingError,
    MissingToken,
    MissingTopic,
    MissingPayload,
    InvalidTokenSize,
    InvalidTopicSize,
    InvalidPayloadSize,
    InvalidToken,
    /// The gateway is going down; the identifier names the last notification that succeeded.
    Shutdown,
    ProtocolError,
    Unknown,
    /// A code Apple never documented, kept verbatim.
    Other(u8),
}

impl Status {
    pub fn from_code(code: u8) -> Status {
        match code {
            0 => Status::NoError,
            1 => Status::ProcessingError,
            2 => Status::MissingToken,
            3 => Status::MissingTopic,
            4 => Status::MissingPayload,
            5 => Status::InvalidTokenSize,
            6 => Status::InvalidTopicSize,
            7 => Status::InvalidPayloadSize,
            8 => Status::InvalidToken,
            10 => Status::Shutdown,
            128 => Status::ProtocolError,
            255 => Status::Unknown,
            n => Status::Other(n),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Status::NoError => 0,
            Status::ProcessingError => 1,
            Status::MissingToken => 2,
            Status::MissingTopic => 3,
            Status::MissingPayload => 4,
            Status::InvalidTokenSize => 5,
            Status::InvalidTopicSize => 6,
            Status::InvalidPayloadSize => 7,
            Status::InvalidToken => 8,
            Status::Shutdown => 10,
            Status::ProtocolError => 128,
            Status::Unknown => 255,
            Status::Other(n) => n,
        }
    }

    /// The nearest HTTP/2 reason, so `outbox` and `store` see one vocabulary.
    pub fn reason(self) -> Reason {
        match self {
            Status::NoError => Reason::Other("NoError".into()),
            Status::ProcessingError => Reason::InternalServerError,
            Status::MissingToken => Reason::MissingDeviceToken,
            Status::MissingTopic => Reason::MissingTopic,
            Status::MissingPayload => Reason::PayloadEmpty,
            Status::InvalidTokenSize | Status::InvalidToken => Reason::BadDeviceToken,
            Status::InvalidTopicSize => Reason::BadTopic,
            Status::InvalidPayloadSize => Reason::PayloadTooLarge,
            Status::Shutdown => Reason::Shutdown,
            Status::ProtocolError => Reason::Other("ProtocolError".into()),
            Status::Unknown => Reason::Other("Unknown".into()),
            Status::Other(n) => Reason::Other(format!("status {n}")),
        }
    }

    /// What the status means for the notification it names. Only 8 prunes: 5 (token size)
    /// can be a 100-byte token the HTTP/2 API would take, so it fails without deleting.
    pub fn outcome(self) -> Outcome {
        let reason = self.reason();
        let status = self.code() as u16;
        match self {
            Status::InvalidToken => Outcome::Prune { reason, since: None },
            Status::NoError | Status::ProcessingError | Status::Shutdown | Status::Unknown | Status::Other(_) => {
                Outcome::Retry { reason, after: None }
            }
            Status::MissingToken
            | Status::MissingTopic
            | Status::MissingPayload
            | Status::InvalidTokenSize
            | Status::InvalidTopicSize
            | Status::InvalidPayloadSize
            | Status::ProtocolError => Outcome::Failed { reason, status },
        }
    }
}

/// `u8 8 | u8 status | u32 identifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: Status,
    pub identifier: u32,
}

impl ErrorResponse {
    pub fn encode(&self) -> [u8; ERROR_RESPONSE_LEN] {
        let id = self.identifier.to_be_bytes();
        [CMD_ERROR, self.status.code(), id[0], id[1], id[2], id[3]]
    }

    /// `Ok(None)` until 6 bytes are there; an error if the first byte is not command 8.
    pub fn parse(src: &[u8]) -> Result<Option<ErrorResponse>, CodecError> {
        match src.first() {
            None => Ok(None),
            Some(&c) if c != CMD_ERROR => Err(CodecError::UnknownCommand(c)),
            Some(_) => match src.get(..ERROR_RESPONSE_LEN) {
                None => Ok(None),
                Some(b) => Ok(Some(ErrorResponse {
                    status: Status::from_code(b[1]),
                    identifier: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
                })),
            },
        }
    }
}

/// One feedback tuple: the token Apple stopped delivering to, and since when (UNIX seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackTuple {
    pub timestamp: u32,
    pub token: Vec<u8>,
}

/// Appends `u32 time | u16 token_len | token` (the simulator's side).
pub fn encode_feedback(timestamp: u32, token: &[u8], dst: &mut Vec<u8>) -> Result<(), CodecError> {
    if token.len() > u16::MAX as usize {
        return Err(CodecError::TokenTooLong(token.len()));
    }
    dst.extend_from_slice(&timestamp.to_be_bytes());
    put_u16(dst, token.len());
    dst.extend_from_slice(token);
    Ok(())
}

/// Turns a stream of reads into tuples: bytes of a tuple cut by a read boundary wait in the
/// buffer for the next read instead of being dropped.
#[derive(Debug, Default)]
pub struct FeedbackParser {
    buf: BytesMut,
}

impl FeedbackParser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete tuple, if the buffer holds one.
    pub fn next_tuple(&mut self) -> Option<FeedbackTuple> {
        let head = self.buf.get(..6)?;
        let timestamp = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        if self.buf.len() < 6 + len {
            return None;
        }
        self.buf.advance(6);
        let token = self.buf.split_to(len).to_vec();
        Some(FeedbackTuple { timestamp, token })
    }

    /// Bytes of an incomplete tuple still waiting (non-zero at EOF means a truncated stream).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
