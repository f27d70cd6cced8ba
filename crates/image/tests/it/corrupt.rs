//! Broken images: every class of damage gives its own clear error.

use crest_image::{kind, Error, Reader, FLAG_COMPRESSED, FLAG_OPTIONAL, MAX_RECORD_LEN};

use crate::common::*;

fn corrupt(e: Error) -> (u64, String) {
    match e {
        Error::Corrupt { offset, what } => (offset, what),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn bad_chunk(e: Error) -> (u64, String) {
    match e {
        Error::BadChunk { offset, what } => (offset, what),
        other => panic!("expected BadChunk, got {other:?}"),
    }
}

/// A valid start (preamble + HEADER) for hand-made images.
fn start() -> Raw {
    Raw::with_header(&sample_header())
}

#[test]
fn wrong_magic() {
    for bytes in [
        &b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0more"[..],
        b"CRESTIMH\x01\0\0\0\0\0\0\0",
        b"crestimg\x01\0\0\0\0\0\0\0",
        b"X",
        b"CRESX",
    ] {
        let e = read_err(bytes);
        assert!(matches!(e, Error::BadMagic), "{bytes:?}: {e:?}");
        assert!(e.to_string().contains("not a crest image"));
    }
    let mut image = small_image();
    image[0] = b'c';
    assert!(matches!(read_err(&image), Error::BadMagic));
}

#[test]
fn empty_or_partial_preamble_is_truncation() {
    for n in [0, 1, 7, 8, 12, 15] {
        let image = &small_image()[..n];
        match read_err(image) {
            Error::Truncated { offset } => assert_eq!(offset, n as u64),
            other => panic!("{n}: {other:?}"),
        }
    }
}

#[test]
fn unsupported_versions() {
    for v in [0, 4, 5, 0x100, u32::MAX] {
        let mut raw = Raw::preamble(v, 0);
        raw.record(kind::HEADER, 0, &encode_header(&sample_header()))
            .tail();
        let e = read_err(&raw.take());
        match &e {
            Error::UnsupportedVersion { found, supported } => {
                assert_eq!((*found, *supported), (v, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&format!("format version {v} ")));
        assert!(e.to_string().contains("versions 1 to 3"), "{e}");
    }
    // Refused before reading anything else: a future image whose body is
    // garbage still gives the version error.
    let mut bytes = Raw::preamble(4, 0).take();
    bytes.extend_from_slice(&[0xEE; 100]);
    assert!(matches!(
        read_err(&bytes),
        Error::UnsupportedVersion { found: 4, .. }
    ));
}

#[test]
fn nonzero_reserved_preamble_word() {
    for reserved in [1, 0x100, 0x8000_0000] {
        let mut raw = Raw::preamble(1, reserved);
        raw.record(kind::HEADER, 0, &encode_header(&sample_header()))
            .tail();
        let (offset, what) = corrupt(read_err(&raw.take()));
        assert_eq!(offset, 12);
        assert!(what.contains("reserved"), "{what}");
    }
}

#[test]
fn truncation_at_every_offset() {
    for image in [small_image(), paged_image()] {
        read_all(&image).unwrap();
        for cut in 0..image.len() {
            match read_all(&image[..cut]) {
                Err(Error::Truncated { offset }) => assert_eq!(offset, cut as u64),
                other => panic!("cut at {cut} of {}: {other:?}", image.len()),
            }
        }
    }
}

#[test]
fn truncation_message_is_actionable() {
    let image = small_image();
    let e = read_err(&image[..100]);
    assert_eq!(
        e.to_string(),
        "image is truncated at byte 100 (no tail record): the dump did not finish or the \
         stream was cut"
    );
}

#[test]
fn records_read_before_truncation_do_not_make_a_valid_image() {
    let image = paged_image();
    let mut r = Reader::new(&image[..image.len() - 48]).unwrap();
    let mut n = 0;
    let err = loop {
        match r.next_record() {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("truncated image finished"),
            Err(e) => break e,
        }
    };
    assert!(n >= 3);
    assert!(matches!(err, Error::Truncated { .. }));
    assert!(!r.is_finished());
    assert!(r.tail().is_none());
}

#[test]
fn flipping_any_bit_pattern_of_any_byte_is_caught() {
    let image = small_image();
    read_all(&image).unwrap();
    for i in 0..image.len() {
        for mask in [0x01u8, 0x10, 0x80, 0xFF] {
            let mut m = image.clone();
            m[i] ^= mask;
            if read_all(&m).is_ok() {
                panic!("flipping byte {i} with {mask:#x} went unnoticed");
            }
        }
    }
}

#[test]
fn flipping_any_byte_of_a_paged_image_is_caught() {
    let image = paged_image();
    read_all(&image).unwrap();
    let mut m = image.clone();
    for i in 0..image.len() {
        m[i] ^= 0x55;
        assert!(read_all(&m).is_err(), "flipping byte {i} went unnoticed");
        m[i] ^= 0x55;
    }
}

#[test]
fn header_checksum_mismatch() {
    let mut image = small_image();
    // First record header after the HEADER record: find it via the reader.
    let (_, recs) = read_all(&image).unwrap();
    let at = recs[0].offset as usize;
    image[at + 1] ^= 0x01; // kind byte
    let (offset, what) = corrupt(read_err(&image));
    assert_eq!(offset, at as u64);
    assert!(what.contains("record header checksum"), "{what}");
}

#[test]
fn payload_checksum_mismatch() {
    let mut image = small_image();
    let (_, recs) = read_all(&image).unwrap();
    let at = recs[0].offset as usize;
    image[at + 24 + 3] ^= 0x20;
    let (offset, what) = corrupt(read_err(&image));
    assert_eq!(offset, at as u64);
    assert!(what.contains("payload checksum"), "{what}");
}

#[test]
fn nonzero_padding() {
    for pad in [[1, 0, 0], [0, 0, 0x80]] {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        raw.record_raw(kind::PROCESS, 0, 5, crc(b"hello"), b"hello", &pad)
            .tail();
        let (offset, what) = corrupt(read_err(&raw.take()));
        assert_eq!(offset, at + 24 + 5);
        assert!(what.contains("nonzero padding"), "{what}");
    }
}

#[test]
fn unknown_mandatory_kind_is_refused() {
    let mut raw = start();
    raw.record(kind::PROCESS, 0, b"p");
    let at = raw.bytes.len() as u64;
    raw.record(0x7777, 0, b"needed").tail();
    let e = read_err(&raw.take());
    assert!(
        matches!(e, Error::UnknownRecord { kind: 0x7777, offset } if offset == at),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("0x7777") && msg.contains("newer crest"),
        "{msg}"
    );
}

#[test]
fn unknown_optional_kind_is_skipped_but_counted() {
    let mut raw = start();
    raw.record(kind::PROCESS, 0, b"p")
        .record(0x7777, FLAG_OPTIONAL, b"skip me, 17 bytes")
        .record(kind::FILE, 0, b"f")
        .tail();
    let (_, recs) = read_all(&raw.take()).unwrap();
    let kinds: Vec<u32> = recs.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [kind::PROCESS, kind::FILE]);

    // A tail that did not count the skipped record is refused.
    let mut raw = start();
    raw.record(kind::PROCESS, 0, b"p");
    let (records, digest) = (raw.records, raw.digest);
    raw.record(0x7777, FLAG_OPTIONAL, b"skip me");
    let bytes = raw.bytes.len() as u64;
    raw.tail_with(records, bytes, digest);
    let (_, what) = corrupt(read_err(&raw.take()));
    assert!(what.contains("records"), "{what}");

    // A skipped record's payload is still checksummed.
    let mut raw = start();
    raw.record_raw(0x7777, FLAG_OPTIONAL, 3, crc(b"abd"), b"abc", &[0; 5])
        .tail();
    let (_, what) = corrupt(read_err(&raw.take()));
    assert!(what.contains("payload checksum"), "{what}");
}

#[test]
fn unknown_flag_bits_are_refused() {
    for (k, flags, needle) in [
        (kind::PAGES, FLAG_COMPRESSED | 0x4, "0x4"),
        (kind::PROCESS, FLAG_COMPRESSED | FLAG_OPTIONAL, "compressed"),
        (kind::PROCESS, 0x4, "0x4"),
        (0x7777, FLAG_OPTIONAL | 0x8000_0000, "0x80000000"),
        (kind::TAIL, 0x10, "0x10"),
    ] {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        raw.record(k, flags, b"payload").tail();
        let e = read_err(&raw.take());
        match &e {
            Error::UnsupportedFlags {
                kind: ek,
                flags: ef,
                offset,
            } => assert_eq!((*ek, *ef, *offset), (k, flags, at)),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn damaged_compressed_pages_are_refused() {
    // A compressed PAGES record whose LZ4 data is garbage (its CRC is
    // right: the damage is in what was compressed).
    let mut head = Vec::new();
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&0x1000u64.to_le_bytes());
    head.extend_from_slice(&1u64.to_le_bytes());
    let mut payload = head.clone();
    payload.extend_from_slice(&[0xff; 40]);
    let mut raw = start();
    raw.record(kind::PAGES, FLAG_COMPRESSED, &payload).tail();
    let e = read_err(&raw.take());
    assert!(e.to_string().contains("compressed page data"), "{e}");
    // A header claiming more pages than a record may hold.
    let mut huge = head.clone();
    huge[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
    huge.extend_from_slice(&[0; 8]);
    let mut raw = start();
    raw.record(kind::PAGES, FLAG_COMPRESSED, &huge).tail();
    let e = read_err(&raw.take());
    assert!(e.to_string().contains("more than a record may hold"), "{e}");
}

#[test]
fn compressed_pages_round_trip() {
    let ps = 4096usize;
    let mut data = vec![0u8; 8 * ps];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / 512) as u8; // compressible
    }
    let mut w = crest_image::Writer::new(Vec::new(), &crest_image::Header::default()).unwrap();
    w.write_pages_compressed(3, 0x10000, &data).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..ps)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    w.write_pages_compressed(3, 0x40000, &random).unwrap();
    let bytes = w.finish().unwrap();
    assert!(
        bytes.len() < data.len() / 2 + ps + 1024,
        "compressible data shrank"
    );
    let mut r = Reader::new(&bytes[..]).unwrap();
    let a = r.next_record().unwrap().unwrap();
    assert_eq!(a.flags & FLAG_COMPRESSED, FLAG_COMPRESSED);
    let c = a.page_chunk(4096).unwrap();
    assert_eq!((c.space, c.addr, c.data), (3, 0x10000, &data[..]));
    let b = r.next_record().unwrap().unwrap();
    assert_eq!(
        b.flags & FLAG_COMPRESSED,
        0,
        "incompressible data is stored as it is"
    );
    assert_eq!(b.page_chunk(4096).unwrap().data, &random[..]);
    assert!(r.next_record().unwrap().is_none());
}

#[test]
fn anything_after_the_tail_is_refused() {
    let image = small_image();
    let n = image.len() as u64;

    // A whole valid-looking record.
    let mut m = image.clone();
    m.extend_from_slice(&Raw::header_bytes(kind::PROCESS, 0, 0, crc(b"")));
    let (offset, what) = corrupt(read_err(&m));
    assert_eq!(offset, n);
    assert!(what.contains("follows the tail"), "{what}");

    // A single zero byte.
    let mut m = image.clone();
    m.push(0);
    let (offset, _) = corrupt(read_err(&m));
    assert_eq!(offset, n);

    // A second copy of the tail.
    let mut m = image.clone();
    m.extend_from_slice(&image[image.len() - 48..]);
    corrupt(read_err(&m));
}

#[test]
fn second_header_is_refused() {
    let mut raw = start();
    raw.record(kind::PROCESS, 0, b"p");
    let at = raw.bytes.len() as u64;
    raw.record(kind::HEADER, 0, &encode_header(&sample_header()))
        .tail();
    let (offset, what) = corrupt(read_err(&raw.take()));
    assert_eq!(offset, at);
    assert!(what.contains("second HEADER"), "{what}");
}

#[test]
fn missing_header_is_refused() {
    for first in [kind::PROCESS, kind::PAGES, kind::TAIL, 0x7777] {
        let mut raw = Raw::preamble(1, 0);
        raw.record(first, FLAG_OPTIONAL, b"x").tail();
        let (offset, what) = corrupt(read_err(&raw.take()));
        assert_eq!(offset, 16);
        assert!(what.contains("must start with its HEADER"), "{what}");
    }
    // Preamble only.
    let bytes = Raw::preamble(1, 0).take();
    assert!(matches!(read_err(&bytes), Error::Truncated { offset: 16 }));
}

#[test]
fn length_over_the_limit_is_refused_before_reading() {
    for len in [MAX_RECORD_LEN + 1, 1 << 40, u64::MAX] {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        raw.record_raw(kind::PROCESS, 0, len, 0, b"", &[]).tail();
        let (offset, what) = corrupt(read_err(&raw.take()));
        assert_eq!(offset, at);
        assert!(what.contains("limit"), "{what}");
    }
    // Exactly the limit is allowed; here the data is missing.
    let mut raw = start();
    raw.record_raw(kind::PROCESS, 0, MAX_RECORD_LEN, 0, b"abc", &[]);
    let n = raw.bytes.len() as u64;
    assert!(matches!(
        read_err(&raw.take()),
        Error::Truncated { offset } if offset == n
    ));
    // An oversized HEADER record is refused the same way.
    let mut raw = Raw::preamble(1, 0);
    raw.record_raw(kind::HEADER, 0, u64::MAX, 0, b"", &[]);
    let (offset, _) = corrupt(read_err(&raw.take()));
    assert_eq!(offset, 16);
}

#[test]
fn tail_mismatches_are_named() {
    let build = |f: &dyn Fn(u64, u64, u64) -> (u64, u64, u64)| {
        let mut raw = start();
        raw.record(kind::PROCESS, 0, b"one")
            .record(kind::FILE, 0, b"two");
        let (r, b, d) = f(raw.records, raw.bytes.len() as u64, raw.digest);
        raw.tail_with(r, b, d);
        raw.take()
    };
    read_all(&build(&|r, b, d| (r, b, d))).unwrap();

    let (_, what) = corrupt(read_err(&build(&|r, b, d| (r + 1, b, d))));
    assert!(
        what.contains("counts 4 records") && what.contains("3 were read"),
        "{what}"
    );
    let (_, what) = corrupt(read_err(&build(&|r, b, d| (r - 1, b, d))));
    assert!(what.contains("records"), "{what}");
    let (_, what) = corrupt(read_err(&build(&|r, b, d| (r, b + 8, d))));
    assert!(what.contains("starts at byte"), "{what}");
    let (_, what) = corrupt(read_err(&build(&|r, b, d| (r, b, d ^ 1))));
    assert!(what.contains("digest"), "{what}");

    // Wrong tail payload length.
    for len in [0usize, 16, 23, 25, 32] {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        let payload = vec![0u8; len];
        raw.record(kind::TAIL, 0, &payload);
        let (offset, what) = corrupt(read_err(&raw.take()));
        assert_eq!(offset, at);
        assert!(what.contains("expected 24"), "{what}");
    }
}

#[test]
fn reordered_records_are_caught_by_the_digest() {
    // Same records, same count, same total size, different order.
    let mut a = start();
    a.record(kind::PROCESS, 0, b"first__")
        .record(kind::FILE, 0, b"second_");
    let digest_a = a.digest;
    let mut b = start();
    b.record(kind::FILE, 0, b"second_")
        .record(kind::PROCESS, 0, b"first__");
    let (records, bytes) = (b.records, b.bytes.len() as u64);
    b.tail_with(records, bytes, digest_a);
    let (_, what) = corrupt(read_err(&b.take()));
    assert!(what.contains("digest"), "{what}");
}

#[test]
fn bad_page_chunks_are_refused() {
    let page = [0xAAu8; 4096];
    let two = [0xAAu8; 8192];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (page_payload(0, 0, 0x1001, 1, &page), "not aligned"),
        (page_payload(0, 0, 0x1800, 1, &page), "not aligned"),
        (page_payload(0, 0, 0x1000, u64::MAX / 2, &page), "claims"),
        (page_payload(0, 0, u64::MAX - 4095, 1, &page), "beyond"),
        (
            page_payload(0, 0, 0xffff_8000_0000_0000, 1, &page),
            "beyond",
        ),
        (page_payload(0, 0, 0x7fff_ffff_f000, 2, &two), "beyond"),
        (page_payload(0, 0, 0x1000, 0, &[]), "no pages"),
        (page_payload(0, 0, 0x1000, 2, &page), "carries"),
        (page_payload(0, 0, 0x1000, 1, &two), "carries"),
        (page_payload(0, 0, 0x1000, 1, &page[..4095]), "carries"),
        (page_payload(0, 0, 0x1000, 1, &[]), "carries"),
        (page_payload(0, 2, 0x1000, 1, &page), "flags"),
        (page.to_vec()[..20].to_vec(), "shorter"),
    ];
    for (payload, needle) in cases {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        raw.record(kind::PAGES, 0, &payload).tail();
        let (offset, what) = bad_chunk(read_err(&raw.take()));
        assert_eq!(offset, at);
        assert!(what.contains(needle), "{needle}: {what}");
    }
}

#[test]
fn page_chunks_follow_the_image_page_size() {
    let mut h = sample_header();
    h.page_size = 16384;
    let mut raw = Raw::with_header(&h);
    raw.record(kind::PAGES, 0, &page_payload(0, 0, 0x1000, 1, &[0; 16384]))
        .tail();
    let (_, what) = bad_chunk(read_err(&raw.take()));
    assert!(what.contains("aligned to the page size 16384"), "{what}");

    let mut raw = Raw::with_header(&h);
    raw.record(kind::PAGES, 0, &page_payload(0, 0, 0x4000, 1, &[0; 4096]))
        .tail();
    let (_, what) = bad_chunk(read_err(&raw.take()));
    assert!(what.contains("carries"), "{what}");
}

#[test]
fn bad_file_data_is_refused() {
    for (payload, needle) in [
        (file_data_payload(1, u64::MAX - 1, b"abc"), "beyond"),
        (file_data_payload(1, i64::MAX as u64, b"a"), "beyond"),
        (vec![0u8; 15], "shorter"),
    ] {
        let mut raw = start();
        let at = raw.bytes.len() as u64;
        raw.record(kind::FILE_DATA, 0, &payload).tail();
        let (offset, what) = bad_chunk(read_err(&raw.take()));
        assert_eq!(offset, at);
        assert!(what.contains(needle), "{what}");
    }
}

#[test]
fn bad_headers_are_refused() {
    let bad_header = |payload: Vec<u8>| {
        let mut raw = Raw::preamble(1, 0);
        raw.record(kind::HEADER, 0, &payload).tail();
        match read_err(&raw.take()) {
            Error::BadHeader(msg) => msg,
            other => panic!("{other:?}"),
        }
    };

    let mut h = sample_header();
    h.uts_nodename = "n".repeat(4097);
    assert!(bad_header(encode_header(&h)).contains("uts_nodename"));

    let mut h = sample_header();
    h.cpu_vendor = "Genuine\u{e9}ntel".into();
    let mut p = encode_header(&h);
    let at = p.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
    p[at] = 0xFF;
    assert!(bad_header(p).contains("`cpu_vendor` is not valid UTF-8"));

    for ps in [0, 4095, 2048, 6000, 1 << 17] {
        let mut h = sample_header();
        h.page_size = ps;
        assert!(bad_header(encode_header(&h)).contains("page size"));
    }

    let p = encode_header(&sample_header());
    assert!(bad_header(p[..p.len() - 1].to_vec()).contains("ends inside"));
    assert!(bad_header(Vec::new()).contains("ends inside"));
    let mut p = encode_header(&sample_header());
    p.extend_from_slice(&[0; 8]);
    assert!(bad_header(p).contains("after the last field"));
}

#[test]
fn reader_refuses_to_continue_after_an_error() {
    let mut raw = start();
    raw.record(0x7777, 0, b"mandatory")
        .record(kind::PROCESS, 0, b"p")
        .tail();
    let image = raw.take();
    let mut r = Reader::new(&image[..]).unwrap();
    assert!(matches!(r.next_record(), Err(Error::UnknownRecord { .. })));
    assert!(matches!(r.next_record(), Err(Error::InvalidInput(_))));
    assert!(!r.is_finished());
}

/// The model records of format 3 do not exist in older images: a version
/// word changed from 3 to 2 is caught by them.
#[test]
fn format_3_model_record_in_a_version_2_image_is_refused() {
    for k in [
        kind::TASK,
        kind::THREAD,
        kind::MM,
        kind::OPEN_SOCKET,
        kind::SHMEM,
    ] {
        let mut raw = Raw::preamble(2, 0);
        raw.record(kind::HEADER, 0, &encode_header(&sample_header()))
            .record(k, 0, b"x")
            .tail();
        let e = read_err(&raw.take());
        assert!(
            e.to_string().contains(kind::name(k)) && e.to_string().contains("version 2"),
            "{e}"
        );
    }
}
