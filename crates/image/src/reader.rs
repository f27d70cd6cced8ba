//! Reading an image stream.

use std::io::{ErrorKind, Read};

use crate::chunk::{FileData, PageChunk, PageChunkHead};
use crate::digest::StreamDigest;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::record::{padding_for, Record, RecordHeader, Tail};
use crate::{
    kind, FLAG_COMPRESSED, FLAG_OPTIONAL, FORMAT_VERSION, KNOWN_FLAGS, MAGIC, MAX_RECORD_LEN,
    MIN_FORMAT_VERSION, PAGE_CHUNK_HEADER_LEN, PREAMBLE_LEN, RECORD_ALIGN, RECORD_HEADER_LEN,
};

/// The payload buffer grows by at most this much ahead of the data actually
/// received, so a record that claims a large length on a truncated stream
/// costs little memory.
const READ_STEP: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Records follow.
    Records,
    /// The tail was verified and the end of the stream confirmed.
    Done,
    /// An error was returned; the stream position is meaningless.
    Failed,
}

/// What `read_record` learnt about the record now in `buf`.
#[derive(Clone, Copy, Debug)]
struct Meta {
    kind: u32,
    flags: u32,
    offset: u64,
}

/// Reads and verifies an image stream front to back.
///
/// Works on any [`Read`], including non-seekable pipes and sockets; it reads
/// exactly the bytes of the image and nothing past the end of its tail
/// (except the single probe that confirms the end of the stream). It issues
/// small reads for record headers: wrap an unbuffered file or socket in a
/// [`std::io::BufReader`].
///
/// Every record returned has had its header and payload checksums verified,
/// but **the image as a whole is only valid once
/// [`next_record`](Reader::next_record) has returned `Ok(None)`**: only then
/// have the tail (record count, byte count, digest) and the end of the stream
/// been checked. Do not act on an image before that.
///
/// After an error, the reader refuses to continue.
#[derive(Debug)]
pub struct Reader<R: Read> {
    r: R,
    header: Header,
    /// Format version from the preamble.
    version: u32,
    offset: u64,
    records: u64,
    digest: StreamDigest,
    buf: Vec<u8>,
    /// Spare buffer for decompressing page chunks.
    dbuf: Vec<u8>,
    state: State,
    tail: Option<Tail>,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the preamble and the HEADER record.
    pub fn new(r: R) -> Result<Self> {
        let mut reader = Reader {
            r,
            header: Header::default(),
            version: FORMAT_VERSION,
            offset: 0,
            records: 0,
            digest: StreamDigest::new(),
            buf: Vec::new(),
            dbuf: Vec::new(),
            state: State::Records,
            tail: None,
        };
        reader.read_preamble()?;
        let offset = reader.offset;
        let (head, raw) = reader.read_record_header()?;
        if head.kind != kind::HEADER {
            return Err(Error::corrupt(
                offset,
                format!(
                    "the first record is {} (kind {:#x}), but an image must start with its \
                     HEADER record",
                    kind::name(head.kind),
                    head.kind
                ),
            ));
        }
        reader.read_payload(&head, offset)?;
        reader.header = Header::decode(&reader.buf)?;
        reader.account(&raw);
        Ok(reader)
    }

    /// The image header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The image's format version (from the preamble), between
    /// [`MIN_FORMAT_VERSION`] and [`FORMAT_VERSION`].
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// The image page size (from the header).
    pub fn page_size(&self) -> u32 {
        self.header.page_size
    }

