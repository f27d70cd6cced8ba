//! `hugetlb <kB>[:KINDS]...`: hugetlbfs memory in huge pages of each size
//! given (the harness reserves the pages: see crates/cli/tests/mem_kinds.rs).
//! KINDS, a subset of `ABCD`, limits a size to those regions (default:
//! all of them for the first size, `AC` for the others), so that a
//! machine with a single free 1 GiB page can test each kind in turn.
//!
//! For the first size:
//! - `A`: private MAP_HUGETLB memory of 2 huge pages, page 0 written
//!   (its first 64 KiB and its last word), page 1 never touched;
//! - `B`: shared MAP_HUGETLB memory of 1 huge page, written;
//! - `C`: a MFD_HUGETLB memfd of 2 huge pages, mapped shared and held as
//!   a descriptor, its page 1 written through the mapping;
//! - `D`: a MFD_HUGETLB memfd of 1 huge page held only as a descriptor
//!   (written through a mapping since removed).
//!
//! For the other sizes only `A` (1 page) and `C` (1 page).  After go each
//! mapping must be at the same address with the same smaps line, page
//! size (KernelPageSize) and VmFlags, hold the same bytes, C's mapping
//! and descriptor must be one file (a write through one is read through
//! the other), and every memfd must still be on hugetlbfs with its page
//! size.  `CREST_WL_DISTURB` (selftests): `private` changes a byte of A,
//! `split` replaces C's mapping with a private copy.

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{pat, pread_full};

struct Region {
    what: String,
    base: *mut u8,
    len: usize,
    /// (offset, words) ranges written with pattern `seed`.
    seed: u64,
    written: Vec<(usize, usize)>,
    smaps: String,
}

fn smaps_of(addr: usize) -> String {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let mut out = String::new();
    let mut inside = false;
    for l in s.lines() {
        let is_head = l
            .split_whitespace()
            .next()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'));
        if is_head {
            inside = l.starts_with(&head);
            if inside {
                // Address, permissions, offset and name (not the inode,
                // a new file's).
                let f: Vec<&str> = l.split_whitespace().collect();
                let keep: Vec<&str> = f
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !matches!(i, 3 | 4))
                    .map(|(_, s)| *s)
                    .collect();
                out.push_str(&keep.join(" "));
                out.push('\n');
            }
            continue;
        }
        if inside
            && (l.starts_with("KernelPageSize:")
                || l.starts_with("MMUPageSize:")
                || l.starts_with("VmFlags:"))
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn huge_bits(kb: u64) -> i32 {
    (((kb << 10).trailing_zeros()) << 26) as i32
}

fn map(p: &Proto, len: usize, flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a new mapping; nothing aliases it.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        p.bail_errno("mmap of huge pages (are enough reserved?)");
    }
    m.cast()
}

fn write_words(base: *mut u8, seed: u64, off: usize, words: usize) {
    for i in 0..words {
        // SAFETY: inside the mapping (callers pass ranges inside it).
        unsafe {
            (base.add(off) as *mut u64)
                .add(i)
                .write(pat(seed, off / 8 + i))
        };
    }
}

fn memfd(p: &Proto, name: &str, kb: u64, len: usize) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let fd = unsafe {
        libc::memfd_create(
            c.as_ptr(),
            libc::MFD_HUGETLB | libc::MFD_ALLOW_SEALING | huge_bits(kb) as u32,
        )
    };
    // SAFETY: ftruncate of our descriptor.
    if fd < 0 || unsafe { libc::ftruncate(fd, len as i64) } != 0 {
        p.bail_errno("MFD_HUGETLB memfd");
    }
    fd
}

