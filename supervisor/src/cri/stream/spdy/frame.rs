//! SPDY/3 frames: encoding, and an incremental decoder over a byte buffer. Header blocks stay
//! compressed here; `headers` owns the zlib contexts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u16 = 3;

/// Control frame flags; DATA frames use FLAG_FIN alone.
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// What the 24-bit length field can say.
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// Control frames carry a few fields and a compressed header block; a larger one is refused.
pub const MAX_CONTROL_LENGTH: usize = 1 << 20;
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const INVALID_STREAM: u32 = 2;
pub const REFUSED_STREAM: u32 = 3;
pub const UNSUPPORTED_VERSION: u32 = 4;
pub const CANCEL: u32 = 5;
pub const INTERNAL_ERROR: u32 = 6;
pub const FLOW_CONTROL_ERROR: u32 = 7;
pub const STREAM_IN_USE: u32 = 8;
pub const STREAM_ALREADY_CLOSED: u32 = 9;
pub const FRAME_TOO_LARGE: u32 = 11;

/// GOAWAY status codes.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        settings: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} (only 3 is spoken)")]
    Version(u16),
    #[error("control frame of {0} bytes")]
    TooLong(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// Appends the frame's wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                block,
            } => {
                control(out, SYN_STREAM, *flags, 10 + block.len())?;
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_u32(associated_to & MAX_STREAM_ID);
                out.put_u8((priority & 0x07) << 5);
                out.put_u8(*slot);
                out.put_slice(block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                block,
            } => {
                control(out, SYN_REPLY, *flags, 4 + block.len())?;
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_slice(block);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, RST_STREAM, 0, 8)?;
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_u32(*status);
            }
            Frame::Settings { flags, settings } => {
                control(
                    out,
                    SETTINGS,
                    *flags,
                    settings.len().saturating_mul(8).saturating_add(4),
                )?;
                out.put_u32(u32::try_from(settings.len()).map_err(|_| too_long(settings.len()))?);
                for s in settings {
                    out.put_u32(u32::from(s.flags) << 24 | (s.id & 0x00ff_ffff));
                    out.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                control(out, PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway { last_good, status } => {
                control(out, GOAWAY, 0, 8)?;
                out.put_u32(last_good & MAX_STREAM_ID);
                out.put_u32(*status);
            }
            Frame::Headers {
                stream_id,
                flags,
                block,
            } => {
                control(out, HEADERS, *flags, 4 + block.len())?;
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_slice(block);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, WINDOW_UPDATE, 0, 8)?;
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let word = flags_and_length(*flags, data.len())?;
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(stream_id & MAX_STREAM_ID);
                out.put_u32(word);
                out.put_slice(data);
            }
        }
        Ok(())
    }
}

fn too_long(len: usize) -> FrameError {
    FrameError::TooLong(len)
}

fn flags_and_length(flags: u8, len: usize) -> Result<u32, FrameError> {
    if len > MAX_FRAME_LENGTH {
        return Err(too_long(len));
    }
    // Bounded by the check above, so it fits 24 bits.
    Ok(u32::from(flags) << 24 | (len as u32))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), FrameError> {
    let word = flags_and_length(flags, len)?;
    out.reserve(HEADER_LEN + len);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(word);
    Ok(())
}

/// Reads frames out of a growing buffer. Unknown control frame types are skipped as the
/// spec asks, without buffering them.
#[derive(Debug)]
pub struct Decoder {
    max_control: usize,
    skipping: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(MAX_CONTROL_LENGTH)
    }
}

impl Decoder {
    pub fn new(max_control: usize) -> Decoder {
        Decoder {
            max_control,
            skipping: 0,
        }
    }

    /// The next whole frame in `buf`, consuming it; None until one is complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.skipping > 0 {
                let n = self.skipping.min(buf.len());
                buf.advance(n);
                self.skipping -= n;
                if self.skipping > 0 {
                    return Ok(None);
                }
            }
            let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
                return Ok(None);
            };
            let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let flags = head[4];
            let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
            if first & 0x8000_0000 == 0 {
                if buf.len() < HEADER_LEN + len {
                    buf.reserve(HEADER_LEN + len - buf.len());
                    return Ok(None);
                }
                let stream_id = first & MAX_STREAM_ID;
                if stream_id == 0 {
                    return Err(FrameError::Malformed("DATA on stream 0"));
                }
                buf.advance(HEADER_LEN);
                let data = buf.split_to(len).freeze();
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }));
            }
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
            let kind = (first & 0xffff) as u16;
            if !(SYN_STREAM..=WINDOW_UPDATE).contains(&kind) || kind == 5 {
                buf.advance(HEADER_LEN);
                self.skipping = len;
                continue;
            }
            if len > self.max_control {
                return Err(FrameError::TooLong(len));
            }
            if buf.len() < HEADER_LEN + len {
                buf.reserve(HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            return parse_control(kind, flags, payload).map(Some);
        }
    }
}

fn parse_control(kind: u16, flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
    let len = p.len();
    let exact = |want: usize, name: &'static str| {
        if len == want {
            Ok(())
        } else {
            Err(FrameError::Malformed(name))
        }
    };
    let at_least = |want: usize, name: &'static str| {
        if len >= want {
            Ok(())
        } else {
            Err(FrameError::Malformed(name))
        }
    };
    // Every read below is covered by the length checked before it.
    let frame = match kind {
        SYN_STREAM => {
            at_least(10, "SYN_STREAM")?;
            let stream_id = stream(p.get_u32(), "SYN_STREAM")?;
            let associated_to = p.get_u32() & MAX_STREAM_ID;
            let priority = p.get_u8() >> 5;
            let slot = p.get_u8();
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                block: p,
            }
        }
        SYN_REPLY => {
            at_least(4, "SYN_REPLY")?;
            let stream_id = stream(p.get_u32(), "SYN_REPLY")?;
            Frame::SynReply {
                stream_id,
                flags,
                block: p,
            }
        }
        RST_STREAM => {
            exact(8, "RST_STREAM")?;
            let stream_id = stream(p.get_u32(), "RST_STREAM")?;
            Frame::RstStream {
                stream_id,
                status: p.get_u32(),
            }
        }
        SETTINGS => {
            at_least(4, "SETTINGS")?;
            let count = usize::try_from(p.get_u32()).unwrap_or(usize::MAX);
            if count.checked_mul(8) != Some(p.len()) {
                return Err(FrameError::Malformed("SETTINGS"));
            }
            let settings = (0..count)
                .map(|_| {
                    let word = p.get_u32();
                    Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0x00ff_ffff,
                        value: p.get_u32(),
                    }
                })
                .collect();
            Frame::Settings { flags, settings }
        }
        PING => {
            exact(4, "PING")?;
            Frame::Ping { id: p.get_u32() }
        }
        GOAWAY => {
            exact(8, "GOAWAY")?;
            Frame::GoAway {
                last_good: p.get_u32() & MAX_STREAM_ID,
                status: p.get_u32(),
            }
        }
        HEADERS => {
            at_least(4, "HEADERS")?;
            let stream_id = stream(p.get_u32(), "HEADERS")?;
            Frame::Headers {
                stream_id,
                flags,
                block: p,
            }
        }
        _ => {
            exact(8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate {
                stream_id: p.get_u32() & MAX_STREAM_ID,
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
    };
    Ok(frame)
}

fn stream(word: u32, name: &'static str) -> Result<u32, FrameError> {
    match word & MAX_STREAM_ID {
        0 => Err(FrameError::Malformed(name)),
        id => Ok(id),
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
