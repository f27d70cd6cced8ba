//! SO_PEERCRED and SCM_CREDENTIALS: the kernel records who made a
//! socketpair, a listener or a connection (its PID and effective ids),
//! and checks that the PID in queued credentials is a live process.  The
//! restore makes those calls as the process recorded: a short-lived child
//! with its PID and ids (`crest_sys::actas`), before the tree's processes
//! exist.  The PID number stays in what the kernel recorded once the
//! child has gone, so the restored process with that PID sees itself.
//!
//! A recorded PID in use here by another process cannot be taken: the
//! restore fails, naming the socket and the PID, before any socket is
//! built ([`Creds::check`]) — SO_PEERCRED never reports a wrong pid
//! silently.  (crest's own PID is the one exception: the call made by
//! crest records that very number.)
//!
//! A tree in a PID namespace of its own (dumped so, or restored with
//! `--new-pidns`): the kernel records the caller's `struct pid`, which
//! reads as the recorded number only from inside that namespace, so the
//! calls must be made by processes of that namespace.  The namespace's
//! init (the tree's root, or crest's init with `--new-pidns`) is created
//! first, sharing crest's descriptor table, and waits
//! (`crate::restore::stub::TreePlan::agent`): crest enters the namespace
//! for its children (setns) and makes each call in a helper forked there
//! with the recorded PID of the namespace (clone3 set_tid), and the calls
//! recorded as made by PID 1 in the init itself, which serves them
//! (`crest_sys::agent`).  Then the init unshares its table and builds the
//! tree as usual.  The PIDs the dump read are crest's; each is turned
//! into the one the namespace has for that process (from the image's
//! process table; with `--new-pidns` they are the same).  This covers a
//! tree whose root is the init of its one PID namespace.  That init may
//! be in a user namespace of the tree: it serves once its maps are
//! written, and the ids of its calls (its effective ids, those of an
//! SCM_CREDENTIALS message) are the recorded host ids translated through
//! its map ([`Creds::ids_for`]); the kernel keeps them in host terms, so
//! every reader sees what it saw.  The helpers are crest's children, in
//! crest's user namespace: their ids are the host ones.  A PID outside
//! the tree with no known number in the namespace, or a deeper or other
//! layout (nested PID namespaces, a root that is not its namespace's
//! init), is still called by crest, and the restore says so on stderr,
//! naming the sockets: SO_PEERCRED reads 0 from inside the namespace.

use super::ops::*;
use super::*;
use crate::error::Error;
use crate::model::{IdExtent, NsState};
use crest_sys::actas::{run_as, Op};
use crest_sys::agent::Agent;

/// Whether calls are made as their recorded process.
pub(super) struct Creds<'a> {
    own_ns: bool,
    me: i32,
    /// In a PID namespace of the tree: crest's PIDs of the image to the
    /// namespace's (`None`: the calls are crest's), whether a PID not in
    /// the table keeps its number (`--new-pidns`), and the init serving
    /// PID 1's calls.
    inner: Option<(HashMap<i32, i32>, bool, &'a Agent)>,
    /// The uid and gid maps (host terms) of the user namespace the agent
    /// is in, when not crest's: the ids of its calls are that
    /// namespace's.
    agent_maps: Option<(Vec<IdExtent>, Vec<IdExtent>)>,
}

type Cred = Option<(i32, u32, u32)>;

/// Whether the tree's UNIX sockets are built in its PID namespace, with
/// the namespace's init as agent: the tree's root is the init of its one
/// PID namespace (or `init`: crest's, `--new-pidns`), and some socket's
/// credentials name a PID.  The agent's buffer holds
/// the largest queued message.
pub fn agent_for(ckpt: &Checkpoint, init: bool) -> Result<Option<Agent>> {
    let procs = &ckpt.processes;
    let one_level = procs.iter().all(|p| p.ns.pids.len() == 1);
    let root_init = init || procs.first().is_some_and(|p| p.ns.pids == [1]);
    if !one_level || !root_init {
        return Ok(None);
    }
    let mut room = 0usize;
    let mut named = false;
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            let pid = |c: Cred| c.is_some_and(|c| c.0 > 0);
            named |= pid(u.peercred) || u.queue.iter().any(|m| pid(m.creds));
            room = room.max(u.queue.iter().map(|m| m.data.len()).max().unwrap_or(0));
        }
    }
    if !named {
        return Ok(None);
    }
    Ok(Some(Agent::new(room + 4096).map_err(|e| {
        Error::msg(format!(
            "the PID namespace's init for the UNIX sockets: {e}"
        ))
    })?))
}

