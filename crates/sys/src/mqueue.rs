//! POSIX message queues: the raw mq_* system calls (names as the kernel
//! takes them, without glibc's leading '/'), the queue file's status
//! line, and listing the queues of the calling thread's IPC namespace
//! through a detached mqueue mount of it.
//!
//! Every call acts in the IPC namespace of the calling *thread*
//! (`current->nsproxy`): run it on a thread that joined the namespace
//! (see [`crate::ns::run_in`]).

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The filesystem magic of an mqueue superblock (`MQUEUE_MAGIC`).
pub const MAGIC: i64 = 0x1980_0202;

/// `struct mq_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
    reserved: [i64; 4],
}

/// A queue file's status (what reading the file gives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Bytes of message text queued.
    pub qsize: u64,
    /// sigev_notify of the registration (0 when none, or SIGEV_SIGNAL).
    pub notify: i32,
    pub signo: i32,
    /// The registered process, in the reader's PID namespace (0: none).
    pub notify_pid: i32,
}

fn kname(name: &str) -> Result<CString> {
    let n = name.strip_prefix('/').unwrap_or(name);
    if n.is_empty() || n.contains('/') {
        return Err(Error::parse(name, "not a POSIX message queue name"));
    }
    CString::new(n).map_err(|_| Error::parse(name, "a NUL byte in a queue name"))
}

fn owned(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::last_os(what()));
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// mq_open of an existing queue `name` ("/q") with `flags` (O_RDONLY,
/// O_WRONLY or O_RDWR, and O_NONBLOCK); close-on-exec.
pub fn open(name: &str, flags: i32) -> Result<OwnedFd> {
    let n = kname(name)?;
    let flags = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK)) | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name; without O_CREAT the kernel reads no
    // mode or attributes; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_mq_open, n.as_ptr(), flags, 0, 0usize) };
    owned(r, || format!("mq_open {name}"))
}

/// Creates queue `name` (it must not exist), opened read-write, with
/// `maxmsg` messages of up to `msgsize` bytes.  The mode is masked by
/// the umask: set it afterwards with fchmod.
pub fn create(name: &str, mode: u32, maxmsg: i64, msgsize: i64) -> Result<OwnedFd> {
    let n = kname(name)?;
    let attr = Attr {
        maxmsg,
        msgsize,
        ..Default::default()
    };
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: a NUL-terminated name and a valid mq_attr the kernel only
    // reads; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            n.as_ptr(),
            flags,
            mode as libc::c_uint,
            &attr as *const Attr,
        )
    };
    owned(r, || {
        format!("mq_open {name} O_CREAT (mq_maxmsg {maxmsg}, mq_msgsize {msgsize})")
    })
}

/// mq_unlink.
pub fn unlink(name: &str) -> Result<()> {
    let n = kname(name)?;
    // SAFETY: a NUL-terminated name; the result is checked.
    if unsafe { libc::syscall(libc::SYS_mq_unlink, n.as_ptr()) } != 0 {
        return Err(Error::last_os(format!("mq_unlink {name}")));
    }
    Ok(())
}

/// The attributes of the queue `fd` is open on (mq_getsetattr).
pub fn getattr(fd: BorrowedFd) -> Result<Attr> {
    let mut a = Attr::default();
    // SAFETY: a null new-attributes pointer and a valid out pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd.as_raw_fd(),
            std::ptr::null::<Attr>(),
            &mut a as *mut Attr,
        )
    };
    if r != 0 {
        return Err(Error::last_os("mq_getsetattr"));
    }
    Ok(a)
}

/// Takes the next message (highest priority first, oldest first among
/// equals) without waiting: `None` when the queue is empty.  `msgsize`
/// is the queue's mq_msgsize.
pub fn receive_now(fd: BorrowedFd, msgsize: usize) -> Result<Option<(Vec<u8>, u32)>> {
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut prio: libc::c_uint = 0;
    // A timeout in the past: a descriptor without O_NONBLOCK does not wait.
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a buffer of buf.len() bytes, valid out and in pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedreceive,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut prio as *mut libc::c_uint,
            &ts as *const libc::timespec,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)) {
            return Ok(None);
        }
        return Err(Error::io("mq_timedreceive", e));
    }
    buf.truncate(r as usize);
    Ok(Some((buf, prio)))
}

