use super::*;

fn every_kind() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 7,
            associated_to: 3,
            priority: 5,
            slot: 9,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            block: Bytes::from_static(b"compressed"),
        },
        Frame::SynReply {
            stream_id: 7,
            flags: FLAG_FIN,
            block: Bytes::from_static(b"block"),
        },
        Frame::RstStream {
            stream_id: 9,
            status: REFUSED_STREAM,
        },
        Frame::Settings {
            flags: 1,
            settings: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 2,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::Settings {
            flags: 0,
            settings: vec![],
        },
        Frame::Ping { id: 0xdead_beef },
        Frame::GoAway {
            last_good: 41,
            status: GOAWAY_PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 5,
            flags: 0,
            block: Bytes::new(),
        },
        Frame::WindowUpdate {
            stream_id: 5,
            delta: 1 << 20,
        },
        Frame::Data {
            stream_id: MAX_STREAM_ID,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::new(),
        },
    ]
}

fn wire(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out).expect("encodes");
    }
    out
}

fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
    let mut dec = Decoder::default();
    let mut got = Vec::new();
    while let Some(f) = dec.decode(&mut buf).expect("decodes") {
        got.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    got
}

#[test]
fn every_kind_round_trips() {
    let frames = every_kind();
    assert_eq!(decode_all(wire(&frames)), frames);
}

#[test]
fn decodes_byte_by_byte() {
    let frames = every_kind();
    let all = wire(&frames);
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in all.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = dec.decode(&mut buf).expect("decodes") {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn wire_layout_matches_draft_3() {
    let ping = wire(&[Frame::Ping { id: 1 }]);
    assert_eq!(
        &ping[..],
        b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
    );
    let goaway = wire(&[Frame::GoAway {
        last_good: 5,
        status: GOAWAY_OK,
    }]);
    assert_eq!(
        &goaway[..],
        b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x05\x00\x00\x00\x00"
    );
    let rst = wire(&[Frame::RstStream {
        stream_id: 3,
        status: CANCEL,
    }]);
    assert_eq!(
        &rst[..],
        b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05"
    );
    let data = wire(&[Frame::Data {
        stream_id: 2,
        flags: FLAG_FIN,
        data: Bytes::from_static(b"ab"),
    }]);
    assert_eq!(&data[..], b"\x00\x00\x00\x02\x01\x00\x00\x02ab");
    let syn = wire(&[Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 7,
        slot: 0,
        flags: 0,
        block: Bytes::from_static(b"z"),
    }]);
    assert_eq!(
        &syn[..],
        b"\x80\x03\x00\x01\x00\x00\x00\x0b\x00\x00\x00\x01\x00\x00\x00\x00\xe0\x00z"
    );
}

#[test]
fn reserved_bits_are_ignored_on_read() {
    // The high bit of stream ids and of the associated id is reserved.
    let mut buf = BytesMut::from(
        &b"\x80\x03\x00\x01\x00\x00\x00\x0a\x80\x00\x00\x03\x80\x00\x00\x01\x20\x00"[..],
    );
    let f = Decoder::default().decode(&mut buf).expect("decodes");
    assert_eq!(
        f,
        Some(Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 1,
            slot: 0,
            flags: 0,
            block: Bytes::new(),
        })
    );
}

#[test]
fn unknown_control_frames_are_skipped() {
    // A CREDENTIAL (type 10) and an unassigned type, fed in pieces, then a PING.
    let mut all = BytesMut::new();
    all.extend_from_slice(b"\x80\x03\x00\x0a\x00\x00\x00\x05hello");
    all.extend_from_slice(b"\x80\x03\x12\x34\x00\x00\x00\x00");
    Frame::Ping { id: 3 }.encode(&mut all).expect("encodes");
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in all.chunks(3) {
        buf.extend_from_slice(piece);
        while let Some(f) = dec.decode(&mut buf).expect("decodes") {
            got.push(f);
        }
    }
    assert_eq!(got, vec![Frame::Ping { id: 3 }]);
}

#[test]
fn only_version_3_is_read() {
    let mut buf = BytesMut::from(&b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"[..]);
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Err(FrameError::Version(2))
    );
}

#[test]
fn control_frames_are_limited() {
    // Refused from the header alone, before any payload arrives.
    let mut buf = BytesMut::from(&b"\x80\x03\x00\x01\x00\x10\x00\x01"[..]);
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Err(FrameError::TooLong(MAX_CONTROL_LENGTH + 1))
    );
    let mut buf = BytesMut::from(&b"\x80\x03\x00\x01\x00\x00\x00\x20"[..]);
    assert_eq!(
        Decoder::new(16).decode(&mut buf),
        Err(FrameError::TooLong(32))
    );
}

#[test]
fn data_frames_may_use_the_whole_length() {
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x01\x00\xff\xff\xff"[..]);
    let mut dec = Decoder::default();
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.resize(8 + MAX_FRAME_LENGTH, 0);
    match dec.decode(&mut buf) {
        Ok(Some(Frame::Data { data, .. })) => assert_eq!(data.len(), MAX_FRAME_LENGTH),
        other => panic!("{other:?}"),
    }
}

#[test]
fn encoding_refuses_what_24_bits_cannot_say() {
    let data = Bytes::from(vec![0; MAX_FRAME_LENGTH + 1]);
    let mut out = BytesMut::new();
    let f = Frame::Data {
        stream_id: 1,
        flags: 0,
        data,
    };
    assert_eq!(
        f.encode(&mut out),
        Err(FrameError::TooLong(MAX_FRAME_LENGTH + 1))
    );
}

#[test]
fn malformed_frames_are_errors() {
    let cases: &[&[u8]] = &[
        // DATA on stream 0
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        // SYN_STREAM on stream 0, and one too short
        b"\x80\x03\x00\x01\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x80\x03\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01",
        // RST_STREAM of the wrong length
        b"\x80\x03\x00\x03\x00\x00\x00\x04\x00\x00\x00\x01",
        // PING of the wrong length
        b"\x80\x03\x00\x06\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x01",
        // GOAWAY as SPDY/2 had it, without a status
        b"\x80\x03\x00\x07\x00\x00\x00\x04\x00\x00\x00\x01",
        // SETTINGS whose count disagrees with its length
        b"\x80\x03\x00\x04\x00\x00\x00\x04\x00\x00\x00\x01",
        // WINDOW_UPDATE too short
        b"\x80\x03\x00\x09\x00\x00\x00\x04\x00\x00\x00\x01",
        // SYN_REPLY on stream 0
        b"\x80\x03\x00\x02\x00\x00\x00\x04\x00\x00\x00\x00",
    ];
    for bytes in cases {
        let mut buf = BytesMut::from(*bytes);
        assert!(
            matches!(
                Decoder::default().decode(&mut buf),
                Err(FrameError::Malformed(_))
            ),
            "{bytes:?}"
        );
    }
}
