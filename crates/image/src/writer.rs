//! Writing an image stream.

use std::io::{ErrorKind, IoSlice, Write};

use crate::chunk::{FileData, FileDataHead, PageChunk, PageChunkHead};
use crate::chunk::{FILE_DATA_HEADER_LEN, PAGE_CHUNK_HEADER_LEN};
use crate::digest::StreamDigest;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::record::{padding_for, RecordHeader, Tail};
use crate::sealed::{SealedPages, SealedRecord};
use crate::{
    kind, FLAG_COMPRESSED, FORMAT_VERSION, KNOWN_FLAGS, MAGIC, MAX_RECORD_LEN, PREAMBLE_LEN,
    RECORD_ALIGN, RECORD_HEADER_LEN,
};

/// Bytes of a chunk compressed first to judge whether the rest is worth
/// compressing.
const COMPRESS_SAMPLE: usize = 64 * 1024;

/// Whether LZ4 saves at least 1/16 of `data` (`zbuf`: room to compress
/// into).
fn shrinks(zbuf: &mut Vec<u8>, data: &[u8]) -> Result<bool> {
    zbuf.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
    let n = lz4_flex::block::compress_into(data, zbuf)
        .map_err(|e| Error::InvalidInput(format!("compressing a page chunk: {e}")))?;
    Ok(n < data.len() - data.len() / 16)
}

