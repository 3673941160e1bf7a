//! SPDY/3 header blocks: the name/value block and its zlib compression with the SPDY/3
//! dictionary, one compression context per direction for the whole connection.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest header block, decompressed, that we read or write. Kubernetes' blocks are a
/// few dozen bytes; this only bounds what a hostile peer can make us inflate.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;

/// The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1): length-prefixed header names
/// and values, then status codes, reason phrases, dates and common values. The array type
/// pins its length; a test pins its checksum, which zlib streams carry as their DICTID.
pub const DICTIONARY: &[u8; 1423] = b"\
    \0\0\0\x07options\
    \0\0\0\x04head\
    \0\0\0\x04post\
    \0\0\0\x03put\
    \0\0\0\x06delete\
    \0\0\0\x05trace\
    \0\0\0\x06accept\
    \0\0\0\x0eaccept-charset\
    \0\0\0\x0faccept-encoding\
    \0\0\0\x0faccept-language\
    \0\0\0\x0daccept-ranges\
    \0\0\0\x03age\
    \0\0\0\x05allow\
    \0\0\0\x0dauthorization\
    \0\0\0\x0dcache-control\
    \0\0\0\x0aconnection\
    \0\0\0\x0ccontent-base\
    \0\0\0\x10content-encoding\
    \0\0\0\x10content-language\
    \0\0\0\x0econtent-length\
    \0\0\0\x10content-location\
    \0\0\0\x0bcontent-md5\
    \0\0\0\x0dcontent-range\
    \0\0\0\x0ccontent-type\
    \0\0\0\x04date\
    \0\0\0\x04etag\
    \0\0\0\x06expect\
    \0\0\0\x07expires\
    \0\0\0\x04from\
    \0\0\0\x04host\
    \0\0\0\x08if-match\
    \0\0\0\x11if-modified-since\
    \0\0\0\x0dif-none-match\
    \0\0\0\x08if-range\
    \0\0\0\x13if-unmodified-since\
    \0\0\0\x0dlast-modified\
    \0\0\0\x08location\
    \0\0\0\x0cmax-forwards\
    \0\0\0\x06pragma\
    \0\0\0\x12proxy-authenticate\
    \0\0\0\x13proxy-authorization\
    \0\0\0\x05range\
    \0\0\0\x07referer\
    \0\0\0\x0bretry-after\
    \0\0\0\x06server\
    \0\0\0\x02te\
    \0\0\0\x07trailer\
    \0\0\0\x11transfer-encoding\
    \0\0\0\x07upgrade\
    \0\0\0\x0auser-agent\
    \0\0\0\x04vary\
    \0\0\0\x03via\
    \0\0\0\x07warning\
    \0\0\0\x10www-authenticate\
    \0\0\0\x06method\
    \0\0\0\x03get\
    \0\0\0\x06status\
    \0\0\0\x06200 OK\
    \0\0\0\x07version\
    \0\0\0\x08HTTP/1.1\
    \0\0\0\x03url\
    \0\0\0\x06public\
    \0\0\0\x0aset-cookie\
    \0\0\0\x0akeep-alive\
    \0\0\0\x06origin\
    100101\
    201202205206\
    300302303304305306307\
    402405406407408409410411412413414415416417\
    502504505\
    203 Non-Authoritative Information\
    204 No Content\
    301 Moved Permanently\
    400 Bad Request\
    401 Unauthorized\
    403 Forbidden\
    404 Not Found\
    500 Internal Server Error\
    501 Not Implemented\
    503 Service Unavailable\
    Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec \
    00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,\
    application/xml,application/xhtml+xml,text/plain,text/javascript,\
    publicprivatemax-age=gzip,deflate,sdch\
    charset=utf-8charset=iso-8859-1,utf-,*,enq=0.\
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
    #[error("header block compression: {0}")]
    Zlib(String),
}

