//! Payloads of PAGES and FILE_DATA records.

use crate::error::{Error, Result};
use crate::header::page_size_ok;

/// Length of the chunk header at the start of a PAGES payload.
pub const PAGE_CHUNK_HEADER_LEN: usize = 24;
/// Length of the chunk header at the start of a FILE_DATA payload.
pub const FILE_DATA_HEADER_LEN: usize = 16;
/// End (exclusive) of the user half of the x86-64 address space; no page
/// chunk may reach beyond it.
pub const USER_ADDR_END: u64 = 0x0000_8000_0000_0000;
/// Largest file offset (exclusive end) a FILE_DATA chunk may reach, the
/// largest value of the kernel's signed 64-bit `loff_t`.
pub const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Page chunk flag (format version 2 and later): the chunk is *sparse*. Its
/// `nr_pages` is the length of a window of pages, followed by a bitmap of
/// the pages of the window that the chunk carries; only those pages' data
/// follows. See the crate documentation for the exact layout.
pub const CHUNK_SPARSE: u32 = 1 << 0;

/// The page chunk flags this format version defines.
const KNOWN_CHUNK_FLAGS: u32 = CHUNK_SPARSE;

/// Length in bytes of the bitmap of a sparse window of `window` pages: whole
/// 64-bit words, so the page data that follows stays 8-byte aligned.
pub(crate) fn bitmap_len(window: u64) -> u64 {
    window.div_ceil(64) * 8
}

/// Whether page `i` of a window is marked present in `bitmap`.
fn bit(bitmap: &[u8], i: u64) -> bool {
    bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// The decoded fixed part of a PAGES payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageChunkHead {
    pub space: u32,
    pub flags: u32,
    pub addr: u64,
    pub nr_pages: u64,
}

/// What a validated chunk header (and bitmap) says about the rest of the
/// payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkFrame {
    /// Bytes between the chunk header and the page data (the bitmap).
    pub bitmap_len: usize,
    /// Pages whose contents follow.
    pub data_pages: u64,
}

impl PageChunkHead {
    pub fn decode(b: &[u8; PAGE_CHUNK_HEADER_LEN]) -> Self {
        PageChunkHead {
            space: le_u32(b, 0),
            flags: le_u32(b, 4),
            addr: le_u64(b, 8),
            nr_pages: le_u64(b, 16),
        }
    }

    pub fn encode(&self) -> [u8; PAGE_CHUNK_HEADER_LEN] {
        let mut b = [0u8; PAGE_CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&self.space.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.nr_pages.to_le_bytes());
        b
    }

    pub fn is_sparse(&self) -> bool {
        self.flags & CHUNK_SPARSE != 0
    }

    /// Length of the bitmap after the header: 0 for a dense chunk. `None`
    /// if a sparse window is too large to describe at all.
    pub fn bitmap_len(&self) -> Option<u64> {
        if self.is_sparse() {
            Some(bitmap_len(self.nr_pages)).filter(|&n| n <= crate::MAX_RECORD_LEN)
        } else {
            Some(0)
        }
    }

