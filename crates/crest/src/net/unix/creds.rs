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
//! A tree in PID namespaces of its own (dumped so, or restored with
//! `--new-pidns`): the kernel records the caller's `struct pid`, which
//! reads as the recorded number only from inside the namespaces it has
//! numbers in, so the calls must be made by processes of the caller's
//! namespace, with its numbers there and in every namespace above it up
//! to crest's.  Those namespaces must exist first: their inits are
//! created before the sockets, sharing crest's descriptor table, with
//! every process on the way down from the tree's root (each forked by
//! its parent as the plan says, so the tree is the same), and each waits,
//! serving the calls made as itself (`crest_sys::agent`;
//! `crate::restore::stub::StubTree::start`).  crest makes each other call
//! in a helper it forks in the caller's namespace (setns) with the
//! caller's PIDs (clone3 set_tid, innermost first).  Then the early
//! processes unshare their table and build the tree as usual.  The PIDs
//! the dump read are crest's; each is turned into the ones the
//! namespaces have for that process (from the image's process table; a
//! peer that has exited: the number its socket's holder saw; with
//! `--new-pidns` crest's init is the agent for PID 1 and every other
//! number is kept).  An agent may be in a user namespace of the tree: it
//! serves once its maps are written, and the ids of its calls (its
//! effective ids, those of an SCM_CREDENTIALS message) are the recorded
//! host ids translated through its map ([`Creds::ids_for`]); the kernel
//! keeps them in host terms, so every reader sees what it saw.  The
//! helpers are crest's children, in crest's user namespace: their ids are
//! the host ones.
//!
//! Not covered, and said on stderr naming the sockets (SO_PEERCRED then
//! reads 0 from inside): a PID outside the tree with no known number in
//! the namespace (a queued message's sender that has exited), a caller
//! whose namespace has no init in the tree (a zombie that was one), and
//! an early process that shares its parent's descriptor table or is in
//! another network namespace than the tree's root (its calls by abstract
//! name would reach another namespace's sockets).

use super::ops::*;
use super::*;
use crate::error::Error;
use crate::model::{IdExtent, NsId, NsState};
use crate::restore::stub::AgentRef;
use crest_sys::actas::{run_as, run_as_tids, Op};
use crest_sys::agent::Agent;

/// Who makes a call recorded as made by a process of a PID namespace of
/// the tree.
#[derive(Clone, Debug, PartialEq)]
enum Caller {
    /// The process itself, created early: index into `Inner::agents`,
    /// and its PID in its own namespace.
    Agent { idx: usize, own: i32 },
    /// A helper in PID namespace `ns` with PIDs `tids`, innermost first.
    Helper { ns: NsId, tids: Vec<i32> },
}

/// A call's maker, as [`Creds::who`] found it: the PID it has in its own
/// namespace (what an SCM_CREDENTIALS message it sends must say), its
/// recorded ids, and who it is here (`None`: a helper in crest's own
/// PID namespace).
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    by: Option<Caller>,
}

/// An agent, and the uid and gid maps (host terms) of its user namespace
/// when not crest's: the ids of its calls are that namespace's.
struct AgentSide<'a> {
    agent: &'a Agent,
    maps: Option<(Vec<IdExtent>, Vec<IdExtent>)>,
}

/// The calls made in PID namespaces of the tree.
struct Inner<'a> {
    /// crest's PIDs of the image to who makes their calls.
    callers: HashMap<i32, Caller>,
    /// `--new-pidns`: a PID not in the table keeps its number in the
    /// namespace of crest's init.
    same: Option<NsId>,
    agents: Vec<AgentSide<'a>>,
    /// A descriptor on each PID namespace with an early process, where
    /// helpers can be made.
    spaces: HashMap<NsId, OwnedFd>,
}

/// Whether calls are made as their recorded process.
pub(super) struct Creds<'a> {
    own_ns: bool,
    me: i32,
    /// In PID namespaces of the tree (`None`: the calls are crest's).
    inner: Option<Inner<'a>>,
}

type Cred = Option<(i32, u32, u32)>;

/// A PID a recorded credential names.
struct Named {
    /// The socket's object.
    obj: u32,
    /// crest's number at the dump.
    pid: i32,
    /// For its peer credentials: the number the socket's holder saw
    /// (`UnixSocket::peercred_ns`), which is all there is of a peer that
    /// has exited.
    inside: Option<i32>,
}

/// The PIDs the recorded credentials name: each socket's peer and each
/// queued message's sender (not those of sockets connected outside).
fn named_pids(ckpt: &Checkpoint) -> Vec<Named> {
    let mut out = Vec::new();
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            if u.external.is_some() {
                continue;
            }
            let peer = u.peercred.map(|c| (c, u.peercred_ns));
            let queued = u.queue.iter().filter_map(|m| m.creds).map(|c| (c, None));
            for (c, inside) in peer.into_iter().chain(queued).filter(|(c, _)| c.0 > 0) {
                out.push(Named {
                    obj: o.id,
                    pid: c.0,
                    inside,
                });
            }
        }
    }
    out
}

