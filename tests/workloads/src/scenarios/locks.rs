//! `locks`: file locks of every kind held across the checkpoint.
//!
//! - `posix`: two POSIX (fcntl F_SETLK) locks on one file: a write lock
//!   on bytes 10..20 and a read lock from byte 100 to EOF;
//! - `flock`: an exclusive flock(2) lock;
//! - `ofd`: an OFD write lock (F_OFD_SETLK) on bytes 3..10;
//! - `lease`: a read lease (F_SETLEASE).
//!
//! After go, each descriptor's `lock:` lines in /proc/self/fdinfo must be
//! as before (kind, type, owner pid, range), F_GETLEASE must say F_RDLCK,
//! and a child forked after go must be blocked by every lock: F_GETLK
//! reports the parent's write lock, flock(LOCK_NB) and F_OFD_SETLK on
//! fresh descriptions fail with EAGAIN.  `<dir>/info` names the fds
//! (`posix=N flock=N ofd=N lease=N`).

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{cpath, errno};
use std::ffi::CString;

fn flock_struct(ty: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: struct flock is plain integers.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = ty as i16;
    f.l_whence = libc::SEEK_SET as i16;
    f.l_start = start;
    f.l_len = len;
    f
}

fn open(p: &Proto, path: &CString, flags: i32) -> i32 {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CREAT, 0o644) };
    if fd < 0 {
        p.bail_errno("open");
    }
    fd
}

/// The `lock:` lines of an fd without their sequence number and device.
fn lock_lines(fd: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            // id: KIND CLASS TYPE PID DEV:INO START END
            let mut keep: Vec<&str> = t.iter().skip(1).copied().collect();
            if keep.len() >= 5 {
                keep.remove(4);
            }
            keep.join(" ")
        })
        .collect();
    v.sort();
    v
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let d = p.dir();
    let path = |n: &str| cpath(&d.join(n));
    for n in ["posix", "flock", "ofd", "lease"] {
        std::fs::write(d.join(n), vec![7u8; 200]).unwrap_or_else(|e| p.bail(&format!("{e}")));
    }
    let posix = open(p, &path("posix"), libc::O_RDWR);
    let flk = open(p, &path("flock"), libc::O_RDWR);
    let ofd = open(p, &path("ofd"), libc::O_RDWR);
    let lease = open(p, &path("lease"), libc::O_RDONLY);
    // SAFETY: fcntl/flock on our own descriptors with valid structs.
    unsafe {
        let w = flock_struct(libc::F_WRLCK, 10, 10);
        let r = flock_struct(libc::F_RDLCK, 100, 0);
        if libc::fcntl(posix, libc::F_SETLK, &w) != 0 || libc::fcntl(posix, libc::F_SETLK, &r) != 0
        {
            p.bail_errno("F_SETLK");
        }
        if libc::flock(flk, libc::LOCK_EX | libc::LOCK_NB) != 0 {
            p.bail_errno("flock");
        }
        let o = flock_struct(libc::F_WRLCK, 3, 7);
        if libc::fcntl(ofd, libc::F_OFD_SETLK, &o) != 0 {
            p.bail_errno("F_OFD_SETLK");
        }
        if libc::fcntl(lease, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
            p.bail_errno("F_SETLEASE");
        }
    }
    p.write_aux(
        "info",
        &format!("posix={posix} flock={flk} ofd={ofd} lease={lease}\n"),
    );
    let fds = [posix, flk, ofd, lease];
    let before: Vec<Vec<String>> = fds.iter().map(|&f| lock_lines(f)).collect();
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    base.verify(p, &mut c);
    for (i, &f) in fds.iter().enumerate() {
        c.eq(
            &format!("fd {f}: fdinfo lock lines"),
            &before[i],
            &lock_lines(f),
        );
    }
    // SAFETY: plain fcntl.
    let l = unsafe { libc::fcntl(lease, libc::F_GETLEASE) };
    c.eq("F_GETLEASE", libc::F_RDLCK, l);
    let me = std::process::id() as i32;
    // Another process must be blocked by each lock.
    // SAFETY: fork; the child only makes syscalls and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let mut bad = 0;
        // SAFETY: syscalls on fresh descriptors with valid structs.
        unsafe {
            let mut q = flock_struct(libc::F_WRLCK, 0, 0);
            let fd = libc::open(path("posix").as_ptr(), libc::O_RDWR);
            if libc::fcntl(fd, libc::F_GETLK, &mut q) != 0
                || q.l_type != libc::F_WRLCK as i16
                || q.l_pid != me
                || q.l_start != 10
                || q.l_len != 10
            {
                bad |= 1;
            }
            let mut q = flock_struct(libc::F_WRLCK, 150, 1);
            if libc::fcntl(fd, libc::F_GETLK, &mut q) != 0 || q.l_type != libc::F_RDLCK as i16 {
                bad |= 2;
            }
            let fd = libc::open(path("flock").as_ptr(), libc::O_RDWR);
            if libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 || errno() != libc::EWOULDBLOCK {
                bad |= 4;
            }
            let fd = libc::open(path("ofd").as_ptr(), libc::O_RDWR);
            let o = flock_struct(libc::F_WRLCK, 5, 1);
            if libc::fcntl(fd, libc::F_OFD_SETLK, &o) == 0 || errno() != libc::EAGAIN {
                bad |= 8;
            }
            libc::_exit(bad);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    let code = if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        -1
    };
    let names = [
        "POSIX write lock 10..20 seen by F_GETLK",
        "POSIX read lock 100..EOF seen by F_GETLK",
        "flock lock blocks another description",
        "OFD lock blocks another description",
    ];
    if code < 0 {
        c.fail(format!("the checking child died: status {st:#x}"));
    }
    for (i, n) in names.iter().enumerate() {
        c.ensure(code < 0 || code & (1 << i) == 0, || {
            format!("another process: {n}: failed")
        });
    }
    c
}
