//! Shared helpers: sample data, a collecting reader, and an independent raw
//! encoder of the wire format (written from the format description, not from
//! the crate's code) used both to pin the format and to craft broken images.

use crest_image::{kind, Header, Reader, Result, SealedPages, Writer, FLAG_OPTIONAL};

pub fn sample_header() -> Header {
    Header {
        producer: "crest 0.1.0 (test)".into(),
        arch: "x86_64".into(),
        page_size: 4096,
        uts_sysname: "Linux".into(),
        uts_nodename: "testhost".into(),
        uts_release: "6.8.0-45-generic".into(),
        uts_version: "#45-Ubuntu SMP PREEMPT_DYNAMIC".into(),
        uts_machine: "x86_64".into(),
        cpu_vendor: "GenuineIntel".into(),
        xsave_features: 0x2e7,
        xsave_size: 2696,
        created_unix_secs: 1_700_000_000,
    }
}

/// A record with an owned payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub payload: Vec<u8>,
}

impl Owned {
    pub fn new(kind: u32, flags: u32, offset: u64, payload: &[u8]) -> Self {
        Owned {
            kind,
            flags,
            offset,
            payload: payload.to_vec(),
        }
    }
}

/// Reads a whole image; `Ok` only if the reader verified the tail and the end.
pub fn read_all(image: &[u8]) -> Result<(Header, Vec<Owned>)> {
    let mut r = Reader::new(image)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(Owned::new(rec.kind, rec.flags, rec.offset, rec.payload));
    }
    assert!(r.is_finished());
    assert!(r.next_record()?.is_none(), "None must be sticky");
    assert_eq!(r.offset(), image.len() as u64);
    Ok((r.header().clone(), out))
}

/// The error reading `image` gives; panics if it reads successfully.
pub fn read_err(image: &[u8]) -> crest_image::Error {
    match read_all(image) {
        Ok(_) => panic!("a broken image was read successfully"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

/// A small image with records of several kinds (no PAGES), built with the
/// crate's writer.
pub fn small_image() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &sample_header()).unwrap();
    w.write_record(kind::TASK, 0, b"process model: 29 bytes long!")
        .unwrap();
    w.write_record(kind::FILE, 0, b"").unwrap();
    w.write_record(0x4242, FLAG_OPTIONAL, b"optional extension")
        .unwrap();
    w.write_file_data(3, 10, b"unlinked").unwrap();
    w.write_record(kind::FILE, FLAG_OPTIONAL, &[7; 8]).unwrap();
    w.finish().unwrap()
}

/// `small_image` plus PAGES records: two dense, one sparse, one compressed
/// sparse.
pub fn paged_image() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &sample_header()).unwrap();
    w.write_record(kind::PROCESS, 0, b"process").unwrap();
    let pages: Vec<u8> = (0..2 * 4096).map(|i| (i * 7 % 251) as u8).collect();
    w.write_pages(1, 0x7f00_0000_0000, &pages).unwrap();
    w.write_record(0x4242, FLAG_OPTIONAL, b"opt").unwrap();
    w.write_file_data(3, 0, b"abc").unwrap();
    w.write_pages(2, 0x40_0000, &pages[..4096]).unwrap();
    let (buf, len) = sparse_window();
    let s = SealedPages::seal(2, 0x50_0000, buf, len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, false).unwrap(), 1);
    let s = SealedPages::seal(3, 0x60_0000, s.into_buffer(), len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, true).unwrap(), 1);
    w.finish().unwrap()
}

/// A window of 12 pages of which 0, 3, 4 and 11 are not zero (compressible
/// data), as a buffer with room to spare and its length.
pub fn sparse_window() -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; 16 * 4096];
    for p in [0usize, 3, 4, 11] {
        for (i, b) in buf[p * 4096..(p + 1) * 4096].iter_mut().enumerate() {
            *b = (i / 64 + p) as u8 | 1;
        }
    }
    (buf, 12 * 4096)
}

pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// Hand encoder of the wire format.
pub struct Raw {
    pub bytes: Vec<u8>,
    pub records: u64,
    pub digest: u64,
}

impl Raw {
    /// Just a preamble with the given version and reserved word.
    pub fn preamble(version: u32, reserved: u32) -> Raw {
        let mut bytes = b"CRESTIMG".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&reserved.to_le_bytes());
        Raw {
            bytes,
            records: 0,
            digest: FNV_BASIS,
        }
    }

    /// A valid preamble and HEADER record for `header`.
    pub fn with_header(header: &Header) -> Raw {
        let mut raw = Raw::preamble(crest_image::FORMAT_VERSION, 0);
        raw.record(1, 0, &encode_header(header));
        raw
    }

    pub fn header_bytes(kind: u32, flags: u32, len: u64, payload_crc: u32) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..16].copy_from_slice(&len.to_le_bytes());
        h[16..20].copy_from_slice(&payload_crc.to_le_bytes());
        let hc = crc(&h[..20]);
        h[20..24].copy_from_slice(&hc.to_le_bytes());
        h
    }

    /// A correctly framed record, counted in the tail.
    pub fn record(&mut self, kind: u32, flags: u32, payload: &[u8]) -> &mut Self {
        let pad = (8 - payload.len() % 8) % 8;
        self.record_raw(
            kind,
            flags,
            payload.len() as u64,
            crc(payload),
            payload,
            &vec![0; pad],
        )
    }

    /// Arbitrary header fields, payload and padding bytes (header CRC still
    /// correct), counted in the tail.
    pub fn record_raw(
        &mut self,
        kind: u32,
        flags: u32,
        len: u64,
        payload_crc: u32,
        payload: &[u8],
        padding: &[u8],
    ) -> &mut Self {
        let h = Raw::header_bytes(kind, flags, len, payload_crc);
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(payload);
        self.bytes.extend_from_slice(padding);
        self.records += 1;
        self.digest = fnv1a(self.digest, &h);
        self
    }

    pub fn tail_with(&mut self, records: u64, bytes: u64, digest: u64) -> &mut Self {
        let mut p = Vec::new();
        p.extend_from_slice(&records.to_le_bytes());
        p.extend_from_slice(&bytes.to_le_bytes());
        p.extend_from_slice(&digest.to_le_bytes());
        let h = Raw::header_bytes(0xFFFF, 0, 24, crc(&p));
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(&p);
        self
    }

    /// A correct tail.
    pub fn tail(&mut self) -> &mut Self {
        let (records, bytes, digest) = (self.records, self.bytes.len() as u64, self.digest);
        self.tail_with(records, bytes, digest)
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    let s = |out: &mut Vec<u8>, v: &str| {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    };
    s(&mut out, &h.producer);
    s(&mut out, &h.arch);
    out.extend_from_slice(&h.page_size.to_le_bytes());
    s(&mut out, &h.uts_sysname);
    s(&mut out, &h.uts_nodename);
    s(&mut out, &h.uts_release);
    s(&mut out, &h.uts_version);
    s(&mut out, &h.uts_machine);
    s(&mut out, &h.cpu_vendor);
    out.extend_from_slice(&h.xsave_features.to_le_bytes());
    out.extend_from_slice(&h.xsave_size.to_le_bytes());
    out.extend_from_slice(&h.created_unix_secs.to_le_bytes());
    out
}

pub fn page_payload(space: u32, flags: u32, addr: u64, nr_pages: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&space.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&addr.to_le_bytes());
    p.extend_from_slice(&nr_pages.to_le_bytes());
    p.extend_from_slice(data);
    p
}

pub fn file_data_payload(object: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&object.to_le_bytes());
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(data);
    p
}