    /// Current stream position: the number of bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records read so far, the HEADER record and skipped optional records
    /// included, the TAIL excluded.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// Whether the tail was read and verified and the stream ended there.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// The verified tail, once [`is_finished`](Reader::is_finished).
    pub fn tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.r
    }

    /// Gives the underlying stream back.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// The next record, fully read and checksum-verified; unknown kinds
    /// marked [`FLAG_OPTIONAL`] are skipped. PAGES and FILE_DATA payloads are
    /// also validated as chunks (so [`Record::page_chunk`] and
    /// [`Record::file_data`] succeed on them).
    ///
    /// Returns `Ok(None)` once the TAIL record has been read and verified and
    /// the stream has been confirmed to end right after it; again on every
    /// later call.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => {
                return Err(Error::InvalidInput(
                    "the image reader already reported an error; the image cannot be read \
                     further"
                        .into(),
                ))
            }
            State::Records => {}
        }
        match self.next_inner() {
            Ok(Some(meta)) => Ok(Some(Record {
                kind: meta.kind,
                flags: meta.flags,
                offset: meta.offset,
                payload: &self.buf,
            })),
            Ok(None) => {
                self.state = State::Done;
                Ok(None)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn next_inner(&mut self) -> Result<Option<Meta>> {
        loop {
            let offset = self.offset;
            let (head, raw) = self.read_record_header()?;
            match head.kind {
                kind::HEADER => {
                    return Err(Error::corrupt(
                        offset,
                        "a second HEADER record: an image has exactly one, at its start",
                    ))
                }
                kind::TAIL => {
                    self.read_payload(&head, offset)?;
                    self.check_tail(offset)?;
                    self.check_end()?;
                    return Ok(None);
                }
                k if !kind::is_known(k) => {
                    if head.flags & FLAG_OPTIONAL == 0 {
                        return Err(Error::UnknownRecord { kind: k, offset });
                    }
                    self.read_payload(&head, offset)?;
                    self.account(&raw);
                }
                k => {
                    if self.version < 3 && kind::is_model_v3(k) {
                        return Err(Error::corrupt(
                            offset,
                            format!(
                                "{} record in a format version {} image (that record kind \
                                 exists from version 3 on)",
                                kind::name(k),
                                self.version
                            ),
                        ));
                    }
                    self.read_payload(&head, offset)?;
                    match k {
                        kind::PAGES => {
                            if head.flags & FLAG_COMPRESSED != 0 {
                                self.decompress_pages(offset)?;
                            }
                            let c = PageChunk::parse_at(&self.buf, self.header.page_size, offset)?;
                            if c.is_sparse() && self.version < 2 {
                                return Err(Error::chunk(
                                    offset,
                                    format!(
                                        "sparse page chunk at {:#x} in a format version {} \
                                         image (sparse chunks exist from version 2 on)",
                                        c.addr, self.version
                                    ),
                                ));
                            }
                        }
                        kind::FILE_DATA => {
                            FileData::parse_at(&self.buf, offset)?;
                        }
                        _ => {}
                    }
                    self.account(&raw);
                    return Ok(Some(Meta {
                        kind: k,
                        flags: head.flags,
                        offset,
                    }));
                }
            }
        }
    }

    /// Replaces a compressed PAGES payload (CRC already verified) by its
    /// decompressed form: the chunk header (and bitmap), then the page data.
    fn decompress_pages(&mut self, offset: u64) -> Result<()> {
        let Some((head, rest)) = self.buf.split_first_chunk::<PAGE_CHUNK_HEADER_LEN>() else {
            return Err(Error::chunk(
                offset,
                "compressed page chunk shorter than its header",
            ));
        };
        let frame = PageChunkHead::decode(head)
            .check_frame(rest, self.header.page_size)
            .map_err(|w| Error::chunk(offset, w))?;
        let head_len = PAGE_CHUNK_HEADER_LEN + frame.bitmap_len;
        let want = frame
            .data_pages
            .checked_mul(u64::from(self.header.page_size))
            .filter(|&n| n <= MAX_RECORD_LEN)
            .ok_or_else(|| {
                Error::chunk(
                    offset,
                    format!(
                        "compressed page chunk claims {} pages, more than a record may hold",
                        frame.data_pages
                    ),
                )
            })? as usize;
        let mut out = std::mem::take(&mut self.dbuf);
        out.clear();
        out.extend_from_slice(&self.buf[..head_len]);
        out.resize(head_len + want, 0);
        let got = lz4_flex::block::decompress_into(&self.buf[head_len..], &mut out[head_len..])
            .map_err(|e| Error::chunk(offset, format!("compressed page data is damaged: {e}")))?;
        if got != want {
            self.dbuf = out;
            return Err(Error::chunk(
                offset,
                format!("compressed page data gives {got} bytes, the header says {want}"),
            ));
        }
        self.dbuf = std::mem::replace(&mut self.buf, out);
        Ok(())
    }

    /// Counts a verified record (other than the tail) into the digest.
    fn account(&mut self, raw: &[u8; RECORD_HEADER_LEN]) {
        self.records += 1;
        self.digest.update(raw);
    }

    /// Reads until `buf` is full or the stream ends; returns the number of
    /// bytes read and advances the offset.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(filled)
    }

    /// Like `read_full` but a short read is a truncation.
    fn read_exact_or_truncated(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.read_full(buf)? < buf.len() {
            return Err(Error::Truncated {
                offset: self.offset,
            });
        }
        Ok(())
    }

    fn read_preamble(&mut self) -> Result<()> {
        let mut pre = [0u8; PREAMBLE_LEN];
        let n = self.read_full(&mut pre)?;
        let m = n.min(MAGIC.len());
        if pre[..m] != MAGIC[..m] {
            return Err(Error::BadMagic);
        }
        if n < PREAMBLE_LEN {
            return Err(Error::Truncated {
                offset: self.offset,
            });
        }
        let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        self.version = version;
        let reserved = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if reserved != 0 {
            return Err(Error::corrupt(
                12,
                format!("the reserved preamble word is {reserved:#x}, it must be 0"),
            ));
        }
        Ok(())
    }

    /// Reads a record header and checks everything checkable before its
    /// payload: header CRC, flags, length limit.
    fn read_record_header(&mut self) -> Result<(RecordHeader, [u8; RECORD_HEADER_LEN])> {
        let offset = self.offset;
        debug_assert_eq!(offset % RECORD_ALIGN as u64, 0);
        let mut raw = [0u8; RECORD_HEADER_LEN];
        self.read_exact_or_truncated(&mut raw)?;
        let head = RecordHeader::decode(&raw).map_err(|what| Error::corrupt(offset, what))?;
        let allowed = if head.kind == kind::PAGES {
            KNOWN_FLAGS | FLAG_COMPRESSED
        } else {
            KNOWN_FLAGS
        };
        if head.flags & !allowed != 0 {
            return Err(Error::UnsupportedFlags {
                kind: head.kind,
                flags: head.flags,
                offset,
            });
        }
        if head.len > MAX_RECORD_LEN {
            return Err(Error::corrupt(
                offset,
                format!(
                    "record {} (kind {:#x}) claims {} payload bytes, more than the limit of \
                     {MAX_RECORD_LEN}",
                    kind::name(head.kind),
                    head.kind,
                    head.len
                ),
            ));
        }
        Ok((head, raw))
    }

    /// Reads the payload of the record whose header was just read (at
    /// `offset`) into `buf`, then its padding, and verifies both.
    fn read_payload(&mut self, head: &RecordHeader, offset: u64) -> Result<()> {
        // Checked against MAX_RECORD_LEN by read_record_header.
        let len = head.len as usize;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let res = self.fill_payload(&mut buf, len);
        self.buf = buf;
        res?;

        let pad = padding_for(head.len);
        let mut padding = [0u8; RECORD_ALIGN];
        self.read_exact_or_truncated(&mut padding[..pad])?;
        if padding[..pad].iter().any(|&b| b != 0) {
            return Err(Error::corrupt(
                offset + RECORD_HEADER_LEN as u64 + head.len,
                format!(
                    "nonzero padding after the payload of record {} at byte {offset}",
                    kind::name(head.kind)
                ),
            ));
        }

        let crc = crc32c::crc32c(&self.buf);
        if crc != head.payload_crc {
            return Err(Error::corrupt(
                offset,
                format!(
                    "payload checksum mismatch in record {} (kind {:#x}, {} bytes): stored \
                     {:#010x}, computed {crc:#010x}",
                    kind::name(head.kind),
                    head.kind,
                    head.len,
                    head.payload_crc
                ),
            ));
        }
        Ok(())
    }

    /// Reads exactly `len` bytes into `buf` (empty on entry), growing it in
    /// steps of at most [`READ_STEP`] as data actually arrives.
    fn fill_payload(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<()> {
        while buf.len() < len {
            let start = buf.len();
            let step = (len - start).min(READ_STEP);
            buf.resize(start + step, 0);
            let n = self.read_full(&mut buf[start..])?;
            if n < step {
                buf.truncate(start + n);
                return Err(Error::Truncated {
                    offset: self.offset,
                });
            }
        }
        Ok(())
    }

    /// Verifies the tail payload now in `buf` (its record is at `offset`).
    fn check_tail(&mut self, offset: u64) -> Result<()> {
        let Some(tail) = Tail::decode(&self.buf) else {
            return Err(Error::corrupt(
                offset,
                format!(
                    "the tail record has {} payload bytes, expected {}",
                    self.buf.len(),
                    Tail::LEN
                ),
            ));
        };
        if tail.records != self.records {
            return Err(Error::corrupt(
                offset,
                format!(
                    "the tail counts {} records before it, but {} were read: records were \
                     lost or added",
                    tail.records, self.records
                ),
            ));
        }
        if tail.bytes != offset {
            return Err(Error::corrupt(
                offset,
                format!(
                    "the tail says it starts at byte {}, but it starts at byte {offset}: \
                     data was lost or added",
                    tail.bytes
                ),
            ));
        }
        let digest = self.digest.value();
        if tail.digest != digest {
            return Err(Error::corrupt(
                offset,
                format!(
                    "the stream digest is {digest:#018x}, but the tail says {:#018x}: \
                     records were altered, replaced or reordered",
                    tail.digest
                ),
            ));
        }
        self.tail = Some(tail);
        Ok(())
    }

    /// Confirms that the stream ends right after the tail.
    fn check_end(&mut self) -> Result<()> {
        let at = self.offset;
        let mut probe = [0u8; 1];
        if self.read_full(&mut probe)? != 0 {
            return Err(Error::corrupt(
                at,
                "data follows the tail record, which must end the image",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Writer;

    /// A record header claiming the maximum length on a stream that then
    /// ends: the reader must not have allocated the whole claimed length.
    #[test]
    fn huge_claim_on_truncated_stream_allocates_little() {
        let w = Writer::new(Vec::new(), &Header::default()).unwrap();
        let mut image = w.get_ref().clone();
        let head = RecordHeader {
            kind: kind::PROCESS,
            flags: 0,
            len: MAX_RECORD_LEN,
            payload_crc: 0,
        };
        image.extend_from_slice(&head.encode());
        image.extend_from_slice(&[1, 2, 3]);
        let mut r = Reader::new(&image[..]).unwrap();
        let err = r.next_record().unwrap_err();
        assert!(matches!(err, Error::Truncated { offset } if offset == image.len() as u64));
        assert!(r.buf.capacity() <= 2 * READ_STEP, "{}", r.buf.capacity());
    }

    #[test]
    fn over_limit_claim_allocates_nothing() {
        let w = Writer::new(Vec::new(), &Header::default()).unwrap();
        let image = w.get_ref().clone();
        let at = image.len() as u64;
        for len in [MAX_RECORD_LEN + 1, u64::MAX] {
            let mut img = image.clone();
            let head = RecordHeader {
                kind: kind::PAGES,
                flags: 0,
                len,
                payload_crc: 0,
            };
            img.extend_from_slice(&head.encode());
            img.extend_from_slice(&[0; 64]);
            let mut r = Reader::new(&img[..]).unwrap();
            let cap = r.buf.capacity();
            match r.next_record() {
                Err(Error::Corrupt { offset, what }) => {
                    assert_eq!(offset, at);
                    assert!(what.contains("limit"), "{what}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(r.buf.capacity(), cap);
        }
    }
}
