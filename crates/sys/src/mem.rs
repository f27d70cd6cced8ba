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
    let mut done = 0usize;
    while done < data.len() {
        let local = libc::iovec {
            iov_base: data[done..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        // SAFETY: `local` covers memory we own; the kernel checks `remote`.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(Error::last_os(format!(
                "writing {} bytes into pid {pid} at {:#x}",
                data.len() - done,
                addr + done as u64
            )));
        }
        done += n as usize;
    }
    Ok(())
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
