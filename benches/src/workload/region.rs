//! Anonymous memory regions mapped with `mmap`, owned and unmapped on drop.

use std::io;

pub struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    /// Maps `len` bytes of fresh private anonymous memory with `prot`.
    pub fn new(len: usize, prot: i32) -> io::Result<Region> {
        assert!(len > 0);
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region { ptr: p.cast(), len })
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable (callers only read
        // regions mapped readable) and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`; `&mut self` makes the borrow unique (callers
        // only write regions mapped writable).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn words(&self) -> &[u64] {
        // SAFETY: mmap returns page-aligned memory, so it is aligned for
        // u64; the length is rounded down to whole words.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u64>(), self.len / 8) }
    }

    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as `words`, with a unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u64>(), self.len / 8) }
    }

    /// `n` words at byte offset `off` (page-aligned offsets keep them aligned).
    pub fn words_at(&self, off: usize, n: usize) -> &[u64] {
        assert!(off.is_multiple_of(8) && off + n * 8 <= self.len);
        // SAFETY: the range lies inside the mapping, is 8-byte aligned and
        // callers only ask for readable parts; it lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off).cast::<u64>(), n) }
    }

    /// Changes the protection of `len` bytes at offset `off`.
    pub fn protect(&mut self, off: usize, len: usize, prot: i32) -> io::Result<()> {
        assert!(off + len <= self.len);
        // SAFETY: the range lies inside our own mapping; changing its
        // protection affects no memory Rust code holds references into
        // (the caller holds `&mut self`).
        let r = unsafe { libc::mprotect(self.ptr.add(off).cast(), len, prot) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Grows the region to `new_len` bytes (it may move).
    pub fn grow(&mut self, new_len: usize) -> io::Result<()> {
        // SAFETY: remaps our own mapping; MREMAP_MAYMOVE lets the kernel
        // move it, and we take the new address; no references into the
        // old range outlive this call (`&mut self`).
        let p = unsafe { libc::mremap(self.ptr.cast(), self.len, new_len, libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.ptr = p.cast();
        self.len = new_len;
        Ok(())
    }

    /// Makes every page from `from` on resident by writing to it.
    pub fn prefault(&mut self, from: usize) {
        let ps = crest_bench::page_size();
        let b = self.bytes_mut();
        let mut i = from - from % ps;
        while i < b.len() {
            b[i] = 1;
            i += ps;
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no borrow of
        // it can outlive `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