    /// Checks the chunk header and, for a sparse chunk, the bitmap at the
    /// start of `rest` (the payload after the header), without looking at
    /// the length of the page data. Returns what is wrong.
    pub fn check_frame(&self, rest: &[u8], page_size: u32) -> Result<ChunkFrame, String> {
        if !page_size_ok(page_size) {
            return Err(format!("the image page size {page_size} is invalid"));
        }
        if self.flags & !KNOWN_CHUNK_FLAGS != 0 {
            return Err(format!(
                "page chunk flags {:#x} are not supported (known: {KNOWN_CHUNK_FLAGS:#x})",
                self.flags
            ));
        }
        if self.nr_pages == 0 {
            return Err(format!("page chunk at {:#x} holds no pages", self.addr));
        }
        let ps = u64::from(page_size);
        // page_size is a power of two (checked above).
        if self.addr & (ps - 1) != 0 {
            return Err(format!(
                "page chunk address {:#x} is not aligned to the page size {page_size}",
                self.addr
            ));
        }
        let Some(bytes) = self.nr_pages.checked_mul(ps) else {
            return Err(format!(
                "page chunk at {:#x} claims {} pages, more than any address space holds",
                self.addr, self.nr_pages
            ));
        };
        match self.addr.checked_add(bytes) {
            Some(end) if end <= USER_ADDR_END => {}
            _ => {
                return Err(format!(
                    "page chunk at {:#x} of {} pages reaches beyond the user address space \
                     (which ends at {USER_ADDR_END:#x})",
                    self.addr, self.nr_pages
                ))
            }
        }
        if !self.is_sparse() {
            return Ok(ChunkFrame {
                bitmap_len: 0,
                data_pages: self.nr_pages,
            });
        }
        // nr_pages * page_size fits in 47 bits (checked above), so does this.
        let blen = bitmap_len(self.nr_pages);
        let Some(bitmap) = rest.get(..blen as usize) else {
            return Err(format!(
                "sparse page chunk at {:#x} with a window of {} pages needs a {blen}-byte \
                 bitmap, but only {} bytes follow its header",
                self.addr,
                self.nr_pages,
                rest.len()
            ));
        };
        let last = self.nr_pages - 1;
        if !bit(bitmap, 0) || !bit(bitmap, last) {
            return Err(format!(
                "sparse page chunk at {:#x}: the first and the last page of its window \
                 ({} pages) must be present",
                self.addr, self.nr_pages
            ));
        }
        // Bits past the window, in the last byte and in the padding bytes.
        let tail_bits = self.nr_pages % 8;
        let first_pad = (self.nr_pages / 8) as usize;
        let stray = if tail_bits != 0 {
            bitmap[first_pad] >> tail_bits != 0 || bitmap[first_pad + 1..].iter().any(|&b| b != 0)
        } else {
            bitmap[first_pad..].iter().any(|&b| b != 0)
        };
        if stray {
            return Err(format!(
                "sparse page chunk at {:#x}: its bitmap marks pages beyond its window of {} \
                 pages",
                self.addr, self.nr_pages
            ));
        }
        let data_pages = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
        Ok(ChunkFrame {
            bitmap_len: blen as usize,
            data_pages,
        })
    }

    /// Checks the chunk header, the bitmap of a sparse chunk and the length
    /// of the page data against each other (`rest` is the payload after the
    /// header). Returns what is wrong.
    pub fn check(&self, rest: &[u8], page_size: u32) -> Result<ChunkFrame, String> {
        let frame = self.check_frame(rest, page_size)?;
        self.check_data_len(frame, (rest.len() - frame.bitmap_len) as u64, page_size)?;
        Ok(frame)
    }

    /// Checks that `data_len` bytes of page data is what `frame` (from
    /// [`check_frame`](Self::check_frame)) announces.
    pub fn check_data_len(
        &self,
        frame: ChunkFrame,
        data_len: u64,
        page_size: u32,
    ) -> Result<(), String> {
        // data_pages <= nr_pages, whose byte size was checked.
        let want = frame.data_pages * u64::from(page_size);
        if data_len == want {
            return Ok(());
        }
        Err(if self.is_sparse() {
            format!(
                "sparse page chunk at {:#x} marks {} pages present ({want} bytes) but \
                 carries {data_len} bytes",
                self.addr, frame.data_pages
            )
        } else {
            format!(
                "page chunk {:#x}..{:#x} declares {} pages ({want} bytes) but carries \
                 {data_len} bytes",
                self.addr,
                self.addr + want,
                self.nr_pages
            )
        })
    }
}

/// A chunk of raw memory pages: the payload of a PAGES record.
///
/// A *dense* chunk carries every page of `addr .. end()`; a *sparse* one
/// (format version 2) carries the pages of that window marked in its
/// bitmap, [`present`](PageChunk::present). Either way `data` holds the
/// carried pages in address order, and [`runs`](PageChunk::runs) says where
/// each stretch of it belongs.
///
/// Encoding: `space: u32`, `flags: u32` (0 or [`CHUNK_SPARSE`]), `addr: u64`,
/// `nr_pages: u64` (the window), for a sparse chunk the bitmap, then the
/// page contents. The window is page aligned and lies below
/// [`USER_ADDR_END`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageChunk<'a> {
    /// Which address space (memory object / mm) the pages belong to; the
    /// numbering is defined by the model.
    pub space: u32,
    /// Virtual address of the first page of the window (page aligned).
    pub addr: u64,
    /// Number of pages carried (at least 1): `data.len() / page_size`.
    pub nr_pages: u64,
    /// Their contents, `nr_pages * page_size` bytes, in address order.
    pub data: &'a [u8],
    /// For a sparse chunk, the bitmap of the window's pages that `data`
    /// carries (bit `i % 8` of byte `i / 8` for page `i`); `None` for a
    /// dense chunk.
    pub present: Option<&'a [u8]>,
    window: u64,
    page_size: u32,
}

