//! An agent for the socket calls of [`crate::actas`] that must be made
//! by a process no helper can stand for: the init (PID 1) of a PID
//! namespace being restored, whose number no other process can have
//! there.  The init is created sharing the caller's descriptor table
//! (CLONE_FILES) and waits in [`serve`] before it builds anything: it
//! reads each call from a pipe (a fixed header, then the call's bytes,
//! into a buffer of its own allocated before it was forked), makes it
//! with the effective ids asked for, then takes its ids back and answers
//! with an errno.  "Go" ends the service: the init unshares its
//! descriptor table (a copy of the caller's as it is then) and goes on.
//! The agent first says it serves (a hello on the reply pipe), so that
//! its owner can wait for it together with other events
//! ([`Agent::hello_fd`], [`Agent::take_hello`]).

use crate::actas::{call, Op};
use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const GO: u32 = 0;
const LISTEN: u32 = 1;
const CONNECT: u32 = 2;
const PAIR: u32 = 3;
const SEND: u32 = 4;

/// What the agent writes on the reply pipe once it serves.
const HELLO: i32 = -1;

/// The control data a message may carry through the agent.
pub const MAX_CONTROL: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Req {
    kind: u32,
    euid: u32,
    egid: u32,
    a: i32,
    b: i32,
    c: i32,
    name_len: u32,
    data_len: u32,
    ctrl_len: u32,
    _pad: u32,
}

