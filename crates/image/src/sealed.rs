//! Page data prepared for writing: zero pages dropped, records chosen and
//! checksummed where the data is still hot in cache.

use std::ops::Range;

use crate::chunk::{bitmap_len, PageChunkHead, CHUNK_SPARSE, PAGE_CHUNK_HEADER_LEN};
use crate::error::{Error, Result};
use crate::header::page_size_ok;
use crate::{MAX_RECORD_LEN, RECORD_HEADER_LEN, USER_ADDR_END};

/// Largest part of the buffer [`SealedPages::read_and_seal`] reads at a
/// time: small enough to stay in a core's L2 cache until it is sealed.
pub const READ_STEP: usize = 256 * 1024;

/// One PAGES record of a [`SealedPages`].
#[derive(Clone, Debug)]
pub(crate) struct SealedRecord {
    /// Its chunk header and, if sparse, bitmap: a range of `heads`.
    pub head: Range<usize>,
    /// Its page data: a range of `runs`.
    pub runs: Range<usize>,
    /// Bytes of page data.
    pub data_len: u64,
    /// CRC32C of the whole payload (head, then the runs' data).
    pub crc: u32,
}

/// A window of memory pages, as read from a process, made ready to be
/// written as PAGES records by [`Writer::write_sealed`](crate::Writer::write_sealed).
///
/// [`SealedPages::seal`] does all the per-byte work of writing pages: it
/// finds the all-zero pages (which an image never holds), chooses between
/// dense chunks (one per run of non-zero pages) and one sparse chunk for the
/// whole window, whichever is smaller, and computes each record's payload
/// CRC32C. Call it where the data is hot in cache (e.g. on the thread that
/// just read it), so that the writer is left with the writing alone.
///
/// The buffer is owned and cannot be changed while sealed, so the
/// checksums always match the data; [`into_buffer`](SealedPages::into_buffer)
/// gives it back for reuse.
#[derive(Debug)]
pub struct SealedPages {
    page_size: u32,
    addr: u64,
    buf: Vec<u8>,
    len: usize,
    /// Byte ranges of `buf` holding runs of non-zero pages, in order.
    pub(crate) runs: Vec<Range<usize>>,
    /// Chunk headers and bitmaps of the records, back to back.
    pub(crate) heads: Vec<u8>,
    pub(crate) records: Vec<SealedRecord>,
    pages: u64,
}

impl SealedPages {
    /// Seals `buf[..len]`, the contents of the pages at `addr ..
    /// addr + len` of address space `space`.
    ///
    /// Refused ([`Error::InvalidInput`]): an invalid page size, `len` beyond
    /// the buffer or not a whole number of pages, an unaligned address, a
    /// range that leaves the user address space or does not fit one record.
    pub fn seal(space: u32, addr: u64, buf: Vec<u8>, len: usize, page_size: u32) -> Result<Self> {
        Self::read_and_seal(space, addr, buf, len, page_size, |_, _| Ok::<(), Error>(()))
    }