impl<'a> PageChunk<'a> {
    /// A dense chunk of `data` (a whole number of pages, at least one) at
    /// `addr`; validated like [`PageChunk::parse`] would.
    pub fn new(space: u32, addr: u64, data: &'a [u8], page_size: u32) -> Result<Self> {
        if !page_size_ok(page_size) {
            return Err(Error::chunk(
                0,
                format!("the image page size {page_size} is invalid"),
            ));
        }
        let len = data.len() as u64;
        if len & (u64::from(page_size) - 1) != 0 {
            return Err(Error::chunk(
                0,
                format!(
                    "{len} bytes of page data at {addr:#x} are not a whole number of \
                     {page_size}-byte pages"
                ),
            ));
        }
        let head = PageChunkHead {
            space,
            flags: 0,
            addr,
            nr_pages: len / u64::from(page_size),
        };
        head.check(data, page_size)
            .map_err(|w| Error::chunk(0, w))?;
        Ok(PageChunk {
            space,
            addr,
            nr_pages: head.nr_pages,
            data,
            present: None,
            window: head.nr_pages,
            page_size,
        })
    }

    /// Parses and validates a PAGES payload; `data` borrows from `payload`.
    /// Errors report offset 0; see [`PageChunk::parse_at`].
    pub fn parse(payload: &'a [u8], page_size: u32) -> Result<Self> {
        Self::parse_at(payload, page_size, 0)
    }

    /// Like [`PageChunk::parse`], reporting errors at stream offset
    /// `record_offset` (the offset of the record's header).
    pub fn parse_at(payload: &'a [u8], page_size: u32, record_offset: u64) -> Result<Self> {
        let Some((head, rest)) = payload.split_first_chunk::<PAGE_CHUNK_HEADER_LEN>() else {
            return Err(Error::chunk(
                record_offset,
                format!(
                    "PAGES payload is {} bytes, shorter than its {PAGE_CHUNK_HEADER_LEN}-byte \
                     chunk header",
                    payload.len()
                ),
            ));
        };
        let head = PageChunkHead::decode(head);
        let frame = head
            .check(rest, page_size)
            .map_err(|w| Error::chunk(record_offset, w))?;
        let (bitmap, data) = rest.split_at(frame.bitmap_len);
        Ok(PageChunk {
            space: head.space,
            addr: head.addr,
            nr_pages: frame.data_pages,
            data,
            present: head.is_sparse().then_some(bitmap),
            window: head.nr_pages,
            page_size,
        })
    }

    /// Whether the chunk is sparse.
    pub fn is_sparse(&self) -> bool {
        self.present.is_some()
    }

    /// Number of pages in the window `addr .. end()` (for a dense chunk,
    /// [`nr_pages`](PageChunk::nr_pages)).
    pub fn window_pages(&self) -> u64 {
        self.window
    }

    /// End (exclusive) of the window the chunk covers.
    pub fn end(&self) -> u64 {
        self.addr + self.window * u64::from(self.page_size)
    }

    /// The stretches of consecutive carried pages, in address order: each
    /// its address and its contents (a part of `data`). One item for a
    /// dense chunk.
    pub fn runs(&self) -> PageRuns<'a> {
        PageRuns {
            chunk_addr: self.addr,
            present: self.present,
            window: self.window,
            page_size: u64::from(self.page_size),
            next: 0,
            data: self.data,
        }
    }

    /// The 24-byte chunk header that starts the payload (for a sparse
    /// chunk, the bitmap follows it).
    pub fn header_bytes(&self) -> [u8; PAGE_CHUNK_HEADER_LEN] {
        PageChunkHead {
            space: self.space,
            flags: if self.is_sparse() { CHUNK_SPARSE } else { 0 },
            addr: self.addr,
            nr_pages: self.window,
        }
        .encode()
    }
}

