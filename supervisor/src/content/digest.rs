//! Digests (`sha256:<64 hex>`): validation, and hashing while reading or writing.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Checks that `d` is a sha256 digest in canonical form and returns its hex part.
pub fn hex_of(d: &str) -> Result<&str> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(Error::invalid(format!(
            "digest {d:?}: expected \"sha256:<hex>\""
        )));
    };
    if alg != "sha256" {
        return Err(Error::invalid(format!(
            "digest {d:?}: unsupported algorithm {alg:?} (only sha256)"
        )));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::invalid(format!(
            "digest {d:?}: expected 64 lowercase hex digits"
        )));
    }
    Ok(hex)
}

pub fn validate(d: &str) -> Result<()> {
    hex_of(d).map(|_| ())
}

pub fn of_bytes(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A running sha256 over bytes as they pass.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

/// Hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Digest and size of what was read.
    pub fn finish(self) -> (String, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, hasher: Hasher, count: u64) -> Self {
        HashingWriter {
            inner,
            hasher,
            count,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn into_parts(self) -> (W, Hasher, u64) {
        (self.inner, self.hasher, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_canonical_sha256_only() {
        let good = of_bytes(b"x");
        assert!(validate(&good).is_ok());
        assert!(validate("sha256:ABC").is_err());
        assert!(validate("md5:00").is_err());
        assert!(validate(&good.to_uppercase()).is_err());
        assert!(validate("sha256:../../etc/passwd").is_err());
    }

    #[test]
    fn reader_hashes_what_passes() {
        let mut r = HashingReader::new(&b"hello"[..]);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(r.finish(), (of_bytes(b"hello"), 5));
    }
}
