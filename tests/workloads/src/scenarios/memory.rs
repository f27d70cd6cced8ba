//! `memory [MiB]`: anonymous, sparse, heap, stack, private/shared file,
//! read-only, PROT_NONE, guard-page and MADV_GUARD_INSTALL memory, the vDSO
//! and /proc/self/maps (which must be byte-identical across the checkpoint).
//!
//! Between the first /proc/self/maps snapshot and the second, nothing is
//! allocated or freed: all buffers are allocated up front and the protocol
//! helpers use raw syscalls.

use std::hint::black_box;

use crate::checks::Checks;
use crate::common::Baseline;
use crate::probe::{expect_efault, Probe};
use crate::proto::{Proto, WaitOutcome};
use crate::util::{
    checksum, count_bad, cpath, err_str, errno, fill, mmap_anon, pat, pread_full, read_raw, words,
    PAGE,
};

const SPARSE_LEN: usize = 1 << 30;
const SPARSE_PAGES: usize = SPARSE_LEN / PAGE;
const STRIDE: usize = 997;
const HEAP_LEN: usize = 1 << 20;
const BRK_GROW: usize = 64 * 1024;
const STACK_WORDS: usize = 64 * 1024 / 8;
const PRIV_PAGES: usize = 16;
const PRIV_B_PAGES: [usize; 3] = [0, 5, 15];
const SH_PAGES: usize = 4;
const MAPS_BUF: usize = 1 << 20;
const MADV_GUARD_INSTALL: i32 = 102;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_GUARD: u64 = 1 << 58;

const SEED_DENSE: u64 = 0xD0;
const SEED_SPARSE: u64 = 0x5A;
const SEED_HEAP: u64 = 0x4E;
const SEED_STACK: u64 = 0x57;
const SEED_PRIV_A: u64 = 0xA000;
const SEED_PRIV_B: u64 = 0xB000;
const SEED_RO: u64 = 0x20;
const SEED_NONE: u64 = 0x30;
const SEED_GUARD3: u64 = 0x40;
const SEED_MGUARD: u64 = 0x50;

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Everything set up before ready, plus preallocated buffers.
struct Mem {
    dense: *mut u8,
    dense_len: usize,
    dense_sum: u64,
    sparse: *mut u8,
    heap: *mut u8,
    privmap: *mut u8,
    shmap: *mut u8,
    ro: *mut u8,
    none: *mut u8,
    guard3: *mut u8,
    mguard: *mut u8,
    /// MADV_GUARD_INSTALL worked on page 1 of `mguard`.
    mguard_installed: bool,
    maps1: Vec<u8>,
    maps2: Vec<u8>,
    pagemap: Vec<u64>,
}

/// What the allocation-free part observed.
struct Frame {
    wait: WaitOutcome,
    maps1: Result<usize, i32>,
    maps2: Result<usize, i32>,
    brk_before: usize,
    brk_after: usize,
    stack_bad: usize,
    pagemap_err: i32,
    untouched_resident: usize,
    first_resident: Option<usize>,
    touched_missing: usize,
    guard_pm_before: u64,
    guard_pm_after: u64,
}

fn page_seed(seed: u64, page: usize) -> u64 {
    seed ^ ((page as u64) << 20)
}

fn anon(p: &Proto, len: usize, what: &str) -> *mut u8 {
    mmap_anon(len, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| p.bail(&format!("setup: mmap {what}: {}", err_str(e))))
}

fn pattern_bytes(pages: usize, seed_of: impl Fn(usize) -> u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(pages * PAGE);
    for pg in 0..pages {
        for i in 0..PAGE / 8 {
            v.extend_from_slice(&pat(seed_of(pg), i).to_ne_bytes());
        }
    }
    v
}

