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

/// The decoded fixed part of a PAGES payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageChunkHead {
    pub space: u32,
    pub flags: u32,
    pub addr: u64,
    pub nr_pages: u64,
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

    /// Checks the chunk header against the length of the page data that
    /// follows it. Returns what is wrong.
    pub fn check(&self, data_len: u64, page_size: u32) -> Result<(), String> {
        if !page_size_ok(page_size) {
            return Err(format!("the image page size {page_size} is invalid"));
        }
        if self.flags != 0 {
            return Err(format!(
                "page chunk flags {:#x} are not supported (must be 0)",
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
        let end = match self.addr.checked_add(bytes) {
            Some(end) if end <= USER_ADDR_END => end,
            _ => {
                return Err(format!(
                    "page chunk at {:#x} of {} pages reaches beyond the user address space \
                     (which ends at {USER_ADDR_END:#x})",
                    self.addr, self.nr_pages
                ))
            }
        };
        if data_len != bytes {
            return Err(format!(
                "page chunk {:#x}..{end:#x} declares {} pages ({bytes} bytes) but carries \
                 {data_len} bytes",
                self.addr, self.nr_pages
            ));
        }
        Ok(())
    }
}

/// A chunk of raw memory pages: the payload of a PAGES record.
///
/// Encoding: `space: u32`, `flags: u32` (0), `addr: u64`, `nr_pages: u64`,
/// then exactly `nr_pages * page_size` bytes of page contents, for the
/// virtual range `addr .. addr + nr_pages * page_size`, which is page aligned
/// and lies below [`USER_ADDR_END`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageChunk<'a> {
    /// Which address space (memory object / mm) the pages belong to; the
    /// numbering is defined by the model.
    pub space: u32,
    /// Virtual address of the first page (page aligned).
    pub addr: u64,
    /// Number of pages (at least 1).
    pub nr_pages: u64,
    /// Their contents, `nr_pages * page_size` bytes.
    pub data: &'a [u8],
}

impl<'a> PageChunk<'a> {
    /// A chunk of `data` (a whole number of pages, at least one) at `addr`;
    /// validated like [`PageChunk::parse`] would.
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
        head.check(len, page_size).map_err(|w| Error::chunk(0, w))?;
        Ok(PageChunk {
            space,
            addr,
            nr_pages: head.nr_pages,
            data,
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
        let Some((head, data)) = payload.split_first_chunk::<PAGE_CHUNK_HEADER_LEN>() else {
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
        head.check(data.len() as u64, page_size)
            .map_err(|w| Error::chunk(record_offset, w))?;
        Ok(PageChunk {
            space: head.space,
            addr: head.addr,
            nr_pages: head.nr_pages,
            data,
        })
    }

    /// End (exclusive) of the virtual range the chunk covers.
    pub fn end(&self) -> u64 {
        self.addr + self.data.len() as u64
    }

    /// The 24-byte chunk header that precedes `data` in the payload.
    pub fn header_bytes(&self) -> [u8; PAGE_CHUNK_HEADER_LEN] {
        PageChunkHead {
            space: self.space,
            flags: 0,
            addr: self.addr,
            nr_pages: self.nr_pages,
        }
        .encode()
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
        assert!(chunk_err(&payload(0, 1, 0x1000, 1, 4096), 4096).contains("flags"));
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
