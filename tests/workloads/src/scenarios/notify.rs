//! `fanotify <tmpfs-dir> [queued]`: two fanotify groups with marks on a private
//! tmpfs (so no other process's activity reaches them).
//! Group A (fd 40): FAN_CLASS_NOTIF, event files O_RDONLY|O_LARGEFILE;
//! an inode mark on `w/` (FAN_OPEN | FAN_EVENT_ON_CHILD), an inode mark
//! on `w/a` (FAN_MODIFY | FAN_CLOSE_WRITE), a legacy ignored mask
//! (FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY) of FAN_OPEN on
//! `w/b`, a FAN_MARK_IGNORE ignore mask of FAN_OPEN on `w/c`, and a mount
//! mark (FAN_CLOSE_NOWRITE) on the tmpfs.  Group B (fd 41):
//! FAN_REPORT_FID | FAN_NONBLOCK with a filesystem mark (FAN_CREATE |
//! FAN_ONDIR).  After go: the groups' fdinfo lines are what they were;
//! writing `w/a`, reading `w/b` and `w/c` gives group A exactly the events
//! (pid, path, mask) those marks make, and creating `w/d` gives group B a
//! FAN_CREATE event.
//!
//! `inotify-deleted [mapped]`: an inotify (fd 51) with watch 1 on `keep` (IN_MODIFY)
//! and watch 3 on `victim` (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE |
//! IN_DELETE_SELF; watch 2 was removed), `victim` held open read-write at
//! fd 50 and unlinked (its IN_ATTRIB read away).  After go: nothing is
//! queued; writing fd 50 and `keep`, then closing fd 50, gives exactly
//! (3 IN_MODIFY) (1 IN_MODIFY) (3 IN_CLOSE_WRITE) (3 IN_DELETE_SELF)
//! (3 IN_IGNORED): the watch is still on the unlinked file, which dies at
//! that close.  With `mapped`, fd 50 is closed before ready and the file
//! is held only by a shared read-only mapping of it; after go the munmap
//! gives exactly (3 IN_CLOSE_WRITE) (3 IN_DELETE_SELF) (3 IN_IGNORED).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{errno, readlink};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn place(p: &Proto, fd: i32, at: i32, what: &str) {
    // SAFETY: moving our own descriptor.
    if fd < 0 || unsafe { libc::dup2(fd, at) } != at || unsafe { libc::close(fd) } != 0 {
        p.bail_errno(&format!("placing {what} at {at}"));
    }
}

fn mark(p: &Proto, g: i32, flags: u32, mask: u64, path: &Path) {
    let cp = c(path);
    // SAFETY: valid C string.
    if unsafe { libc::fanotify_mark(g, flags, mask, libc::AT_FDCWD, cp.as_ptr()) } != 0 {
        p.bail_errno(&format!(
            "fanotify_mark({flags:#x}, {mask:#x}, {})",
            path.display()
        ));
    }
}

/// The "fanotify …" lines of fd's fdinfo, in order.
fn fan_lines(fd: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("fanotify "))
        .map(str::to_string)
        .collect()
}

fn touch(p: &Proto, path: &Path, flags: i32, data: &[u8]) {
    let cp = c(path);
    // SAFETY: valid C string; plain syscalls on our own descriptor.
    unsafe {
        let fd = libc::open(cp.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
        if fd < 0 {
            p.bail_errno(&format!("open {}", path.display()));
        }
        if !data.is_empty() && libc::write(fd, data.as_ptr().cast(), data.len()) < 0 {
            p.bail_errno(&format!("write {}", path.display()));
        }
        libc::close(fd);
    }
}

/// Group A's events, read until none is left: (pid, path, mask); each
/// event's file is closed.
fn read_events(g: i32) -> Result<Vec<(i32, String, u64)>, String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(g, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EAGAIN {
                return Ok(out);
            }
            return Err(format!("read: errno {e}"));
        }
        let n = n as usize;
        let mut off = 0;
        while off + 24 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
            let fd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
            let pid = i32::from_ne_bytes(buf[off + 20..off + 24].try_into().unwrap());
            let path = if fd >= 0 {
                let p = readlink(&format!("/proc/self/fd/{fd}")).unwrap_or_default();
                // SAFETY: the event's descriptor is ours to close.
                unsafe { libc::close(fd) };
                p
            } else {
                String::new()
            };
            out.push((pid, path, mask));
            if len < 24 {
                return Err(format!("bad event length {len}"));
            }
            off += len;
        }
    }
}