/// The first process holding each object in its table, by object.
fn holders(ckpt: &Checkpoint) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    for (i, p) in ckpt.processes.iter().enumerate() {
        for f in &p.fds {
            out.entry(f.file).or_insert(i);
        }
    }
    out
}

/// The peer-credential number seen inside for `n`, with its holder: what
/// [`helper_for`] needs for a PID not in the table.
fn peer_inside(n: &Named, holders: &HashMap<u32, usize>) -> Option<(usize, i32)> {
    Some((*holders.get(&n.obj)?, n.inside?))
}

/// Who makes the calls of process or zombie `pid` of the image, ignoring
/// early processes: a helper in its namespace with its PIDs there, if
/// the image tells them; `peer_ns`: the number the holder of a socket
/// whose peer has exited saw, for a PID not in the table.
fn helper_for(ckpt: &Checkpoint, pid: i32, peer_ns: Option<(usize, i32)>) -> Option<Caller> {
    let rev = |l: &[i32]| l.iter().rev().copied().collect::<Vec<_>>();
    for p in &ckpt.processes {
        if p.pid == pid {
            return p
                .ns
                .pid
                .filter(|_| !p.ns.pids.is_empty())
                .map(|ns| Caller::Helper {
                    ns,
                    tids: rev(&p.ns.pids),
                });
        }
        for (z, l) in p.zombies.iter().zip(&p.ns.zombie_pids) {
            // A zombie that made a namespace of its own left no process in it.
            if z.pid == pid {
                return p
                    .ns
                    .pid
                    .filter(|_| l.len() == p.ns.pids.len() && !l.is_empty())
                    .map(|ns| Caller::Helper { ns, tids: rev(l) });
            }
        }
    }
    let (h, n) = peer_ns?;
    let ns = ckpt.processes[h].ns.pid?;
    (n > 0).then(|| Caller::Helper { ns, tids: vec![n] })
}

/// The processes to create before the UNIX sockets, each an agent for the
/// calls made as itself: the init of every PID namespace of the tree a
/// recorded credential's PID lives in, and every process on the way
/// down to it from the root (the tree's root, the init of the top one).
/// With `init` (`--new-pidns`): crest's init, as index 0.  Empty when
/// no credential names a PID of a namespace of the tree, or the layout
/// has no such chain (see the module doc).  Each agent's buffer holds the
/// largest queued message.
pub fn agents_for(ckpt: &Checkpoint, init: bool) -> Result<Vec<(usize, Agent)>> {
    let procs = &ckpt.processes;
    let named = named_pids(ckpt);
    if named.is_empty() || procs.iter().all(|p| p.ns.pids.is_empty()) {
        return Ok(Vec::new());
    }
    let mut room = 0usize;
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            room = room.max(u.queue.iter().map(|m| m.data.len()).max().unwrap_or(0));
        }
    }
    let new = |what: &str| {
        Agent::new(room + 4096).map_err(|e| Error::msg(format!("{what} for the UNIX sockets: {e}")))
    };
    if init {
        return Ok(vec![(0, new("crest's init")?)]);
    }
    if procs.first().is_none_or(|p| p.ns.pids != [1]) {
        return Ok(Vec::new());
    }
    let index: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let parent = |i: usize| index.get(&procs[i].ppid).copied().filter(|&q| q < i);
    let holders = holders(ckpt);
    let mut early = vec![false; procs.len()];
    early[0] = true;
    for n in &named {
        let Some(Caller::Helper { ns, .. }) = helper_for(ckpt, n.pid, peer_inside(n, &holders))
        else {
            continue;
        };
        // The namespace's init, then every process above it.
        let Some(mut i) = procs
            .iter()
            .position(|p| p.ns.pid == Some(ns) && p.ns.pids.last() == Some(&1))
        else {
            continue;
        };
        let mut chain = vec![i];
        while let Some(q) = parent(i) {
            chain.push(q);
            i = q;
        }
        let fits = i == 0
            && chain.iter().all(|&k| {
                k == 0
                    || (procs[k].shares_files_with.is_none() && procs[k].ns.net == procs[0].ns.net)
            });
        if fits {
            for k in chain {
                early[k] = true;
            }
        }
    }
    let mut out = Vec::new();
    for (k, _) in early.iter().enumerate().filter(|(_, &e)| e) {
        out.push((k, new(&format!("pid {}", procs[k].pid))?));
    }
    Ok(out)
}

/// crest in a PID namespace for its children (helpers forked now get
/// PIDs there), back in its own when dropped.
struct InPidNs(OwnedFd);

