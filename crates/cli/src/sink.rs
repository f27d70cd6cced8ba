//! Where `crest dump` writes an image: a buffered writer that hands large
//! writes to the stream without copying them.
//!
//! # Why not vmsplice(2) into a pipe
//!
//! Splicing the page buffers into a pipe instead of writing them would
//! save the copy into the pipe, but the pipe then holds references to our
//! pages rather than copies, and nothing tells us when the last reference
//! is gone:
//!
//! * Reusing a buffer once "enough" bytes have gone into the pipe after it
//!   (the pipe's capacity, counted in pipe slots, re-reading F_GETPIPE_SZ
//!   since the reader may resize it) only proves that the pages left *this*
//!   pipe. A reader that splices onwards (`crest dump -o - | pv | ...`:
//!   pv splices pipe to pipe; or splice to a TCP socket, which sends from
//!   the pages until they are acknowledged) or tee(2)s keeps references
//!   past that point and would see the page data of a later chunk: a
//!   corrupt image (caught only at restore, by the checksums).
//! * Never writing to a spliced buffer again (MADV_DONTNEED it, so the
//!   next read into it faults in fresh pages) is sound, but the faults and
//!   the zeroing of fresh pages cost more than the copy they save, on the
//!   thread that reads the task's memory, which is already the busier one.
//!   Measured on this 2-core VM, 1 GiB through a 1 MiB pipe to a reading
//!   process, 2 MiB buffers refilled by memcpy: write(2) 2.4-2.8 GB/s,
//!   vmsplice with fresh pages 1.3-1.5 GB/s.
//!
//! So images go out with plain (vectored) writes.

use std::io::{self, ErrorKind, IoSlice, Write};

/// Writes of at most this many bytes are gathered in the buffer.
const GATHER_MAX: usize = 64 * 1024;
/// The buffer is written out when it would grow past this.
const BUFFER_CAP: usize = 256 * 1024;

/// A buffered writer for image streams.
///
/// The image writer issues one vectored write per record: a small header
/// with, for page records, large slices of page data. Small records are
/// gathered here and written together; a large one goes to the stream at
/// once, in one `write_vectored` (writev) together with what was gathered
/// before it, straight from the caller's memory. (`std::io::BufWriter`
/// does this only for streams of the standard library, and copies
/// everything below its capacity: page data of scattered non-zero pages
/// would be copied once more.)
///
/// Like `BufWriter`, it writes out what it holds on `flush` and
/// [`into_inner`](Gather::into_inner), not on drop.
#[derive(Debug)]
pub struct Gather<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Gather<W> {
    pub fn new(inner: W) -> Self {
        Gather {
            inner,
            buf: Vec::with_capacity(BUFFER_CAP),
        }
    }

    /// Writes out what is buffered and gives the stream back.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.write_buffered()?;
        Ok(self.inner)
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        let mut done = 0;
        let res = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match self.inner.write(&self.buf[done..]) {
                Ok(0) => break Err(write_zero()),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done);
        res
    }
}

fn write_zero() -> io::Error {
    io::Error::new(
        ErrorKind::WriteZero,
        "the image stream accepts no more data",
    )
}

impl<W: Write> Write for Gather<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total <= GATHER_MAX {
            if self.buf.len() + total > BUFFER_CAP {
                self.write_buffered()?;
            }
            for b in bufs {
                self.buf.extend_from_slice(b);
            }
            return Ok(total);
        }
        // One writev of the buffered bytes and the caller's slices, until
        // the buffered bytes are out and some of the caller's are.
        loop {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            if !self.buf.is_empty() {
                slices.push(IoSlice::new(&self.buf));
            }
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = match self.inner.write_vectored(&slices) {
                Ok(0) => return Err(write_zero()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let held = self.buf.len();
            if n > held {
                self.buf.clear();
                return Ok(n - held);
            }
            self.buf.drain(..n);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every call; takes at most `limit` bytes per call.
    struct Calls {
        out: Vec<u8>,
        calls: Vec<usize>,
        limit: usize,
    }

    impl Write for Calls {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            self.calls.push(n);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(limit: usize) -> Calls {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut g = Gather::new(Calls {
            out: Vec::new(),
            calls: Vec::new(),
            limit,
        });
        let mut want = Vec::new();
        for part in [
            &big[..10],
            &big[..100_000],
            &big[..5],
            &big[..70_000],
            &big[..3],
        ] {
            let mut slices = [IoSlice::new(b"head"), IoSlice::new(part)];
            let mut s = &mut slices[..];
            while !s.is_empty() {
                let n = g.write_vectored(s).unwrap();
                IoSlice::advance_slices(&mut s, n);
            }
            want.extend_from_slice(b"head");
            want.extend_from_slice(part);
        }
        let c = g.into_inner().unwrap();
        assert_eq!(c.out, want);
        c
    }

    #[test]
    fn large_writes_go_out_at_once_with_what_was_gathered() {
        let c = run(usize::MAX);
        // Small record gathered; each large one written with what came
        // before it; the last small one at the end.
        assert_eq!(c.calls, [14 + 100_004, 9 + 70_004, 7]);
    }

    #[test]
    fn short_writes_lose_nothing() {
        let c = run(4097);
        assert!(c.calls.iter().all(|&n| n <= 4097));
    }
}
