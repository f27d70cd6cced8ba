//! `opath-links`: O_PATH | O_NOFOLLOW descriptors of symbolic links.
//!
//! - `l` -> `t` (an existing file) and `dl` -> `nowhere` (dangling), each
//!   held only as an O_PATH | O_NOFOLLOW descriptor.
//!
//! After go each descriptor must still refer to the link itself:
//! fstat says S_IFLNK, readlinkat(fd, "") gives the link's target, the
//! /proc/self/fd link names the link, F_GETFL keeps O_PATH | O_NOFOLLOW.
//! `CREST_WL_DISTURB=followed` (selftests) puts an O_PATH descriptor of
//! the link's target in its place, as a restore that followed it would.

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{cpath, fstat, readlink};

fn link_target(fd: i32) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    // SAFETY: readlinkat into a buffer of the given size.
    let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn open_link(p: &Proto, path: &std::path::Path) -> i32 {
    let c = cpath(path);
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW) };
    if fd < 0 {
        p.bail_errno("open(O_PATH | O_NOFOLLOW)");
    }
    fd
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let d = p.dir();
    if std::fs::write(d.join("t"), b"target").is_err()
        || std::os::unix::fs::symlink("t", d.join("l")).is_err()
        || std::os::unix::fs::symlink("nowhere", d.join("dl")).is_err()
    {
        p.bail("setup: making the links");
    }
    let fds = [open_link(p, &d.join("l")), open_link(p, &d.join("dl"))];
    let want = [&b"t"[..], &b"nowhere"[..]];
    let links: Vec<Option<String>> = fds
        .iter()
        .map(|f| readlink(&format!("/proc/self/fd/{f}")))
        .collect();
    // SAFETY: F_GETFL on our descriptors.
    let fl: Vec<i32> = fds
        .iter()
        .map(|&f| unsafe { libc::fcntl(f, libc::F_GETFL) })
        .collect();
    for (i, &f) in fds.iter().enumerate() {
        if link_target(f).as_deref() != Some(want[i]) {
            p.bail("setup: readlinkat of the O_PATH descriptor");
        }
    }
    p.write_aux("info", &format!("l={}\ndl={}\n", fds[0], fds[1]));
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    if std::env::var("CREST_WL_DISTURB").as_deref() == Ok("followed") {
        let t = cpath(&d.join("t"));
        // SAFETY: plain syscalls on our own descriptors.
        unsafe {
            let f = libc::open(t.as_ptr(), libc::O_PATH);
            libc::dup2(f, fds[0]);
            libc::close(f);
        }
    }
    for (i, &f) in fds.iter().enumerate() {
        let what = ["l", "dl"][i];
        c.eq(
            &format!("{what}: file type"),
            Some(libc::S_IFLNK),
            fstat(f).ok().map(|s| s.st_mode & libc::S_IFMT),
        );
        c.eq(
            &format!("{what}: readlinkat(fd, \"\")"),
            Some(want[i].to_vec()),
            link_target(f),
        );
        c.eq(
            &format!("{what}: /proc/self/fd link"),
            &links[i],
            &readlink(&format!("/proc/self/fd/{f}")),
        );
        // SAFETY: F_GETFL on our descriptor.
        c.eq(&format!("{what}: F_GETFL"), fl[i], unsafe {
            libc::fcntl(f, libc::F_GETFL)
        });
    }
    c
}
