//! The SIGIO owner (F_SETOWN / F_SETOWN_EX) and signal (F_SETSIG) of an
//! open file description: who gets SIGIO (or SIGURG) when the file
//! becomes ready, with O_ASYNC.
//!
//! Dump asks the description itself (a copy of the descriptor taken with
//! pidfd_getfd is the same description).  Restore sets them again by an
//! injected fcntl in the restored process once its threads and process
//! group exist, after its credentials are back: the kernel records the
//! setter's credentials for the permission check at signal time.

use crate::error::Result;
use crate::model::FdOwner;
use crate::task::freeze::{Call, Inject};
use std::os::fd::{AsRawFd, OwnedFd};

// <linux/fcntl.h> (the libc crate lacks these).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PGRP: i32 = 2;

/// The owner and signal of description `f` (descriptor `fd` of the
/// process), or `None` when neither is set.
pub fn collect(fd: i32, f: &OwnedFd) -> std::result::Result<Option<FdOwner>, String> {
    let mut ex = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (two ints).
    if unsafe { libc::fcntl(f.as_raw_fd(), F_GETOWN_EX, ex.as_mut_ptr()) } != 0 {
        return Err(format!("F_GETOWN_EX: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: plain fcntl on a descriptor we own.
    let sig = unsafe { libc::fcntl(f.as_raw_fd(), F_GETSIG) };
    if sig < 0 {
        return Err(format!("F_GETSIG: {}", std::io::Error::last_os_error()));
    }
    if ex[1] == 0 && sig == 0 {
        return Ok(None);
    }
    Ok(Some(FdOwner {
        fd,
        owner_type: ex[0],
        owner: ex[1],
        signal: sig,
    }))
}

/// Whether the owner names a task, process or group of the image, so
/// that it exists when the restore sets it.
pub fn owner_in(o: &FdOwner, ckpt: &crate::model::Checkpoint) -> bool {
    if o.owner == 0 {
        return true;
    }
    ckpt.processes.iter().any(|p| match o.owner_type {
        F_OWNER_PGRP => p.pgid == o.owner,
        F_OWNER_TID => p.threads.iter().any(|t| t.tid == o.owner),
        _ => p.pid == o.owner,
    })
}

/// Sets the owners and signals again (queued calls in the restored process).
pub fn restore(t: &impl Inject, owners: &[FdOwner]) -> Result<()> {
    for o in owners {
        if o.owner != 0 {
            let mut b = [0u8; 8];
            b[0..4].copy_from_slice(&o.owner_type.to_ne_bytes());
            b[4..8].copy_from_slice(&o.owner.to_ne_bytes());
            let a = t.place(&b)?;
            t.queue(Call::new(
                libc::SYS_fcntl,
                &[o.fd as u64, F_SETOWN_EX as u64, a],
                format!(
                    "fd {}: setting its SIGIO owner (type {}, id {})",
                    o.fd, o.owner_type, o.owner
                ),
            ))?;
        }
        if o.signal != 0 {
            t.queue(Call::new(
                libc::SYS_fcntl,
                &[o.fd as u64, F_SETSIG as u64, o.signal as u64],
                format!("fd {}: setting its SIGIO signal {}", o.fd, o.signal),
            ))?;
        }
    }
    Ok(())
}