    /// Like [`seal`](SealedPages::seal), but first fills the buffer: calls
    /// `read(address, part)` for consecutive parts of `buf[..len]` (whole
    /// pages, at most [`READ_STEP`] bytes each) and seals each part right
    /// after it was read, while it is still in this core's cache.
    ///
    /// Errors of `read` are returned as they are; the checks of `seal`
    /// come before any call of `read`.
    pub fn read_and_seal<E: From<Error>>(
        space: u32,
        addr: u64,
        mut buf: Vec<u8>,
        len: usize,
        page_size: u32,
        mut read: impl FnMut(u64, &mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        if !page_size_ok(page_size) {
            return Err(
                Error::InvalidInput(format!("the page size {page_size} is invalid")).into(),
            );
        }
        let ps = page_size as usize;
        if len > buf.len() || !len.is_multiple_of(ps) || !addr.is_multiple_of(ps as u64) {
            return Err(Error::InvalidInput(format!(
                "cannot seal {len} bytes of a {}-byte buffer as pages at {addr:#x}: not a \
                 page-aligned whole number of {page_size}-byte pages inside the buffer",
                buf.len()
            ))
            .into());
        }
        let window = (len / ps) as u64;
        let end = addr.saturating_add(len as u64);
        let largest = len as u64 + (PAGE_CHUNK_HEADER_LEN as u64) + bitmap_len(window);
        if end > USER_ADDR_END || largest > MAX_RECORD_LEN {
            return Err(Error::InvalidInput(format!(
                "cannot seal pages {addr:#x}..{end:#x}: beyond the user address space or \
                 too many for one record"
            ))
            .into());
        }

        // Runs of non-zero pages. Each page is checksummed right after the
        // zero test read it, into one running CRC32C of all non-zero data;
        // `ends[k]` is its value at the end of run k.
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut ends: Vec<u32> = Vec::new();
        let mut chain = 0u32;
        let step = READ_STEP.max(ps) / ps * ps;
        for (p, part) in buf[..len].chunks_mut(step).enumerate() {
            read(addr + (p * step) as u64, part)?;
            for (i, page) in part.chunks_exact(ps).enumerate() {
                if is_zero(page) {
                    continue;
                }
                chain = crc32c::crc32c_append(chain, page);
                let at = p * step + i * ps;
                match runs.last_mut() {
                    Some(r) if r.end == at => {
                        r.end += ps;
                        *ends.last_mut().expect("one CRC per run") = chain;
                    }
                    _ => {
                        runs.push(at..at + ps);
                        ends.push(chain);
                    }
                }
            }
        }
        let pages = runs.iter().map(|r| (r.len() / ps) as u64).sum();
        let mut sealed = SealedPages {
            page_size,
            addr,
            buf,
            len,
            runs,
            heads: Vec::new(),
            records: Vec::new(),
            pages,
        };
        let (Some(first), Some(last)) = (sealed.runs.first(), sealed.runs.last()) else {
            return Ok(sealed);
        };

        // Dense chunks cost a record and a chunk header per run; a sparse
        // chunk costs one of each plus the bitmap of its window (the
        // payloads stay 8-byte aligned either way: no padding).
        let framing = (RECORD_HEADER_LEN + PAGE_CHUNK_HEADER_LEN) as u64;
        let (w0, w1) = (first.start / ps, last.end / ps);
        let wpages = (w1 - w0) as u64;
        let dense_cost = framing * sealed.runs.len() as u64;
        let sparse_cost = framing + bitmap_len(wpages);
        if sealed.runs.len() > 1 && sparse_cost < dense_cost {
            let head = PageChunkHead {
                space,
                flags: CHUNK_SPARSE,
                addr: addr + (w0 * ps) as u64,
                nr_pages: wpages,
            };
            sealed.heads.extend_from_slice(&head.encode());
            let bitmap_at = sealed.heads.len();
            sealed
                .heads
                .resize(bitmap_at + bitmap_len(wpages) as usize, 0);
            for r in &sealed.runs {
                for p in r.start / ps..r.end / ps {
                    let i = p - w0;
                    sealed.heads[bitmap_at + i / 8] |= 1 << (i % 8);
                }
            }
            let data_len = pages * ps as u64;
            sealed.records.push(SealedRecord {
                head: 0..sealed.heads.len(),
                runs: 0..sealed.runs.len(),
                data_len,
                crc: crc_concat(crc32c::crc32c(&sealed.heads), chain, data_len),
            });
        } else {
            let mut before = 0u32;
            for (i, (r, &end)) in sealed.runs.iter().zip(&ends).enumerate() {
                // The running CRC after the run, less the data before it.
                let c = end ^ crc_shift(before, r.len() as u64);
                before = end;
                let head = PageChunkHead {
                    space,
                    flags: 0,
                    addr: addr + r.start as u64,
                    nr_pages: (r.len() / ps) as u64,
                }
                .encode();
                let at = sealed.heads.len();
                sealed.heads.extend_from_slice(&head);
                sealed.records.push(SealedRecord {
                    head: at..at + head.len(),
                    runs: i..i + 1,
                    data_len: r.len() as u64,
                    crc: crc_concat(crc32c::crc32c(&head), c, r.len() as u64),
                });
            }
        }
        Ok(sealed)
    }

    /// The page size the pages were sealed with.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Address of the first page of the window.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Bytes of the window (sealed and zero pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages of the window that are not all zero (and so are written).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages of the window that are all zero (and so are not written).
    pub fn zero_pages(&self) -> u64 {
        (self.len / self.page_size as usize) as u64 - self.pages
    }

    /// Number of PAGES records the window becomes.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// The data of the runs of record `rec`, in order.
    pub(crate) fn record_data<'a>(
        &'a self,
        rec: &SealedRecord,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.runs[rec.runs.clone()]
            .iter()
            .map(move |r| &self.buf[r.clone()])
    }

