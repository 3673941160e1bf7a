//! A ~120 MB layer of mixed files (incompressible binaries of several sizes and compressible
//! text in nested directories), reproducible from a fixed seed: the payload of the import and
//! pull benchmarks.

use crate::LayerBuilder;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A small xorshift generator: reproducible, incompressible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

const WORDS: [&str; 12] = [
    "container",
    "snapshot",
    "layer",
    "supervisor",
    "namespace",
    "overlay",
    "digest",
    "content",
    "image",
    "manifest",
    "runtime",
    "shim",
];

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        out.push(if rng.below(10) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Files of mixed sizes in nested directories, about 120 MB in all.
pub fn big_layer() -> (LayerBuilder, usize, usize) {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut layer = LayerBuilder::new();
    let (mut files, mut bytes) = (0, 0);
    let mut add = |layer: &mut LayerBuilder, path: String, data: Vec<u8>| {
        files += 1;
        bytes += data.len();
        layer.file(&path, data);
    };
    for i in 0..2400 {
        let len = KIB + rng.below(15 * KIB);
        let data = rng.bytes(len);
        add(
            &mut layer,
            format!("small/d{:02}/s{}/f{i}.bin", i % 20, i % 7),
            data,
        );
    }
    for i in 0..160 {
        let len = 64 * KIB + rng.below(448 * KIB);
        let data = rng.bytes(len);
        add(&mut layer, format!("medium/d{:02}/m{i}.bin", i % 10), data);
    }
    for i in 0..12 {
        let len = MIB + rng.below(3 * MIB);
        let data = rng.bytes(len);
        add(&mut layer, format!("large/l{i}.bin"), data);
    }
    for i in 0..600 {
        let len = 4 * KIB + rng.below(44 * KIB);
        let data = text(&mut rng, len);
        add(&mut layer, format!("text/d{:02}/t{i}.txt", i % 12), data);
    }
    (layer, files, bytes)
}