impl InPidNs {
    fn enter(ns: &OwnedFd) -> Result<InPidNs> {
        let own = crest_sys::ns::open(std::process::id() as i32, "pid")
            .map_err(|e| Error::msg(format!("crest's own PID namespace: {e}")))?;
        crest_sys::ns::setns(ns, libc::CLONE_NEWPID)
            .map_err(|e| Error::msg(format!("entering a PID namespace of the tree: {e}")))?;
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
    pub(super) fn new(ckpt: &Checkpoint, agents: &[AgentRef<'a>]) -> Result<Creds<'a>> {
        let own_ns = ckpt.processes.iter().all(|p| p.ns.pids.is_empty());
        let inner = if own_ns || agents.is_empty() {
            None
        } else {
            Some(Inner::new(ckpt, agents)?)
        };
        Ok(Creds {
            own_ns,
            me: std::process::id() as i32,
            inner,
        })
    }

    /// Ids `uid`/`gid` (host terms) of a call made by `c`, in the terms of
    /// the process that makes it: an agent's user namespace's.
    pub(super) fn ids_for(&self, c: &Call, uid: u32, gid: u32) -> Result<(u32, u32)> {
        let maps = match (&self.inner, &c.by) {
            (Some(inner), Some(Caller::Agent { idx, .. })) => inner.agents[*idx].maps.as_ref(),
            _ => None,
        };
        let Some((um, gm)) = maps else {
            return Ok((uid, gid));
        };
        let up = |m: &[IdExtent], v: u32, what: &str| {
            crate::ns::user::up(m, v).ok_or_else(|| {
                Error::Incompatible(format!(
                    "a UNIX socket's credentials name pid {} with {what} {v}, which is not \
                     mapped in its user namespace",
                    c.pid
                ))
            })
        };
        Ok((up(um, uid, "uid")?, up(gm, gid, "gid")?))
    }

    /// Whether a call recorded as made by `c` is made as that process.
    pub(super) fn exact(&self, c: Cred) -> bool {
        match c {
            Some((pid, _, _)) if pid > 0 => {
                self.own_ns || self.inner.as_ref().is_some_and(|i| i.caller(pid).is_some())
            }
            _ => true,
        }
    }

    /// Makes call `op` as `c`.
    fn run(&self, c: &Call, op: &Op) -> crest_sys::Result<()> {
        let fail = |e: Error| {
            crest_sys::Error::io(
                e.to_string(),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        };
        match (&self.inner, &c.by) {
            (Some(inner), Some(Caller::Agent { idx, .. })) => {
                let (u, g) = self.ids_for(c, c.uid, c.gid).map_err(fail)?;
                inner.agents[*idx].agent.run(u, g, op)
            }
            (Some(inner), Some(Caller::Helper { ns, tids })) => {
                let space = inner.spaces.get(ns).ok_or_else(|| {
                    fail(Error::msg(format!(
                        "no process in the PID namespace of pid {}",
                        c.pid
                    )))
                })?;
                let _in = InPidNs::enter(space).map_err(fail)?;
                run_as_tids(tids, c.uid, c.gid, op)
            }
            _ => run_as(c.pid, c.uid, c.gid, op),
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

    /// Who makes a call recorded as made by `c`, if not crest: an error
    /// if its PID was taken since [`Creds::check`].
    fn who(&self, c: Cred) -> Result<Option<Call>> {
        let Some((pid, uid, gid)) = c else {
            return Ok(None);
        };
        if !self.own_ns {
            let found = self.inner.as_ref().and_then(|i| i.caller(pid));
            return Ok(found.filter(|_| pid > 0).map(|(own, by)| Call {
                pid: own,
                uid,
                gid,
                by: Some(by),
            }));
        }
        if pid <= 0 || pid == self.me {
            return Ok(None);
        }
        if !pid_free(pid) {
            return Err(Error::Incompatible(format!(
                "pid {pid}, recorded in a UNIX socket's credentials, was taken during the restore"
            )));
        }
        Ok(Some(Call {
            pid,
            uid,
            gid,
            by: None,
        }))
    }

    pub(super) fn listen(&self, fd: &OwnedFd, backlog: u32, name: &[u8], c: Cred) -> Result<()> {
        match self.who(c)? {
            Some(call) => {
                let op = Op::Listen {
                    fd: fd.as_raw_fd(),
                    backlog: backlog.min(i32::MAX as u32) as i32,
                };
                self.run(&call, &op)
                    .map_err(|e| Error::msg(format!("listening on {}: {e}", show(name))))
            }
            None => listen(fd, backlog, name),
        }
    }

    pub(super) fn connect(&self, fd: &OwnedFd, target: &[u8], c: Cred) -> Result<()> {
        match self.who(c)? {
            Some(call) => {
                let (addr, len) = sockaddr_un(target)?;
                let op = Op::Connect {
                    fd: fd.as_raw_fd(),
                    addr: &addr,
                    len,
                };
                match self.run(&call, &op) {
                    Ok(()) => Ok(()),
                    // The recorded ids may no longer reach the socket file
                    // (its directory's or its own mode changed): crest's.
                    Err(crest_sys::Error::Os { cause, .. })
                        if matches!(cause.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
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
        if let Some(call) = self.who(c)? {
            // The pair made in the helper replaces these two.
            let op = Op::SocketPair {
                ty: ty | libc::SOCK_NONBLOCK,
                into: [a.as_raw_fd(), b.as_raw_fd()],
            };
            self.run(&call, &op)
                .map_err(|e| Error::msg(format!("socketpair(AF_UNIX): {e}")))?;
        }
        Ok((a, b))
    }

    /// The process that sends a message whose credentials say `c`: the
    /// sender itself, or crest (`None`: then the pid is crest's).
    pub(super) fn sender(&self, c: Cred) -> Result<Option<Call>> {
        self.who(c)
    }
    /// Sends prepared message `msg` on `fd` as `c` (from
    /// [`Creds::sender`]).
    pub(super) fn send_as(&self, fd: RawFd, msg: &libc::msghdr, c: &Call) -> Result<()> {
        self.run(c, &Op::SendAll { fd, msg })
            .map_err(|e| Error::msg(format!("refilling a UNIX socket's queue: {e}")))
    }
}

impl<'a> Inner<'a> {
    fn new(ckpt: &Checkpoint, agents: &[AgentRef<'a>]) -> Result<Inner<'a>> {
        let procs = &ckpt.processes;
        let init = procs.first().is_some_and(|p| p.ns.pids != [1]);
        let mut callers = HashMap::new();
        let mut sides = Vec::new();
        let mut spaces = HashMap::new();
        for (k, a) in agents.iter().enumerate() {
            let p = &procs[a.idx];
            let maps = if init {
                // crest's init: in crest's user namespace.
                None
            } else {
                crate::ns::state(&ckpt.namespaces, p.ns.user).and_then(|st| match st {
                    NsState::User(u) => Some((u.uid_map.clone(), u.gid_map.clone())),
                    _ => None,
                })
            };
            sides.push(AgentSide {
                agent: a.agent,
                maps,
            });
            if let (false, Some(&own)) = (init, p.ns.pids.last()) {
                callers.insert(p.pid, Caller::Agent { idx: k, own });
            }
            if let Some(ns) = p.ns.pid {
                if let std::collections::hash_map::Entry::Vacant(v) = spaces.entry(ns) {
                    let fd = crest_sys::ns::open(a.host, "pid").map_err(|e| {
                        Error::msg(format!(
                            "the PID namespace of pid {} (pid {} here): {e}",
                            p.pid, a.host
                        ))
                    })?;
                    v.insert(fd);
                }
            }
        }
        for p in procs {
            if let std::collections::hash_map::Entry::Vacant(v) = callers.entry(p.pid) {
                if let Some(c) = helper_for(ckpt, p.pid, None) {
                    v.insert(c);
                }
            }
            for z in &p.zombies {
                if let Some(c) = helper_for(ckpt, z.pid, None) {
                    callers.entry(z.pid).or_insert(c);
                }
            }
        }
        // Peers that have exited: the number the dump read inside.
        let holders = holders(ckpt);
        for n in named_pids(ckpt) {
            if let (std::collections::hash_map::Entry::Vacant(v), Some(peer)) =
                (callers.entry(n.pid), peer_inside(&n, &holders))
            {
                if let Some(c) = helper_for(ckpt, n.pid, Some(peer)) {
                    v.insert(c);
                }
            }
        }
        let same = init.then(|| procs.first().and_then(|p| p.ns.pid)).flatten();
        // With `--new-pidns`, PID 1 of the namespace is crest's init.
        if init {
            callers.insert(1, Caller::Agent { idx: 0, own: 1 });
        }
        Ok(Inner {
            callers,
            same,
            agents: sides,
            spaces,
        })
    }

    /// Who makes the calls of crest's `pid` of the image, and the PID it
    /// has in its own namespace; `None` where no process can (see the
    /// module doc).
    fn caller(&self, pid: i32) -> Option<(i32, Caller)> {
        let c = match self.callers.get(&pid) {
            Some(c) => c.clone(),
            None => Caller::Helper {
                ns: self.same?,
                tids: vec![pid],
            },
        };
        match &c {
            Caller::Agent { own, .. } => Some((*own, c)),
            Caller::Helper { ns, tids } => {
                self.spaces.contains_key(ns).then(|| (tids[0], c.clone()))
            }
        }
    }
}

/// Whether no task has PID `pid` here.
fn pid_free(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the PID has a task.
    let r = unsafe { libc::kill(pid, 0) };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