    /// Gives the buffer back (its first `len` bytes hold the pages).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// The CRC32C polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC polynomial, both bit-reflected.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            return p;
        }
    }
}

/// `X2N[k]` is x^(2^k) modulo the CRC polynomial.
const X2N: [u32; 64] = {
    let mut t = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        t[k] = p;
        p = mul_mod_p(p, p);
        k += 1;
    }
    t
};

/// The CRC32C register value `crc` advanced over `len` zero bytes without
/// the pre- and post-inversion: what `crc` contributes to the CRC of a
/// longer message that has `len` more bytes after it. O(log len).
fn crc_shift(crc: u32, len: u64) -> u32 {
    // x^(8 * len) = product of x^(2^(k+3)) over the bits k of len.
    let mut p = 1u32 << 31; // x^0
    let (mut n, mut k) = (len, 3);
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k % 64], p);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(p, crc)
}

/// The CRC32C of `A` then `B`, from the CRC32C of each and the length of
/// `B` (what `crc32c::crc32c_combine` computes, in O(log len) time instead
/// of O(log len) 32x32 matrix squarings).
fn crc_concat(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc_shift(crc_a, len_b) ^ crc_b
}

/// Whether `page` is all zero bytes.
fn is_zero(page: &[u8]) -> bool {
    // Most pages that are not zero show it in their first bytes.
    if page.iter().take(64).any(|&b| b != 0) {
        return false;
    }
    // Word-wise OR over the whole page: the compiler vectorizes this.
    let words = page.chunks_exact(8);
    let rest = words.remainder();
    words.fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8-byte chunks"))
    }) == 0
        && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::PageChunk;

    const PS: usize = 4096;

    /// The payloads the records of `s` carry, as the reader would see them.
    fn payloads(s: &SealedPages) -> Vec<Vec<u8>> {
        s.records
            .iter()
            .map(|r| {
                let mut p = s.heads[r.head.clone()].to_vec();
                for d in s.record_data(r) {
                    p.extend_from_slice(d);
                }
                assert_eq!(p.len() - r.head.len(), r.data_len as usize);
                assert_eq!(crc32c::crc32c(&p), r.crc);
                p
            })
            .collect()
    }

    fn window(nonzero: &[bool]) -> Vec<u8> {
        let mut buf = vec![0u8; nonzero.len() * PS + 3 * PS];
        for (i, &nz) in nonzero.iter().enumerate() {
            if nz {
                buf[i * PS + (i * 7) % PS] = i as u8 | 1;
            }
        }
        buf
    }

    #[test]
    fn sparse_window_round_trips() {
        let pattern: Vec<bool> = (0..200).map(|i| (i * 37) % 5 < 2 && i > 2).collect();
        let buf = window(&pattern);
        let s = SealedPages::seal(3, 0x10_0000, buf.clone(), pattern.len() * PS, 4096).unwrap();
        assert_eq!(s.records(), 1);
        let p = &payloads(&s)[0];
        let c = PageChunk::parse(p, 4096).unwrap();
        assert!(c.is_sparse());
        let n = pattern.iter().filter(|&&b| b).count();
        assert_eq!((c.nr_pages, s.pages()), (n as u64, n as u64));
        assert_eq!(s.zero_pages(), (pattern.len() - n) as u64);
        let first = pattern.iter().position(|&b| b).unwrap();
        let last = pattern.iter().rposition(|&b| b).unwrap();
        assert_eq!(c.addr, 0x10_0000 + (first * PS) as u64);
        assert_eq!(c.end(), 0x10_0000 + ((last + 1) * PS) as u64);
        let mut seen = 0;
        for (a, d) in c.runs() {
            let off = (a - 0x10_0000) as usize;
            assert_eq!(d, &buf[off..off + d.len()]);
            seen += d.len() / PS;
        }
        assert_eq!(seen, n);
        assert_eq!(s.into_buffer(), buf);
    }

    #[test]
    fn few_runs_stay_dense() {
        let mut pattern = vec![true; 10];
        pattern.extend([false; 2000]);
        pattern.extend([true; 5]);
        let buf = window(&pattern);
        let s = SealedPages::seal(0, 0, buf, pattern.len() * PS, 4096).unwrap();
        let ps = payloads(&s);
        assert_eq!(ps.len(), 2);
        let c: Vec<PageChunk> = ps
            .iter()
            .map(|p| PageChunk::parse(p, 4096).unwrap())
            .collect();
        assert!(!c[0].is_sparse() && !c[1].is_sparse());
        assert_eq!((c[0].addr, c[0].nr_pages), (0, 10));
        assert_eq!((c[1].addr, c[1].nr_pages), (2010 * PS as u64, 5));
    }

    #[test]
    fn zero_and_full_windows() {
        let s = SealedPages::seal(0, 0x1000, vec![0; 8 * PS], 8 * PS, 4096).unwrap();
        assert_eq!((s.records(), s.pages(), s.zero_pages()), (0, 0, 8));
        let s = SealedPages::seal(0, 0x1000, vec![1; 8 * PS], 4 * PS, 4096).unwrap();
        assert_eq!((s.records(), s.pages()), (1, 4));
        let c = PageChunk::parse(&payloads(&s)[0], 4096).unwrap().nr_pages;
        assert_eq!(c, 4);
    }

    #[test]
    fn crc_concat_matches_the_direct_crc() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for (a, b) in [
            (0, 0),
            (0, 5),
            (5, 0),
            (1, 1),
            (100, 4096),
            (4096, 12_000),
            (7, 19_993),
        ] {
            let (x, y) = (&data[..a], &data[a..a + b]);
            let whole = crc32c::crc32c(&data[..a + b]);
            let (ca, cb) = (crc32c::crc32c(x), crc32c::crc32c(y));
            assert_eq!(crc_concat(ca, cb, b as u64), whole, "{a} {b}");
            assert_eq!(crc32c::crc32c_combine(ca, cb, b), whole);
            assert_eq!(whole ^ crc_shift(ca, b as u64), cb);
        }
    }

    #[test]
    fn bad_input_is_refused() {
        for (addr, len, ps) in [
            (0, 100, 4096),
            (0x800, 4096, 4096),
            (0, 4096, 1000),
            (0, 3 * 4096, 4096),
            (USER_ADDR_END - 4096, 2 * 4096, 4096),
        ] {
            let r = SealedPages::seal(0, addr, vec![1; 2 * 4096], len, ps);
            assert!(
                matches!(r, Err(Error::InvalidInput(_))),
                "{addr:#x} {len} {ps}"
            );
        }
    }
}
