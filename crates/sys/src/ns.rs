//! Namespaces: descriptors on them, joining them (setns), and running a
//! piece of work inside another process's namespaces on a thread of its
//! own (so crest's other threads stay where they are).

use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A descriptor on namespace `kind` ("uts", "ipc", "pid", …) of `pid`.
pub fn open(pid: i32, kind: &str) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/{kind}\0");
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!(
            "opening {}",
            path.trim_end_matches('\0')
        )));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the namespace `fd` refers to
/// (`nstype`: its CLONE_NEW* flag, or 0 for any).
pub fn setns(fd: &OwnedFd, nstype: i32) -> Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } != 0 {
        return Err(Error::last_os(format!("setns (type {nstype:#x})")));
    }
    Ok(())
}

/// Runs `f` on a new thread that first joins namespace `kind` of `pid`
/// (for kinds a single thread may join: uts, ipc, net, cgroup, time —
/// not mnt or user, which need an unshared or single-threaded caller).
/// The thread ends with `f`.
pub fn run_in<T: Send>(
    pid: i32,
    kind: &str,
    nstype: i32,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    let fd = open(pid, kind)?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(&fd, nstype).map_err(|e| {
                Error::io(
                    format!("joining the {kind} namespace of pid {pid}"),
                    std::io::Error::from_raw_os_error(e.errno().unwrap_or(libc::EINVAL)),
                )
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "a namespace worker thread panicked",
                std::io::Error::other("panic"),
            ))
        })
    })
}

/// Runs `f` on a new thread that first joins the namespace `fd` refers
/// to (see [`run_in`] for the kinds a thread may join).
pub fn run_in_fd<T: Send>(fd: &OwnedFd, nstype: i32, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(fd, nstype)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "a namespace worker thread panicked",
                std::io::Error::other("panic"),
            ))
        })
    })
}

/// A new, empty IPC namespace (owned by the caller's user namespace),
/// made by a thread of crest that ends at once: the descriptor keeps it.
pub fn new_ipc() -> Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd> {
            // SAFETY: a plain syscall; it moves only this short-lived
            // thread into a new IPC namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
                return Err(Error::last_os("unshare(CLONE_NEWIPC)"));
            }
            let path = c"/proc/thread-self/ns/ipc";
            // SAFETY: a NUL-terminated path; the result is checked.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(Error::last_os("opening /proc/thread-self/ns/ipc"));
            }
            // SAFETY: a new descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "a namespace worker thread panicked",
                std::io::Error::other("panic"),
            ))
        })
    })
}

/// Host and domain name of the calling thread's UTS namespace.
pub fn uts_names() -> Result<(String, String)> {
    let [_, node, ..] = crate::process::uname()?;
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(Error::last_os("uname"));
    }
    let b: Vec<u8> = u
        .domainname
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((node, String::from_utf8_lossy(&b).into_owned()))
}

const NS_GET_USERNS: libc::c_ulong = 0xb701;
const NS_GET_PARENT: libc::c_ulong = 0xb702;

fn ns_ioctl(fd: &OwnedFd, req: libc::c_ulong, what: &str) -> Result<OwnedFd> {
    // SAFETY: a namespace ioctl without argument on a descriptor we own;
    // the result is checked.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req) };
    if r < 0 {
        return Err(Error::last_os(what.to_string()));
    }
    // SAFETY: the ioctl returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The inode number of the namespace `fd` refers to.
pub fn ino(fd: &OwnedFd) -> Result<u64> {
    let f = std::fs::File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata().map_err(|e| Error::io("fstat", e))?.ino())
}