/// crest in the tree's PID namespace for its children (helpers forked
/// now get PIDs there), back in its own when dropped.
pub(super) struct InPidNs(std::os::fd::OwnedFd);

impl InPidNs {
    pub(super) fn enter(init: i32) -> Result<InPidNs> {
        let own = crest_sys::ns::open(std::process::id() as i32, "pid")
            .map_err(|e| Error::msg(format!("crest's own PID namespace: {e}")))?;
        let ns = crest_sys::ns::open(init, "pid")
            .map_err(|e| Error::msg(format!("the PID namespace of pid {init}: {e}")))?;
        crest_sys::ns::setns(&ns, libc::CLONE_NEWPID)
            .map_err(|e| Error::msg(format!("entering the PID namespace of pid {init}: {e}")))?;
        Ok(InPidNs(own))
    }
}

impl Drop for InPidNs {
    fn drop(&mut self) {
        if let Err(e) = crest_sys::ns::setns(&self.0, libc::CLONE_NEWPID) {
            eprintln!("crest: warning: going back to crest's PID namespace: {e}");
        }
    }
}

impl<'a> Creds<'a> {
    pub(super) fn new(ckpt: &Checkpoint, agent: Option<&'a Agent>) -> Creds<'a> {
        let own_ns = ckpt.processes.iter().all(|p| p.ns.pids.is_empty());
        let inner = agent.filter(|_| !own_ns).map(|a| {
            let mut map = HashMap::new();
            for p in &ckpt.processes {
                if let Some(&n) = p.ns.pids.last() {
                    map.insert(p.pid, n);
                }
                for (z, l) in p.zombies.iter().zip(&p.ns.zombie_pids) {
                    if let Some(&n) = l.last() {
                        map.insert(z.pid, n);
                    }
                }
            }
            // Peers that have exited: the number the dump read inside.
            for o in &ckpt.objects {
                if let ObjectKind::Open(OpenFile {
                    target: OpenTarget::Unix(u),
                    ..
                }) = &o.kind
                {
                    if let (Some((host, _, _)), Some(n)) = (u.peercred, u.peercred_ns) {
                        if n > 0 {
                            map.entry(host).or_insert(n);
                        }
                    }
                }
            }
            let same = ckpt.processes.iter().all(|p| p.ns.pids == [p.pid]);
            (map, same, a)
        });
        // The agent is the tree's root when that is PID 1 of its
        // namespace (crest's init, in crest's user namespace, otherwise).
        let root = ckpt.processes.first().filter(|p| p.ns.pids == [1]);
        let agent_maps = root
            .and_then(|p| crate::ns::state(&ckpt.namespaces, p.ns.user))
            .and_then(|st| match st {
                NsState::User(u) => Some((u.uid_map.clone(), u.gid_map.clone())),
                _ => None,
            });
        Creds {
            own_ns,
            me: std::process::id() as i32,
            inner,
            agent_maps,
        }
    }

    /// Ids `uid`/`gid` (host terms) of a call made as `c`, in the terms of
    /// the process that makes it: the agent's user namespace's for PID 1's.
    pub(super) fn ids_for(&self, c: (i32, u32, u32), uid: u32, gid: u32) -> Result<(u32, u32)> {
        match (&self.inner, &self.agent_maps) {
            (Some(_), Some((um, gm))) if c.0 == 1 => {
                let up = |m: &[IdExtent], v: u32, what: &str| {
                    crate::ns::user::up(m, v).ok_or_else(|| {
                        Error::Incompatible(format!(
                            "a UNIX socket's credentials name pid 1 with {what} {v}, which is not \
                             mapped in its user namespace"
                        ))
                    })
                };
                Ok((up(um, uid, "uid")?, up(gm, gid, "gid")?))
            }
            _ => Ok((uid, gid)),
        }
    }

    /// The namespace's PID for crest's `pid` of the image, if the calls
    /// are made in the namespace and it has one.
    fn inside(&self, pid: i32) -> Option<i32> {
        let (map, same, _) = self.inner.as_ref()?;
        map.get(&pid).copied().or(same.then_some(pid))
    }

    /// Whether a call recorded as made by `c` is made as that process.
    pub(super) fn exact(&self, c: Cred) -> bool {
        match c {
            Some((pid, _, _)) if pid > 0 => self.own_ns || self.inside(pid).is_some(),
            _ => true,
        }
    }

    /// Makes call `op` as `c` (a PID as the caller's namespace sees it).
    fn run(&self, c: (i32, u32, u32), op: &Op) -> crest_sys::Result<()> {
        match &self.inner {
            Some((_, _, agent)) if c.0 == 1 => {
                let (u, g) = self.ids_for(c, c.1, c.2).map_err(|e| {
                    crest_sys::Error::io(
                        e.to_string(),
                        std::io::Error::from_raw_os_error(libc::EINVAL),
                    )
                })?;
                agent.run(u, g, op)
            }
            _ => run_as(c.0, c.1, c.2, op),
        }
    }

    /// Refuses, before anything is built, a recorded PID (peer
    /// credentials or a queued message's) that the calls cannot be made
    /// as because another process holds it here; `what` names the socket.
    pub(super) fn check(&self, what: &str, which: &str, c: Cred) -> Result<()> {
        match (self.own_ns, c) {
            (true, Some((pid, _, _))) if pid > 0 && pid != self.me && !pid_free(pid) => {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| format!(" ({})", s.trim_end()))
                    .unwrap_or_default();
                Err(Error::Incompatible(format!(
                    "{what}: its {which} name pid {pid}, which process {pid}{comm} holds here; \
                     they cannot be restored exactly (the calls must be made by that pid)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether the tree is restored in a PID namespace of its own, where
    /// the calls are crest's (see the module doc).
    pub(super) fn nested(&self) -> bool {
        !self.own_ns
    }

    /// The process a call recorded as made by `c` is made as, if not
    /// crest: an error if its PID was taken since [`Creds::check`].  In
    /// a PID namespace of the tree, its PID there.
    fn who(&self, c: Cred) -> Result<Cred> {
        let Some((pid, uid, gid)) = c else {
            return Ok(None);
        };
        if !self.own_ns {
            return Ok(self.inside(pid).filter(|_| pid > 0).map(|n| (n, uid, gid)));
        }
        if pid <= 0 || pid == self.me {
            return Ok(None);
        }
        if !pid_free(pid) {
            return Err(Error::Incompatible(format!(
                "pid {pid}, recorded in a UNIX socket's credentials, was taken during the restore"
            )));
        }
        Ok(c)
    }

    pub(super) fn listen(&self, fd: &OwnedFd, backlog: u32, name: &[u8], c: Cred) -> Result<()> {
        match self.who(c)? {
            Some((pid, uid, gid)) => {
                let op = Op::Listen {
                    fd: fd.as_raw_fd(),
                    backlog: backlog.min(i32::MAX as u32) as i32,
                };
                self.run((pid, uid, gid), &op)
                    .map_err(|e| Error::msg(format!("listening on {}: {e}", show(name))))
            }
            None => listen(fd, backlog, name),
        }
    }

    pub(super) fn connect(&self, fd: &OwnedFd, target: &[u8], c: Cred) -> Result<()> {
        match self.who(c)? {
            Some((pid, uid, gid)) => {
                let (addr, len) = sockaddr_un(target)?;
                let op = Op::Connect {
                    fd: fd.as_raw_fd(),
                    addr: &addr,
                    len,
                };
                match self.run((pid, uid, gid), &op) {
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
        if let Some((pid, uid, gid)) = self.who(c)? {
            // The pair made in the helper replaces these two.
            let op = Op::SocketPair {
                ty: ty | libc::SOCK_NONBLOCK,
                into: [a.as_raw_fd(), b.as_raw_fd()],
            };
            self.run((pid, uid, gid), &op)
                .map_err(|e| Error::msg(format!("socketpair(AF_UNIX): {e}")))?;
        }
        Ok((a, b))
    }

    /// The process that sends a message whose credentials say `c`: the
    /// sender itself, or crest (then the pid is crest's).
    pub(super) fn sender(&self, c: Cred) -> Result<Cred> {
        self.who(c)
    }
    /// Sends prepared message `msg` on `fd` as process `c` (from
    /// [`Creds::sender`]).
    pub(super) fn send_as(&self, fd: RawFd, msg: &libc::msghdr, c: (i32, u32, u32)) -> Result<()> {
        self.run(c, &Op::SendAll { fd, msg })
            .map_err(|e| Error::msg(format!("refilling a UNIX socket's queue: {e}")))
    }
}

/// Whether no task has PID `pid` here.
fn pid_free(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the PID has a task.
    let r = unsafe { libc::kill(pid, 0) };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
