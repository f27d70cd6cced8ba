//! `/proc/PID/pagemap`.

use super::{pid_path, read_auxv};
use crate::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// One 64-bit entry of `/proc/PID/pagemap`, describing one virtual page.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    const PFN_MASK: u64 = (1 << 55) - 1;

    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }

    /// Bit 62: the page is swapped out.
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }

    /// Bit 61: a page-cache page of a file, or shared anonymous memory
    /// (shmem).  Clear for private anonymous pages, including COWed copies
    /// of file pages.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }

    /// Bit 58: a guard region (`MADV_GUARD_INSTALL`, Linux 6.15+).
    pub fn guard(self) -> bool {
        self.0 & (1 << 58) != 0
    }

    /// Bit 57: write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }

    /// Bit 56: the page is mapped exclusively (by this process only).
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }

    /// Bit 55: the page was written since the soft-dirty bits were cleared.
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// Bits 0-54: the page frame number.  Meaningful only if
    /// [`present`](Self::present), and 0 unless the reader has
    /// `CAP_SYS_ADMIN`.
    pub fn pfn(self) -> u64 {
        self.0 & Self::PFN_MASK
    }

    /// Bits 0-4: the swap type, meaningful only if [`swapped`](Self::swapped).
    pub fn swap_type(self) -> u64 {
        self.0 & 0x1f
    }

    /// Bits 5-54: the swap offset, meaningful only if
    /// [`swapped`](Self::swapped).
    pub fn swap_offset(self) -> u64 {
        (self.0 & Self::PFN_MASK) >> 5
    }
}

/// An open `/proc/PID/pagemap`, read with `pread`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: String,
    page_size: u64,
}

/// Entries read per `pread` (256 KiB, covering 128 MiB of 4 KiB pages).
const CHUNK: usize = 32 * 1024;

/// The system page size, from the auxiliary vector of this process (which
/// avoids `unsafe` `sysconf`).  The page size is the same for every process.
fn page_size() -> Result<u64> {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    if let Some(&ps) = PAGE_SIZE.get() {
        return Ok(ps);
    }
    let auxv = read_auxv(std::process::id() as i32)?;
    let ps = auxv
        .iter()
        .find(|&&(k, _)| k == 6) // AT_PAGESZ
        .map(|&(_, v)| v)
        .filter(|v| v.is_power_of_two())
        .ok_or_else(|| Error::parse("/proc/self/auxv", "no valid AT_PAGESZ entry"))?;
    Ok(*PAGE_SIZE.get_or_init(|| ps))
}

impl Pagemap {
    /// Opens `/proc/PID/pagemap` for reading.
    pub fn open(pid: i32) -> Result<Pagemap> {
        let path = pid_path(pid, "pagemap");
        let file = File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))?;
        Ok(Pagemap {
            file,
            path,
            page_size: page_size()?,
        })
    }

    /// The page size the entries describe.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Fills `out` with the entries of the `out.len()` pages starting at
    /// the page that holds `start_addr`.
    pub fn read(&self, start_addr: u64, out: &mut [PagemapEntry]) -> Result<()> {
        let first = start_addr / self.page_size;
        let too_far = || {
            Error::parse(
                &self.path,
                format!(
                    "{} pages from address {start_addr:#x} run past the end of the address space",
                    out.len()
                ),
            )
        };
        first
            .checked_add(out.len() as u64)
            .and_then(|last| last.checked_mul(8))
            .ok_or_else(too_far)?;
        let mut buf = vec![0u8; out.len().min(CHUNK) * 8];
        let mut page = first;
        for chunk in out.chunks_mut(CHUNK) {
            let bytes = &mut buf[..chunk.len() * 8];
            let offset = page * 8;
            self.file.read_exact_at(bytes, offset).map_err(|e| {
                Error::io(
                    format!(
                        "reading {} for {} pages at address {:#x}",
                        self.path,
                        chunk.len(),
                        page.saturating_mul(self.page_size)
                    ),
                    e,
                )
            })?;
            for (entry, b) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *entry = PagemapEntry(u64::from_ne_bytes(w));
            }
            page += chunk.len() as u64;
        }
        Ok(())
    }

    /// PAGEMAP_SCAN (Linux 6.7+): the runs of pages in `start..end` that
    /// match `q`, appended to `out` as (start, end, categories &
    /// `q.report`) with neighbours of equal categories merged.  With
    /// `write_protect`, the matching pages are also write-protected for
    /// asynchronous userfaultfd tracking (mappings not registered for it,
    /// e.g. replaced since, are skipped).
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        q: ScanQuery,
        write_protect: bool,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> Result<()> {
        let report = q.report;
        let mut regions = vec![PageRegion::default(); 1024];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: if write_protect {
                    PM_SCAN_WP_MATCHING
                } else {
                    0
                },
                start: at,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                category_inverted: q.excluded,
                category_mask: q.required | q.excluded,
                category_anyof_mask: q.any,
                // Asking for the categories matched, the kernel merges
                // only pages alike in them; `report` decides what is kept.
                return_mask: report | q.required | q.any,
            };
            // SAFETY: PAGEMAP_SCAN reads and updates `arg` (a `struct
            // pm_scan_arg`, layout checked below) and writes at most
            // `vec_len` `struct page_region`s into `regions`, which
            // outlives the call.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(Error::last_os(format!(
                    "{}: PAGEMAP_SCAN of {at:#x}-{end:#x}",
                    self.path
                )));
            }
            for r in &regions[..(n as usize).min(regions.len())] {
                let cat = r.categories & report;
                match out.last_mut() {
                    Some(l) if l.1 == r.start && l.2 == cat => l.1 = r.end,
                    _ => out.push((r.start, r.end, cat)),
                }
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// Reads the entries for `count` pages from `start_addr` into a new vector.
    pub fn read_vec(&self, start_addr: u64, count: usize) -> Result<Vec<PagemapEntry>> {
        let mut out = vec![PagemapEntry(0); count];
        self.read(start_addr, &mut out)?;
        Ok(out)
    }
}