/// Queues `msg` with priority `prio` without waiting (a full queue is an
/// error).
pub fn send_now(fd: BorrowedFd, msg: &[u8], prio: u32) -> Result<()> {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a buffer of msg.len() bytes and a valid timespec, both only
    // read.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedsend,
            fd.as_raw_fd(),
            msg.as_ptr(),
            msg.len(),
            prio as libc::c_uint,
            &ts as *const libc::timespec,
        )
    };
    if r != 0 {
        return Err(Error::last_os(format!(
            "mq_timedsend ({} bytes, priority {prio})",
            msg.len()
        )));
    }
    Ok(())
}

/// Parses a queue file's text: "QSIZE:11 NOTIFY:0 SIGNO:0 NOTIFY_PID:0".
pub fn parse_status(text: &str) -> Result<Status> {
    let mut s = Status::default();
    let mut seen = 0;
    for field in text.split_whitespace() {
        let Some((k, v)) = field.split_once(':') else {
            continue;
        };
        let bad = || Error::parse(text, "a queue file's status");
        match k {
            "QSIZE" => s.qsize = v.parse().map_err(|_| bad())?,
            "NOTIFY" => s.notify = v.parse().map_err(|_| bad())?,
            "SIGNO" => s.signo = v.parse().map_err(|_| bad())?,
            "NOTIFY_PID" => s.notify_pid = v.parse().map_err(|_| bad())?,
            _ => continue,
        }
        seen += 1;
    }
    if seen != 4 {
        return Err(Error::parse(text, "a queue file's status"));
    }
    Ok(s)
}

/// The status of the queue `fd` is open on for reading (a pread of the
/// queue file at offset 0).
pub fn status(fd: BorrowedFd) -> Result<Status> {
    let mut buf = [0u8; 256];
    let n = rustix::io::pread(fd, &mut buf, 0)
        .map_err(|e| Error::io("reading a queue file", e.into()))?;
    parse_status(&String::from_utf8_lossy(&buf[..n]))
}

/// A detached mount of the mqueue filesystem of the calling thread's IPC
/// namespace (its existing superblock: the namespace's queues).
pub fn mount_own_ns() -> Result<OwnedFd> {
    crate::mount::FsContext::open("mqueue")?.mount(0)
}

/// The queue names ("/q") in mqueue mount `mnt`, sorted.
pub fn list(mnt: BorrowedFd) -> Result<Vec<String>> {
    let dir = rustix::fs::openat(
        mnt,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("opening an mqueue mount", e.into()))?;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir)
        .map_err(|e| Error::io("reading an mqueue mount", e.into()))?
    {
        let e = e.map_err(|e| Error::io("reading an mqueue mount", e.into()))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            out.push(format!("/{n}"));
        }
    }
    out.sort();
    Ok(out)
}

/// (mode, uid, gid) of queue `name` in mqueue mount `mnt`.
pub fn stat_at(mnt: BorrowedFd, name: &str) -> Result<(u32, u32, u32)> {
    let n = kname(name)?;
    let st = rustix::fs::statat(mnt, n.as_c_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(format!("stat of queue {name}"), e.into()))?;
    Ok((st.st_mode, st.st_uid, st.st_gid))
}

/// The device number of mqueue mount `mnt`'s superblock: one per IPC
/// namespace, and the `st_dev` of every queue descriptor of it.
pub fn dev(mnt: BorrowedFd) -> Result<u64> {
    let st = rustix::fs::fstat(mnt).map_err(|e| Error::io("stat of an mqueue mount", e.into()))?;
    Ok(st.st_dev)
}

/// Whether the file at `path` (a /proc/PID/fd link, say) is on an mqueue
/// filesystem.
// f_type's type differs between architectures (i64 on x86-64).
#[allow(clippy::unnecessary_cast)]
pub fn is_queue(path: &str) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        let s =
            parse_status("QSIZE:11         NOTIFY:2     SIGNO:10    NOTIFY_PID:77     \n").unwrap();
        assert_eq!(
            s,
            Status {
                qsize: 11,
                notify: 2,
                signo: 10,
                notify_pid: 77
            }
        );
        assert!(parse_status("QSIZE:1").is_err());
    }

    #[test]
    fn names() {
        assert!(kname("/a").is_ok());
        assert!(kname("/").is_err());
        assert!(kname("/a/b").is_err());
    }
}
