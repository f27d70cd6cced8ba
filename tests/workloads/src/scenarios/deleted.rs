//! `deleted`: nodes deleted while held open.
//!
//! - a directory (mode 0710, owner 4321:8765) open as a descriptor, then
//!   removed;
//! - another removed directory as the cwd;
//! - a FIFO opened O_RDWR, then unlinked;
//! - a /dev/null node made with mknod, opened, then unlinked.
//!
//! After go each must be the same kind of node, with the same mode,
//! owner and device number, still deleted (nlink 0 for the directories
//! and the link in /proc/self/fd ends in " (deleted)" with the same
//! path), and usable: bytes written into the FIFO are read back, a write
//! to the null device succeeds, fchdir to the directory works.
//! `<dir>/info` names the directory's fd (`dir=N`).

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{cpath, fstat, list_fds, readlink};

#[derive(Debug, PartialEq)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    nlink: u64,
    link: Option<String>,
}

fn node(fd: i32) -> Option<Node> {
    let st = fstat(fd).ok()?;
    Some(Node {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        nlink: st.st_nlink,
        link: readlink(&format!("/proc/self/fd/{fd}")),
    })
}

fn check(p: &Proto, r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        p.bail_errno(what);
    }
    r
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let d = p.dir();
    let dd = cpath(&d.join("dd"));
    let cw = cpath(&d.join("cw"));
    let ff = cpath(&d.join("ff"));
    let nn = cpath(&d.join("nn"));
    // SAFETY: plain syscalls with valid C strings; results checked.
    let (dir, fifo, null) = unsafe {
        check(p, libc::mkdir(dd.as_ptr(), 0o700), "mkdir dd");
        check(p, libc::chmod(dd.as_ptr(), 0o710), "chmod dd");
        check(p, libc::chown(dd.as_ptr(), 4321, 8765), "chown dd");
        let dir = check(
            p,
            libc::open(dd.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY),
            "open dd",
        );
        check(p, libc::rmdir(dd.as_ptr()), "rmdir dd");
        check(p, libc::mkdir(cw.as_ptr(), 0o750), "mkdir cw");
        check(p, libc::chdir(cw.as_ptr()), "chdir cw");
        check(p, libc::rmdir(cw.as_ptr()), "rmdir cw");
        check(p, libc::mkfifo(ff.as_ptr(), 0o640), "mkfifo");
        let fifo = check(
            p,
            libc::open(ff.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK),
            "open fifo",
        );
        check(p, libc::unlink(ff.as_ptr()), "unlink fifo");
        check(
            p,
            libc::mknod(nn.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
            "mknod",
        );
        let null = check(p, libc::open(nn.as_ptr(), libc::O_WRONLY), "open null");
        check(p, libc::unlink(nn.as_ptr()), "unlink null");
        (dir, fifo, null)
    };
    p.write_aux("info", &format!("dir={dir}\n"));
    let fds = [dir, fifo, null];
    let before: Vec<Option<Node>> = fds.iter().map(|&f| node(f)).collect();
    let cwd_before = readlink("/proc/self/cwd");
    let cwd_mode = std::fs::metadata("/proc/self/cwd").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.mode(), m.nlink())
    });
    let fds_before = list_fds();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    // SAFETY: as above.
    c.eq("getpid()", pid, unsafe { libc::getpid() });
    c.eq("open fds", fds_before, list_fds());
    for (i, (&f, what)) in fds
        .iter()
        .zip(["directory", "FIFO", "device node"])
        .enumerate()
    {
        c.eq(&format!("deleted {what} (fd {f})"), &before[i], &node(f));
    }
    c.eq("cwd link", cwd_before, readlink("/proc/self/cwd"));
    let cwd_now = std::fs::metadata("/proc/self/cwd").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.mode(), m.nlink())
    });
    c.eq("cwd mode and nlink", cwd_mode, cwd_now);
    let mut buf = [0u8; 8];
    // SAFETY: plain syscalls on our descriptors with valid buffers.
    unsafe {
        c.eq(
            "write into the FIFO",
            3,
            libc::write(fifo, b"abc".as_ptr().cast(), 3),
        );
        c.eq(
            "read from the FIFO",
            3,
            libc::read(fifo, buf.as_mut_ptr().cast(), 8),
        );
        c.eq(
            "write to the null device",
            4,
            libc::write(null, b"null".as_ptr().cast(), 4),
        );
        c.eq("fchdir to the deleted directory", 0, libc::fchdir(dir));
    }
    c.eq("FIFO bytes", *b"abc", [buf[0], buf[1], buf[2]]);
    c
}
