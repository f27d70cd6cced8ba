//! SO_PEERCRED and SCM_CREDENTIALS: the kernel records who made a
//! socketpair, a listener or a connection (its PID and effective ids),
//! and checks that the PID in queued credentials is a live process.  The
//! restore makes those calls as the process recorded: a short-lived child
//! with its PID and ids (`crest_sys::actas`), before the tree's processes
//! exist.  The PID number stays in what the kernel recorded once the
//! child has gone, so the restored process with that PID sees itself.
//! A PID in use by another process here, or a tree in a PID namespace of
//! its own (whose numbers are not crest's), gets crest's instead.

use super::ops::*;
use super::*;
use crate::error::Error;
use crest_sys::actas::{run_as, Op};

/// Whether calls are made as their recorded process.
pub(super) struct Creds {
    own_ns: bool,
    me: i32,
}

type Cred = Option<(i32, u32, u32)>;

impl Creds {
    pub(super) fn new(ckpt: &Checkpoint) -> Creds {
        Creds {
            own_ns: ckpt.processes.iter().all(|p| p.ns.pids.is_empty()),
            me: std::process::id() as i32,
        }
    }

    /// The process a call recorded as made by `c` is made as, if not crest.
    fn who(&self, c: Cred) -> Cred {
        let (pid, _, _) = c?;
        if !self.own_ns || pid <= 0 || pid == self.me {
            return None;
        }
        // SAFETY: signal 0 only checks whether the PID has a task.
        let free = unsafe { libc::kill(pid, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        free.then_some(c).flatten()
    }

    pub(super) fn listen(&self, fd: &OwnedFd, backlog: u32, name: &[u8], c: Cred) -> Result<()> {
        match self.who(c) {
            Some((pid, uid, gid)) => {
                let op = Op::Listen {
                    fd: fd.as_raw_fd(),
                    backlog: backlog.min(i32::MAX as u32) as i32,
                };
                run_as(pid, uid, gid, &op)
                    .map_err(|e| Error::msg(format!("listening on {}: {e}", show(name))))
            }
            None => listen(fd, backlog, name),
        }
    }

    pub(super) fn connect(&self, fd: &OwnedFd, target: &[u8], c: Cred) -> Result<()> {
        match self.who(c) {
            Some((pid, uid, gid)) => {
                let (addr, len) = sockaddr_un(target)?;
                let op = Op::Connect {
                    fd: fd.as_raw_fd(),
                    addr: &addr,
                    len,
                };
                match run_as(pid, uid, gid, &op) {
                    Ok(()) => Ok(()),
                    // The recorded ids may no longer reach the socket file
                    // (its directory's or its own mode changed): crest's.
                    Err(crest_sys::Error::Os { source, .. })
                        if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
                    {
                        connect(fd, target)
                    }
                    Err(e) => Err(Error::msg(format!(
                        "connecting a UNIX socket to {}: {e}",
                        show(target)
                    ))),
                }
            }
            None => connect(fd, target),
        }
    }

    pub(super) fn socketpair(&self, ty: i32, c: Cred) -> Result<(OwnedFd, OwnedFd)> {
        let (a, b) = socketpair(ty)?;
        if let Some((pid, uid, gid)) = self.who(c) {
            // The pair made in the helper replaces these two.
            let op = Op::SocketPair {
                ty: ty | libc::SOCK_NONBLOCK,
                into: [a.as_raw_fd(), b.as_raw_fd()],
            };
            run_as(pid, uid, gid, &op)
                .map_err(|e| Error::msg(format!("socketpair(AF_UNIX): {e}")))?;
        }
        Ok((a, b))
    }

    /// The process that sends a message whose credentials say `c`: the
    /// sender itself, or crest (then the pid is crest's).
    pub(super) fn sender(&self, c: Cred) -> Cred {
        self.who(c)
    }
}

/// Sends prepared message `msg` on `fd` as process `c`.
pub(super) fn send_as(fd: RawFd, msg: &libc::msghdr, c: (i32, u32, u32)) -> Result<()> {
    run_as(c.0, c.1, c.2, &Op::SendAll { fd, msg })
        .map_err(|e| Error::msg(format!("refilling a UNIX socket's queue: {e}")))
}
