//! Building an image from what a pre-copied migration sent: the metadata
//! (a complete image without pages), the copy of the source's page spool,
//! and the windows saying which spool bytes make each page chunk.
//!
//! The destination writes the image itself: the metadata records are
//! verified by the image reader (checksums, tail digest) and written
//! again, then the page chunks are sealed from the spool.  The restore
//! then reads that image like any other.

use crate::dump::precopy::Window;
use crate::error::{Error, Result};
use crest_image::{Reader, SealedPages, Writer};
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Encodes windows: per window `space u32, addr u64, pages u64, n u32`,
/// then `n` pieces of `addr u64, pages u64, spool offset u64`.
pub fn encode_windows(ws: &[Window], out: &mut Vec<u8>) {
    for w in ws {
        out.extend_from_slice(&w.space.to_le_bytes());
        out.extend_from_slice(&w.addr.to_le_bytes());
        out.extend_from_slice(&w.pages.to_le_bytes());
        out.extend_from_slice(&(w.pieces.len() as u32).to_le_bytes());
        for &(a, n, off) in &w.pieces {
            for v in [a, n, off] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Bytes of one encoded window.
pub fn encoded_len(w: &Window) -> usize {
    24 + 24 * w.pieces.len()
}

struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.0.len() < N {
            return Err(Error::msg("malformed page window list"));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

/// Decodes windows, checking that every piece lies in its window and in
/// the first `spooled` bytes of the spool (pages of size `ps`).
pub fn decode_windows(b: &[u8], ps: u64, spooled: u64, out: &mut Vec<Window>) -> Result<()> {
    let mut c = Cur(b);
    let bad = |what: &str| Error::msg(format!("page window list: {what}"));
    while !c.0.is_empty() {
        let space = c.u32()?;
        let addr = c.u64()?;
        let pages = c.u64()?;
        let n = c.u32()? as usize;
        if pages == 0 || pages > 1 << 20 || n as u64 > pages {
            return Err(bad("a window of impossible size"));
        }
        let end = pages
            .checked_mul(ps)
            .and_then(|l| addr.checked_add(l))
            .ok_or_else(|| bad("a window past the address space"))?;
        let mut pieces = Vec::with_capacity(n);
        let mut last = addr;
        for _ in 0..n {
            let (a, k, off) = (c.u64()?, c.u64()?, c.u64()?);
            let len = k.checked_mul(ps).ok_or_else(|| bad("a piece too large"))?;
            if a < last || k == 0 || a.checked_add(len).is_none_or(|e| e > end) {
                return Err(bad("a piece outside its window or out of order"));
            }
            if off.checked_add(len).is_none_or(|e| e > spooled) {
                return Err(bad("a piece beyond the pages received"));
            }
            last = a + len;
            pieces.push((a, k, off));
        }
        out.push(Window {
            space,
            addr,
            pages,
            pieces,
        });
    }
    Ok(())
}

/// Writes the image: the records of `meta` (a complete image without
/// pages), then `pages` writes the page chunks, then the tail.
pub fn build<W: Write>(
    meta: &[u8],
    out: W,
    pages: impl FnOnce(&mut Writer<W>) -> Result<()>,
) -> Result<W> {
    let mut r = Reader::new(meta)?;
    let mut w = Writer::new(out, r.header())?;
    while let Some(rec) = r.next_record()? {
        w.write_record(rec.kind, rec.flags, rec.payload)?;
    }
    pages(&mut w)?;
    Ok(w.finish()?)
}

/// The model of a metadata image (checked as the restore checks it).
pub fn model(meta: &[u8]) -> Result<crate::model::Checkpoint> {
    let mut r = Reader::new(meta)?;
    crate::codec::check_header(r.header())?;
    let mut m = crate::codec::ModelReader::new(r.format_version());
    while let Some(rec) = r.next_record()? {
        if m.is_model(rec.kind) {
            m.feed(&rec)?;
        }
    }
    m.take()
}

/// Writes the page chunks of `windows` from `spool`.
pub fn write_windows<W: Write>(
    w: &mut Writer<W>,
    windows: &[Window],
    spool: &std::fs::File,
) -> Result<u64> {
    let ps = w.page_size() as u64;
    let mut buf = Vec::new();
    let mut pages = 0;
    for win in windows {
        let len = (win.pages * ps) as usize;
        buf.clear();
        buf.resize(len, 0);
        for &(a, n, off) in &win.pieces {
            let from = (a - win.addr) as usize;
            spool
                .read_exact_at(&mut buf[from..from + (n * ps) as usize], off)
                .map_err(|e| Error::msg(format!("reading the page spool: {e}")))?;
            pages += n;
        }
        let sealed = SealedPages::seal(
            win.space,
            win.addr,
            std::mem::take(&mut buf),
            len,
            ps as u32,
        )?;
        w.write_sealed(&sealed, false)?;
        buf = sealed.into_buffer();
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_round_trip_and_bad_ones_are_refused() {
        let ws = vec![Window {
            space: 1,
            addr: 0x10000,
            pages: 4,
            pieces: vec![(0x10000, 1, 0), (0x12000, 2, 4096)],
        }];
        let mut b = Vec::new();
        encode_windows(&ws, &mut b);
        assert_eq!(b.len(), encoded_len(&ws[0]));
        let mut out = Vec::new();
        decode_windows(&b, 4096, 3 * 4096, &mut out).unwrap();
        assert_eq!(out[0].pieces, ws[0].pieces);
        // The spool holds less than the pieces need.
        assert!(decode_windows(&b, 4096, 2 * 4096, &mut Vec::new()).is_err());
        // A piece past its window.
        let mut bad = ws;
        bad[0].pieces[1] = (0x13000, 2, 4096);
        let mut b = Vec::new();
        encode_windows(&bad, &mut b);
        assert!(decode_windows(&b, 4096, 1 << 30, &mut Vec::new()).is_err());
        assert!(decode_windows(&b[..10], 4096, 1 << 30, &mut Vec::new()).is_err());
    }
}