fn map_file(p: &Proto, name: &str, flags: i32, len: usize) -> *mut u8 {
    let path = cpath(&p.dir().join(name));
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        p.bail_errno(&format!("open {name}"));
    }
    // SAFETY: a fresh file mapping aliases no Rust object.
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
    // SAFETY: fd is ours; the mapping keeps its own reference to the file.
    unsafe { libc::close(fd) };
    if m == libc::MAP_FAILED {
        p.bail_errno(&format!("mmap {name}"));
    }
    m.cast()
}

fn mprotect(p: &Proto, addr: *mut u8, len: usize, prot: i32, what: &str) {
    // SAFETY: addr/len describe a mapping this scenario owns and does not
    // reference through Rust objects.
    if unsafe { libc::mprotect(addr.cast(), len, prot) } != 0 {
        p.bail_errno(&format!("mprotect {what}"));
    }
}

fn setup(p: &Proto, mib: usize) -> Mem {
    // (a) dense private anonymous memory
    let dense_len = mib << 20;
    let dense = anon(p, dense_len, "dense");
    // SAFETY: fresh mapping of dense_len bytes, page aligned.
    let dense_sum = unsafe {
        fill(dense, dense_len, SEED_DENSE);
        checksum(words(dense, dense_len))
    };

    // (b) sparse: 1 GiB reserved, every 997th page touched
    let sparse = mmap_anon(
        SPARSE_LEN,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_NORESERVE,
    )
    .unwrap_or_else(|e| p.bail(&format!("setup: mmap sparse: {}", err_str(e))));
    // SAFETY: our mapping. No THP: a huge page would make untouched
    // neighbours resident.
    if unsafe { libc::madvise(sparse.cast(), SPARSE_LEN, libc::MADV_NOHUGEPAGE) } != 0 {
        p.bail_errno("madvise(sparse, MADV_NOHUGEPAGE)");
    }
    for pg in (0..SPARSE_PAGES).step_by(STRIDE) {
        // SAFETY: page `pg` lies inside the sparse mapping.
        unsafe { fill(sparse.add(pg * PAGE), PAGE, page_seed(SEED_SPARSE, pg)) };
    }

    // (c) heap
    // SAFETY: plain malloc; checked for NULL.
    let heap: *mut u8 = unsafe { libc::malloc(HEAP_LEN) }.cast();
    if heap.is_null() {
        p.bail("setup: malloc(1 MiB) failed");
    }
    // SAFETY: malloc returns 16-aligned memory of HEAP_LEN bytes.
    unsafe { fill(heap, HEAP_LEN, SEED_HEAP) };

    // (e) private file mapping, 16 pages of pattern A; B written to 3 pages
    let a = pattern_bytes(PRIV_PAGES, |pg| page_seed(SEED_PRIV_A, pg));
    std::fs::write(p.dir().join("privmap"), &a)
        .unwrap_or_else(|e| p.bail(&format!("setup: write privmap: {e}")));
    let privmap = map_file(p, "privmap", libc::MAP_PRIVATE, PRIV_PAGES * PAGE);
    for pg in PRIV_B_PAGES {
        // SAFETY: page inside the private mapping.
        unsafe { fill(privmap.add(pg * PAGE), PAGE, page_seed(SEED_PRIV_B, pg)) };
    }

    // (f) shared file mapping with "before" at offset 100
    std::fs::write(p.dir().join("shmap"), vec![0u8; SH_PAGES * PAGE])
        .unwrap_or_else(|e| p.bail(&format!("setup: write shmap: {e}")));
    let shmap = map_file(p, "shmap", libc::MAP_SHARED, SH_PAGES * PAGE);
    // SAFETY: offset 100..106 lies inside the 4-page shared mapping.
    unsafe { std::ptr::copy_nonoverlapping(b"before".as_ptr(), shmap.add(100), 6) };

    // (g) read-only anon
    let ro = anon(p, 4 * PAGE, "read-only");
    // SAFETY: fresh 4-page mapping.
    unsafe { fill(ro, 4 * PAGE, SEED_RO) };
    mprotect(p, ro, 4 * PAGE, libc::PROT_READ, "read-only");

    // (h) data hidden behind PROT_NONE
    let none = anon(p, 4 * PAGE, "prot-none");
    // SAFETY: fresh 4-page mapping.
    unsafe { fill(none, 4 * PAGE, SEED_NONE) };
    mprotect(p, none, 4 * PAGE, libc::PROT_NONE, "prot-none");

    // (i) 3 pages, the first a PROT_NONE guard
    let guard3 = anon(p, 3 * PAGE, "guard3");
    // SAFETY: pages 1-2 of a fresh 3-page mapping.
    unsafe { fill(guard3.add(PAGE), 2 * PAGE, SEED_GUARD3) };
    mprotect(p, guard3, PAGE, libc::PROT_NONE, "guard3 page 0");

    // (j) MADV_GUARD_INSTALL on page 1 of a 4-page region
    let mguard = anon(p, 4 * PAGE, "madv-guard");
    for pg in [0, 2, 3] {
        // SAFETY: page inside the fresh mapping.
        unsafe { fill(mguard.add(pg * PAGE), PAGE, page_seed(SEED_MGUARD, pg)) };
    }
    // SAFETY: page 1 of our mapping; nothing references it.
    let r = unsafe { libc::madvise(mguard.add(PAGE).cast(), PAGE, MADV_GUARD_INSTALL) };
    let mguard_installed = if r == 0 {
        true
    } else if errno() == libc::EINVAL {
        false
    } else {
        p.bail_errno("madvise(MADV_GUARD_INSTALL)")
    };

    Mem {
        dense,
        dense_len,
        dense_sum,
        sparse,
        heap,
        privmap,
        shmap,
        ro,
        none,
        guard3,
        mguard,
        mguard_installed,
        maps1: vec![0; MAPS_BUF],
        maps2: vec![0; MAPS_BUF],
        pagemap: vec![0; SPARSE_PAGES],
    }
}

