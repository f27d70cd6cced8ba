//! Valid images: round trips, format pinning, writer behaviour.

use std::io::{self, Read, Write};

use crest_image::{
    kind, Error, FileData, Header, PageChunk, Reader, Writer, CHUNK_SPARSE, FLAG_COMPRESSED,
    FLAG_OPTIONAL, MAX_RECORD_LEN, USER_ADDR_END,
};

use crate::common::*;

#[test]
fn round_trip_every_kind() {
    let header = sample_header();
    let mut w = Writer::new(Vec::new(), &header).unwrap();
    assert_eq!(w.records_written(), 1);
    let mut expected = Vec::new();

    let off = w.write_record(kind::PROCESS, 0, b"pid 1234").unwrap();
    expected.push(Owned::new(kind::PROCESS, 0, off, b"pid 1234"));
    let off = w.write_record(kind::FILE, 0, b"").unwrap();
    expected.push(Owned::new(kind::FILE, 0, off, b""));
    // Odd lengths 1..=17 exercise every padding amount.
    for n in 1..=17usize {
        let payload: Vec<u8> = (0..n as u8).collect();
        let off = w.write_record(kind::FILE, 0, &payload).unwrap();
        expected.push(Owned::new(kind::FILE, 0, off, &payload));
    }
    // A known kind marked optional is still returned.
    let off = w
        .write_record(kind::PROCESS, FLAG_OPTIONAL, b"opt")
        .unwrap();
    expected.push(Owned::new(kind::PROCESS, FLAG_OPTIONAL, off, b"opt"));
    // Unknown optional kinds are skipped by the reader.
    w.write_record(0x7777, FLAG_OPTIONAL, b"from the future")
        .unwrap();
    w.write_record(0x7778, FLAG_OPTIONAL, b"").unwrap();
    // FILE_DATA: odd length, empty.
    let off = w.write_file_data(9, 4096, b"odd").unwrap();
    expected.push(Owned::new(
        kind::FILE_DATA,
        0,
        off,
        &file_data_payload(9, 4096, b"odd"),
    ));
    let off = w.write_file_data(9, 0, b"").unwrap();
    expected.push(Owned::new(
        kind::FILE_DATA,
        0,
        off,
        &file_data_payload(9, 0, b""),
    ));
    // A 1 MiB page chunk, and a single page at the top of the user half.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i ^ (i >> 8)) as u8).collect();
    let off = w.write_pages(5, 0x7f12_3456_0000, &big).unwrap();
    expected.push(Owned::new(
        kind::PAGES,
        0,
        off,
        &page_payload(5, 0, 0x7f12_3456_0000, 256, &big),
    ));
    let page = [0xC3u8; 4096];
    let off = w.write_pages(0, USER_ADDR_END - 4096, &page).unwrap();
    expected.push(Owned::new(
        kind::PAGES,
        0,
        off,
        &page_payload(0, 0, USER_ADDR_END - 4096, 1, &page),
    ));
    // Parts: the payload is their concatenation.
    let off = w
        .write_record_parts(kind::PROCESS, 0, &[b"ab", b"", &[b'c'; 5000], b"d"])
        .unwrap();
    let mut joined = b"ab".to_vec();
    joined.extend_from_slice(&[b'c'; 5000]);
    joined.push(b'd');
    expected.push(Owned::new(kind::PROCESS, 0, off, &joined));

    let records_before_tail = w.records_written();
    let bytes_before_tail = w.bytes_written();
    let image = w.finish().unwrap();
    assert_eq!(image.len() as u64, bytes_before_tail + 24 + 24);

    let (h, got) = read_all(&image).unwrap();
    assert_eq!(h, header);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
        assert_eq!(g.offset % 8, 0);
    }

    let mut r = Reader::new(&image[..]).unwrap();
    while r.next_record().unwrap().is_some() {}
    let tail = *r.tail().unwrap();
    assert_eq!(tail.records, records_before_tail);
    assert_eq!(r.records_read(), records_before_tail);
    assert_eq!(tail.bytes, bytes_before_tail);
}

