//! Accepting every `:authority` a gRPC client sends on the unix socket.
//!
//! grpc-go before 1.60-odd (the kubelet and crictl up to 1.30), grpc-java, grpc-swift and
//! gRPC-core with default channel options dial a unix socket and send its path, raw or
//! %-encoded, as the HTTP/2 `:authority`. The authority names no host on a unix socket and
//! nothing here reads it, but hyper's HTTP/2 layer parses it as a URI authority and resets
//! the stream with PROTOCOL_ERROR when it is not one.
//!
//! [`AuthorityFilter`] sits between the socket and hyper. It reads the client's frames, decodes
//! each header block with its own HPACK decoder (kept in step with the client's encoder), and
//! forwards the block unchanged while it carries no malformed `:authority`. The first block
//! that does is re-encoded without that field; from then on this connection's header blocks
//! are re-encoded with an encoder of its own, whose table starts with an explicit reset of
//! hyper's so the two stay in step. Every other frame passes through byte for byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts, so re-encoded blocks never need to know the
/// server's setting.
const MIN_MAX_FRAME: usize = 16 << 10;
/// The HPACK table size the server has not changed from its default (hyper leaves it).
const TABLE_SIZE: usize = 4096;
/// Largest header block this layer takes, twice hyper's limit on a decoded header list (16
/// KiB): a larger block is refused by hyper anyway.
const MAX_BLOCK: usize = 32 << 10;
const READ_CHUNK: usize = 16 << 10;

/// A connection whose client-to-server header blocks carry only well-formed authorities.
pub struct AuthorityFilter<T> {
    inner: T,
    /// Bytes read from the client and not yet handled.
    raw: BytesMut,
    /// Bytes handled and not yet read by hyper.
    out: BytesMut,
    state: State,
    block: Option<Block>,
    decoder: httlib_hpack::Decoder<'static>,
    /// Set once a block has been rewritten: hyper's HPACK table then follows this encoder.
    encoder: Option<httlib_hpack::Encoder<'static>>,
    eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Waiting for this many more bytes of the client preface.
    Preface(usize),
    /// Waiting for a frame header.
    Frame,
    /// Copying this many more bytes of a frame's payload.
    Payload(usize),
    /// Not HTTP/2 as expected, or a block this layer could not decode: hyper sees the bytes
    /// as they came and answers them itself.
    Transparent,
}

/// A header block split over a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, forwarded when the block needs no change.
    frames: Vec<u8>,
}

impl<T> AuthorityFilter<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFilter {
            inner,
            raw: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::new(),
            state: State::Preface(PREFACE.len()),
            block: None,
            decoder: httlib_hpack::Decoder::with_dynamic_size(TABLE_SIZE as u32),
            encoder: None,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Moves what can be handled from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Transparent => {
                    self.out.extend_from_slice(&self.raw);
                    self.raw.clear();
                    return Ok(());
                }
                State::Preface(left) => {
                    let done = PREFACE.len() - left;
                    let n = left.min(self.raw.len());
                    if n == 0 {
                        return Ok(());
                    }
                    if self.raw[..n] != PREFACE[done..done + n] {
                        self.state = State::Transparent;
                        continue;
                    }
                    self.move_out(n);
                    self.state = if n == left {
                        State::Frame
                    } else {
                        State::Preface(left - n)
                    };
                }
                State::Payload(left) => {
                    let n = left.min(self.raw.len());
                    if n == 0 && left > 0 {
                        return Ok(());
                    }
                    self.move_out(n);
                    self.state = if n == left {
                        State::Frame
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::Frame => {
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    let kind = self.raw[3];
                    let in_block = self.block.is_some();
                    if kind != HEADERS && !(kind == CONTINUATION && in_block) {
                        if in_block {
                            return Err(protocol("a header block interrupted by another frame"));
                        }
                        self.move_out(FRAME_HEADER);
                        self.state = State::Payload(len);
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(protocol("a header block larger than 32 KiB"));
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        self.raw.reserve(FRAME_HEADER + len - self.raw.len());
                        return Ok(());
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    self.header_frame(&frame)?;
                }
            }
        }
    }

    fn move_out(&mut self, n: usize) {
        self.out.extend_from_slice(&self.raw[..n]);
        self.raw.advance(n);
    }