/// Grows the stack mapping well past what the frames below will use, so
/// the [stack] line of /proc/self/maps stays put between the snapshots.
#[inline(never)]
fn prefault_stack() {
    let mut a = [0u8; 512 * 1024];
    black_box(&mut a);
}

fn pagemap_entries(fd: i32, addr: usize, out: &mut [u64]) -> Result<(), i32> {
    // SAFETY: u64 slice viewed as bytes for pread.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 8) };
    match pread_full(fd, bytes, (addr / PAGE * 8) as u64) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(libc::EIO),
        Err(e) => Err(e),
    }
}

fn pagemap_one(addr: usize) -> u64 {
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let mut e = [0u64; 1];
    let ok = fd >= 0 && pagemap_entries(fd, addr, &mut e).is_ok();
    if fd >= 0 {
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    }
    if ok {
        e[0]
    } else {
        0
    }
}

fn cur_brk() -> usize {
    // SAFETY: sbrk(0) only queries the break.
    unsafe { libc::sbrk(0) as usize }
}

/// The waiting frame: holds the 64 KiB stack pattern, takes both maps
/// snapshots and reads pagemap, all without allocating.
#[inline(never)]
fn wait_frame(p: &Proto, m: &mut Mem) -> Frame {
    let mut stack = [0u64; STACK_WORDS];
    for (i, w) in stack.iter_mut().enumerate() {
        *w = pat(SEED_STACK, i);
    }
    black_box(&mut stack);
    let guard_pm_before = if m.mguard_installed {
        pagemap_one(m.mguard as usize + PAGE)
    } else {
        0
    };
    let brk_before = cur_brk();
    let maps1 = read_raw(c"/proc/self/maps", &mut m.maps1);
    p.write_ready();
    let wait = p.wait_go();
    let maps2 = read_raw(c"/proc/self/maps", &mut m.maps2);
    let brk_after = cur_brk();

    // Residency of the sparse region, before anything reads it.
    let mut f = Frame {
        wait,
        maps1,
        maps2,
        brk_before,
        brk_after,
        stack_bad: 0,
        pagemap_err: 0,
        untouched_resident: 0,
        first_resident: None,
        touched_missing: 0,
        guard_pm_before,
        guard_pm_after: 0,
    };
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        f.pagemap_err = errno();
    } else {
        match pagemap_entries(fd, m.sparse as usize, &mut m.pagemap) {
            Ok(()) => {
                for (pg, &e) in m.pagemap.iter().enumerate() {
                    let resident = e & (PM_PRESENT | PM_SWAPPED) != 0;
                    if pg % STRIDE == 0 {
                        f.touched_missing += usize::from(!resident);
                    } else if resident {
                        f.untouched_resident += 1;
                        f.first_resident.get_or_insert(pg);
                    }
                }
            }
            Err(e) => f.pagemap_err = e,
        }
        if m.mguard_installed {
            let mut e = [0u64; 1];
            if pagemap_entries(fd, m.mguard as usize + PAGE, &mut e).is_ok() {
                f.guard_pm_after = e[0];
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    }
    black_box(&mut stack);
    f.stack_bad = stack
        .iter()
        .enumerate()
        .filter(|&(i, &w)| w != pat(SEED_STACK, i))
        .count();
    f
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mib: usize = match args.first() {
        None => 64,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| p.bail(&format!("setup: bad MiB argument {s:?}"))),
    };
    let mut m = setup(p, mib);
    p.write_aux(
        "info",
        &format!(
            "dense={:p} sparse={:p} heap={:p} privmap={:p} shmap={:p} ro={:p} none={:p} guard3={:p} mguard={:p} mguard_installed={}\n",
            m.dense, m.sparse, m.heap, m.privmap, m.shmap, m.ro, m.none, m.guard3, m.mguard, m.mguard_installed
        ),
    );
    let base = Baseline::record();
    prefault_stack();
    let f = wait_frame(p, &mut m);

    let mut c = Checks::new();
    f.wait.report(&mut c, "go-wait");
    check_maps(&mut c, &m, &f);
    check_sparse(&mut c, &m, &f);
    check_heap(&mut c, &m, &f);
    c.eq("64 KiB stack array: words changed", 0, f.stack_bad);
    check_files(p, &mut c, &m);
    check_protections(&mut c, &m, &f);
    check_dense(&mut c, &m);
    check_vdso(&mut c);
    base.verify(p, &mut c);
    c
}