/// The user namespace that owns namespace `fd` (NS_GET_USERNS).  `None`
/// when the caller may not see it (EPERM: outside its own user
/// namespace's subtree).
pub fn owner(fd: &OwnedFd) -> Result<Option<OwnedFd>> {
    match ns_ioctl(fd, NS_GET_USERNS, "NS_GET_USERNS") {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.errno() == Some(libc::EPERM) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The parent of user or PID namespace `fd` (NS_GET_PARENT).  `None`
/// when it is outside what the caller may see (EPERM).
pub fn parent(fd: &OwnedFd) -> Result<Option<OwnedFd>> {
    match ns_ioctl(fd, NS_GET_PARENT, "NS_GET_PARENT") {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.errno() == Some(libc::EPERM) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the id maps of process `pid`'s (new, empty) user namespace:
/// `setgroups` first when it is "deny", then `uid_map` and `gid_map`
/// (text the kernel takes in one write each).  The kernel reads the
/// outside ids in the namespace's parent, and lets only a process in
/// that parent (or the namespace itself) write them: with `via`, the
/// parent user namespace when it is not the caller's, a forked child of
/// the caller joins it first and writes them.
pub fn write_id_maps(
    pid: i32,
    via: Option<&OwnedFd>,
    deny_setgroups: bool,
    uid_map: &[u8],
    gid_map: &[u8],
) -> Result<()> {
    let mut files: Vec<(std::ffi::CString, &[u8])> = Vec::new();
    let path = |f: &str| std::ffi::CString::new(format!("/proc/{pid}/{f}")).expect("no NUL");
    if deny_setgroups {
        files.push((path("setgroups"), b"deny"));
    }
    files.push((path("uid_map"), uid_map));
    files.push((path("gid_map"), gid_map));
    let write_all =
        |files: &[(std::ffi::CString, &[u8])]| -> std::result::Result<(), (usize, i32)> {
            for (k, (p, data)) in files.iter().enumerate() {
                // SAFETY: NUL-terminated path, a buffer we own; results checked.
                unsafe {
                    let f = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if f < 0 {
                        return Err((k, *libc::__errno_location()));
                    }
                    let n = libc::write(f, data.as_ptr().cast(), data.len());
                    let e = *libc::__errno_location();
                    libc::close(f);
                    if n != data.len() as isize {
                        return Err((k, if n < 0 { e } else { libc::EIO }));
                    }
                }
            }
            Ok(())
        };
    let failed = match via {
        None => write_all(&files).err(),
        Some(ns) => {
            let mut p = [0i32; 2];
            // SAFETY: valid out array.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(Error::last_os("pipe2"));
            }
            // SAFETY: the child runs only raw syscalls on data prepared
            // before the fork (setns, open, write) and exits.
            let child = unsafe { libc::fork() };
            if child < 0 {
                // SAFETY: closing our own pipe.
                unsafe {
                    libc::close(p[0]);
                    libc::close(p[1]);
                }
                return Err(Error::last_os("fork"));
            }
            if child == 0 {
                // SAFETY: in the forked child: raw syscalls only.
                unsafe {
                    let r = if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                        Err((usize::MAX, *libc::__errno_location()))
                    } else {
                        write_all(&files)
                    };
                    if let Err((k, e)) = r {
                        let msg = [k as u64, e as u64];
                        libc::write(p[1], msg.as_ptr().cast(), 16);
                    }
                    libc::_exit(0);
                }
            }
            // SAFETY: our own descriptors; reaping our own child.
            unsafe {
                libc::close(p[1]);
                let mut msg = [0u64; 2];
                let n = libc::read(p[0], msg.as_mut_ptr().cast(), 16);
                libc::close(p[0]);
                libc::waitpid(child, std::ptr::null_mut(), libc::__WALL);
                (n == 16).then_some((msg[0] as usize, msg[1] as i32))
            }
        }
    };
    match failed {
        None => Ok(()),
        Some((k, e)) => {
            let what = match files.get(k) {
                Some((p, _)) => format!("writing {}", p.to_string_lossy()),
                None => "joining the parent user namespace".to_string(),
            };
            Err(Error::io(what, std::io::Error::from_raw_os_error(e)))
        }
    }
}

/// A datagram socket pair whose first end receives its peer's
/// credentials with every message (SO_PASSCRED): the PID of the sender
/// as crest sees it, whatever namespaces the sender is in.
pub fn cred_socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let mut s = [0i32; 2];
    // SAFETY: valid out array; results checked.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            s.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Error::last_os("socketpair"));
    }
    // SAFETY: two new descriptors we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(s[0]), OwnedFd::from_raw_fd(s[1])) };
    let one: libc::c_int = 1;
    // SAFETY: a valid int option on our socket.
    if unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            4,
        )
    } != 0
    {
        return Err(Error::last_os("setting SO_PASSCRED"));
    }
    Ok((a, b))
}

/// Receives one message of up to `buf.len()` bytes on a socket with
/// SO_PASSCRED: (its length, the sender's PID).
pub fn recv_with_pid(fd: &OwnedFd, buf: &mut [u8]) -> Result<(usize, i32)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain old data; zeroed is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: msg points at buffers we own for the call's duration.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io("recvmsg", e));
        }
    };
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Ok((n, cred.pid));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err(Error::io(
        "recvmsg",
        std::io::Error::other("no sender credentials with the message"),
    ))
}

