//! `read`: blocks in `read()` on a FIFO opened O_RDWR; the harness writes
//! "go\n" into `<dir>/fifo` after restore. The read must return exactly those
//! 3 bytes (no EINTR, no short or empty read).

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{cpath, err_str, errno, fstat, show};

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let path = cpath(&p.dir().join("fifo"));
    // SAFETY: valid C string.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
        p.bail_errno("mkfifo fifo");
    }
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        p.bail_errno("open fifo O_RDWR");
    }
    // SAFETY: fcntl on our fd.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    let st0 = fstat(fd).unwrap_or_else(|_| p.bail_errno("fstat fifo"));
    if st0.st_mode & libc::S_IFMT != libc::S_IFIFO {
        p.bail("setup: fifo is not a FIFO");
    }
    let base = Baseline::record();
    p.write_ready();

    let mut c = Checks::new();
    let mut buf = [0u8; 64];
    let mut eintr = 0;
    let n = loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && errno() == libc::EINTR {
            eintr += 1;
            continue;
        }
        break n;
    };
    let read_errno = errno();
    if eintr > 0 {
        c.fail(format!(
            "read(fifo) returned EINTR {eintr} time(s) (expected 0)"
        ));
    }
    if n < 0 {
        c.fail(format!("read(fifo) failed: {}", err_str(read_errno)));
    } else {
        let got = &buf[..n as usize];
        c.ensure(got == b"go\n", || {
            format!(
                "read(fifo): expected 3 bytes \"go\\n\", got {n} bytes \"{}\"",
                show(got)
            )
        });
    }
    // Nothing else may have been queued in the FIFO.
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let pr = unsafe { libc::poll(&mut pfd, 1, 0) };
    c.ensure(pr == 0, || {
        format!(
            "poll(fifo) after the read: expected no more data, got poll={pr} revents={:#x}",
            pfd.revents
        )
    });

    match fstat(fd) {
        Ok(st) => {
            c.eq(
                "fstat(fifo).st_mode type",
                libc::S_IFIFO,
                st.st_mode & libc::S_IFMT,
            );
            c.eq(
                "fstat(fifo) (dev, ino)",
                (st0.st_dev, st0.st_ino),
                (st.st_dev, st.st_ino),
            );
        }
        Err(e) => c.fail(format!("fstat(fifo fd) failed: {}", err_str(e))),
    }
    match std::fs::metadata(p.dir().join("fifo")) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            c.eq(
                "stat(<dir>/fifo) (dev, ino) vs the fd",
                (st0.st_dev, st0.st_ino),
                (m.dev(), m.ino()),
            );
        }
        Err(e) => c.fail(format!("stat(<dir>/fifo): {e}")),
    }
    // SAFETY: fcntl on our fd.
    let (fl2, fdfl2) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    c.eq("fcntl(fifo, F_GETFL)", fl, fl2);
    c.eq("fcntl(fifo, F_GETFD)", fdfl, fdfl2);
    base.verify(p, &mut c);
    c
}