fn check_dense(c: &mut Checks, m: &Mem) {
    // SAFETY: the dense mapping is ours, readable, dense_len bytes.
    let (bad, first) = unsafe { count_bad(m.dense, m.dense_len, SEED_DENSE) };
    c.ensure(bad == 0, || {
        format!(
            "dense region ({} MiB): {bad} words changed, first at byte offset {first:?}",
            m.dense_len >> 20
        )
    });
    // SAFETY: as above.
    let sum = checksum(unsafe { words(m.dense, m.dense_len) });
    c.eq("dense region checksum", m.dense_sum, sum);
}

fn maps_text(buf: &[u8], r: Result<usize, i32>) -> Result<&str, String> {
    match r {
        Ok(n) => std::str::from_utf8(&buf[..n]).map_err(|e| e.to_string()),
        Err(0) => Err("buffer too small".into()),
        Err(e) => Err(err_str(e)),
    }
}

fn check_maps(c: &mut Checks, m: &Mem, f: &Frame) {
    let (before, after) = match (maps_text(&m.maps1, f.maps1), maps_text(&m.maps2, f.maps2)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            c.fail(format!(
                "reading /proc/self/maps: before {:?}, after {:?}",
                a.err(),
                b.err()
            ));
            return;
        }
    };
    if before != after {
        let a: Vec<&str> = before.lines().collect();
        let b: Vec<&str> = after.lines().collect();
        let gone: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).take(8).collect();
        let new: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).take(8).collect();
        c.fail(format!(
            "/proc/self/maps changed ({} lines before, {} after); lines lost: {gone:?}; lines gained: {new:?}",
            a.len(),
            b.len()
        ));
    }
    // The vDSO the auxv announces is the one mapped.
    // SAFETY: getauxval has no preconditions.
    let ehdr = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    let vdso_start = after
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .and_then(|l| usize::from_str_radix(l.split('-').next()?, 16).ok());
    c.eq(
        "[vdso] start in /proc/self/maps vs getauxval(AT_SYSINFO_EHDR)",
        Some(ehdr),
        vdso_start,
    );
}