/// The caller's side: the two pipes (both ends of each stay in the shared
/// table until the agent has gone on, then are closed).
pub struct Agent {
    cmd_r: OwnedFd,
    cmd_w: OwnedFd,
    reply_r: OwnedFd,
    reply_w: OwnedFd,
    room: usize,
    /// Whether the hello was read.
    greeted: std::cell::Cell<bool>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::last_os("pipe2 for the namespace init"));
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn write_all(fd: RawFd, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        // SAFETY: writes from a live buffer of the stated length.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// Reads exactly `len` bytes at `buf`; false on end of file or error.
/// Allocation-free.
unsafe fn read_exact(fd: RawFd, buf: *mut u8, len: usize) -> bool {
    let mut got = 0;
    while got < len {
        // SAFETY: the caller's buffer has room for `len` bytes.
        let n = unsafe { libc::read(fd, buf.add(got).cast(), len - got) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            // SAFETY: reads this thread's errno.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        got += n as usize;
    }
    true
}

impl Agent {
    /// Pipes for an agent whose calls carry up to `room` bytes (address,
    /// data and control data together).
    pub fn new(room: usize) -> Result<Agent> {
        let (cmd_r, cmd_w) = pipe()?;
        let (reply_r, reply_w) = pipe()?;
        Ok(Agent {
            cmd_r,
            cmd_w,
            reply_r,
            reply_w,
            room,
            greeted: std::cell::Cell::new(false),
        })
    }

    /// The descriptor that becomes readable when the agent serves (or
    /// answers).
    pub fn hello_fd(&self) -> RawFd {
        self.reply_r.as_raw_fd()
    }

    /// Reads the agent's hello (it blocks until the agent serves).
    pub fn take_hello(&self) -> Result<()> {
        if self.greeted.get() {
            return Ok(());
        }
        let mut code = 0i32;
        // SAFETY: reads one i32 into a local.
        let ok = unsafe { read_exact(self.reply_r.as_raw_fd(), (&mut code as *mut i32).cast(), 4) };
        if !ok || code != HELLO {
            return Err(Error::io(
                "the namespace init did not start serving",
                std::io::Error::from_raw_os_error(libc::EPROTO),
            ));
        }
        self.greeted.set(true);
        Ok(())
    }

    /// The agent's ends (command read end, reply write end) and the size
    /// of the buffer it needs.
    pub fn ends(&self) -> (RawFd, RawFd, usize) {
        (
            self.cmd_r.as_raw_fd(),
            self.reply_w.as_raw_fd(),
            self.room + MAX_CONTROL,
        )
    }

    fn ask(&self, r: &Req, payload: &[&[u8]]) -> Result<()> {
        self.take_hello()?;
        let mut bytes = Vec::with_capacity(std::mem::size_of::<Req>());
        // SAFETY: Req is plain integers, read as its bytes.
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts((r as *const Req).cast::<u8>(), std::mem::size_of::<Req>())
        });
        for p in payload {
            bytes.extend_from_slice(p);
        }
        write_all(self.cmd_w.as_raw_fd(), &bytes)
            .map_err(|e| Error::io("writing to the namespace init", e))?;
        let mut code = 0i32;
        // SAFETY: reads one i32 into a local.
        let ok = unsafe { read_exact(self.reply_r.as_raw_fd(), (&mut code as *mut i32).cast(), 4) };
        if !ok {
            return Err(Error::io(
                "the namespace init did not answer",
                std::io::Error::from_raw_os_error(libc::EPIPE),
            ));
        }
        if code != 0 {
            return Err(Error::io(
                "a socket call made by the namespace init (PID 1)",
                std::io::Error::from_raw_os_error(code),
            ));
        }
        Ok(())
    }

    /// Makes call `op` in the agent, with effective ids `euid`/`egid`.
    pub fn run(&self, euid: u32, egid: u32, op: &Op) -> Result<()> {
        let mut r = Req {
            euid,
            egid,
            ..Default::default()
        };
        match op {
            Op::Listen { fd, backlog } => {
                r.kind = LISTEN;
                r.a = *fd;
                r.b = *backlog;
                self.ask(&r, &[])
            }
            Op::Connect { fd, addr, len } => {
                r.kind = CONNECT;
                r.a = *fd;
                r.name_len = *len;
                // SAFETY: the address is `len` bytes of a sockaddr_un.
                let name = unsafe {
                    std::slice::from_raw_parts(
                        (*addr as *const libc::sockaddr_un).cast::<u8>(),
                        *len as usize,
                    )
                };
                self.ask(&r, &[name])
            }
            Op::SocketPair { ty, into } => {
                r.kind = PAIR;
                r.a = *ty;
                r.b = into[0];
                r.c = into[1];
                self.ask(&r, &[])
            }
            Op::SendAll { fd, msg } => {
                r.kind = SEND;
                r.a = *fd;
                // SAFETY: every pointer of the prepared message refers to
                // a live buffer of the stated length.
                let (name, data, ctrl) = unsafe {
                    let part = |p: *const libc::c_void, n: usize| {
                        if n == 0 || p.is_null() {
                            &[][..]
                        } else {
                            std::slice::from_raw_parts(p.cast::<u8>(), n)
                        }
                    };
                    let data = if msg.msg_iovlen > 0 {
                        part((*msg.msg_iov).iov_base, (*msg.msg_iov).iov_len)
                    } else {
                        &[][..]
                    };
                    (
                        part(msg.msg_name, msg.msg_namelen as usize),
                        data,
                        part(msg.msg_control, msg.msg_controllen),
                    )
                };
                if name.len() > std::mem::size_of::<libc::sockaddr_un>()
                    || ctrl.len() > MAX_CONTROL
                    || name.len() + data.len() > self.room
                {
                    return Err(Error::io(
                        "a message too large for the namespace init's buffer",
                        std::io::Error::from_raw_os_error(libc::E2BIG),
                    ));
                }
                r.name_len = name.len() as u32;
                r.data_len = data.len() as u32;
                r.ctrl_len = ctrl.len() as u32;
                self.ask(&r, &[name, data, ctrl])
            }
        }
    }

    /// Ends the service: the agent unshares its descriptor table and goes
    /// on; then the pipes are closed.
    pub fn go(self) -> Result<()> {
        self.ask(&Req::default(), &[])
    }
}