/// Which pages a PAGEMAP_SCAN selects, by their `page_category` bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanQuery {
    /// Categories a page must all have.
    pub required: u64,
    /// Categories it must not have.
    pub excluded: u64,
    /// Categories it must have one of (unless 0).
    pub any: u64,
    /// Categories to report.
    pub report: u64,
}

/// Category bits of PAGEMAP_SCAN (include/uapi/linux/fs.h).
pub mod page_category {
    /// The page is write-protected for asynchronous tracking, or may be.
    pub const WPALLOWED: u64 = 1 << 0;
    /// Written since it was write-protected (or never protected).
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    /// Mapped to the shared zero page.
    pub const PFNZERO: u64 = 1 << 5;
    pub const HUGE: u64 = 1 << 6;
    pub const SOFT_DIRTY: u64 = 1 << 7;
    /// A guard region (MADV_GUARD_INSTALL; Linux 6.15+).
    pub const GUARD: u64 = 1 << 8;
}

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapping unmapped on drop.
    struct Mapping {
        addr: *mut u8,
        len: usize,
    }

    impl Mapping {
        fn new(len: usize, prot: i32, flags: i32, fd: i32) -> Mapping {
            // SAFETY: a fresh mapping at an address the kernel chooses; no
            // existing memory is affected.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
            assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            Mapping {
                addr: p.cast(),
                len,
            }
        }

        fn at(&self, off: usize) -> *mut u8 {
            assert!(off < self.len);
            self.addr.wrapping_add(off)
        }

        fn write(&self, off: usize, v: u8) {
            // SAFETY: `at` checks the offset is inside this live, writable
            // mapping, which nothing else references.
            unsafe { self.at(off).write_volatile(v) }
        }

        fn read(&self, off: usize) -> u8 {
            // SAFETY: inside this live, readable mapping.
            unsafe { self.at(off).read_volatile() }
        }

        fn madvise(&self, off: usize, len: usize, advice: i32) -> i32 {
            assert!(off + len <= self.len);
            // SAFETY: the range lies within this mapping; the advice used
            // in these tests does not invalidate Rust references (there
            // are none into the mapping).
            unsafe { libc::madvise(self.at(off).cast(), len, advice) }
        }

        fn entries(&self, pm: &Pagemap) -> Vec<PagemapEntry> {
            let n = self.len / pm.page_size() as usize;
            pm.read_vec(self.addr as u64, n).unwrap()
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping this value created.
            unsafe { libc::munmap(self.addr.cast(), self.len) };
        }
    }

    const MADV_GUARD_INSTALL: i32 = 102;

    fn me() -> Pagemap {
        Pagemap::open(std::process::id() as i32).unwrap()
    }

    #[test]
    fn entry_bits() {
        let e = PagemapEntry(1 << 63 | 1 << 61 | 1 << 56 | 1 << 55 | 0x1234);
        assert!(e.present() && e.file_or_shared() && e.exclusive() && e.soft_dirty());
        assert!(!e.swapped() && !e.guard() && !e.uffd_wp());
        assert_eq!(e.pfn(), 0x1234);
        let s = PagemapEntry(1 << 62 | 1 << 58 | 1 << 57 | (77 << 5) | 3);
        assert!(s.swapped() && s.guard() && s.uffd_wp() && !s.present());
        assert_eq!((s.swap_type(), s.swap_offset()), (3, 77));
        assert_eq!(PagemapEntry(u64::MAX).pfn(), (1 << 55) - 1);
    }

    #[test]
    fn anonymous_pages() {
        let pm = me();
        let ps = pm.page_size() as usize;
        assert_eq!(ps, 4096);
        let m = Mapping::new(
            64 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        assert_eq!(m.madvise(0, m.len, libc::MADV_NOHUGEPAGE), 0);
        let touched = [0usize, 3, 7, 40, 63];
        for &i in &touched {
            m.write(i * ps + 5, 1);
        }
        let e = m.entries(&pm);
        assert_eq!(e.len(), 64);
        for (i, e) in e.iter().enumerate() {
            let t = touched.contains(&i);
            assert_eq!(e.present(), t, "page {i}: {:#x}", e.0);
            if t {
                assert!(e.exclusive() && !e.file_or_shared() && !e.swapped(), "{i}");
            }
        }
        // Reading from the middle of a page starts at that page.
        let mut one = [PagemapEntry(0)];
        pm.read(m.addr as u64 + 3 * ps as u64 + 100, &mut one)
            .unwrap();
        assert!(one[0].present());
        pm.read(m.addr as u64 + ps as u64, &mut one).unwrap();
        assert!(!one[0].present());
        // Empty reads are fine.
        pm.read(m.addr as u64, &mut []).unwrap();
    }

    #[test]
    fn shared_and_file_pages() {
        let pm = me();
        let ps = pm.page_size() as usize;
        let shm = Mapping::new(
            4 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        );
        shm.write(ps, 9);
        let e = shm.entries(&pm);
        assert!(e[1].present() && e[1].file_or_shared());
        assert!(!e[0].present());

        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("crest-pagemap-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 256 * ps]).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let m = Mapping::new(
            256 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
        );
        assert_eq!(m.read(2 * ps), 7);
        m.write(100 * ps, 8);
        let e = m.entries(&pm);
        // The page only read is a page-cache page (as are any the kernel
        // mapped around it on the fault) ...
        assert!(e[2].present() && e[2].file_or_shared() && !e[2].swapped());
        // ... and the written one a private anonymous copy.
        assert!(e[100].present() && !e[100].file_or_shared() && e[100].exclusive());
        let file_pages = e.iter().filter(|e| e.present() && e.file_or_shared());
        assert!(file_pages.count() >= 1);
        // A mapping never touched has no pages yet.
        let untouched = Mapping::new(16 * ps, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd());
        assert!(untouched.entries(&pm).iter().all(|e| !e.present()));
    }

    #[test]
    fn guard_pages() {
        let pm = me();
        let ps = pm.page_size() as usize;
        let m = Mapping::new(
            4 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        if m.madvise(ps, ps, MADV_GUARD_INSTALL) != 0 {
            eprintln!("MADV_GUARD_INSTALL unsupported; skipping");
            return;
        }
        let e = m.entries(&pm);
        assert!(e[1].guard() && !e[1].present());
        assert!(!e[0].guard() && !e[2].guard());
    }

    #[test]
    fn pfn_visible_to_admin() {
        let st = super::super::read_status(std::process::id() as i32).unwrap();
        let pm = me();
        let ps = pm.page_size() as usize;
        let m = Mapping::new(
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        m.write(0, 1);
        let e = m.entries(&pm)[0];
        assert!(e.present());
        let cap_sys_admin = 1u64 << 21;
        assert_eq!(e.pfn() != 0, st.cap_eff & cap_sys_admin != 0);
    }

    #[test]
    fn errors_name_the_file() {
        let err = Pagemap::open(-4).unwrap_err().to_string();
        assert!(err.contains("/proc/-4/pagemap"), "{err}");
        let pm = me();
        let mut e = [PagemapEntry(0); 4];
        let err = pm.read(u64::MAX - 4096, &mut e).unwrap_err().to_string();
        assert!(err.contains("pagemap"), "{err}");
        // Past the end of the user address space the file ends.
        let err = pm.read(1 << 62, &mut e).unwrap_err().to_string();
        assert!(err.contains("pagemap"), "{err}");
    }
}