/// Writes an image stream front to back.
///
/// [`Writer::new`] writes the preamble and the HEADER record; each
/// `write_*` call writes one record (or, for
/// [`write_sealed`](Writer::write_sealed), a few); [`Writer::finish`] writes
/// the TAIL and flushes. Each record goes out as one vectored write
/// (`write_vectored`, repeated only on short writes) of its header, the
/// payload parts straight from the caller's memory, and the padding; the
/// writer does no buffering of its own: wrap a file or socket in a
/// [`std::io::BufWriter`] if you write many small records (and give the
/// stream a `write_vectored` if it can do better than one slice at a time).
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
    /// Reused output buffer for compression.
    zbuf: Vec<u8>,
    /// Reused input buffer for compressing a sparse chunk's page data.
    gbuf: Vec<u8>,
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
            zbuf: Vec::new(),
            gbuf: Vec::new(),
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
                let head = PageChunkHead::decode(&head);
                let rest_len = len - PAGE_CHUNK_HEADER_LEN as u64;
                // The bitmap of a sparse chunk (or as much as there is).
                let want = head.bitmap_len().unwrap_or(u64::MAX).min(rest_len) as usize;
                let front = gather(parts, PAGE_CHUNK_HEADER_LEN + want);
                let bad = |w| Error::chunk(self.offset, w);
                let frame = head
                    .check_frame(&front[PAGE_CHUNK_HEADER_LEN..], self.page_size)
                    .map_err(bad)?;
                head.check_data_len(frame, rest_len - frame.bitmap_len as u64, self.page_size)
                    .map_err(bad)?;
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
        let bitmap = chunk.present.unwrap_or_default();
        self.write_record_parts(kind::PAGES, 0, &[&head, bitmap, chunk.data])
    }

    /// Like [`Writer::write_page_chunk`], but LZ4-compresses the chunk's
    /// page data (the chunk header and the bitmap of a sparse chunk stay
    /// as they are) when that saves at least 1/16 of it.
    pub fn write_page_chunk_compressed(&mut self, chunk: &PageChunk<'_>) -> Result<u64> {
        let mut z = std::mem::take(&mut self.zbuf);
        z.resize(
            lz4_flex::block::get_maximum_output_size(chunk.data.len()),
            0,
        );
        let n = lz4_flex::block::compress_into(chunk.data, &mut z)
            .map_err(|e| Error::InvalidInput(format!("compressing a page chunk: {e}")))?;
        let r = if n < chunk.data.len() - chunk.data.len() / 16 {
            let head = chunk.header_bytes();
            let bitmap = chunk.present.unwrap_or_default();
            self.emit(kind::PAGES, FLAG_COMPRESSED, &[&head, bitmap, &z[..n]])
        } else {
            self.write_page_chunk(chunk)
        };
        self.zbuf = z;
        r
    }

    /// Writes the PAGES records of `pages` (none if all its pages are zero)
    /// with the checksums computed when they were sealed; returns the number
    /// of records written.
    ///
    /// With `compress`, each record's page data is LZ4-compressed when that
    /// saves at least 1/16 of it, like
    /// [`write_pages_compressed`](Writer::write_pages_compressed) does (for a
    /// sparse chunk: the data of its present pages; its header and bitmap
    /// stay uncompressed), and the checksum of a compressed payload is
    /// computed here.
    ///
    /// Refused ([`Error::InvalidInput`]) if `pages` was sealed with another
    /// page size than the image's.
    pub fn write_sealed(&mut self, pages: &SealedPages, compress: bool) -> Result<usize> {
        if pages.page_size() != self.page_size {
            return Err(Error::InvalidInput(format!(
                "pages sealed with page size {} cannot go into an image of page size {}",
                pages.page_size(),
                self.page_size
            )));
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for rec in &pages.records {
            parts.clear();
            parts.push(&pages.heads[rec.head.clone()]);
            parts.extend(pages.record_data(rec));
            if compress && self.write_sealed_compressed(pages, rec, &parts)? {
                continue;
            }
            self.emit_with_crc(kind::PAGES, 0, &parts, rec.crc)?;
        }
        Ok(pages.records.len())
    }

    /// Writes record `rec` of `pages` (whose parts are `parts`: head, then
    /// data) compressed if that is worth it; returns whether it did.
    fn write_sealed_compressed(
        &mut self,
        pages: &SealedPages,
        rec: &SealedRecord,
        parts: &[&[u8]],
    ) -> Result<bool> {
        // Random memory does not compress, and trying (or gathering the
        // runs of a sparse chunk) costs as much CPU as writing it: judge a
        // chunk by the start of its data first.
        let total: usize = parts[1..].iter().map(|p| p.len()).sum();
        let first = parts.get(1).copied().unwrap_or_default();
        let sample = &first[..first.len().min(COMPRESS_SAMPLE)];
        if sample.len() < total && !shrinks(&mut self.zbuf, sample)? {
            return Ok(false);
        }
        let data = match &parts[1..] {
            [one] => *one,
            many => {
                self.gbuf.clear();
                for d in many {
                    self.gbuf.extend_from_slice(d);
                }
                &self.gbuf[..]
            }
        };
        let max = lz4_flex::block::get_maximum_output_size(data.len());
        self.zbuf.resize(max, 0);
        let n = lz4_flex::block::compress_into(data, &mut self.zbuf)
            .map_err(|e| Error::InvalidInput(format!("compressing a page chunk: {e}")))?;
        debug_assert_eq!(data.len() as u64, rec.data_len);
        if n >= data.len() - data.len() / 16 {
            return Ok(false);
        }
        let z = std::mem::take(&mut self.zbuf);
        let r = self.emit(
            kind::PAGES,
            FLAG_COMPRESSED,
            &[&pages.heads[rec.head.clone()], &z[..n]],
        );
        self.zbuf = z;
        r.map(|_| true)
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
    pub fn finish(self) -> Result<W> {
        self.finish_digest().map(|(w, _)| w)
    }

    /// [`finish`](Writer::finish), also returning the digest the tail
    /// records (what names the image as a parent).
    pub fn finish_digest(mut self) -> Result<(W, u64)> {
        let tail = Tail {
            records: self.records,
            bytes: self.offset,
            digest: self.digest.value(),
        };
        self.emit(kind::TAIL, 0, &[&tail.encode()])?;
        self.w.flush()?;
        Ok((self.w, tail.digest))
    }

    /// Frames and writes one record. Kind and flags are not checked here.
    fn emit(&mut self, kind: u32, flags: u32, parts: &[&[u8]]) -> Result<u64> {
        let payload_crc = parts
            .iter()
            .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
        self.emit_with_crc(kind, flags, parts, payload_crc)
    }

    /// Frames and writes one record whose payload CRC32C (over the
    /// concatenated `parts`) is `payload_crc`; the caller guarantees it
    /// (computed here by `emit`, or sealed with the data in
    /// [`SealedPages`]).
    fn emit_with_crc(
        &mut self,
        kind: u32,
        flags: u32,
        parts: &[&[u8]],
        payload_crc: u32,
    ) -> Result<u64> {
        if self.failed {
            return Err(Error::InvalidInput(
                "an earlier write to the image stream failed; the image is incomplete and \
                 cannot be continued"
                    .into(),
            ));
        }
        let len = payload_len(parts)?;
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
        let zeros = [0u8; RECORD_ALIGN];
        let mut slices = Vec::with_capacity(parts.len() + 2);
        slices.push(IoSlice::new(&header));
        slices.extend(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        if pad > 0 {
            slices.push(IoSlice::new(&zeros[..pad]));
        }
        write_all_vectored(&mut self.w, &mut slices)?;
        self.failed = false;

        self.offset += RECORD_HEADER_LEN as u64 + len + pad as u64;
        if kind != kind::TAIL {
            self.records += 1;
            self.digest.update(&header);
        }
        Ok(offset)
    }
}

/// Writes all of `slices` with as few `write_vectored` calls as the stream
/// allows.
fn write_all_vectored<W: Write>(w: &mut W, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::WriteZero,
                    "the image stream accepts no more data",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

/// The first `n` bytes of the concatenation of `parts` (fewer if there
/// are not that many).
fn gather(parts: &[&[u8]], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for part in parts {
        let take = part.len().min(n - out.len());
        out.extend_from_slice(&part[..take]);
        if out.len() == n {
            break;
        }
    }
    out
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
