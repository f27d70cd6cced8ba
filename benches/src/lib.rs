//! Code shared by the benchmark driver (`crest-bench`) and the workload
//! programs it checkpoints (`crest-bench-workload`).

pub mod pattern;

use std::io::Write;
use std::path::Path;

/// Size of a memory page on this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Writes `dir/name` atomically: a temporary file next to it, then rename.
pub fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(content)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

/// Sleeps `ns` nanoseconds on the monotonic clock; returns false if the
/// sleep was cut short (by a signal).
pub fn sleep_ns(ns: u64) -> bool {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; no remainder is requested.
    let r = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut()) };
    r == 0
}

/// `1 << 20`.
pub const MIB: u64 = 1 << 20;
