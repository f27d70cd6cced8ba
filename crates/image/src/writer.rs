//! Writing an image stream.

use std::io::Write;

use crate::chunk::{FileData, FileDataHead, PageChunk, PageChunkHead};
use crate::chunk::{FILE_DATA_HEADER_LEN, PAGE_CHUNK_HEADER_LEN};
use crate::digest::StreamDigest;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::record::{padding_for, RecordHeader, Tail};
use crate::{
    kind, FLAG_COMPRESSED, FORMAT_VERSION, KNOWN_FLAGS, MAGIC, MAX_RECORD_LEN, PREAMBLE_LEN,
    RECORD_ALIGN, RECORD_HEADER_LEN,
};

/// Payload parts up to this size are copied next to the record header (or
/// the padding) and written together with it; larger parts are written
/// straight from the caller's memory.
const COALESCE_MAX: usize = 4096;
/// Flush the coalescing buffer when it holds more than this.
const SCRATCH_FLUSH: usize = 64 * 1024;

/// Writes an image stream front to back.
///
/// [`Writer::new`] writes the preamble and the HEADER record; each
/// `write_*` call writes one record; [`Writer::finish`] writes the TAIL and
/// flushes. The writer issues few, large writes (at most about three per
/// record: header with small parts, each large part, padding with trailing
/// small parts) and does no buffering of its own: wrap a file or socket in a
/// [`std::io::BufWriter`] if you write many small records.
///
/// If a write to the underlying stream fails, the image is incomplete and the
/// writer refuses further records ([`Error::InvalidInput`]). An image that
/// was not [`finish`](Writer::finish)ed has no tail and every reader refuses
/// it.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    page_size: u32,
    offset: u64,
    records: u64,
    digest: StreamDigest,
    scratch: Vec<u8>,
    /// Reused output buffer for compression.
    zbuf: Vec<u8>,
    failed: bool,
}