/// The agent's loop (in the init, before anything else): serves calls
/// from `cmd` until "go", answering on `reply`; `buf` holds a call's
/// bytes.  Returns false when the caller went away (end of file) or
/// asked for more than the buffer holds: the init must exit.
/// Allocation-free.
///
/// # Safety
/// Runs in a process forked with CLONE_FILES from the [`Agent`]'s owner,
/// which holds `cmd` and `reply`.
pub unsafe fn serve(cmd: RawFd, reply: RawFd, buf: &mut [u8]) -> bool {
    // SAFETY: writes one i32 from a local.
    if unsafe { libc::write(reply, (&HELLO as *const i32).cast(), 4) } != 4 {
        return false;
    }
    loop {
        let mut r = Req::default();
        // SAFETY: reads one Req into a local.
        if !unsafe { read_exact(cmd, (&mut r as *mut Req).cast(), std::mem::size_of::<Req>()) } {
            return false;
        }
        let answer = |code: i32| {
            // SAFETY: writes one i32 from a local.
            unsafe { libc::write(reply, (&code as *const i32).cast(), 4) == 4 }
        };
        if r.kind == GO {
            // SAFETY: plain syscall: from now on a table of its own.
            let code = if unsafe { libc::unshare(libc::CLONE_FILES) } == 0 {
                0
            } else {
                // SAFETY: reads this thread's errno.
                unsafe { *libc::__errno_location() }
            };
            return answer(code) && code == 0;
        }
        let (nl, dl, cl) = (
            r.name_len as usize,
            r.data_len as usize,
            r.ctrl_len as usize,
        );
        if nl > std::mem::size_of::<libc::sockaddr_un>()
            || cl > MAX_CONTROL
            || nl + dl + cl > buf.len()
        {
            return false;
        }
        // SAFETY: the buffer has room for the call's bytes (checked).
        if !unsafe { read_exact(cmd, buf.as_mut_ptr(), nl + dl + cl) } {
            return false;
        }
        // SAFETY: all zeroes is a valid sockaddr_un; the name is copied
        // into it (at most its size, checked).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                (&mut addr as *mut libc::sockaddr_un).cast(),
                nl,
            )
        };
        let mut ctrl = [0u64; MAX_CONTROL / 8];
        // SAFETY: the control bytes fit (checked); the copy is aligned for cmsghdr.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr().add(nl + dl),
                ctrl.as_mut_ptr().cast::<u8>(),
                cl,
            )
        };
        let mut iov = libc::iovec {
            // SAFETY: within the buffer.
            iov_base: unsafe { buf.as_mut_ptr().add(nl) }.cast(),
            iov_len: dl,
        };
        // SAFETY: msghdr is plain data; all zeroes is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        if nl > 0 {
            msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
            msg.msg_namelen = nl as u32;
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if cl > 0 {
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = cl;
        }
        let op = match r.kind {
            LISTEN => Op::Listen {
                fd: r.a,
                backlog: r.b,
            },
            CONNECT => Op::Connect {
                fd: r.a,
                addr: &addr,
                len: nl as u32,
            },
            PAIR => Op::SocketPair {
                ty: r.a,
                into: [r.b, r.c],
            },
            SEND => Op::SendAll { fd: r.a, msg: &msg },
            _ => return false,
        };
        // SAFETY: plain id queries and changes of this process: the
        // effective ids for the call, then its own again (its saved ids
        // are kept, so it may).
        let code = unsafe {
            let (uid, gid) = (libc::geteuid(), libc::getegid());
            if libc::syscall(libc::SYS_setresgid, -1i32, r.egid, -1i32) != 0
                || libc::syscall(libc::SYS_setresuid, -1i32, r.euid, -1i32) != 0
            {
                *libc::__errno_location()
            } else {
                let code = call(&op);
                if libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) != 0
                    || libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32) != 0
                {
                    return false;
                }
                code
            }
        };
        if !answer(code) {
            return false;
        }
    }
}