/// Iterator over the runs of carried pages of a [`PageChunk`]: `(address,
/// contents)`.
#[derive(Clone, Debug)]
pub struct PageRuns<'a> {
    chunk_addr: u64,
    present: Option<&'a [u8]>,
    window: u64,
    page_size: u64,
    /// Next page of the window to look at.
    next: u64,
    /// Data of the pages not yet returned.
    data: &'a [u8],
}

impl<'a> Iterator for PageRuns<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let Some(bitmap) = self.present else {
            if self.data.is_empty() {
                return None;
            }
            return Some((self.chunk_addr, std::mem::take(&mut self.data)));
        };
        let mut i = self.next;
        while i < self.window && !bit(bitmap, i) {
            i += 1;
        }
        if i == self.window {
            return None;
        }
        let start = i;
        while i < self.window && bit(bitmap, i) {
            i += 1;
        }
        self.next = i;
        // The chunk was validated: the bitmap's population matches the data.
        let (run, rest) = self.data.split_at(((i - start) * self.page_size) as usize);
        self.data = rest;
        Some((self.chunk_addr + start * self.page_size, run))
    }
}

/// The decoded fixed part of a FILE_DATA payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileDataHead {
    pub object: u64,
    pub offset: u64,
}

impl FileDataHead {
    pub fn decode(b: &[u8; FILE_DATA_HEADER_LEN]) -> Self {
        FileDataHead {
            object: le_u64(b, 0),
            offset: le_u64(b, 8),
        }
    }

    pub fn encode(&self) -> [u8; FILE_DATA_HEADER_LEN] {
        let mut b = [0u8; FILE_DATA_HEADER_LEN];
        b[0..8].copy_from_slice(&self.object.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    pub fn check(&self, data_len: u64) -> Result<(), String> {
        match self.offset.checked_add(data_len) {
            Some(end) if end <= MAX_FILE_OFFSET => Ok(()),
            _ => Err(format!(
                "file data for object {} at offset {} of {data_len} bytes ends beyond the \
                 largest file offset ({MAX_FILE_OFFSET})",
                self.object, self.offset
            )),
        }
    }
}

/// Raw bytes of a file object (e.g. an unlinked file's contents): the
/// payload of a FILE_DATA record.
///
/// Encoding: `object: u64`, `offset: u64`, then the bytes, which belong at
/// `offset .. offset + len` of the object (the end may not exceed
/// [`MAX_FILE_OFFSET`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileData<'a> {
    /// Id of the file object in the model's object table.
    pub object: u64,
    /// Offset in the file where `data` starts.
    pub offset: u64,
    /// The bytes (may be empty).
    pub data: &'a [u8],
}

impl<'a> FileData<'a> {
    /// File data `data` at `offset` of `object`, validated.
    pub fn new(object: u64, offset: u64, data: &'a [u8]) -> Result<Self> {
        FileDataHead { object, offset }
            .check(data.len() as u64)
            .map_err(|w| Error::chunk(0, w))?;
        Ok(FileData {
            object,
            offset,
            data,
        })
    }

    /// Parses and validates a FILE_DATA payload; `data` borrows from
    /// `payload`. Errors report offset 0; see [`FileData::parse_at`].
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        Self::parse_at(payload, 0)
    }

    /// Like [`FileData::parse`], reporting errors at stream offset
    /// `record_offset` (the offset of the record's header).
    pub fn parse_at(payload: &'a [u8], record_offset: u64) -> Result<Self> {
        let Some((head, data)) = payload.split_first_chunk::<FILE_DATA_HEADER_LEN>() else {
            return Err(Error::chunk(
                record_offset,
                format!(
                    "FILE_DATA payload is {} bytes, shorter than its {FILE_DATA_HEADER_LEN}-byte \
                     chunk header",
                    payload.len()
                ),
            ));
        };
        let head = FileDataHead::decode(head);
        head.check(data.len() as u64)
            .map_err(|w| Error::chunk(record_offset, w))?;
        Ok(FileData {
            object: head.object,
            offset: head.offset,
            data,
        })
    }

