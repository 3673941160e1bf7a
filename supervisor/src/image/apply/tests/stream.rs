//! The stream: diff IDs over every byte, truncated and corrupt input, read failures.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::{apply_layer, Env, Layer, Spec};
use crate::error::Error;
use crate::image::compression;
use crate::snapshot::WhiteoutMode::Delete;

fn sample() -> Vec<u8> {
    Layer::with(&[
        Spec::dir("etc"),
        Spec::file("etc/hostname", b"sup\n"),
        Spec::file("blob", &vec![42u8; 200_000]),
    ])
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn invalid(result: crate::error::Result<super::Applied>, needle: &str) {
    match result {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidArgument with {needle:?}, got {other:?}"),
    }
}

#[test]
fn diff_id_covers_the_whole_stream() {
    let env = Env::new();
    let mut layer = sample();
    // GNU tar pads to a 10 KiB record after the end-of-archive marker.
    layer.resize(layer.len().div_ceil(10240) * 10240, 0);
    let applied = env.apply(&layer, Delete).unwrap();
    assert_eq!(applied.diff_id, sha(&layer));
    assert_eq!(applied.size, layer.len() as u64);
    assert_eq!(
        std::fs::read(env.root.join("etc/hostname")).unwrap(),
        b"sup\n"
    );
}

#[test]
fn an_empty_layer_is_just_the_marker() {
    let env = Env::new();
    let layer = Layer::new().finish();
    assert_eq!(layer.len(), 1024);
    let applied = env.apply(&layer, Delete).unwrap();
    assert_eq!(applied.diff_id, sha(&layer));
}

#[test]
fn truncated_streams_are_invalid() {
    let layer = sample();
    // In the middle of file data, in a header, right after an entry (no marker), nothing.
    let file_data_at = 512 * 4 + 1000;
    for cut in [file_data_at, 512 + 100, layer.len() - 1024, 0] {
        let env = Env::new();
        invalid(env.apply(&layer[..cut], Delete), "truncated tar");
    }
}

#[test]
fn garbage_is_invalid() {
    let env = Env::new();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    invalid(env.apply(&garbage, Delete), "malformed tar");
}

#[test]
fn corrupt_gzip_is_invalid() {
    let env = Env::new();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&sample()).unwrap();
    let mut gz = enc.finish().unwrap();
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 16] {
        *b ^= 0xa5;
    }
    let mut reader =
        compression::open_layer(&gz[..], "application/vnd.oci.image.layer.v1.tar+gzip").unwrap();
    invalid(
        apply_layer(&mut reader, &env.target(Delete)),
        "corrupt gzip data",
    );

    let mut truncated = compression::open_layer(&gz[..mid], "").unwrap();
    let err = apply_layer(&mut truncated, &env.target(Delete)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn compressed_layers_hash_their_uncompressed_bytes() {
    let env = Env::new();
    let layer = sample();
    let zs = zstd::encode_all(&layer[..], 3).unwrap();
    let mut reader = compression::open_layer(&zs[..], "application/octet-stream").unwrap();
    let applied = apply_layer(&mut reader, &env.target(Delete)).unwrap();
    assert_eq!(applied.diff_id, sha(&layer));
}

/// Serves `data`, then fails like a dying disk.
struct FailingDisk<'a> {
    data: &'a [u8],
}

impl Read for FailingDisk<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let n = self.data.len().min(buf.len()).min(700);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn read_failures_are_not_blamed_on_the_layer() {
    let env = Env::new();
    let layer = sample();
    let mut disk = FailingDisk {
        data: &layer[..3000],
    };
    let err = apply_layer(&mut disk, &env.target(Delete)).unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
}