    /// Takes in one HEADERS or CONTINUATION frame, whole.
    fn header_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        match self.block.as_mut() {
            None => {
                let mut priority = None;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = payload
                        .split_first()
                        .ok_or_else(|| protocol("a padded HEADERS frame without its pad length"))?;
                    pad = n as usize;
                    payload = rest;
                }
                if flags & PRIORITY != 0 {
                    if payload.len() < 5 {
                        return Err(protocol("a HEADERS frame too short for its priority"));
                    }
                    let mut p = [0; 5];
                    p.copy_from_slice(&payload[..5]);
                    priority = Some(p);
                    payload = &payload[5..];
                }
                if pad > payload.len() {
                    return Err(protocol("a HEADERS frame padded past its end"));
                }
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: payload[..payload.len() - pad].to_vec(),
                    frames: frame.to_vec(),
                });
            }
            Some(block) => {
                if kind != CONTINUATION || stream != block.stream {
                    return Err(protocol("a header block interrupted by another frame"));
                }
                if block.frames.len() + frame.len() > MAX_BLOCK {
                    return Err(protocol("a header block larger than 32 KiB"));
                }
                block.fragment.extend_from_slice(payload);
                block.frames.extend_from_slice(frame);
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, mut block: Block) -> io::Result<()> {
        let fragment_len = block.fragment.len();
        let decoded = match decode(&mut self.decoder, std::mem::take(&mut block.fragment)) {
            Ok(headers) => headers,
            Err(e) if self.encoder.is_none() => {
                // hyper decodes the same bytes and answers the client's error itself.
                tracing::debug!(error = %e, "undecodable header block passed through");
                self.out.extend_from_slice(&block.frames);
                self.state = State::Transparent;
                return Ok(());
            }
            Err(e) => return Err(protocol(&e)),
        };
        let malformed = |(name, value): &(Vec<u8>, Vec<u8>)| {
            name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err()
        };
        if self.encoder.is_none() && !decoded.iter().any(malformed) {
            self.out.extend_from_slice(&block.frames);
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(fragment_len + 8);
        let encoder = match self.encoder.as_mut() {
            Some(encoder) => encoder,
            None => {
                // hyper's table holds what the client's blocks put there so far: empty it, then
                // give it back its size, and let a fresh encoder fill it from now on.
                let encoder = self
                    .encoder
                    .insert(httlib_hpack::Encoder::with_dynamic_size(TABLE_SIZE as u32));
                for size in [0, TABLE_SIZE as u32] {
                    encoder
                        .update_max_dynamic_size(size, &mut encoded)
                        .map_err(|e| protocol(&format!("HPACK: {e:?}")))?;
                }
                encoder
            }
        };
        for (name, value) in decoded.into_iter().filter(|h| !malformed(h)) {
            encoder
                .encode(
                    (
                        name,
                        value,
                        httlib_hpack::Encoder::WITH_INDEXING | httlib_hpack::Encoder::BEST_FORMAT,
                    ),
                    &mut encoded,
                )
                .map_err(|e| protocol(&format!("HPACK: {e:?}")))?;
        }
        self.write_block(&block, &encoded);
        Ok(())
    }

    /// Frames `encoded` as a HEADERS frame and as many CONTINUATIONs as it needs.
    fn write_block(&mut self, block: &Block, encoded: &[u8]) {
        let prio = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = encoded.len().min(MIN_MAX_FRAME - prio.len());
        let mut chunks = std::iter::once(&encoded[..first])
            .chain(encoded[first..].chunks(MIN_MAX_FRAME))
            .peekable();
        let mut kind = HEADERS;
        while let Some(chunk) = chunks.next() {
            let mut flags = 0;
            let mut len = chunk.len();
            if kind == HEADERS {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if !prio.is_empty() {
                    flags |= PRIORITY;
                    len += prio.len();
                }
            }
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            let len = (len as u32).to_be_bytes();
            self.out
                .extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            self.out.extend_from_slice(&block.stream.to_be_bytes());
            if kind == HEADERS {
                self.out.extend_from_slice(prio);
            }
            self.out.extend_from_slice(chunk);
            kind = CONTINUATION;
        }
    }
}

