//! `fdstate`: state that belongs to open file descriptions.
//!
//! - one pipe whose read end has two descriptions (the second opened
//!   through /proc/self/fd) with different flags: O_NONBLOCK on one only;
//!   the first also has O_ASYNC, a SIGIO owner (F_SETOWN_EX, this process)
//!   and signal (F_SETSIG SIGRTMIN+1);
//! - an unlinked file with owner 1234:5678, mode 0640, old atime/mtime,
//!   a 1 GiB hole then 4 KiB of data, opened by two descriptions: a write
//!   through one must be read through the other, and st_blocks must stay
//!   small (the hole is not written out);
//! - an O_TMPFILE file, which must still be linkable into its directory;
//! - O_PATH descriptors of a regular file and of a symbolic link.
//!
//! `<dir>/info` names the fds (`nonblock=N block=N sparse=N`).

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{cpath, fstat, list_fds, pread_full};
use std::ffi::CString;

const HOLE: i64 = 1 << 30;
const ATIME: i64 = 1_000_000_000;
const MTIME: i64 = 1_100_000_000;

fn check(p: &Proto, r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        p.bail_errno(what);
    }
    r
}

#[derive(Debug, PartialEq)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    size: i64,
    atime: i64,
    mtime: i64,
    nlink: u64,
}

fn meta(fd: i32) -> Option<(Meta, i64)> {
    let st = fstat(fd).ok()?;
    Some((
        Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            size: st.st_size,
            atime: st.st_atime,
            mtime: st.st_mtime,
            nlink: st.st_nlink,
        },
        st.st_blocks,
    ))
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let d = p.dir();
    let mut fds = [0i32; 2];
    // SAFETY: all calls below work on our own descriptors and valid
    // C strings; results are checked.
    let (rd, rd2, sparse, sparse2, tmp, opath, olink) = unsafe {
        check(p, libc::pipe(fds.as_mut_ptr()), "pipe");
        let rd = fds[0];
        let again = CString::new(format!("/proc/self/fd/{rd}")).unwrap();
        let rd2 = check(p, libc::open(again.as_ptr(), libc::O_RDONLY), "reopen pipe");
        check(
            p,
            libc::fcntl(rd2, libc::F_SETFL, libc::O_NONBLOCK),
            "F_SETFL",
        );
        check(
            p,
            libc::fcntl(rd, libc::F_SETFL, libc::O_ASYNC),
            "F_SETFL O_ASYNC",
        );
        let own = [1i32, libc::getpid()]; // F_OWNER_PID
        check(p, libc::fcntl(rd, 15, own.as_ptr()), "F_SETOWN_EX");
        check(p, libc::fcntl(rd, 10, libc::SIGRTMIN() + 1), "F_SETSIG");
        let sp = cpath(&d.join("sparse"));
        let sparse = check(
            p,
            libc::open(sp.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600),
            "open sparse",
        );
        let block = vec![0x5au8; 4096];
        if libc::pwrite(sparse, block.as_ptr().cast(), 4096, HOLE) != 4096 {
            p.bail_errno("pwrite sparse");
        }
        check(p, libc::fchown(sparse, 1234, 5678), "fchown");
        check(p, libc::fchmod(sparse, 0o640), "fchmod");
        let ts = [
            libc::timespec {
                tv_sec: ATIME,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: MTIME,
                tv_nsec: 0,
            },
        ];
        check(p, libc::futimens(sparse, ts.as_ptr()), "futimens");
        let sparse2 = check(
            p,
            libc::open(sp.as_ptr(), libc::O_RDONLY),
            "open sparse again",
        );
        check(p, libc::unlink(sp.as_ptr()), "unlink sparse");
        let dir = cpath(d);
        let tmp = check(
            p,
            libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600),
            "O_TMPFILE",
        );
        if libc::write(tmp, b"tmp".as_ptr().cast(), 3) != 3 {
            p.bail_errno("write tmpfile");
        }
        std::fs::write(d.join("plain"), b"plain").unwrap();
        std::os::unix::fs::symlink("plain", d.join("link")).unwrap();
        let opath = check(
            p,
            libc::open(cpath(&d.join("plain")).as_ptr(), libc::O_PATH),
            "O_PATH",
        );
        let olink = check(
            p,
            libc::open(
                cpath(&d.join("link")).as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW,
            ),
            "O_PATH of a symlink",
        );
        (rd, rd2, sparse, sparse2, tmp, opath, olink)
    };
    p.write_aux(
        "info",
        &format!("nonblock={rd2} block={rd} sparse={sparse}\n"),
    );
    // SAFETY: plain fcntl calls on our descriptors.
    let flags = |fd| unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let before_fl = (flags(rd), flags(rd2));
    let before_meta = meta(sparse).map(|m| m.0);
    let before_paths = (
        fstat(opath).ok().map(|s| s.st_ino),
        fstat(olink).ok().map(|s| (s.st_ino, s.st_mode)),
    );
    // Pipe and O_TMPFILE links name inode numbers, new after a restore:
    // compare the descriptor numbers only.
    let fds_before = list_fds();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq("open fds", fds_before, list_fds());
    c.eq(
        "flags of the pipe's two read descriptions",
        before_fl,
        (flags(rd), flags(rd2)),
    );
    let mut own = [0i32; 2];
    // SAFETY: F_GETOWN_EX fills two ints; F_GETSIG returns an int.
    let sig = unsafe {
        libc::fcntl(rd, 16, own.as_mut_ptr());
        libc::fcntl(rd, 11)
    };
    c.eq(
        "SIGIO owner (F_GETOWN_EX)",
        [1, std::process::id() as i32],
        own,
    );
    c.eq("SIGIO signal (F_GETSIG)", libc::SIGRTMIN() + 1, sig);
    match meta(sparse) {
        Some((m, blocks)) => {
            c.eq(
                "unlinked file owner, mode, size and times",
                before_meta,
                Some(m),
            );
            c.ensure(blocks <= 64, || {
                format!("unlinked sparse file: st_blocks {blocks} (the 1 GiB hole was filled)")
            });
        }
        None => c.fail("fstat of the unlinked file failed"),
    }
    // One file: a write through one description is read through the other.
    // SAFETY: pwrite on our descriptor.
    unsafe { libc::pwrite(sparse, b"shared".as_ptr().cast(), 6, 100) };
    let mut buf = [0u8; 6];
    let _ = pread_full(sparse2, &mut buf, 100);
    c.eq(
        "a write through one description of the unlinked file, read through the other",
        *b"shared",
        buf,
    );
    let mut big = [0u8; 4];
    let _ = pread_full(sparse2, &mut big, HOLE as u64);
    c.eq("data after the hole", [0x5au8; 4], big);
    // The O_TMPFILE file can be given a name.
    let name = cpath(&d.join("linked"));
    let src = CString::new(format!("/proc/self/fd/{tmp}")).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    c.ensure(r == 0, || {
        format!(
            "linkat of the O_TMPFILE file: {}",
            std::io::Error::last_os_error()
        )
    });
    c.eq(
        "content of the linked O_TMPFILE file",
        Some(b"tmp".to_vec()),
        std::fs::read(d.join("linked")).ok(),
    );
    let after_paths = (
        fstat(opath).ok().map(|s| s.st_ino),
        fstat(olink).ok().map(|s| (s.st_ino, s.st_mode)),
    );
    c.eq(
        "O_PATH descriptors (file, symlink)",
        before_paths,
        after_paths,
    );
    c
}