/// A stream's headers: (name, value) pairs in the order they came, names lower-case as
/// SPDY/3 requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a value; a name given more than once travels as one entry of NUL-joined values.
    pub fn add(&mut self, name: &str, value: &str) {
        self.pairs
            .push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// The first value of `name`, which is matched case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The uncompressed name/value block: a 32-bit count, then per distinct name its length,
    /// the name, the length of its values and the values joined by NUL.
    pub fn to_block(&self) -> Result<Vec<u8>, HeaderError> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.pairs {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let mut out = Vec::new();
        put_len(&mut out, names.len())?;
        for name in names {
            let values: Vec<&str> = self.get_all(name).collect();
            let joined = values.join("\0");
            put_len(&mut out, name.len())?;
            out.extend_from_slice(name.as_bytes());
            put_len(&mut out, joined.len())?;
            out.extend_from_slice(joined.as_bytes());
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
        }
        Ok(out)
    }

    /// Parses an uncompressed name/value block. Names are lower-cased rather than refused, and
    /// NUL-joined values become separate pairs.
    pub fn from_block(block: &[u8]) -> Result<Headers, HeaderError> {
        let mut rest = block;
        let count = take_len(&mut rest)?;
        // Every entry takes at least eight bytes, so a larger count is a lie worth refusing
        // before it sizes an allocation.
        if count > rest.len() / 8 {
            return Err(HeaderError::Malformed("more entries than bytes"));
        }
        let mut headers = Headers {
            pairs: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let name = take_str(&mut rest)?;
            if name.is_empty() {
                return Err(HeaderError::Malformed("empty header name"));
            }
            let name = name.to_ascii_lowercase();
            let values = take_str(&mut rest)?;
            for value in values.split('\0') {
                headers.pairs.push((name.clone(), value.to_string()));
            }
        }
        if !rest.is_empty() {
            return Err(HeaderError::Malformed("bytes after the last entry"));
        }
        Ok(headers)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), HeaderError> {
    let len = u32::try_from(len).map_err(|_| HeaderError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn take_len(rest: &mut &[u8]) -> Result<usize, HeaderError> {
    let Some((word, tail)) = rest.split_first_chunk::<4>() else {
        return Err(HeaderError::Malformed("truncated length"));
    };
    *rest = tail;
    usize::try_from(u32::from_be_bytes(*word)).map_err(|_| HeaderError::TooLarge)
}

fn take_str<'a>(rest: &mut &'a [u8]) -> Result<&'a str, HeaderError> {
    let len = take_len(rest)?;
    if len > rest.len() {
        return Err(HeaderError::Malformed("truncated string"));
    }
    let (text, tail) = rest.split_at(len);
    *rest = tail;
    std::str::from_utf8(text).map_err(|_| HeaderError::Malformed("header not UTF-8"))
}

/// The compression context of the blocks we send. Each block ends with a sync flush, so the
/// peer can decode it on its own while the context carries over to the next.
pub struct Compressor {
    z: Compress,
    primed: bool,
}

impl Default for Compressor {
    fn default() -> Compressor {
        Compressor::new()
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor {
            z: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    pub fn compress(&mut self, headers: &Headers) -> Result<Bytes, HeaderError> {
        let raw = headers.to_block()?;
        self.compress_raw(&raw).map(Bytes::from)
    }

    pub fn compress_raw(&mut self, raw: &[u8]) -> Result<Vec<u8>, HeaderError> {
        // The dictionary goes in before the first byte, which also marks the zlib header
        // with its DICTID.
        if !self.primed {
            self.z
                .set_dictionary(DICTIONARY)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            self.primed = true;
        }
        let base = self.z.total_in();
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        loop {
            let used = consumed(self.z.total_in(), base);
            let input = raw.get(used..).unwrap_or_default();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            // The flush is complete once all input is in and zlib left room unused.
            if consumed(self.z.total_in(), base) >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// The decompression context of the blocks we read.
pub struct Decompressor {
    z: Decompress,
    dictionary_set: bool,
}

impl Default for Decompressor {
    fn default() -> Decompressor {
        Decompressor::new()
    }
}

impl Decompressor {
    pub fn new() -> Decompressor {
        Decompressor {
            z: Decompress::new(true),
            dictionary_set: false,
        }
    }

    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        Headers::from_block(&self.inflate(block)?)
    }

    /// Inflates one compressed block, at most [`MAX_HEADER_BLOCK`] bytes of it.
    pub fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let base = self.z.total_in();
        let mut out = Vec::with_capacity((block.len() * 4).clamp(256, MAX_HEADER_BLOCK + 1));
        loop {
            let used = consumed(self.z.total_in(), base);
            let input = block.get(used..).unwrap_or_default();
            let produced = out.len();
            match self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => {
                    return Err(HeaderError::Malformed("zlib stream ended"));
                }
                // zlib reports the preset dictionary the stream's header names; it is SPDY/3's
                // or the stream is not one we can read.
                Err(e) if e.needs_dictionary().is_some() && !self.dictionary_set => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|_| HeaderError::Zlib("not the SPDY/3 dictionary".into()))?;
                    self.dictionary_set = true;
                    continue;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            let now = consumed(self.z.total_in(), base);
            if now >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                let room = (MAX_HEADER_BLOCK + 1).saturating_sub(out.len());
                out.reserve_exact(out.capacity().clamp(256, room.max(1)));
            } else if now == used && out.len() == produced {
                return Err(HeaderError::Malformed("truncated compressed block"));
            }
        }
    }
}

fn consumed(total: u64, base: u64) -> usize {
    usize::try_from(total.saturating_sub(base)).unwrap_or(usize::MAX)
}

#[cfg(test)]
#[path = "headers_tests.rs"]
pub(super) mod tests;