fn check_sparse(c: &mut Checks, m: &Mem, f: &Frame) {
    if f.pagemap_err != 0 {
        c.fail(format!(
            "reading /proc/self/pagemap: {}",
            err_str(f.pagemap_err)
        ));
    }
    c.ensure(f.untouched_resident == 0, || {
        format!(
            "sparse region: {} never-touched pages are resident after restore (pagemap present/swapped bit), first is page {:?}",
            f.untouched_resident, f.first_resident
        )
    });
    c.eq(
        "sparse region: touched pages not resident",
        0,
        f.touched_missing,
    );
    let mut bad_touched = Vec::new();
    let mut nonzero = 0usize;
    let mut first_nonzero = None;
    for pg in 0..SPARSE_PAGES {
        // SAFETY: page inside the sparse mapping.
        let ptr = unsafe { m.sparse.add(pg * PAGE) };
        if pg % STRIDE == 0 {
            // SAFETY: page-aligned readable page.
            if unsafe { count_bad(ptr, PAGE, page_seed(SEED_SPARSE, pg)) }.0 != 0 {
                bad_touched.push(pg);
            }
        } else {
            // SAFETY: page-aligned readable page.
            let page = unsafe { std::slice::from_raw_parts(ptr, PAGE) };
            if page != &ZERO_PAGE[..] {
                nonzero += 1;
                first_nonzero.get_or_insert(pg);
            }
        }
    }
    c.ensure(bad_touched.is_empty(), || {
        format!(
            "sparse region: touched pages with wrong content: {} (first {:?})",
            bad_touched.len(),
            &bad_touched[..bad_touched.len().min(8)]
        )
    });
    c.ensure(nonzero == 0, || {
        format!(
            "sparse region: {nonzero} untouched pages are not zero, first page {first_nonzero:?}"
        )
    });
}

fn check_heap(c: &mut Checks, m: &Mem, f: &Frame) {
    // SAFETY: our malloc'd buffer.
    let (bad, first) = unsafe { count_bad(m.heap, HEAP_LEN, SEED_HEAP) };
    c.ensure(bad == 0, || {
        format!("malloc'd 1 MiB buffer: {bad} words changed, first at {first:?}")
    });
    c.ensure(f.brk_before == f.brk_after, || {
        format!(
            "sbrk(0): expected {:#x}, got {:#x}",
            f.brk_before, f.brk_after
        )
    });
    // The program break still works: grow it, check the new memory.
    // SAFETY: extends the break by 64 KiB; the memory is only used here.
    let old = unsafe { libc::sbrk(BRK_GROW as libc::intptr_t) };
    if old as isize == -1 {
        c.fail(format!("sbrk(+64 KiB) failed: {}", err_str(errno())));
        return;
    }
    let old: *mut u8 = old.cast();
    let grown = cur_brk();
    // SAFETY: [old, old+64K) is the newly granted break area.
    let area = unsafe { std::slice::from_raw_parts_mut(old, BRK_GROW) };
    let was_zero = area.chunks(PAGE).all(|p| p == &ZERO_PAGE[..p.len()]);
    area.fill(0xA5);
    let kept = area.iter().all(|&b| b == 0xA5);
    // SAFETY: gives the 64 KiB back.
    unsafe { libc::sbrk(-(BRK_GROW as libc::intptr_t)) };
    c.eq(
        "sbrk(+64 KiB) returned the old break",
        f.brk_after,
        old as usize,
    );
    c.eq("break after sbrk(+64 KiB)", f.brk_after + BRK_GROW, grown);
    c.ensure(was_zero, || "memory from sbrk(+64 KiB) is not zero".into());
    c.ensure(kept, || {
        "memory from sbrk(+64 KiB) did not keep what was written".into()
    });
}