pub fn run_fanotify(p: &Proto, args: &[String]) -> Checks {
    let Some(root) = args.first().map(PathBuf::from) else {
        p.bail("usage: fanotify <tmpfs-dir>");
    };
    let w = root.join("w");
    let _ = std::fs::create_dir(&w);
    for f in ["a", "b", "c"] {
        touch(p, &w.join(f), libc::O_WRONLY | libc::O_CREAT, b"x");
    }
    // SAFETY: plain syscalls.
    let a = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        )
    };
    place(p, a, 40, "fanotify group A");
    // SAFETY: as above.
    let b = unsafe {
        libc::fanotify_init(
            libc::FAN_REPORT_FID | libc::FAN_NONBLOCK | libc::FAN_CLOEXEC,
            libc::O_RDONLY as u32,
        )
    };
    place(p, b, 41, "fanotify group B");
    // SAFETY: plain fcntl on our descriptor.
    unsafe { libc::fcntl(41, libc::F_SETFD, libc::FD_CLOEXEC) };
    let add = libc::FAN_MARK_ADD;
    mark(p, 40, add, libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD, &w);
    mark(
        p,
        40,
        add,
        libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE,
        &w.join("a"),
    );
    mark(
        p,
        40,
        add | libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY,
        libc::FAN_OPEN,
        &w.join("b"),
    );
    mark(
        p,
        40,
        add | libc::FAN_MARK_IGNORE | libc::FAN_MARK_IGNORED_SURV_MODIFY,
        libc::FAN_OPEN,
        &w.join("c"),
    );
    mark(
        p,
        40,
        add | libc::FAN_MARK_MOUNT,
        libc::FAN_CLOSE_NOWRITE,
        &root,
    );
    mark(
        p,
        41,
        add | libc::FAN_MARK_FILESYSTEM,
        libc::FAN_CREATE | libc::FAN_ONDIR,
        &root,
    );
    let before = (fan_lines(40), fan_lines(41));
    let fl = |fd| {
        // SAFETY: plain fcntl.
        unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        }
    };
    let flags = (fl(40), fl(41));
    if before.0.len() != 6 || before.1.len() != 2 {
        p.bail(&format!("setup: unexpected fdinfo {before:?}"));
    }
    if let Err(e) = read_events(40) {
        p.bail(&format!("setup: group A: {e}"));
    }
    // `queued`: an event is left unread across the checkpoint (which crest
    // refuses), and read away after go.
    let queued = args.get(1).is_some_and(|a| a == "queued");
    if queued {
        touch(p, &w.join("a"), libc::O_WRONLY, b"q");
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    if queued {
        let _ = read_events(40);
    }
    ck.eq("group A fdinfo", before.0, fan_lines(40));
    ck.eq("group B fdinfo", before.1, fan_lines(41));
    ck.eq(
        "(F_GETFL, F_GETFD) of groups A and B",
        flags,
        (fl(40), fl(41)),
    );
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    match read_events(40) {
        Ok(e) => ck.eq("group A events before any access", vec![], e),
        Err(e) => ck.fail(format!("group A: {e}")),
    }
    touch(p, &w.join("a"), libc::O_WRONLY, b"yy");
    touch(p, &w.join("b"), libc::O_RDONLY, b"");
    touch(p, &w.join("c"), libc::O_RDONLY, b"");
    let mut got: Vec<(String, u64)> = Vec::new();
    match read_events(40) {
        Ok(evs) => {
            for (pid, path, mask) in evs {
                if pid != me {
                    ck.fail(format!(
                        "group A: event of pid {pid} (mask {mask:#x} {path})"
                    ));
                    continue;
                }
                match got.iter_mut().find(|g| g.0 == path) {
                    Some(g) => g.1 |= mask,
                    None => got.push((path, mask)),
                }
            }
        }
        Err(e) => ck.fail(format!("group A: {e}")),
    }
    let s = |f: &str| w.join(f).to_string_lossy().into_owned();
    ck.eq(
        "group A events (path, masks) after writing a, reading b and c",
        vec![
            (
                s("a"),
                libc::FAN_OPEN | libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE,
            ),
            (s("b"), libc::FAN_CLOSE_NOWRITE),
            (s("c"), libc::FAN_CLOSE_NOWRITE),
        ],
        got,
    );
    let d = w.join("d");
    let cd = c(&d);
    // SAFETY: valid C string.
    unsafe { libc::mkdir(cd.as_ptr(), 0o755) };
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer we own.
    let n = unsafe { libc::read(41, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 24 {
        ck.fail(format!(
            "group B: no event after mkdir {} (read {n}, errno {})",
            d.display(),
            errno()
        ));
    } else {
        let mask = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        let fd = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        let pid = i32::from_ne_bytes(buf[20..24].try_into().unwrap());
        ck.eq(
            "group B first event (mask, fd, pid)",
            (libc::FAN_CREATE | libc::FAN_ONDIR, libc::FAN_NOFD, me),
            (mask, fd, pid),
        );
    }
    base.verify(p, &mut ck);
    ck
}

fn inotify_events(ifd: i32) -> Result<Vec<(i32, u32)>, i32> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(ifd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            return if e == libc::EAGAIN { Ok(out) } else { Err(e) };
        }
        let mut off = 0;
        while off + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            out.push((wd, mask));
            off += 16 + len;
        }
    }
}

