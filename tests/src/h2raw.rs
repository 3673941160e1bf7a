//! A bare HTTP/2 client over a unix socket, for requests no gRPC library would send as they
//! are: any `:authority` (a socket path, %-encoded, empty) or none at all. It speaks just
//! enough HTTP/2 for unary gRPC calls: the preface, SETTINGS (and their ACK), one HEADERS and
//! one DATA frame per request, and the response's frames read back per stream.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What came back on one stream.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// Response headers, then trailers, in order.
    pub headers: Vec<(String, String)>,
    /// The DATA payloads, concatenated.
    pub body: Vec<u8>,
    /// The RST_STREAM error code, if the server reset the stream.
    pub reset: Option<u32>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The gRPC messages of the body, without their 5-byte prefixes.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut b = &self.body[..];
        while b.len() >= 5 {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            if b.len() < 5 + len {
                break;
            }
            out.push(b[5..5 + len].to_vec());
            b = &b[5 + len..];
        }
        out
    }
}

/// One HTTP/2 connection.
pub struct Conn {
    sock: UnixStream,
    encoder: httlib_hpack::Encoder<'static>,
    decoder: httlib_hpack::Decoder<'static>,
    next_stream: u32,
    answers: HashMap<u32, Answer>,
    done: HashMap<u32, bool>,
    block: Vec<u8>,
    block_stream: u32,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

impl Conn {
    pub fn open(socket: &Path) -> std::io::Result<Conn> {
        let mut sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        sock.write_all(&hello)?;
        Ok(Conn {
            sock,
            encoder: httlib_hpack::Encoder::default(),
            decoder: httlib_hpack::Decoder::default(),
            next_stream: 1,
            answers: HashMap::new(),
            done: HashMap::new(),
            block: Vec::new(),
            block_stream: 0,
        })
    }

    /// Sends a unary gRPC request for `path` carrying `message`, with `authority` as its
    /// `:authority` (None: no such field), and returns the stream id.
    pub fn send(
        &mut self,
        path: &str,
        authority: Option<&str>,
        extra: &[(&str, &str)],
        message: &[u8],
    ) -> std::io::Result<u32> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
        ];
        if let Some(a) = authority {
            headers.push((b":authority", a.as_bytes()));
        }
        headers.push((b"content-type", b"application/grpc"));
        headers.push((b"te", b"trailers"));
        for (n, v) in extra {
            headers.push((n.as_bytes(), v.as_bytes()));
        }
        // As grpc-go and gRPC-core do: indexed where possible, values Huffman-coded.
        let mut block = Vec::new();
        let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
            | httlib_hpack::Encoder::WITH_INDEXING
            | httlib_hpack::Encoder::BEST_FORMAT;
        for (n, v) in headers {
            self.encoder
                .encode((n.to_vec(), v.to_vec(), flags), &mut block)
                .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
        }
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        let mut out = frame(HEADERS, END_HEADERS, stream, &block);
        out.extend(frame(DATA, END_STREAM, stream, &body));
        self.sock.write_all(&out)?;
        Ok(stream)
    }

    /// Reads until `stream` has ended (END_STREAM or RST_STREAM) and returns what it got.
    pub fn answer(&mut self, stream: u32) -> std::io::Result<Answer> {
        while !self.done.get(&stream).copied().unwrap_or(false) {
            self.read_frame()?;
        }
        Ok(self.answers.remove(&stream).unwrap_or_default())
    }

    /// `send` then `answer`.
    pub fn call(
        &mut self,
        path: &str,
        authority: Option<&str>,
        message: &[u8],
    ) -> std::io::Result<Answer> {
        let s = self.send(path, authority, &[], message)?;
        self.answer(s)
    }

    fn read_frame(&mut self) -> std::io::Result<()> {
        let mut head = [0u8; 9];
        self.sock.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.sock.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & ACK == 0 => self.sock.write_all(&frame(SETTINGS, ACK, 0, &[]))?,
            PING if flags & ACK == 0 => self.sock.write_all(&frame(PING, ACK, 0, &payload))?,
            GOAWAY => {
                return Err(std::io::Error::other(format!(
                    "GOAWAY: {}",
                    String::from_utf8_lossy(&payload)
                )))
            }
            DATA => {
                let a = self.answers.entry(stream).or_default();
                let mut p = &payload[..];
                if flags & PADDED != 0 && !p.is_empty() {
                    let pad = p[0] as usize;
                    p = &p[1..p.len().saturating_sub(pad)];
                }
                a.body.extend_from_slice(p);
                if flags & END_STREAM != 0 {
                    self.done.insert(stream, true);
                }
            }
            HEADERS | CONTINUATION => {
                let mut p = &payload[..];
                if kind == HEADERS {
                    if flags & PADDED != 0 && !p.is_empty() {
                        let pad = p[0] as usize;
                        p = &p[1..p.len().saturating_sub(pad)];
                    }
                    if flags & PRIORITY != 0 && p.len() >= 5 {
                        p = &p[5..];
                    }
                    self.block_stream = stream;
                    if flags & END_STREAM != 0 {
                        self.done.insert(stream, false);
                    }
                }
                self.block.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    let mut block = std::mem::take(&mut self.block);
                    let mut decoded = Vec::new();
                    self.decoder
                        .decode(&mut block, &mut decoded)
                        .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
                    let s = self.block_stream;
                    let a = self.answers.entry(s).or_default();
                    for (n, v, _) in decoded {
                        a.headers.push((
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        ));
                    }
                    if self.done.get(&s) == Some(&false) {
                        self.done.insert(s, true);
                    }
                }
            }
            RST_STREAM => {
                let code = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                self.answers.entry(stream).or_default().reset = Some(code);
                self.done.insert(stream, true);
            }
            _ => {}
        }
        Ok(())
    }
}