fn check_files(p: &Proto, c: &mut Checks, m: &Mem) {
    // (e) private file mapping: B on pages 0, 5, 15, A elsewhere; the file
    // itself still all A.
    for pg in 0..PRIV_PAGES {
        let (seed, which) = if PRIV_B_PAGES.contains(&pg) {
            (page_seed(SEED_PRIV_B, pg), "B (written privately)")
        } else {
            (page_seed(SEED_PRIV_A, pg), "A (from the file)")
        };
        // SAFETY: page inside the private mapping.
        let (bad, _) = unsafe { count_bad(m.privmap.add(pg * PAGE), PAGE, seed) };
        c.ensure(bad == 0, || {
            format!(
                "MAP_PRIVATE file mapping page {pg}: expected pattern {which}, {bad} words differ"
            )
        });
    }
    match std::fs::read(p.dir().join("privmap")) {
        Ok(data) => {
            let want = pattern_bytes(PRIV_PAGES, |pg| page_seed(SEED_PRIV_A, pg));
            c.ensure(data == want, || {
                let pages: Vec<usize> = (0..PRIV_PAGES)
                    .filter(|&pg| {
                        data.get(pg * PAGE..(pg + 1) * PAGE)
                            != Some(&want[pg * PAGE..(pg + 1) * PAGE])
                    })
                    .collect();
                format!("file privmap changed on disk (private writes leaked?): pages {pages:?}")
            });
        }
        Err(e) => c.fail(format!("reading privmap: {e}")),
    }

    // (f) shared file mapping
    // SAFETY: offsets 100..106 and 5000..5005 lie inside the 4-page mapping.
    let before = unsafe { std::slice::from_raw_parts(m.shmap.add(100), 6) };
    c.ensure(before == b"before", || {
        format!(
            "MAP_SHARED mapping at offset 100: expected \"before\", got {:?}",
            String::from_utf8_lossy(before)
        )
    });
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(b"after".as_ptr(), m.shmap.add(5000), 5) };
    // SAFETY: msync on our mapping.
    if unsafe { libc::msync(m.shmap.cast(), SH_PAGES * PAGE, libc::MS_SYNC) } != 0 {
        c.fail(format!("msync(shmap): {}", err_str(errno())));
    }
    let path = cpath(&p.dir().join("shmap"));
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        c.fail(format!("open shmap: {}", err_str(errno())));
        return;
    }
    let mut data = vec![0u8; SH_PAGES * PAGE];
    let n = pread_full(fd, &mut data, 0);
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    c.eq("pread(shmap) length", Ok(SH_PAGES * PAGE), n);
    c.ensure(&data[100..106] == b"before", || {
        format!(
            "file shmap at 100: expected \"before\", got {:?}",
            String::from_utf8_lossy(&data[100..106])
        )
    });
    c.ensure(&data[5000..5005] == b"after", || format!("file shmap at 5000: expected \"after\" (written through the mapping after restore), got {:?}", String::from_utf8_lossy(&data[5000..5005])));
}