#[test]
fn typed_views_of_records() {
    let image = paged_image();
    let mut r = Reader::new(&image[..]).unwrap();
    let ps = r.page_size();
    let mut chunks = Vec::new();
    let mut files = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        match rec.kind {
            kind::PAGES => {
                assert_eq!(rec.kind_name(), "PAGES");
                let c = rec.page_chunk(ps).unwrap();
                // The page data sits at a fixed place in the stream, which a
                // restorer can read from the image file directly.
                // (After the bitmap of a sparse chunk.)
                let head = 24 + c.present.map_or(0, <[u8]>::len);
                let at = rec.payload_offset() as usize + head;
                if rec.flags & FLAG_COMPRESSED == 0 {
                    assert_eq!(&image[at..at + c.data.len()], c.data);
                }
                assert_eq!(at % 8, 0);
                chunks.push((c.space, c.addr, c.nr_pages, c.end()));
            }
            kind::FILE_DATA => {
                let f = rec.file_data().unwrap();
                files.push((f.object, f.offset, f.data.to_vec()));
            }
            _ => assert!(!rec.is_optional()),
        }
    }
    assert_eq!(
        chunks,
        [
            (1, 0x7f00_0000_0000, 2, 0x7f00_0000_2000),
            (2, 0x40_0000, 1, 0x40_1000),
            (2, 0x50_0000, 4, 0x50_c000),
            (3, 0x60_0000, 4, 0x60_c000),
        ]
    );
    assert_eq!(files, [(3, 0, b"abc".to_vec())]);
}

#[test]
fn minimal_image_header_and_tail_only() {
    let image = Writer::new(Vec::new(), &Header::default())
        .unwrap()
        .finish()
        .unwrap();
    let (h, recs) = read_all(&image).unwrap();
    assert_eq!(h, Header::default());
    assert!(recs.is_empty());
}

/// The crate's writer and an encoder written from the format description
/// produce the same bytes.
#[test]
fn writer_matches_independent_encoder() {
    let header = sample_header();
    let pages: Vec<u8> = (0..3 * 4096).map(|i| (i % 13) as u8).collect();

    let mut w = Writer::new(Vec::new(), &header).unwrap();
    w.write_record(kind::PROCESS, 0, b"hello").unwrap();
    w.write_record(0x99, FLAG_OPTIONAL, b"").unwrap();
    w.write_pages(4, 0x1000, &pages).unwrap();
    w.write_file_data(2, 77, b"xyz").unwrap();
    let image = w.finish().unwrap();

    let mut raw = Raw::with_header(&header);
    raw.record(kind::PROCESS, 0, b"hello")
        .record(0x99, FLAG_OPTIONAL, b"")
        .record(kind::PAGES, 0, &page_payload(4, 0, 0x1000, 3, &pages))
        .record(kind::FILE_DATA, 0, &file_data_payload(2, 77, b"xyz"))
        .tail();
    assert_eq!(image, raw.take());
}

/// A reader that hands out one byte at a time and is interrupted often,
/// like a slow pipe.
struct Trickle<'a> {
    data: &'a [u8],
    calls: u64,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls == 3 {
            self.calls = 0;
            return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
        }
        if self.data.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.data[0];
        self.data = &self.data[1..];
        Ok(1)
    }
}

#[test]
fn short_reads_and_interrupts_are_handled() {
    let image = small_image();
    let (h1, r1) = read_all(&image).unwrap();
    let mut r = Reader::new(Trickle {
        data: &image,
        calls: 0,
    })
    .unwrap();
    assert_eq!(r.header(), &h1);
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(Owned::new(rec.kind, rec.flags, rec.offset, rec.payload));
    }
    assert_eq!(got, r1);
    assert!(r.get_ref().data.is_empty());
}