fn bsize(fd: i32) -> Option<(i64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills `st`.
    if unsafe { libc::fstatfs(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled above.
    let st = unsafe { st.assume_init() };
    Some((st.f_type, st.f_bsize as u64))
}

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let sizes: Vec<(u64, &str)> = args
        .iter()
        .enumerate()
        .filter_map(|(k, a)| {
            let (kb, kinds) = a
                .split_once(':')
                .unwrap_or((a, if k == 0 { "ABCD" } else { "AC" }));
            Some((kb.parse().ok()?, kinds))
        })
        .collect();
    if sizes.is_empty() || sizes.len() != args.len() {
        p.bail("usage: hugetlb <kB>[:KINDS]...");
    }
    let mut regions = Vec::new();
    let mut fds = Vec::new();
    let mut only_fd = Vec::new();
    for (k, &(kb, kinds)) in sizes.iter().enumerate() {
        let hp = (kb << 10) as usize;
        let first = k == 0;
        let has = |r: char| kinds.contains(r);
        let hflags = libc::MAP_HUGETLB | huge_bits(kb);
        let seed = 100 + k as u64 * 10;
        let a_pages = if first { 2 } else { 1 };
        if has('A') {
            let a = map(
                p,
                a_pages * hp,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | hflags,
                -1,
            );
            write_words(a, seed, 0, 8192);
            write_words(a, seed, hp - 8, 1);
            regions.push(Region {
                what: format!("A ({kb} kB)"),
                base: a,
                len: a_pages * hp,
                seed,
                written: vec![(0, 8192), (hp - 8, 1)],
                smaps: String::new(),
            });
        }
        if first && has('B') {
            let b = map(p, hp, libc::MAP_SHARED | libc::MAP_ANONYMOUS | hflags, -1);
            write_words(b, seed + 1, 4096, 1024);
            regions.push(Region {
                what: format!("B ({kb} kB)"),
                base: b,
                len: hp,
                seed: seed + 1,
                written: vec![(4096, 1024)],
                smaps: String::new(),
            });
        }
        let c_pages = if first { 2 } else { 1 };
        if has('C') {
            let fc = memfd(p, &format!("crest-huge-{kb}"), kb, c_pages * hp);
            let c = map(p, c_pages * hp, libc::MAP_SHARED, fc);
            let off = (c_pages - 1) * hp + 12288;
            write_words(c, seed + 2, off, 2048);
            regions.push(Region {
                what: format!("C ({kb} kB)"),
                base: c,
                len: c_pages * hp,
                seed: seed + 2,
                written: vec![(off, 2048)],
                smaps: String::new(),
            });
            fds.push((fc, kb, c, c_pages * hp));
        }
        if first && has('D') {
            let fd = memfd(p, &format!("crest-huge-fd-{kb}"), kb, hp);
            let m = map(p, hp, libc::MAP_SHARED, fd);
            write_words(m, seed + 3, 65536, 512);
            // SAFETY: our own mapping, no longer used.
            unsafe { libc::munmap(m.cast(), hp) };
            only_fd.push((fd, kb, seed + 3));
        }
    }
    for r in regions.iter_mut() {
        r.smaps = smaps_of(r.base as usize);
        if !r.smaps.contains(" ht") {
            p.bail(&format!(
                "setup: {} is not a hugetlb mapping:\n{}",
                r.what, r.smaps
            ));
        }
    }
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    match std::env::var("CREST_WL_DISTURB").as_deref() {
        // SAFETY: a word of A's first page.
        Ok("private") => unsafe { regions[0].base.add(8 * 100).write(0x5a) },
        Ok("split") => {
            let (_, _, base, len) = fds[0];
            let copy: Vec<u8> = (0..len)
                // SAFETY: inside C's mapping.
                .map(|i| unsafe { base.add(i).read() })
                .collect();
            // SAFETY: replaces our own mapping with a private copy.
            unsafe {
                libc::mmap(
                    base.cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                std::ptr::copy_nonoverlapping(copy.as_ptr(), base, len);
            }
        }
        _ => {}
    }
    for r in &regions {
        c.eq(
            &format!("{}: smaps (address, flags, page size)", r.what),
            &r.smaps,
            &smaps_of(r.base as usize),
        );
        // Every word: the pattern where written, zero elsewhere.
        let mut bad = None;
        for i in 0..r.len / 8 {
            let off = i * 8;
            let written = r.written.iter().any(|&(o, n)| off >= o && off < o + n * 8);
            let want = if written { pat(r.seed, i) } else { 0 };
            // SAFETY: inside the mapping.
            let got = unsafe { (r.base as *const u64).add(i).read() };
            if got != want {
                bad = Some((off, want, got));
                break;
            }
        }
        c.ensure(bad.is_none(), || {
            let (off, want, got) = bad.unwrap();
            format!(
                "{}: content differs at byte {off}: {want:#x} != {got:#x}",
                r.what
            )
        });
    }
    for &(fd, kb, base, len) in &fds {
        c.eq(
            &format!("memfd of {kb} kB pages: filesystem and page size"),
            Some((HUGETLBFS_MAGIC, kb << 10)),
            bsize(fd),
        );
        // One file: a write through the mapping is read through the fd.
        // SAFETY: inside C's mapping.
        unsafe {
            base.add(len - 16)
                .cast::<u64>()
                .write(0x1122_3344_5566_7788)
        };
        let mut b = [0u8; 8];
        c.ensure(
            pread_full(fd, &mut b, (len - 16) as u64).is_ok()
                && u64::from_ne_bytes(b) == 0x1122_3344_5566_7788,
            || format!("C ({kb} kB): a write through the mapping is not read through the memfd"),
        );
    }
    for &(fd, kb, seed) in &only_fd {
        let hp = (kb << 10) as usize;
        c.eq(
            &format!("descriptor-only memfd of {kb} kB pages: filesystem and page size"),
            Some((HUGETLBFS_MAGIC, kb << 10)),
            bsize(fd),
        );
        let m = map(p, hp, libc::MAP_SHARED, fd);
        let ok = (0..512).all(|i| {
            // SAFETY: inside the mapping.
            unsafe { (m.add(65536) as *const u64).add(i).read() == pat(seed, 65536 / 8 + i) }
        });
        c.ensure(ok, || {
            format!("D ({kb} kB): the descriptor-only memfd lost its content")
        });
        // SAFETY: our own mapping.
        unsafe { libc::munmap(m.cast(), hp) };
    }
    c
}
