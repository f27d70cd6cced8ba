//! `unlinked-maps`: mappings of files unlinked while mapped.
//!
//! - `a` (4 pages, mode 0640): MAP_SHARED read-write and open read-write
//!   on a descriptor, then unlinked: after go a write through the mapping
//!   must be read through the descriptor and the other way round (one
//!   file, not two copies), both naming the same inode;
//! - `b` (3 pages): MAP_PRIVATE, its descriptor closed, unlinked, then its
//!   page 1 written (a private copy): pages 0 and 2 hold the file, page 1
//!   the private write;
//! - `c` (2 pages): MAP_SHARED, descriptor closed, unlinked, then page 0
//!   written through the mapping (into the file).
//!
//! Each mapping must still be of "PATH (deleted)" in /proc/self/maps.
//! `CREST_WL_DISTURB` (selftests) breaks one thing after go, as a bad
//! restore would: `split` (a's mapping becomes a private copy),
//! `private` (b's private page changes).

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{cpath, fstat, pat, pread_full, readlink};

const PAGE: usize = 4096;

/// Writes pattern `seed` into pages `first..first + pages` (words
/// counted from page 0 of the mapping).
fn fill(base: *mut u8, first: usize, pages: usize, seed: u64) {
    for i in first * PAGE / 8..(first + pages) * PAGE / 8 {
        // SAFETY: inside the mapping of `pages` pages at `base`.
        unsafe { (base as *mut u64).add(i).write(pat(seed, i)) };
    }
}

/// Whether page `pg` of the mapping at `base` holds pattern `seed`
/// (pattern words counted from page 0 of the mapping).
fn page_is(base: *const u8, pg: usize, seed: u64) -> bool {
    let words = PAGE / 8;
    // SAFETY: inside the mapping.
    (0..words).all(
        |i| unsafe { (base as *const u64).add(pg * words + i).read() } == pat(seed, pg * words + i),
    )
}

fn map(p: &Proto, fd: i32, pages: usize, flags: i32) -> *mut u8 {
    // SAFETY: a new mapping of our own file; nothing aliases it yet.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        p.bail_errno("mmap");
    }
    m.cast()
}

/// A file `name` in the workload's directory holding `pages` pages of
/// pattern `seed`, open read-write.
fn make(p: &Proto, name: &str, pages: usize, seed: u64, mode: u32) -> (i32, String) {
    let path = p.dir().join(name);
    let c = cpath(&path);
    // SAFETY: a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            mode,
        )
    };
    if fd < 0 {
        p.bail_errno("creating a file");
    }
    let data: Vec<u8> = (0..pages * PAGE / 8)
        .flat_map(|i| pat(seed, i).to_ne_bytes())
        .collect();
    // SAFETY: fchmod on our descriptor (no umask).
    if crate::util::write_all(fd, &data).is_err() || unsafe { libc::fchmod(fd, mode) } != 0 {
        p.bail_errno("filling a file");
    }
    (fd, path.to_string_lossy().into_owned())
}

/// The path /proc/self/maps shows for the mapping starting at `addr`.
fn maps_path(addr: *const u8) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let head = format!("{:x}-", addr as usize);
    let l = maps.lines().find(|l| l.starts_with(&head))?;
    let i = l.find('/')?;
    Some(l[i..].to_string())
}

fn map_ino(addr: *const u8, pages: usize) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let a = addr as usize;
    std::fs::metadata(format!("/proc/self/map_files/{a:x}-{:x}", a + pages * PAGE))
        .ok()
        .map(|m| m.ino())
}

