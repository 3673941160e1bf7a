use super::*;

/// A SYN_STREAM (stream 1, `streamtype: stdout`) in the form a Go spdystream client writes
/// it: compress/zlib at BestCompression, whose deflate output differs from C zlib's.
pub(crate) const GO_SYN_STREAM: &[u8] =
    b"\x80\x03\x00\x01\x00\x00\x00\x2b\x00\x00\x00\x01\x00\x00\x00\x00\
    \x00\x00\x78\xf9\xe3\xc6\xa7\xc2\x62\x60\x60\x60\x04\xa7\xb3\x92\xa2\xd4\xc4\x5c\x68\x51\
    \xc2\x56\x5c\x92\x92\x5f\x5a\x02\x00\x00\x00\xff\xff";

/// The header block of a SYN_STREAM from Chromium's SPDY/3 framer (`bar: foo`, `foo: bar`),
/// a zlib stream with a 2 KiB window.
const CHROMIUM_BLOCK: &[u8] = b"\x38\xea\xe3\xc6\xa7\xc2\x02\xe5\x0e\x50\xc2\x4b\x4a\x04\xe5\
    \x0b\x66\x80\x00\x4a\xcb\xcf\x07\x08\x20\x10\x95\x96\x9f\x0f\xa2\x00\x02\x28\x29\xb1\x08\
    \x20\x80\x00\x00\x00\x00\xff\xff";

const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.add(n, v);
    }
    h
}

#[test]
fn dictionary_is_spdy3s() {
    assert_eq!(DICTIONARY.len(), 1423);
    // The checksum every SPDY/3 zlib header carries as its DICTID; set_dictionary reports it.
    let mut z = Compress::new(Compression::default(), true);
    assert_eq!(z.set_dictionary(DICTIONARY).ok(), Some(DICTIONARY_ADLER32));
    assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
    // The first part is a valid list of length-prefixed words, up to "origin".
    let mut rest: &[u8] = DICTIONARY;
    let mut words = Vec::new();
    loop {
        let word = take_str(&mut rest).expect("a length-prefixed word");
        words.push(word);
        if word == "origin" {
            break;
        }
    }
    assert_eq!(words.len(), 65);
    assert_eq!(words[57], "200 OK");
    assert!(rest.starts_with(b"100101201"));
}

#[test]
fn decodes_a_block_from_a_go_peer() {
    let block = &GO_SYN_STREAM[18..];
    let mut d = Decompressor::new();
    let got = d.decompress(block).expect("decodes");
    assert_eq!(got, headers(&[("streamtype", "stdout")]));
}

#[test]
fn decodes_a_block_from_chromium() {
    let mut d = Decompressor::new();
    let got = d.decompress(CHROMIUM_BLOCK).expect("decodes");
    assert_eq!(got, headers(&[("bar", "foo"), ("foo", "bar")]));
}

