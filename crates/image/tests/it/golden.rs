//! Golden images: what this format version's writer produces must never
//! change, and what older writers produced must stay readable.
//!
//! If `golden_v3_bytes_are_stable` fails, the wire format changed: do not
//! re-bless `v3.img`; bump `FORMAT_VERSION` and add a new golden image (the
//! old ones must stay readable or convertible). To create a missing golden
//! image, run the tests with `CREST_BLESS_GOLDEN=1`.

use crest_image::{kind, Header, Reader, SealedPages, Writer, FLAG_COMPRESSED, FLAG_OPTIONAL};

use crate::common::*;

const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v1.img");
const GOLDEN_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v2.img");
const GOLDEN_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v3.img");

fn golden_header() -> Header {
    Header {
        producer: "crest 0.1.0".into(),
        arch: "x86_64".into(),
        page_size: 4096,
        uts_sysname: "Linux".into(),
        uts_nodename: "golden".into(),
        uts_release: "6.8.0".into(),
        uts_version: "#1 SMP".into(),
        uts_machine: "x86_64".into(),
        cpu_vendor: "AuthenticAMD".into(),
        xsave_features: 0x207,
        xsave_size: 2440,
        created_unix_secs: 1_735_689_600,
    }
}

fn golden_page() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 256) as u8 ^ 0x5A).collect()
}

fn build_golden_v1() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &golden_header()).unwrap();
    w.write_record(kind::PROCESS, 0, b"golden process").unwrap();
    w.write_record(kind::FILE, 0, b"").unwrap();
    w.write_record(0x5151, FLAG_OPTIONAL, b"optional").unwrap();
    w.write_file_data(7, 3, b"file bytes").unwrap();
    w.write_pages(1, 0x7ffd_0000_0000, &golden_page()).unwrap();
    w.finish().unwrap()
}

/// Version 2 adds sparse page chunks: the version 1 records, then a
/// sparse chunk and a compressed sparse chunk.
fn build_golden_v2() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &golden_header()).unwrap();
    w.write_record(kind::PROCESS, 0, b"golden process").unwrap();
    w.write_record(kind::FILE, 0, b"").unwrap();
    w.write_record(0x5151, FLAG_OPTIONAL, b"optional").unwrap();
    w.write_file_data(7, 3, b"file bytes").unwrap();
    w.write_pages(1, 0x7ffd_0000_0000, &golden_page()).unwrap();
    let (buf, len) = golden_window();
    let s = SealedPages::seal(1, 0x7ffd_0001_0000, buf, len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, false).unwrap(), 1);
    let s = SealedPages::seal(2, 0x5555_0000_0000, s.into_buffer(), len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, true).unwrap(), 1);
    w.finish().unwrap()
}

/// 70 pages: a zero page, then pages 1, 2, 5 and 69 (the golden page).
fn golden_window() -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; 70 * 4096];
    for p in [1, 2, 5, 69] {
        buf[p * 4096..(p + 1) * 4096].copy_from_slice(&golden_page());
    }
    let len = buf.len();
    (buf, len)
}

fn stored_at(path: &str, build: fn() -> Vec<u8>) -> Vec<u8> {
    if std::env::var_os("CREST_BLESS_GOLDEN").is_some() && std::fs::metadata(path).is_err() {
        std::fs::write(path, build()).unwrap();
    }
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); create it with CREST_BLESS_GOLDEN=1"))
}

/// The v1 golden image (this writer writes version 3: it cannot re-create
/// it).
fn stored() -> Vec<u8> {
    std::fs::read(GOLDEN_V1).unwrap_or_else(|e| panic!("cannot read {GOLDEN_V1}: {e}"))
}

/// Version 2 changed nothing that version 1 images hold: the current
/// writer, given what the v1 golden image holds, writes it byte for byte,
/// but for the version word.
#[test]
fn golden_v1_records_are_written_unchanged() {
    let mut now = build_golden_v1();
    assert_eq!(&now[8..12], &3u32.to_le_bytes());
    now[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert!(
        now == stored(),
        "the writer no longer writes the records of the v1 golden image as version 1 did"
    );
}

/// Version 3 changed only what the program puts in its model records: the
/// framing of the v2 golden image is written byte for byte, but for the
/// version word.
#[test]
fn golden_v2_records_are_written_unchanged() {
    let mut now = build_golden_v2();
    assert_eq!(&now[8..12], &3u32.to_le_bytes());
    now[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert!(
        now == std::fs::read(GOLDEN_V2).unwrap(),
        "the writer no longer writes the records of the v2 golden image as version 2 did"
    );
}

/// The v3 golden image holds the same records as the v2 one.
#[test]
fn golden_v3_bytes_are_stable() {
    assert!(
        build_golden_v2() == stored_at(GOLDEN_V3, build_golden_v2),
        "the writer no longer produces the v3 golden image: the wire format changed"
    );
}

#[test]
fn golden_v2_reads() {
    let image = stored_at(GOLDEN_V2, build_golden_v2);
    assert_eq!(&image[..16], b"CRESTIMG\x02\0\0\0\0\0\0\0");
    let mut r = Reader::new(&image[..]).unwrap();
    assert_eq!(r.format_version(), 2);
    assert_eq!(r.header(), &golden_header());
    let (window, _) = golden_window();
    let mut sparse = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if rec.kind != kind::PAGES {
            continue;
        }
        let c = rec.page_chunk(4096).unwrap();
        if !c.is_sparse() {
            assert_eq!(c.data, &golden_page()[..]);
            continue;
        }
        assert_eq!((c.nr_pages, c.window_pages()), (4, 69));
        let base = c.addr - 4096;
        for (a, d) in c.runs() {
            let off = (a - base) as usize;
            assert_eq!(d, &window[off..off + d.len()]);
        }
        sparse.push((c.space, rec.flags & FLAG_COMPRESSED != 0, c.runs().count()));
    }
    assert_eq!(sparse, [(1, false, 3), (2, true, 3)]);
}

/// A sparse chunk in an image that says it is version 1 is refused.
#[test]
fn sparse_chunk_in_a_v1_image_is_refused() {
    let mut image = stored_at(GOLDEN_V2, build_golden_v2);
    image[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = read_err(&image);
    assert!(
        matches!(e, crest_image::Error::BadChunk { .. }) && e.to_string().contains("version 1"),
        "{e}"
    );
}

#[test]
fn golden_v1_reads() {
    let image = stored();
    assert_eq!(&image[..16], b"CRESTIMG\x01\0\0\0\0\0\0\0");
    let (header, recs) = read_all(&image).unwrap();
    assert_eq!(header, golden_header());
    let got: Vec<(u32, Vec<u8>)> = recs.into_iter().map(|r| (r.kind, r.payload)).collect();
    assert_eq!(
        got,
        [
            (kind::PROCESS, b"golden process".to_vec()),
            (kind::FILE, Vec::new()),
            (kind::FILE_DATA, file_data_payload(7, 3, b"file bytes")),
            (
                kind::PAGES,
                page_payload(1, 0, 0x7ffd_0000_0000, 1, &golden_page())
            ),
        ]
    );
}
