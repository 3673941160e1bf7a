//! Layer compression: gzip, zstd or none, told by media type or by the stream's first bytes.
//!
//! Decoder failures surface as `io::ErrorKind::InvalidData` errors carrying [`Corrupt`]
//! (which says which format was corrupt), while errors of the underlying reader (a disk
//! failing under the content store) pass through untouched: the applier turns the former
//! into InvalidArgument and keeps the latter as I/O failures.

use std::io::{self, BufRead, Read};

use crate::error::{Error, Result};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// The compression a layer media type names, or `None` when the media type does not say
/// (not a layer type we know, or a generic one such as `application/octet-stream`).
pub fn from_media_type(mt: &str) -> Option<Compression> {
    // Parameters (`; charset=...`) never change the encoding of a layer.
    let base = mt.split(';').next().unwrap_or_default().trim();
    let base = base.to_ascii_lowercase();
    match base.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// The compression the first bytes of a stream show (a tar stream has no magic of its own).
pub fn sniff(first_bytes: &[u8]) -> Compression {
    if first_bytes.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if first_bytes.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `reader` in the decoder for `c`.
pub fn decompress<'a>(
    reader: Box<dyn BufRead + Send + 'a>,
    c: Compression,
) -> Result<Box<dyn Read + Send + 'a>> {
    Ok(match c {
        Compression::None => reader,
        Compression::Gzip => Box::new(Labelled {
            inner: flate2::bufread::MultiGzDecoder::new(reader),
            what: "gzip",
        }),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| Error::io("starting the zstd decoder", e))?;
            Box::new(Labelled {
                inner: decoder,
                what: "zstd",
            })
        }
    })
}

/// Opens a layer blob as its uncompressed tar stream: by media type, or by sniffing the first
/// bytes when the media type does not say (Docker archives often carry uncompressed layers
/// under a generic type).
pub fn open_layer<'a>(
    mut reader: impl BufRead + Send + 'a,
    media_type: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    if let Some(c) = from_media_type(media_type) {
        return decompress(Box::new(reader), c);
    }
    // A single fill_buf may return fewer bytes than the magic even mid-stream (pipes), so
    // read the prefix fully and put it back in front.
    let mut prefix = [0u8; ZSTD_MAGIC.len()];
    let mut have = 0;
    while have < prefix.len() {
        match reader.read(&mut prefix[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the layer", e)),
        }
    }
    let c = sniff(&prefix[..have]);
    let rejoined = io::Cursor::new(prefix[..have].to_vec()).chain(reader);
    decompress(Box::new(rejoined), c)
}

/// Says which decoder failed, so a corrupt blob reads as bad input rather than a fault.
struct Labelled<R> {
    inner: R,
    what: &'static str,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.raw_os_error().is_some() || e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    Corrupt {
                        what: self.what,
                        cause: e,
                    },
                )
            }
        })
    }
}

/// The error inside the `io::Error` a decoder returns for bad compressed data; readers
/// further down (the layer applier) can recognise it with `get_ref()` and `is::<Corrupt>()`.
#[derive(Debug)]
pub struct Corrupt {
    what: &'static str,
    cause: io::Error,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt {} data: {}", self.what, self.cause)
    }
}

impl std::error::Error for Corrupt {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// Whether `err` came from a decoder fed bad data.
pub fn is_corrupt(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<Corrupt>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(mut r: Box<dyn Read + Send + '_>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "Application/VND.oci.image.layer.v1.tar+gzip; x=y",
                Some(Gzip),
            ),
            ("application/octet-stream", Option::None),
            ("", Option::None),
        ];
        for (mt, want) in cases {
            assert_eq!(from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
        assert_eq!(sniff(&[0x28]), Compression::None);
        assert_eq!(sniff(&[]), Compression::None);
    }

    #[test]
    fn round_trips_by_media_type_and_by_sniffing() {
        let data = b"hello layer".repeat(1000);
        let gz = gzip(&data);
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let opened = open_layer(&gz[..], "application/vnd.oci.image.layer.v1.tar+gzip").unwrap();
        assert_eq!(read_all(opened).unwrap(), data);
        let opened = open_layer(&zs[..], "application/vnd.oci.image.layer.v1.tar+zstd").unwrap();
        assert_eq!(read_all(opened).unwrap(), data);
        for blob in [&gz, &zs, &data] {
            let opened = open_layer(&blob[..], "application/octet-stream").unwrap();
            assert_eq!(read_all(opened).unwrap(), data);
        }
        // Concatenated gzip members decode as one stream.
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        let opened = open_layer(&two[..], "").unwrap();
        assert_eq!(read_all(opened).unwrap(), b"abcd");
    }

    #[test]
    fn corrupt_data_is_invalid_data() {
        let data = b"some layer bytes".repeat(4096);
        let mut gz = gzip(&data);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        gz[mid + 1] ^= 0x55;
        let err = read_all(open_layer(&gz[..], "").unwrap())
            .map(|v| v.len())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("corrupt gzip data"), "{err}");
        assert!(is_corrupt(&err));

        // Without the optional content checksum zstd cannot notice every flipped bit (the
        // diff ID check does); with it, corruption is an error.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(&data).unwrap();
        let mut zs = enc.finish().unwrap();
        let mid = zs.len() / 2;
        zs[mid] ^= 0xff;
        zs[mid + 1] ^= 0x55;
        let err = read_all(open_layer(&zs[..], "").unwrap())
            .map(|v| v.len())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("corrupt zstd data"), "{err}");
    }

    #[test]
    fn truncated_data_is_invalid_data() {
        let data = b"truncate me".repeat(4096);
        let gz = gzip(&data);
        let err = read_all(open_layer(&gz[..gz.len() / 2], "").unwrap())
            .map(|v| v.len())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let err = read_all(open_layer(&zs[..zs.len() / 2], "").unwrap())
            .map(|v| v.len())
            .unwrap_err();
        assert!(err.to_string().contains("corrupt zstd data"), "{err}");

        let mut garbage = ZSTD_MAGIC.to_vec();
        garbage.extend(b"definitely not a zstd frame header or block".repeat(10));
        let err = read_all(open_layer(&garbage[..], "").unwrap())
            .map(|v| v.len())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