#[test]
fn blocks_share_one_context_per_direction() {
    let blocks = [
        headers(&[("streamtype", "error")]),
        headers(&[("streamtype", "stdout")]),
        headers(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")]),
        Headers::new(),
        headers(&[("streamtype", "stderr")]),
    ];
    let mut c = Compressor::new();
    let mut d = Decompressor::new();
    let mut wire = Vec::new();
    for h in &blocks {
        let z = c.compress(h).expect("compresses");
        // A sync flush ends every block.
        assert!(z.ends_with(b"\x00\x00\xff\xff"), "{z:x?}");
        wire.push(z);
    }
    // Only the first block has a zlib header: DICTID set, the rest continue the stream.
    assert_eq!(&wire[0][2..6], &DICTIONARY_ADLER32.to_be_bytes());
    assert_eq!(wire[0][1] & 0x20, 0x20);
    for (h, z) in blocks.iter().zip(&wire) {
        assert_eq!(&d.decompress(z).expect("decodes"), h);
    }
    // A later block means nothing without the context before it.
    assert!(Decompressor::new().decompress(&wire[1]).is_err());
    // The context made the repeated header cheap.
    assert!(wire[4].len() < wire[0].len());
}

#[test]
fn a_block_needs_the_dictionary() {
    let mut c = Compressor::new();
    let z = c
        .compress(&headers(&[("streamtype", "stdout")]))
        .expect("compresses");
    let mut plain = Decompress::new(true);
    let mut out = Vec::with_capacity(1024);
    let err = plain
        .decompress_vec(&z, &mut out, FlushDecompress::Sync)
        .expect_err("needs a dictionary");
    assert_eq!(err.needs_dictionary(), Some(DICTIONARY_ADLER32));
    assert!(plain.set_dictionary(b"not the dictionary").is_err());

    // A stream made with another dictionary is refused rather than misread.
    let mut other = Compress::new(Compression::default(), true);
    other.set_dictionary(b"some other words").expect("sets");
    let mut z = Vec::with_capacity(1024);
    other
        .compress_vec(b"\0\0\0\0", &mut z, FlushCompress::Sync)
        .expect("compresses");
    assert!(matches!(
        Decompressor::new().decompress(&z),
        Err(HeaderError::Zlib(_))
    ));
}

#[test]
fn values_of_one_name_are_joined_by_nul() {
    let h = headers(&[("A", "1"), ("b", "2"), ("a", "3")]);
    let block = h.to_block().expect("encodes");
    assert_eq!(
        block,
        b"\0\0\0\x02\0\0\0\x01a\0\0\0\x031\x003\0\0\0\x01b\0\0\0\x012".to_vec()
    );
    let back = Headers::from_block(&block).expect("parses");
    assert_eq!(back.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
    assert_eq!(back.get("B"), Some("2"));
    assert_eq!(back.len(), 3);
}

#[test]
fn names_are_lower_case() {
    let block = b"\0\0\0\x01\0\0\0\x0aStreamType\0\0\0\x05error";
    let h = Headers::from_block(block).expect("parses");
    assert_eq!(h.iter().collect::<Vec<_>>(), [("streamtype", "error")]);
    assert_eq!(h.get("STREAMTYPE"), Some("error"));
    assert_eq!(h.get("port"), None);
}

#[test]
fn malformed_blocks_are_errors() {
    let cases: &[&[u8]] = &[
        b"",
        b"\0\0\0",
        b"\xff\xff\xff\xff",
        b"\0\0\0\x01\0\0\0\x00\0\0\0\x00",
        b"\0\0\0\x01\0\0\0\x09streamtype\0\0\0\x00",
        b"\0\0\0\x01\0\0\0\x01a\0\0\0\x05b",
        b"\0\0\0\x01\0\0\0\x01a\0\0\0\x01\xff",
        b"\0\0\0\x00extra",
    ];
    for block in cases {
        assert!(Headers::from_block(block).is_err(), "{block:?}");
    }
    assert_eq!(Headers::from_block(b"\0\0\0\0"), Ok(Headers::new()));
}

#[test]
fn inflating_is_limited() {
    let mut c = Compressor::new();
    let z = c
        .compress_raw(&vec![0; MAX_HEADER_BLOCK + 1])
        .expect("compresses");
    assert!(z.len() < 4096);
    assert_eq!(Decompressor::new().inflate(&z), Err(HeaderError::TooLarge));
    let mut c = Compressor::new();
    let z = c
        .compress_raw(&vec![0; MAX_HEADER_BLOCK])
        .expect("compresses");
    assert_eq!(
        Decompressor::new().inflate(&z).map(|v| v.len()),
        Ok(MAX_HEADER_BLOCK)
    );
}

#[test]
fn truncated_and_garbled_blocks_are_errors() {
    let mut c = Compressor::new();
    let z = c
        .compress(&headers(&[("streamtype", "stdout")]))
        .expect("compresses");
    assert!(Decompressor::new().decompress(&z[..z.len() - 6]).is_err());
    assert!(Decompressor::new().decompress(b"\x78\xbb\x00\x00").is_err());
    assert!(Decompressor::new().decompress(b"garbage!").is_err());
    assert!(Decompressor::new().decompress(b"").is_err());
}