/// A header block's fields, (name, value) in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of one header block.
fn decode(
    decoder: &mut httlib_hpack::Decoder<'static>,
    mut block: Vec<u8>,
) -> Result<Fields, String> {
    let mut fields = Vec::new();
    decoder
        .decode(&mut block, &mut fields)
        .map_err(|e| format!("HPACK: {e:?}"))?;
    Ok(fields.into_iter().map(|(n, v, _)| (n, v)).collect())
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFilter<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if !this.raw.is_empty() {
                this.process()?;
                if !this.out.is_empty() {
                    continue;
                }
            }
            this.raw.reserve(READ_CHUNK);
            if ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))? == 0
            {
                this.eof = true;
                continue;
            }
            this.process()?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFilter<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFilter<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(authority: Option<&str>, path: &str) -> Headers {
        let mut h: Headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
        ];
        if let Some(a) = authority {
            h.push((b":authority".to_vec(), a.as_bytes().to_vec()));
        }
        h.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
        h.push((b"te".to_vec(), b"trailers".to_vec()));
        h
    }

    fn encoder() -> httlib_hpack::Encoder<'static> {
        httlib_hpack::Encoder::default()
    }

    /// As a client would: indexed where it can, Huffman-coded values.
    fn encode(encoder: &mut httlib_hpack::Encoder<'static>, headers: &Headers) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in headers {
            let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
                | httlib_hpack::Encoder::WITH_INDEXING
                | httlib_hpack::Encoder::BEST_FORMAT;
            encoder
                .encode((n.clone(), v.clone(), flags), &mut out)
                .unwrap();
        }
        out
    }

    async fn filter(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        AuthorityFilter::new(input)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// The frames after the preface: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        bytes = &bytes[PREFACE.len()..];
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            all.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        all
    }

    /// Decodes the header blocks of `frames` as hyper would, in order.
    fn blocks(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<(u32, u8, Headers)> {
        let mut decoder = httlib_hpack::Decoder::default();
        let mut out = Vec::new();
        let mut fragment = Vec::new();
        let mut first_flags = 0;
        for (kind, flags, stream, payload) in frames {
            match *kind {
                HEADERS => {
                    assert!(fragment.is_empty());
                    first_flags = *flags;
                    let mut p = &payload[..];
                    let mut pad = 0;
                    if flags & PADDED != 0 {
                        pad = p[0] as usize;
                        p = &p[1..];
                    }
                    if flags & PRIORITY != 0 {
                        p = &p[5..];
                    }
                    fragment.extend_from_slice(&p[..p.len() - pad]);
                }
                CONTINUATION => fragment.extend_from_slice(payload),
                _ => continue,
            }
            assert!(payload.len() <= MIN_MAX_FRAME);
            if flags & END_HEADERS != 0 {
                out.push((
                    *stream,
                    first_flags,
                    decode(&mut decoder, fragment.clone()).unwrap(),
                ));
                fragment.clear();
            }
        }
        out
    }

    fn without_authority(mut h: Headers) -> Headers {
        h.retain(|(n, _)| n != b":authority");
        h
    }

    #[tokio::test]
    async fn well_formed_authorities_pass_byte_for_byte() {
        let mut enc = encoder();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        for (i, a) in [
            Some("localhost"),
            None,
            Some("localhost:1234"),
            Some("localhost"),
        ]
        .into_iter()
        .enumerate()
        {
            let stream = 1 + 2 * i as u32;
            let block = encode(&mut enc, &request(a, "/sup.v1.Version/Version"));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        assert_eq!(filter(&input).await, input);
    }

    #[tokio::test]
    async fn malformed_authorities_are_dropped_and_the_tables_stay_in_step() {
        let mut enc = encoder();
        let requests = [
            request(Some("localhost"), "/a.A/One"),
            request(Some("/run/sup/sup.sock"), "/a.A/Two"),
            request(Some("%2Frun%2Fsup%2Fsup.sock"), "/a.A/Two"),
            request(Some(""), "/a.A/One"),
            request(Some("/run/sup/sup.sock"), "/a.A/Two"),
            request(Some("localhost"), "/a.A/Three"),
        ];
        let mut input = PREFACE.to_vec();
        for (i, r) in requests.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            input.extend(frame(HEADERS, END_HEADERS, stream, &encode(&mut enc, r)));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let out = frames(&filter(&input).await);
        let got = blocks(&out);
        assert_eq!(got.len(), requests.len());
        for (i, ((stream, _, headers), sent)) in got.into_iter().zip(&requests).enumerate() {
            assert_eq!(stream, 1 + 2 * i as u32);
            let want = match sent.iter().find(|(n, _)| n == b":authority") {
                Some((_, v)) if http::uri::Authority::try_from(&v[..]).is_err() => {
                    without_authority(sent.clone())
                }
                _ => sent.clone(),
            };
            assert_eq!(headers, want, "request {i}");
        }
        let data: Vec<_> = out.iter().filter(|f| f.0 == 0).collect();
        assert_eq!(data.len(), requests.len());
        assert!(data
            .iter()
            .all(|f| f.1 == END_STREAM && f.3 == b"\0\0\0\0\0"));
    }

    #[tokio::test]
    async fn padding_priority_and_continuations_are_read_and_large_blocks_split() {
        let mut enc = encoder();
        let mut headers = request(Some("/run/sup/sup.sock"), "/a.A/Big");
        headers.push((b"x-big".to_vec(), vec![b'v'; 20_000]));
        let block = encode(&mut enc, &headers);
        let (a, rest) = block.split_at(100);
        let (b, c) = rest.split_at(10_000);
        // HEADERS with 3 bytes of padding and a priority, then two CONTINUATIONs.
        let mut first = vec![3];
        first.extend_from_slice(&[0, 0, 0, 0, 15]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let out = frames(&filter(&input).await);
        assert_eq!(out[0].0, HEADERS);
        assert_eq!(
            out[0].1 & (PADDED | PRIORITY | END_STREAM),
            PRIORITY | END_STREAM
        );
        assert_eq!(&out[0].3[..5], &[0, 0, 0, 0, 15]);
        assert!(out.len() >= 2, "a 20 kB block takes two frames");
        assert!(out[1..].iter().all(|f| f.0 == CONTINUATION && f.2 == 1));
        let got = blocks(&out);
        assert_eq!(got, vec![(1, out[0].1, without_authority(headers))]);
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_as_it_came() {
        let input = b"GET / HTTP/1.1\r\nHost: /run/sup/sup.sock\r\n\r\n".to_vec();
        assert_eq!(filter(&input).await, input);
    }

    #[tokio::test]
    async fn a_block_interrupted_by_another_frame_is_refused() {
        let mut enc = encoder();
        let block = encode(&mut enc, &request(Some("localhost"), "/a.A/One"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(frame(0x0, 0, 1, b"x"));
        let mut out = Vec::new();
        let err = AuthorityFilter::new(&input[..])
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