fn check_protections(c: &mut Checks, m: &Mem, f: &Frame) {
    let Some(probe) = Probe::new() else {
        c.fail(format!("pipe2 for access probes: {}", err_str(errno())));
        return;
    };
    // (g) read-only
    // SAFETY: readable 4-page mapping.
    let (bad, _) = unsafe { count_bad(m.ro, 4 * PAGE, SEED_RO) };
    c.eq("read-only region: words changed", 0, bad);
    c.eq(
        "read-only region: kernel read",
        Ok(()),
        probe.readable(m.ro),
    );
    // SAFETY: pointer inside the read-only mapping (the kernel checks it).
    expect_efault(
        c,
        "read-only region: kernel write",
        probe.writable(unsafe { m.ro.add(PAGE + 7) }),
    );

    // (h) PROT_NONE with data behind it
    expect_efault(c, "PROT_NONE region: kernel read", probe.readable(m.none));
    // SAFETY: our mapping.
    if unsafe { libc::mprotect(m.none.cast(), 4 * PAGE, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
        c.fail(format!(
            "mprotect(PROT_NONE region, RW): {}",
            err_str(errno())
        ));
    } else {
        // SAFETY: now readable 4-page mapping.
        let (bad, _) = unsafe { count_bad(m.none, 4 * PAGE, SEED_NONE) };
        c.eq("PROT_NONE region (made RW after go): words changed", 0, bad);
    }

    // (i) guard page at the start of a 3-page region
    expect_efault(
        c,
        "PROT_NONE guard page: kernel read",
        probe.readable(m.guard3),
    );
    // SAFETY: pages 1-2 are readable.
    let (bad, _) = unsafe { count_bad(m.guard3.add(PAGE), 2 * PAGE, SEED_GUARD3) };
    c.eq("pages after the PROT_NONE guard: words changed", 0, bad);

    // (j) MADV_GUARD_INSTALL
    for pg in [0, 2, 3] {
        // SAFETY: pages 0, 2, 3 are plain RW pages.
        let (bad, _) =
            unsafe { count_bad(m.mguard.add(pg * PAGE), PAGE, page_seed(SEED_MGUARD, pg)) };
        c.ensure(bad == 0, || {
            format!("madvise-guard region page {pg}: {bad} words changed")
        });
    }
    if m.mguard_installed {
        // SAFETY: pointer into our mapping (the kernel checks it).
        expect_efault(
            c,
            "MADV_GUARD_INSTALL page: kernel read",
            probe.readable(unsafe { m.mguard.add(PAGE) }),
        );
        if f.guard_pm_before & PM_GUARD != 0 {
            c.ensure(f.guard_pm_after & PM_GUARD != 0, || {
                format!("MADV_GUARD_INSTALL page: pagemap guard bit 58 was set before, now entry is {:#x}", f.guard_pm_after)
            });
        }
    }
}

fn check_vdso(c: &mut Checks) {
    let raw = |clock: libc::clockid_t| -> Option<i128> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut ts) };
        (r == 0).then(|| ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
    };
    let vdso = |clock: libc::clockid_t| -> Option<i128> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::clock_gettime(clock, &mut ts) };
        (r == 0).then(|| ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
    };
    const SLACK: i128 = 5_000_000_000;
    for (name, clock) in [
        ("CLOCK_MONOTONIC", libc::CLOCK_MONOTONIC),
        ("CLOCK_REALTIME", libc::CLOCK_REALTIME),
    ] {
        match (vdso(clock), raw(clock)) {
            (Some(v), Some(r)) => c.ensure((v - r).abs() <= SLACK, || {
                format!("vDSO clock_gettime({name}) = {v} ns, raw syscall = {r} ns: differ by more than 5 s")
            }),
            (v, r) => c.fail(format!("clock_gettime({name}) failed: vDSO {v:?}, syscall {r:?}")),
        }
    }
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: valid out-pointer; no timezone.
    let r = unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    let real = raw(libc::CLOCK_REALTIME).unwrap_or(0);
    let tv_ns = tv.tv_sec as i128 * 1_000_000_000 + tv.tv_usec as i128 * 1000;
    c.ensure(r == 0 && (tv_ns - real).abs() <= SLACK, || {
        format!("gettimeofday: returned {r}, {tv_ns} ns vs raw CLOCK_REALTIME {real} ns")
    });
}