fn unlink(p: &Proto, path: &str) {
    if std::fs::remove_file(path).is_err() {
        p.bail("setup: unlinking a mapped file");
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let (fa, pa) = make(p, "a", 4, 1, 0o640);
    let ma = map(p, fa, 4, libc::MAP_SHARED);
    unlink(p, &pa);
    let (fb, pb) = make(p, "b", 3, 2, 0o600);
    let mb = map(p, fb, 3, libc::MAP_PRIVATE);
    // SAFETY: closing our descriptor; the mapping stays.
    unsafe { libc::close(fb) };
    unlink(p, &pb);
    fill(mb, 1, 1, 3);
    let (fc, pc) = make(p, "c", 2, 4, 0o600);
    let mc = map(p, fc, 2, libc::MAP_SHARED);
    // SAFETY: as above.
    unsafe { libc::close(fc) };
    unlink(p, &pc);
    fill(mc, 0, 1, 5);
    let st_a = fstat(fa).unwrap_or_else(|_| p.bail_errno("fstat a"));
    let link_a = readlink(&format!("/proc/self/fd/{fa}"));
    let paths: Vec<Option<String>> = [ma, mb, mc].iter().map(|&m| maps_path(m)).collect();
    for (got, want) in paths.iter().zip([&pa, &pb, &pc]) {
        if got.as_deref() != Some(&format!("{want} (deleted)")) {
            p.bail(&format!("setup: maps shows {got:?} for {want}"));
        }
    }
    p.write_aux("info", &format!("a={:#x}\nfd_a={fa}\n", ma as usize));
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    match std::env::var("CREST_WL_DISTURB").as_deref() {
        Ok("split") => {
            let copy: Vec<u8> = (0..4 * PAGE)
                // SAFETY: inside a's mapping.
                .map(|i| unsafe { ma.add(i).read() })
                .collect();
            // SAFETY: replaces our own mapping with a private copy.
            unsafe {
                libc::mmap(
                    ma.cast(),
                    4 * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                std::ptr::copy_nonoverlapping(copy.as_ptr(), ma, copy.len());
            }
        }
        // SAFETY: a word of b's private page.
        Ok("private") => unsafe { mb.add(PAGE + 8).write(0x5a) },
        _ => {}
    }
    for (m, pages, seeds, what) in [
        (ma, 4, &[1, 1, 1, 1][..], "a"),
        (mb, 3, &[2, 3, 2][..], "b"),
        (mc, 2, &[5, 4][..], "c"),
    ] {
        for (pg, &seed) in seeds.iter().enumerate().take(pages) {
            c.ensure(page_is(m, pg, seed), || {
                format!("mapping of {what}: page {pg} is not what was there")
            });
        }
    }
    for (got, (now, want)) in paths.iter().zip(
        [ma, mb, mc]
            .iter()
            .map(|&m| maps_path(m))
            .zip([&pa, &pb, &pc]),
    ) {
        c.eq(
            &format!("/proc/self/maps name of the mapping of {want}"),
            got,
            &now,
        );
    }
    match fstat(fa) {
        Ok(st) => {
            c.eq("a: mode", st_a.st_mode, st.st_mode);
            c.eq("a: nlink", 0, st.st_nlink);
            c.eq("a: size", st_a.st_size, st.st_size);
            c.eq(
                "a: descriptor and mapping are one inode",
                Some(st.st_ino),
                map_ino(ma, 4),
            );
        }
        Err(e) => c.fail(format!("fstat a: errno {e}")),
    }
    c.eq(
        "a: descriptor link",
        &link_a,
        &readlink(&format!("/proc/self/fd/{fa}")),
    );
    // One file: a write through the mapping is read through the
    // descriptor, and the other way round.
    // SAFETY: inside a's mapping.
    unsafe {
        ma.add(100)
            .cast::<u64>()
            .write_unaligned(0x1122_3344_5566_7788)
    };
    let mut buf = [0u8; 8];
    c.ensure(
        pread_full(fa, &mut buf, 100).is_ok() && u64::from_ne_bytes(buf) == 0x1122_3344_5566_7788,
        || "a: a write through the mapping is not read through the descriptor".into(),
    );
    // SAFETY: pwrite from a valid buffer on our descriptor.
    let n = unsafe { libc::pwrite(fa, b"crest-pw".as_ptr().cast(), 8, 5000) };
    // SAFETY: inside a's mapping.
    let seen = unsafe { std::slice::from_raw_parts(ma.add(5000), 8) };
    c.ensure(n == 8 && seen == b"crest-pw", || {
        "a: a write through the descriptor is not seen in the mapping".into()
    });
    c
}