#[test]
fn reader_stops_at_the_end_of_the_image() {
    // The reader consumes exactly the image; what the stream holds after
    // EOF confirmation is not its business, but it must not over-read.
    let image = small_image();
    let mut r = Reader::new(&image[..]).unwrap();
    while r.next_record().unwrap().is_some() {}
    assert!(r.into_inner().is_empty());
}

/// Counts write calls.
#[derive(Default)]
struct CountingWriter {
    bytes: Vec<u8>,
    writes: usize,
    flushes: usize,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.writes += 1;
        let mut n = 0;
        for b in bufs {
            self.bytes.extend_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[test]
fn few_write_calls_per_record() {
    let mut w = Writer::new(CountingWriter::default(), &sample_header()).unwrap();
    // Preamble + header record.
    assert!(w.get_ref().writes <= 2, "{}", w.get_ref().writes);

    let big = vec![1u8; 1 << 20];
    type Case<'a> = (&'a str, Box<dyn Fn(&mut Writer<CountingWriter>) + 'a>);
    let cases: Vec<Case> = vec![
        (
            "small",
            Box::new(|w| {
                w.write_record(kind::PROCESS, 0, b"abc").unwrap();
            }),
        ),
        (
            "empty",
            Box::new(|w| {
                w.write_record(kind::FILE, 0, b"").unwrap();
            }),
        ),
        (
            "1 MiB pages",
            Box::new(|w| {
                w.write_pages(0, 0x10_0000, &big).unwrap();
            }),
        ),
        (
            "odd big",
            Box::new(|w| {
                w.write_record(kind::PROCESS, 0, &big[..100_001]).unwrap();
            }),
        ),
        (
            "file data",
            Box::new(|w| {
                w.write_file_data(1, 0, &big[..9999]).unwrap();
            }),
        ),
    ];
    for (name, f) in &cases {
        let before = w.get_ref().writes;
        f(&mut w);
        let n = w.get_ref().writes - before;
        assert_eq!(n, 1, "{name}: {n} write calls");
    }
    let before = w.get_ref().writes;
    let out = w.finish().unwrap();
    assert_eq!(out.writes - before, 1);
    assert_eq!(out.flushes, 1);
    read_all(&out.bytes).unwrap();
}

#[test]
fn writer_refuses_what_readers_would_refuse() {
    let mut w = Writer::new(Vec::new(), &sample_header()).unwrap();
    let start = w.bytes_written();
    let inval = |r: crest_image::Result<u64>| match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let chunk = |r: crest_image::Result<u64>, offset: u64| match r {
        Err(Error::BadChunk { offset: o, what }) => {
            assert_eq!(o, offset);
            what
        }
        other => panic!("expected BadChunk, got {other:?}"),
    };
    assert!(inval(w.write_record(kind::HEADER, 0, b"")).contains("HEADER"));
    assert!(inval(w.write_record(kind::TAIL, 0, &[0; 24])).contains("TAIL"));
    assert!(inval(w.write_record(kind::PROCESS, FLAG_COMPRESSED, b"")).contains("compression"));
    assert!(inval(w.write_record(kind::PROCESS, 0x80, b"")).contains("0x80"));

    let page = [0u8; 4096];
    assert!(chunk(w.write_pages(0, 0x1000, &page[..100]), start).contains("whole number"));
    assert!(chunk(w.write_pages(0, 0x1000, &[]), start).contains("no pages"));
    assert!(chunk(w.write_pages(0, 0x1234, &page), start).contains("aligned"));
    assert!(chunk(w.write_pages(0, USER_ADDR_END, &page), start).contains("beyond"));
    assert!(chunk(w.write_pages(0, u64::MAX - 4095, &page), start).contains("beyond"));
    assert!(chunk(w.write_file_data(0, u64::MAX, b"x"), start).contains("beyond"));
    // Raw PAGES / FILE_DATA payloads are validated too, across parts.
    let bad = page_payload(0, 0, 0x1000, 2, &page);
    assert!(chunk(w.write_record(kind::PAGES, 0, &bad), start).contains("carries"));
    assert!(chunk(w.write_record(kind::PAGES, 0, &bad[..10]), start).contains("shorter"));
    assert!(chunk(w.write_record(kind::FILE_DATA, 0, &bad[..10]), start).contains("shorter"));
    let flagged = page_payload(0, 2, 0x1000, 1, &page);
    assert!(chunk(w.write_record(kind::PAGES, 0, &flagged), start).contains("flags"));
    // A sparse chunk whose bitmap marks two pages but carries one.
    let mut sparse = page_payload(0, CHUNK_SPARSE, 0x1000, 3, &[]);
    sparse.extend_from_slice(&[0b101, 0, 0, 0, 0, 0, 0, 0]);
    sparse.extend_from_slice(&page);
    assert!(chunk(w.write_record(kind::PAGES, 0, &sparse), start).contains("marks 2 pages"));
    // ... or whose bitmap is cut short.
    let short = page_payload(0, CHUNK_SPARSE, 0x1000, 3, &[5, 0, 0]);
    assert!(chunk(w.write_record(kind::PAGES, 0, &short), start).contains("bitmap"));
    assert_eq!(w.bytes_written(), start, "nothing was written");
    assert_eq!(w.get_ref().len() as u64, start);

    let good = page_payload(0, 0, 0x1000, 1, &page);
    let (a, b) = good.split_at(7);
    w.write_record_parts(kind::PAGES, 0, &[a, b]).unwrap();
    let c = PageChunk::new(0, 0x2000, &page, 4096).unwrap();
    w.write_page_chunk(&c).unwrap();
    let image = w.finish().unwrap();
    let (_, recs) = read_all(&image).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].payload, good);
}

