//! Asking the kernel to touch user memory on our behalf: EFAULT tells that
//! an address is inaccessible without faulting this process.

use crate::checks::Checks;
use crate::util::{err_str, errno};

/// A pipe used to make the kernel touch user memory: EFAULT tells that an
/// address is inaccessible without faulting this process.
pub struct Probe {
    r: i32,
    w: i32,
}

impl Probe {
    pub fn new() -> Option<Self> {
        let mut fds = [0; 2];
        // SAFETY: valid out-array of two ints.
        (unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0)
            .then_some(Self {
                r: fds[0],
                w: fds[1],
            })
    }

    fn drain(&self) {
        let mut b = [0u8; 16];
        // SAFETY: reads into a local buffer.
        while unsafe { libc::read(self.r, b.as_mut_ptr().cast(), b.len()) } > 0 {}
    }

    /// Can the kernel read one byte at `addr`? Err(errno) if not.
    pub fn readable(&self, addr: *const u8) -> Result<(), i32> {
        // SAFETY: the kernel validates `addr`; a bad one yields EFAULT.
        let r = unsafe { libc::write(self.w, addr.cast(), 1) };
        let e = errno();
        self.drain();
        if r == 1 {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Can the kernel write one byte at `addr`? Err(errno) if not.
    pub fn writable(&self, addr: *mut u8) -> Result<(), i32> {
        let x = 0x5Au8;
        // SAFETY: writes one local byte into the pipe.
        unsafe { libc::write(self.w, (&x as *const u8).cast(), 1) };
        // SAFETY: the kernel validates `addr`; a bad one yields EFAULT.
        let r = unsafe { libc::read(self.r, addr.cast(), 1) };
        let e = errno();
        self.drain();
        if r == 1 {
            Ok(())
        } else {
            Err(e)
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: our fds.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

pub fn expect_efault(c: &mut Checks, what: &str, r: Result<(), i32>) {
    match r {
        Err(libc::EFAULT) => {}
        Ok(()) => c.fail(format!("{what}: expected EFAULT, but the access worked")),
        Err(e) => c.fail(format!("{what}: expected EFAULT, got {}", err_str(e))),
    }
}
