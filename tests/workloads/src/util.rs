//! Small helpers over raw libc calls shared by the scenarios.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const PAGE: usize = 4096;

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn err_str(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains NUL")
}

/// splitmix64: a fast, well-mixing counter-based generator.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern word `i` of stream `seed`.
pub fn pat(seed: u64, i: usize) -> u64 {
    splitmix64(seed.wrapping_mul(0x1_0000_0001).wrapping_add(i as u64))
}

/// Order-sensitive checksum of a word slice.
pub fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(17)
    })
}

/// A view of `len` bytes at `ptr` as words.
///
/// # Safety
/// `ptr` must be 8-aligned and valid for reads and writes of `len` bytes for
/// the returned lifetime, with no other live references to that memory.
pub unsafe fn words<'a>(ptr: *mut u8, len: usize) -> &'a mut [u64] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u64>(), len / 8) }
}

/// Fills the memory with pattern stream `seed`.
///
/// # Safety
/// Same contract as [`words`].
pub unsafe fn fill(ptr: *mut u8, len: usize, seed: u64) {
    // SAFETY: forwarded contract.
    for (i, w) in unsafe { words(ptr, len) }.iter_mut().enumerate() {
        *w = pat(seed, i);
    }
}

/// Counts words differing from pattern stream `seed`; returns (count, first
/// differing byte offset).
///
/// # Safety
/// `ptr` must be 8-aligned and readable for `len` bytes.
pub unsafe fn count_bad(ptr: *const u8, len: usize, seed: u64) -> (usize, Option<usize>) {
    // SAFETY: guaranteed by the caller.
    let ws = unsafe { std::slice::from_raw_parts(ptr.cast::<u64>(), len / 8) };
    let mut bad = 0;
    let mut first = None;
    for (i, &w) in ws.iter().enumerate() {
        if w != pat(seed, i) {
            bad += 1;
            first.get_or_insert(i * 8);
        }
    }
    (bad, first)
}

/// Anonymous private mapping; `Err(errno)` on failure.
pub fn mmap_anon(len: usize, prot: i32, extra_flags: i32) -> Result<*mut u8, i32> {
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p.cast())
    }
}

/// Reads a whole file into `buf` with raw syscalls (no allocation). Returns
/// the length read; `Err(0)` if the buffer was too small.
pub fn read_raw(path: &CStr, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    let mut len = 0;
    let res = loop {
        if len == buf.len() {
            break Err(0);
        }
        // SAFETY: the destination range lies inside `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            break Err(e);
        }
        if n == 0 {
            break Ok(len);
        }
        len += n as usize;
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    res
}

/// `pread` until `buf` is full or EOF; returns bytes read.
pub fn pread_full(fd: i32, buf: &mut [u8], off: u64) -> Result<usize, i32> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the destination range lies inside `buf`.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (off + done as u64) as i64,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// `write` all of `data`.
pub fn write_all(fd: i32, data: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the source range lies inside `data`.
        let n = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The value of `key:` in /proc/self/status, trimmed.
pub fn status_field(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// A hex signal mask from /proc/self/status (SigPnd, ShdPnd, SigBlk...).
pub fn status_mask(key: &str) -> Option<u64> {
    u64::from_str_radix(&status_field(key)?, 16).ok()
}

/// `readlink` as a lossy string.
pub fn readlink(path: &str) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The open fds of this process, sorted, excluding the one used to list them.
pub fn list_fds() -> Vec<i32> {
    // SAFETY: valid C string.
    let dfd = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(dfd >= 0, "open /proc/self/fd: {}", err_str(errno()));
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dfd, buf.as_mut_ptr(), buf.len()) };
        assert!(n >= 0, "getdents64: {}", err_str(errno()));
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                if fd != dfd {
                    fds.push(fd);
                }
            }
            off += reclen;
        }
    }
    // SAFETY: dfd is ours.
    unsafe { libc::close(dfd) };
    fds.sort_unstable();
    fds
}

pub fn fstat(fd: i32) -> Result<libc::stat, i32> {
    // SAFETY: all-zero is a valid `stat`, which fstat then fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        Ok(st)
    } else {
        Err(errno())
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// `clock_nanosleep(CLOCK_MONOTONIC)` relative; returns its error number.
pub fn sleep_ns(ns: u64) -> i32 {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    };
    // SAFETY: `ts` is valid; no remainder requested.
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut()) }
}

/// Formats bytes for a failure message (lossy text with escapes).
pub fn show(b: &[u8]) -> String {
    let s: String = b.escape_ascii().to_string();
    if s.len() > 200 {
        format!("{}...({} bytes)", &s[..200], b.len())
    } else {
        s
    }
}