#[test]
fn writer_refuses_invalid_header() {
    let mut h = sample_header();
    h.page_size = 3000;
    assert!(matches!(
        Writer::new(Vec::new(), &h),
        Err(Error::BadHeader(_))
    ));
    let mut h = sample_header();
    h.cpu_vendor = "x".repeat(5000);
    let mut out = Vec::new();
    assert!(matches!(
        Writer::new(&mut out, &h),
        Err(Error::BadHeader(_))
    ));
    assert!(out.is_empty(), "nothing is written for an invalid header");
}

/// Accepts `budget` bytes, then fails.
struct Failing {
    budget: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_is_unusable_after_an_io_error() {
    assert!(matches!(
        Writer::new(Failing { budget: 10 }, &sample_header()),
        Err(Error::Io(_))
    ));
    let mut w = Writer::new(Failing { budget: 1000 }, &sample_header()).unwrap();
    let err = w.write_record(kind::PROCESS, 0, &[0; 2000]).unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
    assert!(err.to_string().contains("disk full"));
    let err = w.write_record(kind::PROCESS, 0, b"").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(matches!(w.finish(), Err(Error::InvalidInput(_))));
}

#[test]
fn parse_helpers_agree_with_writer() {
    let data = [9u8; 8192];
    let payload = page_payload(1, 0, 0x20_0000, 2, &data);
    let c = PageChunk::parse(&payload, 4096).unwrap();
    assert_eq!(c, PageChunk::new(1, 0x20_0000, &data, 4096).unwrap());
    let payload = file_data_payload(4, 5, b"six");
    let f = FileData::parse(&payload).unwrap();
    assert_eq!(f, FileData::new(4, 5, b"six").unwrap());
}

// A 64 MiB chunk plus one more page does not fit in a record.
const _: () = assert!(MAX_RECORD_LEN < (64 << 20) + 24 + 4096);

#[test]
fn record_limit_allows_64_mib_of_pages_and_no_more() {
    let data = vec![0u8; (64 << 20) + 4096];
    let mut w = Writer::new(io::sink(), &sample_header()).unwrap();
    w.write_pages(0, 0x1000_0000, &data[..64 << 20]).unwrap();
    let before = w.bytes_written();
    assert_eq!(before % 8, 0);
    let err = w.write_pages(0, 0x1000_0000, &data).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("split"), "{err}");
    assert_eq!(w.bytes_written(), before);
}
