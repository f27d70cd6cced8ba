//! # crest-image: the crest image format
//!
//! A crest image is **one stream**, written front to back and readable front
//! to back (a file, a pipe, a socket: no seeking on either side). This crate
//! defines its framing and the few payloads that the framing itself depends on
//! (the header, page chunks, file data chunks and the tail). It is pure Rust
//! over [`std::io::Read`] / [`std::io::Write`] and makes no system calls of its
//! own, so it can be tested and fuzzed without a live process.
//!
//! ## Layout
//!
//! All integers are little-endian.
//!
//! ```text
//! PREAMBLE (16 bytes)   "CRESTIMG"  format_version: u32  reserved: u32 (= 0)
//! RECORD                HEADER (exactly one, always first)
//! RECORD ...            model records (see [`kind`]), FILE_DATA, PAGES, future kinds
//! RECORD                TAIL (always last; followed by end of stream)
//!
//! RECORD = kind: u32  flags: u32  len: u64  payload_crc: u32  header_crc: u32
//!          payload (len bytes)  zero padding to the next multiple of 8
//!
//! PAGES payload, dense (chunk flags 0):
//!          space: u32  flags: u32 (= 0)  addr: u64  nr_pages: u64
//!          page data (nr_pages * page_size bytes, for addr .. addr + nr_pages pages)
//! PAGES payload, sparse (chunk flags CHUNK_SPARSE; format version 2 and later):
//!          space: u32  flags: u32 (= 1)  addr: u64  nr_pages: u64 (the window)
//!          bitmap (8 * ceil(nr_pages / 64) bytes: bit i % 8 of byte i / 8 set
//!                  = page i of the window is present; the first and the last
//!                  page of the window are present; bits from nr_pages on are 0)
//!          page data (the present pages in address order, popcount * page_size bytes)
//! ```
//!
//! * `payload_crc` is the CRC32C of the payload, `header_crc` the CRC32C of
//!   the 20 header bytes before it. Every record header starts at a multiple
//!   of 8 from the start of the stream.
//! * `flags` bit 0 is [`FLAG_OPTIONAL`]: a reader that does not know the kind
//!   may skip the record. Bit 1 ([`FLAG_COMPRESSED`]) marks a PAGES record
//!   whose page data is LZ4-compressed (the chunk header, and the bitmap of a
//!   sparse chunk, stay uncompressed); all other bits must be zero.
//! * A PAGES chunk is either *dense* (every page of `addr .. addr + nr_pages`)
//!   or, from format version 2 on, *sparse* ([`CHUNK_SPARSE`]): a window of
//!   pages with a bitmap of the pages it carries, so memory whose zero pages
//!   are scattered costs one record per window instead of one per run of
//!   non-zero pages. Writers choose whichever form is smaller.
//! * `len` is at most [`MAX_RECORD_LEN`]; a reader checks it before
//!   allocating anything.
//! * The TAIL payload holds the number of records before it, the stream
//!   offset of its own header, and a [`StreamDigest`] over the 24-byte
//!   headers of all records before it (which cover every payload through
//!   their CRCs). Nothing read from an image should be acted upon before
//!   [`Reader::next_record`] has returned `Ok(None)`, which means the tail was
//!   verified and the stream ended exactly there.
//!
//! ## Use
//!
//! ```
//! use crest_image::{kind, Header, Reader, Writer};
//!
//! let header = Header { page_size: 4096, arch: "x86_64".into(), ..Header::default() };
//! let mut w = Writer::new(Vec::new(), &header)?;
//! w.write_record(kind::TASK, 0, b"model bytes")?;
//! w.write_pages(0, 0x40_0000, &vec![0xAB; 2 * 4096])?;
//! let image = w.finish()?;
//!
//! let mut r = Reader::new(&image[..])?;
//! assert_eq!(r.header(), &header);
//! let mut kinds = Vec::new();
//! while let Some(rec) = r.next_record()? {
//!     kinds.push(rec.kind);
//! }
//! assert_eq!(kinds, [kind::TASK, kind::PAGES]);
//! # Ok::<(), crest_image::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chunk;
mod digest;
mod error;
mod header;
pub mod kind;
mod reader;
mod record;
mod sealed;
mod writer;

pub use chunk::{
    FileData, PageChunk, PageRuns, CHUNK_SPARSE, FILE_DATA_HEADER_LEN, MAX_FILE_OFFSET,
    PAGE_CHUNK_HEADER_LEN, USER_ADDR_END,
};
pub use digest::StreamDigest;
pub use error::{Error, Result};
pub use header::{Header, MAX_PAGE_SIZE, MAX_STRING_LEN, MIN_PAGE_SIZE};
pub use reader::Reader;
pub use record::{Record, Tail};
pub use sealed::{SealedPages, READ_STEP};
pub use writer::Writer;

/// The 8 bytes every crest image starts with.
pub const MAGIC: [u8; 8] = *b"CRESTIMG";

/// The image format version this crate writes.
///
/// It is independent of the program's version and changes only when the
/// framing or a payload this crate defines changes in a way older readers
/// cannot follow. Versions:
///
/// * 1 — the first version.
/// * 2 — sparse page chunks ([`CHUNK_SPARSE`]). Everything else is as in
///   version 1, so version 1 images stay readable; a sparse chunk in a
///   version 1 image is refused.
/// * 3 — the model is written as one record per kernel concept (TASK,
///   THREAD, MM, … see [`kind`]), each a MessagePack map with named
///   fields, instead of PROCESS and FILE records holding postcard. The
///   framing is as in version 2; which model records an image holds
///   depends on its version, so the program reading it must look at
///   [`Reader::format_version`].
pub const FORMAT_VERSION: u32 = 3;

/// The oldest image format version this crate reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Length of the preamble: magic, format version, reserved word.
pub const PREAMBLE_LEN: usize = 16;

/// Length of a record header: kind, flags, len, payload_crc, header_crc.
pub const RECORD_HEADER_LEN: usize = 24;

/// Every record header starts at a multiple of this from the stream start.
pub const RECORD_ALIGN: usize = 8;

/// Largest payload length a record may declare: 64 MiB of data plus room for
/// a small chunk header. Readers refuse longer records before allocating.
pub const MAX_RECORD_LEN: u64 = 64 * 1024 * 1024 + 4096;

/// Record flag: a reader that does not know this record's kind may skip it.
pub const FLAG_OPTIONAL: u32 = 1 << 0;

/// Record flag: the page data of a PAGES record is LZ4-compressed (block
/// format; the 24-byte chunk header stays uncompressed and gives the
/// decompressed size).  Only PAGES records may carry it; readers hand out
/// the decompressed chunk.
pub const FLAG_COMPRESSED: u32 = 1 << 1;

/// The record flags this format version understands.
pub const KNOWN_FLAGS: u32 = FLAG_OPTIONAL;