fn add_watch(p: &Proto, ifd: i32, path: &Path, mask: u32) -> i32 {
    let cp = c(path);
    // SAFETY: valid C string.
    let wd = unsafe { libc::inotify_add_watch(ifd, cp.as_ptr(), mask) };
    if wd < 0 {
        p.bail_errno(&format!("inotify_add_watch {}", path.display()));
    }
    wd
}

fn write_fd(fd: i32, data: &[u8]) -> isize {
    // SAFETY: writes from a buffer we own.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

pub fn run_inotify_deleted(p: &Proto, args: &[String]) -> Checks {
    // `mapped`: the unlinked file is only mapped, no longer open: the
    // watch lives as long as the mapping, and the munmap ends it.
    let mapped = args.first().is_some_and(|a| a == "mapped");
    let mut map_at: *mut libc::c_void = std::ptr::null_mut();
    let dir = p.dir().to_path_buf();
    let keep = dir.join("keep");
    let gone = dir.join("gone");
    let victim = dir.join("victim");
    for f in [&keep, &gone] {
        touch(p, f, libc::O_WRONLY | libc::O_CREAT, b"k");
    }
    let cv = c(&victim);
    // SAFETY: valid C string.
    let v = unsafe { libc::open(cv.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o640) };
    place(p, v, 50, "the victim file");
    // SAFETY: plain syscall.
    let i = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    place(p, i, 51, "the inotify");
    let w1 = add_watch(p, 51, &keep, libc::IN_MODIFY);
    let w2 = add_watch(p, 51, &gone, libc::IN_MODIFY);
    let vmask = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE | libc::IN_DELETE_SELF;
    let w3 = add_watch(p, 51, &victim, vmask);
    // SAFETY: plain syscalls.
    unsafe {
        libc::inotify_rm_watch(51, w2);
        libc::unlink(cv.as_ptr());
    }
    if (w1, w2, w3) != (1, 2, 3) {
        p.bail(&format!("setup: watch descriptors {w1} {w2} {w3}"));
    }
    match inotify_events(51) {
        Ok(e) if e == vec![(2, libc::IN_IGNORED), (3, libc::IN_ATTRIB)] => {}
        other => p.bail(&format!("setup: unexpected events {other:?}")),
    }
    let watches = |fd: i32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                // wd and mask (the inode differs once recreated).
                let rest = l.strip_prefix("inotify wd:")?;
                let wd = rest.split_whitespace().next()?;
                let mask = rest.split_whitespace().find(|t| t.starts_with("mask:"))?;
                Some(format!("{wd} {mask}"))
            })
            .collect()
    };
    if mapped {
        // SAFETY: maps a page of our own file, then closes its descriptor
        // (the mapping keeps the inode, and so the watch, alive).
        unsafe {
            if libc::ftruncate(50, 4096) != 0 {
                p.bail_errno("sizing the victim");
            }
            map_at = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                50,
                0,
            );
            if map_at == libc::MAP_FAILED {
                p.bail_errno("mapping the victim");
            }
            libc::close(50);
        }
        let _ = inotify_events(51);
    }
    let before = watches(51);
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    if mapped {
        ck.eq("inotify watches (wd, mask)", before, watches(51));
        ck.eq(
            "events queued after the restore",
            Ok(vec![]),
            inotify_events(51),
        );
        base.verify(p, &mut ck);
        // SAFETY: our own mapping, the last reference to the unlinked file.
        ck.eq("munmap of the unlinked file", 0, unsafe {
            libc::munmap(map_at, 4096)
        });
        ck.eq(
            "events after unmapping the unlinked file",
            Ok(vec![
                (3, libc::IN_CLOSE_WRITE),
                (3, libc::IN_DELETE_SELF),
                (3, libc::IN_IGNORED),
            ]),
            inotify_events(51),
        );
        return ck;
    }
    ck.eq("inotify watches (wd, mask)", before, watches(51));
    ck.eq(
        "events queued after the restore",
        Ok(vec![]),
        inotify_events(51),
    );
    base.verify(p, &mut ck);
    ck.eq("write to the unlinked file", 3, write_fd(50, b"abc"));
    touch(p, &keep, libc::O_WRONLY | libc::O_APPEND, b"k");
    // SAFETY: our descriptor: the last one on the unlinked file.
    ck.eq("close of the unlinked file", 0, unsafe { libc::close(50) });
    ck.eq(
        "events after writing the unlinked file and keep, and closing the first",
        Ok(vec![
            (3, libc::IN_MODIFY),
            (1, libc::IN_MODIFY),
            (3, libc::IN_CLOSE_WRITE),
            (3, libc::IN_DELETE_SELF),
            (3, libc::IN_IGNORED),
        ]),
        inotify_events(51),
    );
    ck
}
