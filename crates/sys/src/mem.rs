//! Memory of another process: process_vm_readv/writev and /proc/PID/mem.

use crate::{Error, Result};
use libc::pid_t;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads `buf.len()` bytes at `addr` of process `pid` with one
/// process_vm_readv, looping over short transfers.
pub fn read(pid: pid_t, addr: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` covers memory we own; the kernel checks `remote`.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(Error::last_os(format!(
                "reading {} bytes of pid {pid} at {:#x}",
                buf.len() - done,
                addr + done as u64
            )));
        }
        done += n as usize;
    }
    Ok(())
}

/// Writes `data` at `addr` of process `pid` (the pages must be writable).
pub fn write(pid: pid_t, addr: u64, data: &[u8]) -> Result<()> {
    write_runs(pid, &[(addr, data)])
}

/// Most iovecs one process_vm_writev takes (the kernel's UIO_MAXIOV).
const MAX_IOV: usize = 1024;

/// Writes each `(addr, data)` of `runs` at its address of process `pid`
/// (the pages must be writable) with one process_vm_writev per
/// [`MAX_IOV`] runs, looping over short transfers.
pub fn write_runs(pid: pid_t, runs: &[(u64, &[u8])]) -> Result<()> {
    // Runs[i] is written up to byte `skip`; everything before it is done.
    let (mut i, mut skip) = (0usize, 0usize);
    let mut local = Vec::with_capacity(runs.len().min(MAX_IOV));
    let mut remote = Vec::with_capacity(runs.len().min(MAX_IOV));
    loop {
        while i < runs.len() && runs[i].1.len() == skip {
            i += 1;
            skip = 0;
        }
        if i == runs.len() {
            return Ok(());
        }
        local.clear();
        remote.clear();
        for (k, &(addr, data)) in runs[i..].iter().take(MAX_IOV).enumerate() {
            let off = if k == 0 { skip } else { 0 };
            local.push(libc::iovec {
                iov_base: data[off..].as_ptr() as *mut libc::c_void,
                iov_len: data.len() - off,
            });
            remote.push(libc::iovec {
                iov_base: (addr + off as u64) as *mut libc::c_void,
                iov_len: data.len() - off,
            });
        }
        let want: usize = local.iter().map(|v| v.iov_len).sum();
        // SAFETY: every `local` iovec covers a part of a slice we borrow for
        // the duration of the call, and the kernel only reads from them;
        // the kernel checks the `remote` ones against the target's mappings.
        let n = unsafe {
            libc::process_vm_writev(
                pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n <= 0 {
            return Err(Error::last_os(format!(
                "writing {want} bytes into pid {pid} at {:#x} ({} runs)",
                runs[i].0 + skip as u64,
                local.len()
            )));
        }
        let mut n = n as usize;
        while n > 0 {
            let left = runs[i].1.len() - skip;
            if n < left {
                skip += n;
                break;
            }
            n -= left;
            i += 1;
            skip = 0;
        }
    }
}

/// /proc/PID/mem, which reaches pages whatever their protection (the
/// vDSO, read-only text): for small reads and writes only.
pub struct ProcMem {
    file: File,
    pid: pid_t,
}

impl ProcMem {
    pub fn open(pid: pid_t, write: bool) -> Result<Self> {
        let path = format!("/proc/{pid}/mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {path}"), e))?;
        Ok(ProcMem { file, pid })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, addr).map_err(|e| {
            Error::io(
                format!(
                    "reading {} bytes of pid {} at {addr:#x}",
                    buf.len(),
                    self.pid
                ),
                e,
            )
        })
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, addr).map_err(|e| {
            Error::io(
                format!(
                    "writing {} bytes into pid {} at {addr:#x}",
                    data.len(),
                    self.pid
                ),
                e,
            )
        })
    }
}

/// `statfs` f_type of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The huge page size in bytes of the file open as `fd` if it lives on
/// hugetlbfs (a MAP_HUGETLB mapping's file, a MFD_HUGETLB memfd, a file
/// of a hugetlbfs mount), else None.
pub fn hugetlb_page_size(fd: std::os::fd::BorrowedFd<'_>) -> Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs the kernel fills; `fd` is open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(Error::last_os(format!(
            "fstatfs on descriptor {}",
            fd.as_raw_fd()
        )));
    }
    // SAFETY: fstatfs succeeded and filled it.
    let st = unsafe { st.assume_init() };
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let hugetlbfs = st.f_type as i64 == HUGETLBFS_MAGIC;
    Ok(hugetlbfs.then_some(st.f_bsize as u64))
}

/// The `MAP_HUGE_*` / `MFD_HUGE_*` bits that pick huge page size `size`
/// (a power of two): log2(size) shifted by MAP_HUGE_SHIFT (26, as
/// MFD_HUGE_SHIFT).
pub fn huge_size_bits(size: u64) -> u32 {
    size.trailing_zeros() << 26
}

/// Maps `len` bytes of `fd` at `offset` shared and writable in this
/// process, copies `data` in at byte `at` of the window and unmaps it:
/// for files that take no write(2), such as hugetlbfs ones.  `offset`
/// must be aligned as the file's page size demands.
pub fn write_mapped(
    fd: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    len: usize,
    at: usize,
    data: &[u8],
) -> Result<()> {
    use std::os::fd::AsRawFd;
    if at.checked_add(data.len()).is_none_or(|e| e > len) {
        return Err(Error::Os {
            context: format!(
                "writing {} bytes at {at} of a {len}-byte window",
                data.len()
            ),
            cause: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: a fresh shared mapping of our descriptor; nothing else uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os(format!(
            "mapping {len} bytes at offset {offset} of descriptor {}",
            fd.as_raw_fd()
        )));
    }
    // SAFETY: `at + data.len() <= len` (checked above), inside the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>().add(at), data.len());
        libc::munmap(p, len);
    }
    Ok(())
}

/// A descriptor on the file of a new shared anonymous mapping of `len`
/// bytes (the kernel names it "/dev/zero (deleted)"; it is what a program
/// maps with MAP_SHARED | MAP_ANONYMOUS): the mapping is made, its file
/// opened through /proc/self/map_files, and the mapping dropped.
pub fn shared_anonymous_file(len: usize) -> Result<std::os::fd::OwnedFd> {
    // SAFETY: a fresh shared anonymous mapping nobody else uses.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os(format!(
            "mapping {len} bytes of shared memory"
        )));
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let a = p as usize;
    let path = format!(
        "/proc/self/map_files/{a:x}-{:x}",
        a + len.div_ceil(page) * page
    );
    let r = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map(std::os::fd::OwnedFd::from)
        .map_err(|e| Error::io(format!("opening {path}"), e));
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(p, len) };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scattered runs written into our own memory, more of them than one
    /// call takes, some empty.
    #[test]
    fn write_runs_scatters_into_place() {
        let mut target = vec![0u8; 64 * 1024];
        let base = target.as_mut_ptr() as u64;
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        let runs: Vec<(u64, &[u8])> = (0..1500usize)
            .map(|i| {
                let len = if i % 7 == 0 { 0 } else { 1 + i % 5 };
                (base + (i * 40) as u64, &data[i..i + len])
            })
            .collect();
        write_runs(std::process::id() as pid_t, &runs).unwrap();
        let mut want = vec![0u8; 64 * 1024];
        for &(addr, d) in &runs {
            let at = (addr - base) as usize;
            want[at..at + d.len()].copy_from_slice(d);
        }
        // The buffer's address went to the kernel as an integer: keep the
        // compiler from assuming the buffer still holds its zeros.
        let got = std::hint::black_box(&mut target);
        assert!(*got == want);
    }

    #[test]
    fn write_runs_names_the_failing_address() {
        let e = write_runs(std::process::id() as pid_t, &[(0x1000, &[1u8; 8][..])]).unwrap_err();
        assert!(e.to_string().contains("0x1000"), "{e}");
    }
}