impl<W: Write> Writer<W> {
    /// Validates `header`, then writes the preamble and the HEADER record.
    pub fn new(w: W, header: &Header) -> Result<Self> {
        let payload = header.encode()?;
        let mut writer = Writer {
            w,
            page_size: header.page_size,
            offset: 0,
            records: 0,
            digest: StreamDigest::new(),
            scratch: Vec::with_capacity(COALESCE_MAX + RECORD_HEADER_LEN + RECORD_ALIGN),
            zbuf: Vec::new(),
            failed: false,
        };
        let mut preamble = [0u8; PREAMBLE_LEN];
        preamble[..8].copy_from_slice(&MAGIC);
        preamble[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // preamble[12..16]: reserved, zero.
        writer.w.write_all(&preamble)?;
        writer.offset = PREAMBLE_LEN as u64;
        writer.emit(kind::HEADER, 0, &[&payload])?;
        Ok(writer)
    }

    /// Writes one record of `kind` with `flags` and `payload`; returns the
    /// stream offset of its header.
    ///
    /// See [`Writer::write_record_parts`] for what is refused.
    pub fn write_record(&mut self, kind: u32, flags: u32, payload: &[u8]) -> Result<u64> {
        self.write_record_parts(kind, flags, &[payload])
    }

    /// Writes one record whose payload is the concatenation of `parts`;
    /// returns the stream offset of its header.
    ///
    /// The CRC is computed over the parts in turn and large parts are written
    /// straight to the stream, never copied. Refused with
    /// [`Error::InvalidInput`]: kinds HEADER and TAIL (the writer writes
    /// those), flags outside [`KNOWN_FLAGS`], a payload longer than
    /// [`MAX_RECORD_LEN`]. PAGES and FILE_DATA payloads are validated like the
    /// reader does ([`Error::BadChunk`]). Other kinds, including kinds this
    /// crate does not know, are written as given.
    pub fn write_record_parts(&mut self, kind: u32, flags: u32, parts: &[&[u8]]) -> Result<u64> {
        if kind == kind::HEADER || kind == kind::TAIL {
            return Err(Error::InvalidInput(format!(
                "records of kind {} are written by the writer itself",
                kind::name(kind)
            )));
        }
        if flags & !KNOWN_FLAGS != 0 {
            let what = if flags & FLAG_COMPRESSED != 0 {
                "compression (flag bit 1) is not supported by this format version".to_string()
            } else {
                format!("record flags {:#x} are not defined", flags & !KNOWN_FLAGS)
            };
            return Err(Error::InvalidInput(what));
        }
        let len = payload_len(parts)?;
        match kind {
            kind::PAGES => {
                let head = prefix::<PAGE_CHUNK_HEADER_LEN>(parts).ok_or_else(|| {
                    Error::chunk(
                        self.offset,
                        "PAGES payload is shorter than its chunk header",
                    )
                })?;
                PageChunkHead::decode(&head)
                    .check(len - PAGE_CHUNK_HEADER_LEN as u64, self.page_size)
                    .map_err(|w| Error::chunk(self.offset, w))?;
            }
            kind::FILE_DATA => {
                let head = prefix::<FILE_DATA_HEADER_LEN>(parts).ok_or_else(|| {
                    Error::chunk(
                        self.offset,
                        "FILE_DATA payload is shorter than its chunk header",
                    )
                })?;
                FileDataHead::decode(&head)
                    .check(len - FILE_DATA_HEADER_LEN as u64)
                    .map_err(|w| Error::chunk(self.offset, w))?;
            }
            _ => {}
        }
        self.emit(kind, flags, parts)
    }

    /// Writes a PAGES record for `page_data` (a whole number of pages, at
    /// least one) mapped at `addr` in address space `space`; returns the
    /// stream offset of the record header. The page data is written straight
    /// from `page_data`, not copied.
    pub fn write_pages(&mut self, space: u32, addr: u64, page_data: &[u8]) -> Result<u64> {
        let chunk =
            PageChunk::new(space, addr, page_data, self.page_size).map_err(|e| match e {
                Error::BadChunk { what, .. } => Error::chunk(self.offset, what),
                other => other,
            })?;
        self.write_page_chunk(&chunk)
    }

    /// Like [`Writer::write_pages`], but LZ4-compresses the page data when
    /// that saves at least 1/16 of it (otherwise writes it as it is).
    pub fn write_pages_compressed(
        &mut self,
        space: u32,
        addr: u64,
        page_data: &[u8],
    ) -> Result<u64> {
        let chunk =
            PageChunk::new(space, addr, page_data, self.page_size).map_err(|e| match e {
                Error::BadChunk { what, .. } => Error::chunk(self.offset, what),
                other => other,
            })?;
        let max = lz4_flex::block::get_maximum_output_size(page_data.len());
        let mut z = std::mem::take(&mut self.zbuf);
        z.resize(max, 0);
        let n = lz4_flex::block::compress_into(page_data, &mut z)
            .map_err(|e| Error::InvalidInput(format!("compressing a page chunk: {e}")))?;
        let r = if n < page_data.len() - page_data.len() / 16 {
            let head = chunk.header_bytes();
            self.emit(kind::PAGES, FLAG_COMPRESSED, &[&head, &z[..n]])
        } else {
            self.write_page_chunk(&chunk)
        };
        self.zbuf = z;
        r
    }

    /// Writes a PAGES record for `chunk` (validated against the image's page
    /// size); returns the stream offset of the record header.
    pub fn write_page_chunk(&mut self, chunk: &PageChunk<'_>) -> Result<u64> {
        let head = chunk.header_bytes();
        self.write_record_parts(kind::PAGES, 0, &[&head, chunk.data])
    }

    /// Writes a FILE_DATA record: `bytes` at `offset` of file object
    /// `object`; returns the stream offset of the record header.
    pub fn write_file_data(&mut self, object: u64, offset: u64, bytes: &[u8]) -> Result<u64> {
        let data = FileData::new(object, offset, bytes).map_err(|e| match e {
            Error::BadChunk { what, .. } => Error::chunk(self.offset, what),
            other => other,
        })?;
        let head = data.header_bytes();
        self.write_record_parts(kind::FILE_DATA, 0, &[&head, bytes])
    }

    /// Bytes written to the stream so far (preamble included).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Records written so far, the HEADER record included.
    pub fn records_written(&self) -> u64 {
        self.records
    }

    /// The page size declared in the header.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// Writes the TAIL record, flushes the stream and returns it.
    pub fn finish(mut self) -> Result<W> {
        let tail = Tail {
            records: self.records,
            bytes: self.offset,
            digest: self.digest.value(),
        };
        self.emit(kind::TAIL, 0, &[&tail.encode()])?;
        self.w.flush()?;
        Ok(self.w)
    }

    /// Frames and writes one record. Kind and flags are not checked here.
    fn emit(&mut self, kind: u32, flags: u32, parts: &[&[u8]]) -> Result<u64> {
        if self.failed {
            return Err(Error::InvalidInput(
                "an earlier write to the image stream failed; the image is incomplete and \
                 cannot be continued"
                    .into(),
            ));
        }
        let len = payload_len(parts)?;
        let payload_crc = parts
            .iter()
            .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
        let header = RecordHeader {
            kind,
            flags,
            len,
            payload_crc,
        }
        .encode();
        let pad = padding_for(len);
        let offset = self.offset;

        // Until the record is completely written, the stream is unusable.
        self.failed = true;
        self.scratch.clear();
        self.scratch.extend_from_slice(&header);
        for part in parts {
            if part.len() <= COALESCE_MAX {
                self.scratch.extend_from_slice(part);
                if self.scratch.len() > SCRATCH_FLUSH {
                    self.w.write_all(&self.scratch)?;
                    self.scratch.clear();
                }
            } else {
                if !self.scratch.is_empty() {
                    self.w.write_all(&self.scratch)?;
                    self.scratch.clear();
                }
                self.w.write_all(part)?;
            }
        }
        self.scratch.extend_from_slice(&[0u8; RECORD_ALIGN][..pad]);
        if !self.scratch.is_empty() {
            self.w.write_all(&self.scratch)?;
            self.scratch.clear();
        }
        if self.scratch.capacity() > 2 * SCRATCH_FLUSH {
            self.scratch.shrink_to(2 * SCRATCH_FLUSH);
        }
        self.failed = false;

        self.offset += RECORD_HEADER_LEN as u64 + len + pad as u64;
        if kind != kind::TAIL {
            self.records += 1;
            self.digest.update(&header);
        }
        Ok(offset)
    }
}

/// Total payload length of `parts`, refused above [`MAX_RECORD_LEN`].
fn payload_len(parts: &[&[u8]]) -> Result<u64> {
    let mut len: u64 = 0;
    for part in parts {
        len = len.saturating_add(part.len() as u64);
    }
    if len > MAX_RECORD_LEN {
        return Err(Error::InvalidInput(format!(
            "a record payload of {len} bytes exceeds the limit of {MAX_RECORD_LEN} bytes; \
             split it into several records"
        )));
    }
    Ok(len)
}

/// The first `N` bytes of the concatenation of `parts`, if there are that
/// many.
fn prefix<const N: usize>(parts: &[&[u8]]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    for part in parts {
        if filled == N {
            break;
        }
        let n = part.len().min(N - filled);
        out[filled..filled + n].copy_from_slice(&part[..n]);
        filled += n;
    }
    (filled == N).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_spans_parts() {
        let parts: [&[u8]; 4] = [b"ab", b"", b"cde", b"fgh"];
        assert_eq!(prefix::<0>(&parts), Some([]));
        assert_eq!(prefix::<4>(&parts), Some(*b"abcd"));
        assert_eq!(prefix::<8>(&parts), Some(*b"abcdefgh"));
        assert_eq!(prefix::<9>(&parts), None);
    }

    #[test]
    fn oversized_payload_is_refused_without_writing() {
        let mib = vec![0u8; 1 << 20];
        let parts: Vec<&[u8]> = std::iter::repeat_n(&mib[..], 65).collect();
        let mut w = Writer::new(Vec::new(), &Header::default()).unwrap();
        let before = w.bytes_written();
        let err = w.write_record_parts(kind::PROCESS, 0, &parts).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert_eq!(w.bytes_written(), before);
        assert_eq!(w.get_ref().len() as u64, before);
        // Still usable.
        w.write_record(kind::PROCESS, 0, b"x").unwrap();
        w.finish().unwrap();
    }
}
