//! Record framing, records as returned by the reader, and the tail.

use crate::chunk::{FileData, PageChunk};
use crate::error::Result;
use crate::{kind, FLAG_OPTIONAL, RECORD_ALIGN, RECORD_HEADER_LEN};

/// The fields of a record header (the header CRC is computed / checked by
/// `encode` / `decode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub kind: u32,
    pub flags: u32,
    pub len: u64,
    pub payload_crc: u32,
}

impl RecordHeader {
    /// The 24 bytes of the header, `header_crc` included.
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes 24 header bytes; `Err` carries what is wrong (a header CRC
    /// mismatch, the only thing checkable without context).
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Result<Self, String> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let stored = u32_at(20);
        let computed = crc32c::crc32c(&b[..20]);
        if stored != computed {
            return Err(format!(
                "record header checksum mismatch (stored {stored:#010x}, computed \
                 {computed:#010x})"
            ));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        Ok(RecordHeader {
            kind: u32_at(0),
            flags: u32_at(4),
            len: u64::from_le_bytes(len),
            payload_crc: u32_at(16),
        })
    }
}

/// Number of zero bytes after a payload of `len` bytes.
pub(crate) fn padding_for(len: u64) -> usize {
    let align = RECORD_ALIGN as u64;
    ((align - len % align) % align) as usize
}

/// One record as returned by [`Reader::next_record`](crate::Reader::next_record):
/// its payload has been read completely and its checksums verified.
///
/// The payload borrows the reader's buffer and is valid until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Record kind (see [`kind`]).
    pub kind: u32,
    /// Record flags (see [`FLAG_OPTIONAL`]).
    pub flags: u32,
    /// Stream offset of the record's header. Its payload starts
    /// [`RECORD_HEADER_LEN`] bytes later.
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// Display name of the kind.
    pub fn kind_name(&self) -> &'static str {
        kind::name(self.kind)
    }

    /// Whether the writer marked the record optional.
    pub fn is_optional(&self) -> bool {
        self.flags & FLAG_OPTIONAL != 0
    }

    /// Stream offset of the first payload byte.
    pub fn payload_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64
    }

    /// Parses the payload as a [`PageChunk`] (the record should be of kind
    /// [`kind::PAGES`]); `page_size` is the image's, from its header.
    pub fn page_chunk(&self, page_size: u32) -> Result<PageChunk<'a>> {
        PageChunk::parse_at(self.payload, page_size, self.offset)
    }

    /// Parses the payload as [`FileData`] (the record should be of kind
    /// [`kind::FILE_DATA`]).
    pub fn file_data(&self) -> Result<FileData<'a>> {
        FileData::parse_at(self.payload, self.offset)
    }
}

/// The payload of the TAIL record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Number of records before the tail, the HEADER record and skipped
    /// optional records included.
    pub records: u64,
    /// Number of stream bytes before the tail's record header, the preamble
    /// included (that is, the stream offset of the tail record).
    pub bytes: u64,
    /// [`StreamDigest`](crate::StreamDigest) of the headers of all records
    /// before the tail.
    pub digest: u64,
}

impl Tail {
    /// Length of the encoded tail payload.
    pub const LEN: usize = 24;

    /// The tail payload: `records: u64`, `bytes: u64`, `digest: u64`.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.records.to_le_bytes());
        b[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.digest.to_le_bytes());
        b
    }

    /// Decodes a tail payload; `None` unless it is exactly [`Tail::LEN`]
    /// bytes.
    pub fn decode(payload: &[u8]) -> Option<Tail> {
        let b: &[u8; Self::LEN] = payload.try_into().ok()?;
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        Some(Tail {
            records: u64_at(0),
            bytes: u64_at(8),
            digest: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_crc() {
        let h = RecordHeader {
            kind: 0x20,
            flags: 1,
            len: 0x0102_0304_0506,
            payload_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(RecordHeader::decode(&b).unwrap(), h);
        for i in 0..RECORD_HEADER_LEN {
            for bit in 0..8 {
                let mut c = b;
                c[i] ^= 1 << bit;
                assert!(RecordHeader::decode(&c).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn padding() {
        let p: Vec<usize> = (0..=9).map(padding_for).collect();
        assert_eq!(p, [0, 7, 6, 5, 4, 3, 2, 1, 0, 7]);
        assert_eq!(padding_for(u64::MAX), 1);
    }

    #[test]
    fn tail_round_trip() {
        let t = Tail {
            records: 3,
            bytes: 4,
            digest: u64::MAX,
        };
        assert_eq!(Tail::decode(&t.encode()), Some(t));
        assert_eq!(Tail::decode(&t.encode()[..23]), None);
        assert_eq!(Tail::decode(&[0; 25]), None);
    }
}