    /// End (exclusive) of the file range the data covers.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// The 16-byte chunk header that precedes `data` in the payload.
    pub fn header_bytes(&self) -> [u8; FILE_DATA_HEADER_LEN] {
        FileDataHead {
            object: self.object,
            offset: self.offset,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(space: u32, flags: u32, addr: u64, nr: u64, data_len: usize) -> Vec<u8> {
        let mut p = PageChunkHead {
            space,
            flags,
            addr,
            nr_pages: nr,
        }
        .encode()
        .to_vec();
        p.resize(p.len() + data_len, 0x5A);
        p
    }

    fn chunk_err(p: &[u8], ps: u32) -> String {
        match PageChunk::parse_at(p, ps, 4242) {
            Err(Error::BadChunk { offset: 4242, what }) => what,
            other => panic!("expected BadChunk, got {other:?}"),
        }
    }

    #[test]
    fn page_chunk_round_trip_borrows_payload() {
        let p = payload(3, 0, 0x7fff_f000_0000, 2, 8192);
        let c = PageChunk::parse(&p, 4096).unwrap();
        assert_eq!((c.space, c.addr, c.nr_pages), (3, 0x7fff_f000_0000, 2));
        assert_eq!(c.data.len(), 8192);
        assert!(std::ptr::eq(c.data.as_ptr(), p[24..].as_ptr()));
        assert_eq!(c.end(), 0x7fff_f000_2000);
        assert_eq!(&c.header_bytes()[..], &p[..24]);
        let n = PageChunk::new(3, 0x7fff_f000_0000, c.data, 4096).unwrap();
        assert_eq!(n, c);
    }

    #[test]
    fn last_user_page_is_allowed() {
        let p = payload(0, 0, USER_ADDR_END - 4096, 1, 4096);
        assert!(PageChunk::parse(&p, 4096).is_ok());
    }

    #[test]
    fn page_chunk_errors() {
        assert!(chunk_err(&[0; 23], 4096).contains("shorter"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 1, 4096), 1000).contains("page size"));
        assert!(chunk_err(&payload(0, 2, 0x1000, 1, 4096), 4096).contains("flags"));
        assert!(chunk_err(&payload(0, 3, 0x1000, 1, 4096), 4096).contains("flags"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 0, 0), 4096).contains("no pages"));
        assert!(chunk_err(&payload(0, 0, 0x1001, 1, 4096), 4096).contains("not aligned"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 1, 4096), 8192).contains("not aligned"));
        assert!(chunk_err(&payload(0, 0, 0x1000, u64::MAX, 4096), 4096).contains("claims"));
        assert!(chunk_err(&payload(0, 0, 0xffff_ffff_ffff_f000, 1, 4096), 4096).contains("beyond"));
        assert!(chunk_err(&payload(0, 0, USER_ADDR_END, 1, 4096), 4096).contains("beyond"));
        assert!(chunk_err(&payload(0, 0, USER_ADDR_END - 4096, 2, 8192), 4096).contains("beyond"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 2, 4096), 4096).contains("carries"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 1, 4097), 4096).contains("carries"));
        assert!(chunk_err(&payload(0, 0, 0x1000, 1, 0), 4096).contains("carries"));
    }

    /// A sparse payload: window of `window` pages, bitmap bytes as given
    /// (zero-extended to whole words), then `data_pages` pages of data.
    fn sparse(addr: u64, window: u64, bits: &[u8], data_pages: usize) -> Vec<u8> {
        let mut p = payload(1, CHUNK_SPARSE, addr, window, 0);
        let mut bitmap = bits.to_vec();
        bitmap.resize(bitmap_len(window) as usize, 0);
        p.extend_from_slice(&bitmap);
        p.extend((0..data_pages * 4096).map(|i| (i / 4096) as u8 + 1));
        p
    }

    #[test]
    fn sparse_chunk_parses_and_runs() {
        // Window of 12 pages: present 0, 1, 5, 9, 10, 11.
        let p = sparse(0x10_0000, 12, &[0b0010_0011, 0b0000_1110], 6);
        let c = PageChunk::parse(&p, 4096).unwrap();
        assert!(c.is_sparse());
        assert_eq!((c.nr_pages, c.window_pages()), (6, 12));
        assert_eq!(c.end(), 0x10_0000 + 12 * 4096);
        assert_eq!(&c.header_bytes()[..], &p[..24]);
        assert_eq!(c.present.unwrap(), &p[24..32]);
        let runs: Vec<(u64, usize, u8)> = c.runs().map(|(a, d)| (a, d.len(), d[0])).collect();
        assert_eq!(
            runs,
            [
                (0x10_0000, 2 * 4096, 1),
                (0x10_0000 + 5 * 4096, 4096, 3),
                (0x10_0000 + 9 * 4096, 3 * 4096, 4)
            ]
        );
        // Dense: one run, the whole data.
        let d = payload(0, 0, 0x2000, 3, 3 * 4096);
        let c = PageChunk::parse(&d, 4096).unwrap();
        assert_eq!(c.runs().collect::<Vec<_>>(), [(0x2000, &d[24..])]);
        // A window of exactly 64 pages: a one-word bitmap, all present.
        let p = sparse(0, 64, &[0xFF; 8], 64);
        assert_eq!(PageChunk::parse(&p, 4096).unwrap().runs().count(), 1);
    }

    #[test]
    fn sparse_chunk_errors() {
        // Bitmap cut short.
        let mut p = payload(0, CHUNK_SPARSE, 0x1000, 100, 0);
        p.extend_from_slice(&[1; 9]);
        assert!(chunk_err(&p, 4096).contains("bitmap"));
        // First or last page of the window missing.
        assert!(chunk_err(&sparse(0x1000, 9, &[0b10, 1], 2), 4096).contains("first and the last"));
        assert!(chunk_err(&sparse(0x1000, 9, &[0b11, 0], 2), 4096).contains("first and the last"));
        // Bits beyond the window: in the last byte, in the padding.
        assert!(chunk_err(&sparse(0x1000, 9, &[1, 0b11], 3), 4096).contains("beyond its window"));
        let mut bits = [0u8; 8];
        bits[0] = 0b1000_0001;
        bits[7] = 0x80;
        assert!(chunk_err(&sparse(0x1000, 8, &bits, 3), 4096).contains("beyond its window"));
        // Data not matching the population count.
        assert!(chunk_err(&sparse(0x1000, 9, &[1, 1], 3), 4096).contains("carries"));
        assert!(chunk_err(&sparse(0x1000, 9, &[1, 1], 1), 4096).contains("carries"));
        // Window limits apply as for dense chunks.
        assert!(chunk_err(&sparse(0x1800, 1, &[1], 1), 4096).contains("not aligned"));
        assert!(chunk_err(&sparse(USER_ADDR_END - 4096, 2, &[3], 2), 4096).contains("beyond"));
        let mut p = payload(0, CHUNK_SPARSE, 0x1000, u64::MAX, 0);
        p.extend_from_slice(&[0xFF; 64]);
        assert!(chunk_err(&p, 4096).contains("claims"));
        assert!(chunk_err(&payload(0, CHUNK_SPARSE, 0x1000, 0, 0), 4096).contains("no pages"));
    }

    #[test]
    fn page_chunk_new_errors() {
        assert!(PageChunk::new(0, 0x1000, &[0; 100], 4096).is_err());
        assert!(PageChunk::new(0, 0x1000, &[], 4096).is_err());
        assert!(PageChunk::new(0, 0x1000, &[0; 4096], 3).is_err());
        assert!(PageChunk::new(0, 0x1800, &[0; 4096], 4096).is_err());
        assert!(PageChunk::new(0, USER_ADDR_END, &[0; 4096], 4096).is_err());
    }

    #[test]
    fn file_data_round_trip_and_errors() {
        let mut p = FileDataHead {
            object: 7,
            offset: 100,
        }
        .encode()
        .to_vec();
        p.extend_from_slice(b"hello");
        let f = FileData::parse(&p).unwrap();
        assert_eq!((f.object, f.offset, f.data), (7, 100, &b"hello"[..]));
        assert_eq!(f.end(), 105);
        assert_eq!(&f.header_bytes()[..], &p[..16]);
        assert_eq!(FileData::new(7, 100, b"hello").unwrap(), f);

        let empty = FileData::parse(&p[..16]).unwrap();
        assert!(empty.data.is_empty());

        assert!(matches!(
            FileData::parse_at(&p[..15], 9),
            Err(Error::BadChunk { offset: 9, .. })
        ));
        let mut over = FileDataHead {
            object: 1,
            offset: u64::MAX - 2,
        }
        .encode()
        .to_vec();
        over.extend_from_slice(b"abcd");
        assert!(matches!(
            FileData::parse(&over),
            Err(Error::BadChunk { offset: 0, .. })
        ));
        assert!(FileData::new(1, MAX_FILE_OFFSET, b"x").is_err());
        assert!(FileData::new(1, MAX_FILE_OFFSET, b"").is_ok());
    }
}
