//! Golden images: what this format version's writer produces must never
//! change, and what older writers produced must stay readable.
//!
//! If `golden_v1_bytes_are_stable` fails, the wire format changed: do not
//! re-bless `v1.img`; bump `FORMAT_VERSION` and add a new golden image (the
//! old one must stay readable or convertible). To create a missing golden
//! image, run the tests with `CREST_BLESS_GOLDEN=1`.

use crest_image::{kind, Header, Writer, FLAG_OPTIONAL};

use crate::common::*;

const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v1.img");

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

fn stored() -> Vec<u8> {
    if std::env::var_os("CREST_BLESS_GOLDEN").is_some() && std::fs::metadata(GOLDEN_V1).is_err() {
        std::fs::write(GOLDEN_V1, build_golden_v1()).unwrap();
    }
    std::fs::read(GOLDEN_V1).unwrap_or_else(|e| {
        panic!("cannot read {GOLDEN_V1} ({e}); create it with CREST_BLESS_GOLDEN=1")
    })
}

#[test]
fn golden_v1_bytes_are_stable() {
    assert!(
        build_golden_v1() == stored(),
        "the writer no longer produces the v1 golden image: the wire format changed"
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
