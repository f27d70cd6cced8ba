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

// ---- per-thread kernel state, read by the thread itself

extern "C" {
    /// Offset of glibc's rseq area from the thread pointer (glibc >= 2.35).
    static __rseq_offset: isize;
    /// Size of the registered rseq area; 0 if glibc did not register it.
    static __rseq_size: u32;
}

const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_LEN: u32 = 32;
const PR_GET_TID_ADDRESS: i32 = 40;
const ARCH_GET_FS: i32 = 0x1003;

pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The thread pointer: on x86-64 Linux fs:0 holds the TCB's self pointer.
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: fs:0 is readable in every thread glibc created.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// The FS base as the kernel reports it.
pub fn fs_base() -> usize {
    let mut v = 0usize;
    // SAFETY: valid out-pointer.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut v as *mut usize) };
    v
}

/// This thread's glibc rseq area and its registered size.
pub fn rseq_area() -> (usize, u32) {
    // SAFETY: glibc exports both symbols; they are constant after startup.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    (thread_pointer().wrapping_add_signed(off), size)
}

/// rseq must still be registered for the calling thread at `area`: the
/// kernel refreshes cpu_id after we sleep, and re-registering gives EBUSY.
pub fn check_rseq(c: &mut crate::checks::Checks, what: &str, area: usize) {
    // SAFETY: the rseq area is glibc's, in this thread's TLS block, live for
    // the thread's lifetime; cpu_id (offset 4) is a u32 the kernel rewrites
    // on return to user space after the thread was scheduled out.
    let cpu_id = (area + 4) as *mut u32;
    // SAFETY: see above.
    unsafe { std::ptr::write_volatile(cpu_id, u32::MAX) };
    sleep_ns(20_000_000);
    // SAFETY: see above.
    let got = unsafe { std::ptr::read_volatile(cpu_id) };
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u32;
    c.ensure(got < ncpu, || {
        format!("{what}: rseq cpu_id after a 20 ms sleep: {got:#x} (expected < {ncpu}: the kernel no longer updates the area)")
    });
    // SAFETY: re-registering the same area: the kernel only compares it.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, RSEQ_LEN, 0, RSEQ_SIG) };
    let e = errno();
    c.ensure(r == -1 && e == libc::EBUSY, || {
        format!("{what}: rseq(area {area:#x}, 32, 0, RSEQ_SIG): expected EBUSY (already registered), got {r} ({})", err_str(e))
    });
}

/// `get_robust_list(0)`: (return value, head, len) of the calling thread.
pub fn robust_list() -> (i64, usize, usize) {
    let (mut head, mut len) = (0usize, 0usize);
    // SAFETY: valid out-pointers; tid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    };
    (r, head, len)
}

/// `PR_GET_TID_ADDRESS`: (return value, clear_child_tid) of the thread.
pub fn tid_address() -> (i64, usize) {
    let mut v = 0usize;
    // SAFETY: the kernel writes one pointer to arg2.
    let r = unsafe { libc::prctl(PR_GET_TID_ADDRESS, &mut v as *mut usize, 0u64, 0u64, 0u64) };
    (r as i64, v)
}

/// The calling thread's name (`PR_GET_NAME`), without the NUL padding.
pub fn thread_name() -> Vec<u8> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0u64, 0u64, 0u64) };
    name.iter().take_while(|&&b| b != 0).copied().collect()
}

/// Sets the calling thread's name; `Err(errno)` on failure.
pub fn set_thread_name(name: &[u8]) -> Result<(), i32> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: a NUL-terminated 16-byte buffer.
    if unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0u64, 0u64, 0u64) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The mask bit of signal `sig` in the kernel's 64-bit sigset.
pub fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// `rt_sigprocmask(how, set)` on the calling thread with the raw syscall
/// (glibc would filter its internal signals); returns the old mask.
pub fn sigmask(how: i32, set: Option<u64>) -> u64 {
    let mut old = 0u64;
    let new = set.unwrap_or(0);
    // SAFETY: valid 8-byte sets; a null `set` only queries.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            if set.is_some() {
                &new as *const u64
            } else {
                std::ptr::null()
            },
            &mut old as *mut u64,
            8usize,
        )
    };
    old
}

/// The calling thread's alternate signal stack: (sp, size, flags).
pub fn altstack() -> (usize, usize, i32) {
    // SAFETY: a zeroed stack_t is a valid out-parameter.
    let ss = unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        ss
    };
    (ss.ss_sp as usize, ss.ss_size, ss.ss_flags)
}

/// The value of `key:` in /proc/thread-self/status (the calling thread's).
pub fn thread_status_field(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// A hex signal mask from /proc/thread-self/status.
pub fn thread_status_mask(key: &str) -> Option<u64> {
    u64::from_str_radix(&thread_status_field(key)?, 16).ok()
}

/// The thread ids listed in /proc/self/task, sorted.
pub fn task_ids() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}