/// The cursor of the PID namespace of `pid`: the last PID it handed out
/// (`/proc/sys/kernel/ns_last_pid` as seen from inside; the kernel answers
/// for the reader's own PID namespace), read by a child forked into it.
/// That child takes the next free PID there itself, so this is the
/// child's PID; the cursor before it was the one below (for the caller).
pub fn last_pid_in(pid: i32) -> Result<i32> {
    let text = in_pid_ns_child(pid, None)?;
    text.trim().parse().map_err(|_| {
        Error::parse(
            "/proc/sys/kernel/ns_last_pid",
            format!("not a PID: '{}'", text.trim()),
        )
    })
}

/// Sets the cursor of the PID namespace of `pid` to `last`: the next
/// process it makes gets the first free PID after it.  Written by a child
/// forked into it (which takes a PID there first, and frees it).
pub fn set_last_pid_in(pid: i32, last: i32) -> Result<()> {
    in_pid_ns_child(pid, Some(last)).map(|_| ())
}

/// Forks a child into the PID namespace of `pid` (from a thread of its
/// own, whose PID namespace for children is changed) that reads
/// `ns_last_pid`, or writes `set` to it; the text read.
fn in_pid_ns_child(pid: i32, set: Option<i32>) -> Result<String> {
    const PATH: &std::ffi::CStr = c"/proc/sys/kernel/ns_last_pid";
    let ns = open(pid, "pid")?;
    let value = set.map(|v| format!("{v}"));
    std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            setns(&ns, libc::CLONE_NEWPID)?;
            let mut p = [0i32; 2];
            // SAFETY: pipe2 fills two descriptors.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(Error::last_os("pipe2"));
            }
            // SAFETY: fresh descriptors nobody else owns.
            let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
            let w = wr.as_raw_fd();
            let bytes = value.as_deref().unwrap_or("").as_bytes();
            // SAFETY: the child makes raw syscalls on data prepared before
            // the fork (a path, a byte string, a stack buffer) and exits.
            let child = match unsafe { crate::process::clone_with_tids(&[], 0)? } {
                crate::process::Forked::Child => {
                    let flags = if set.is_some() {
                        libc::O_WRONLY
                    } else {
                        libc::O_RDONLY
                    };
                    // SAFETY: as above.
                    let code = unsafe {
                        let f = libc::open(PATH.as_ptr(), flags);
                        let mut buf = [0u8; 32];
                        if f < 0 {
                            *libc::__errno_location()
                        } else if set.is_some() {
                            let n = libc::write(f, bytes.as_ptr().cast(), bytes.len());
                            if n == bytes.len() as isize {
                                0
                            } else {
                                *libc::__errno_location()
                            }
                        } else {
                            let n = libc::read(f, buf.as_mut_ptr().cast(), buf.len());
                            if n > 0 && libc::write(w, buf.as_ptr().cast(), n as usize) == n {
                                0
                            } else {
                                *libc::__errno_location()
                            }
                        }
                    };
                    // SAFETY: ends the child at once, without destructors.
                    unsafe { libc::_exit(code.clamp(0, 255)) }
                }
                crate::process::Forked::Parent(c) => c,
            };
            drop(wr);
            let mut status = 0;
            // SAFETY: waits for our own child.
            if unsafe { libc::waitpid(child, &mut status, libc::__WALL) } != child {
                return Err(Error::last_os("waiting for the ns_last_pid helper"));
            }
            let what = if set.is_some() { "writing" } else { "reading" };
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => {}
                (true, e) => {
                    return Err(Error::io(
                        format!(
                            "{what} {} in the PID namespace of pid {pid}",
                            PATH.to_string_lossy()
                        ),
                        std::io::Error::from_raw_os_error(e),
                    ))
                }
                _ => {
                    return Err(Error::io(
                        format!("the ns_last_pid helper ended with status {status:#x}"),
                        std::io::Error::from_raw_os_error(libc::ECHILD),
                    ))
                }
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut text)
                .map_err(|e| Error::io("reading from the ns_last_pid helper", e))?;
            Ok(text)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "a namespace worker thread panicked",
                std::io::Error::other("panic"),
            ))
        })
    })
}
