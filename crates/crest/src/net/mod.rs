//! Network sockets: TCP and UDP over IPv4 and IPv6 ([`tcp`], [`udp`],
//! common options in [`inet`]), netlink ([`netlink`]), and the nftables
//! lock that holds back the packets of connections whose peer is outside
//! the tree ([`lock`]).
//!
//! Dump reads each socket on crest's copy of its descriptor (pidfd_getfd),
//! with sock_diag for what only the kernel's tables show (the peer's
//! socket, a listener's accept queue).  Established TCP sockets are read
//! in repair mode and kept in it, on crest's copy, until the dump ends
//! ([`Dumped`]).  Restore builds each socket from its object alone (repair
//! mode lets both ends of a connection be rebuilt independently), then
//! [`finish`] takes the established ones out of repair mode once all exist.

pub mod accept;
pub mod fin;
pub mod inet;
pub mod lock;
mod mcast;
pub mod netlink;
pub mod sockname;
pub mod tcp;
pub mod udp;
pub mod unix;

use crate::error::{steal, Refusal, Result};
use crate::model::{Checkpoint, InetSocket, ObjectKind, OpenFile, OpenTarget};
use crest_sys::inetdiag::{self, InetDiag};
use crest_sys::net as sn;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

/// What the dump of one tree knows about its network sockets.
#[derive(Default)]
pub struct NetIndex {
    /// `--tcp-established`: connections to peers outside the tree are
    /// dumped (their packets held back by [`lock`]).
    pub tcp_established: bool,
    /// `--ext-unix-sk`: UNIX sockets connected outside the tree are
    /// dumped, to be connected by name again.
    pub ext_unix_sk: bool,
    /// The pids of the tree.
    pub tree: HashSet<i32>,
    /// The root's pid (names the lock).
    pub root: i32,
    tcp_diag: Option<Vec<InetDiag>>,
    unix_diag: Option<HashMap<u32, crest_sys::sockdiag::UnixDiag>>,
    holders: Option<HashMap<u64, Vec<i32>>>,
    /// Traffic between the tree's sockets has died down (see [`settle`]).
    settled: bool,
    dumped: Dumped,
}

/// See [`NetIndex::unix_view`].
pub(crate) struct UnixView<'a> {
    /// Every UNIX socket here, by inode.
    pub all: &'a HashMap<u32, crest_sys::sockdiag::UnixDiag>,
    holders: &'a HashMap<u64, Vec<i32>>,
    tree: &'a HashSet<i32>,
    /// `--ext-unix-sk`.
    pub ext_unix_sk: bool,
}

impl UnixView<'_> {
    /// The processes (other than crest) holding socket inode `ino`.
    pub fn holders(&self, ino: u32) -> &[i32] {
        self.holders
            .get(&(ino as u64))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Whether process `pid` is in the dumped tree.
    pub fn in_tree(&self, pid: i32) -> bool {
        self.tree.contains(&pid)
    }
}

/// Sockets the dump holds in TCP repair mode, and the connection lock:
/// dropped after a failed dump (or one that leaves the tree running),
/// they come out of repair mode and the lock goes; [`Dumped::killed`]
/// after the tree was killed closes them silently and keeps the lock.
#[derive(Default)]
pub struct Dumped {
    /// crest's copies of the sockets in repair mode, with their
    /// SO_REUSEADDR (which leaving repair mode clears).
    repairing: Vec<(OwnedFd, bool)>,
    /// For each socket in `repairing`: where it is, what it is, and the
    /// sequence numbers it was read at.
    read_at: Vec<(i32, i32, String, tcp::Seqs)>,
    lock: Option<lock::Lock>,
    /// crest's copies of the files in flight in UNIX sockets' queues,
    /// open until the dump ends (see `crate::files`).
    in_flight: Vec<OwnedFd>,
}

impl Dumped {
    /// The tree runs on: its sockets leave repair mode (a socket in repair
    /// mode refuses the program's reads and writes) and the lock goes.
    pub fn release(&mut self) {
        self.read_at.clear();
        for (fd, reuse) in self.repairing.drain(..) {
            let _ = sn::tcp_repair(fd.as_raw_fd(), sn::REPAIR_OFF);
            // Leaving repair mode clears SO_REUSEADDR: the program's again.
            if reuse {
                let _ = sn::set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            }
        }
        self.lock = None;
    }

    /// The tree is gone: close the sockets still in repair mode (no FIN,
    /// no reset reaches the peer) and leave the lock for the restore.
    pub fn killed(mut self) {
        self.repairing.clear();
        if let Some(l) = self.lock.take() {
            l.keep();
        }
    }
}

impl Drop for Dumped {
    fn drop(&mut self) {
        self.release();
    }
}

impl NetIndex {
    /// Keeps crest's copy of a file in flight open until the dump ends.
    pub fn keep_in_flight(&mut self, f: OwnedFd) {
        self.dumped.in_flight.push(f);
    }

    /// The repair-mode sockets and lock, for the end of the dump.
    pub fn take_dumped(&mut self) -> Dumped {
        std::mem::take(&mut self.dumped)
    }

    /// Once every socket is read: a connection whose sequence numbers
    /// moved since its state was read (a packet between two sockets of
    /// the tree still on its way) would be restored inconsistent with its
    /// peer, so the dump is refused (and may simply be retried).
    pub fn verify(&self, obstacles: &mut Vec<crate::Obstacle>) {
        for ((fd, _), (pid, n, what, seqs)) in
            self.dumped.repairing.iter().zip(&self.dumped.read_at)
        {
            if tcp::seqs(fd.as_raw_fd()).ok().as_ref() != Some(seqs) {
                obstacles.push(crate::Obstacle {
                    pid: *pid,
                    object: format!("fd {n}"),
                    reason: format!(
                        "{what}: packets still moved on this connection while the tree was \
                         frozen (retry the dump)"
                    ),
                });
            }
        }
    }

    /// Stops the traffic of the tree's established connections before the
    /// first is read: the connection lock drops their packets (the kernels
    /// of two frozen ends still talk to each other: window probes, window
    /// updates, retransmissions), then crest waits (up to 250 ms) until no
    /// data has moved on any TCP connection for 2 ms — packets already past
    /// the lock are delivered — so both ends of a connection are read in
    /// agreement.  Without nft, connections inside the tree are read
    /// without the lock (and [`verify`](Self::verify) catches a move).
    fn settle(&mut self) -> Refusal<()> {
        if self.settled {
            return Ok(());
        }
        self.settled = true;
        let tree = self.tree.clone();
        let conns: Vec<(std::net::SocketAddr, std::net::SocketAddr)> = {
            let all = self.tcp_sockets()?.to_vec();
            let mut v = Vec::new();
            for d in all.iter().filter(|d| tcp::is_connected(d.state)) {
                // A client whose server end waits in an accept queue is
                // connected again at restore: its packets must pass.
                let queued = tcp::find_peer(&all, &d.src, &d.dst)
                    .is_some_and(|p| accept::queued_in(&all, p).is_some());
                if !queued && self.holders(d.ino as u64).iter().any(|p| tree.contains(p)) {
                    let (a, b) = (inet::canonical(&d.src), inet::canonical(&d.dst));
                    let key = if a <= b { (a, b) } else { (b, a) };
                    if !v.contains(&key) {
                        v.push(key);
                    }
                }
            }
            v
        };
        if !conns.is_empty() {
            if let Ok(l) = lock::Lock::create(self.root) {
                l.add(&conns).map_err(|e| e.to_string())?;
                self.dumped.lock = Some(l);
            }
        }
        let snap = || -> Vec<(std::net::SocketAddr, std::net::SocketAddr, u32, u32)> {
            let mut v: Vec<_> = [libc::AF_INET, libc::AF_INET6]
                .iter()
                .flat_map(|&f| inetdiag::inet_sockets(f, libc::IPPROTO_TCP).unwrap_or_default())
                .filter(|d| tcp::is_connected(d.state))
                .map(|d| (d.src, d.dst, d.rqueue, d.wqueue))
                .collect();
            v.sort();
            v
        };
        let t0 = std::time::Instant::now();
        let mut last = snap();
        while t0.elapsed() < std::time::Duration::from_millis(250) {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let now = snap();
            if now == last {
                break;
            }
            last = now;
        }
        self.tcp_diag = None;
        Ok(())
    }

    fn tcp_sockets(&mut self) -> Refusal<&[InetDiag]> {
        if self.tcp_diag.is_none() {
            let mut all = inetdiag::inet_sockets(libc::AF_INET, libc::IPPROTO_TCP)
                .map_err(|e| format!("listing TCP sockets: {e}"))?;
            all.extend(
                inetdiag::inet_sockets(libc::AF_INET6, libc::IPPROTO_TCP)
                    .map_err(|e| format!("listing TCP sockets: {e}"))?,
            );
            self.tcp_diag = Some(all);
        }
        Ok(self.tcp_diag.as_deref().expect("set above"))
    }

    /// What the UNIX sockets' dump looks up, read once per dump (the tree
    /// is frozen): every UNIX socket here, and who holds each socket.
    pub(crate) fn unix_view(&mut self) -> Refusal<UnixView<'_>> {
        if self.unix_diag.is_none() {
            let all =
                crest_sys::sockdiag::unix_sockets().map_err(|e| format!("AF_UNIX socket: {e}"))?;
            self.unix_diag = Some(all);
        }
        Ok(UnixView {
            all: self.unix_diag.as_ref().expect("set above"),
            holders: self.holders.get_or_insert_with(scan_holders),
            tree: &self.tree,
            ext_unix_sk: self.ext_unix_sk,
        })
    }

    /// The processes (other than crest) holding socket inode `ino`.
    fn holders(&mut self, ino: u64) -> &[i32] {
        let map = self.holders.get_or_insert_with(scan_holders);
        map.get(&ino).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The lock, holding the packets of connection `l` -> `p`.
    fn lock(&mut self, l: &std::net::SocketAddr, p: &std::net::SocketAddr) -> Refusal<String> {
        if self.dumped.lock.is_none() {
            self.dumped.lock = Some(lock::Lock::create(self.root).map_err(|e| e.to_string())?);
        }
        let lock = self.dumped.lock.as_ref().expect("set above");
        // Already in it when it was there before the lock was made; adding
        // an element twice is harmless.
        lock.add(&[(*l, *p)]).map_err(|e| e.to_string())?;
        Ok(lock.table.clone())
    }
}

/// Socket inode → the processes holding it, from one pass over /proc.
fn scan_holders() -> HashMap<u64, Vec<i32>> {
    let me = std::process::id() as i32;
    let mut out: HashMap<u64, Vec<i32>> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Ok(l) = std::fs::read_link(f.path()) else {
                continue;
            };
            let b = l.as_os_str().as_bytes();
            if let Some(n) = b
                .strip_prefix(b"socket:[")
                .and_then(|r| r.strip_suffix(b"]"))
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
            {
                let v = out.entry(n).or_default();
                if !v.contains(&pid) {
                    v.push(pid);
                }
            }
        }
    }
    out
}

/// The state of socket `fd` of `pid` if it is a network socket (`None`
/// for AF_UNIX ones, which `crate::net::unix` handles), or why not.
pub fn collect(pid: i32, fd: i32, idx: &mut NetIndex) -> Option<Refusal<OpenTarget>> {
    let own = match steal(pid, fd) {
        Ok(o) => o,
        Err(e) => return Some(Err(format!("this socket cannot be read ({e})"))),
    };
    let raw = own.as_raw_fd();
    let dom = match sn::get_int(raw, libc::SOL_SOCKET, libc::SO_DOMAIN) {
        Ok(d) => d,
        Err(e) => return Some(Err(format!("this socket cannot be read (SO_DOMAIN: {e})"))),
    };
    match dom {
        libc::AF_UNIX => None,
        libc::AF_INET | libc::AF_INET6 => Some(collect_inet(pid, fd, own, dom, idx)),
        libc::AF_NETLINK => Some(netlink::collect(&own)),
        libc::AF_PACKET => Some(Err(
            "AF_PACKET socket (a raw link-layer capture) is not supported: its ring buffers, \
             filters and interface binding are not checkpointed"
                .into(),
        )),
        d => Some(Err(format!(
            "socket of address family {d} is not supported"
        ))),
    }
}

fn collect_inet(
    pid: i32,
    fd: i32,
    own: OwnedFd,
    family: i32,
    idx: &mut NetIndex,
) -> Refusal<OpenTarget> {
    let raw = own.as_raw_fd();
    let fam = if family == libc::AF_INET6 {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let sock_type = sn::get_int(raw, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| format!("{fam} socket: SO_TYPE: {e}"))?;
    let protocol = sn::get_int(raw, libc::SOL_SOCKET, libc::SO_PROTOCOL)
        .map_err(|e| format!("{fam} socket: SO_PROTOCOL: {e}"))?;
    let local = sn::local_addr(raw)
        .map_err(|e| format!("{fam} socket: getsockname: {e}"))?
        .filter(inet::is_bound);
    let peer = sn::peer_addr(raw).map_err(|e| format!("{fam} socket: getpeername: {e}"))?;
    let mut s = InetSocket {
        family,
        sock_type,
        protocol,
        local,
        peer,
        state: 0,
        listen: None,
        opts: Default::default(),
        tcp: None,
        datagrams: Vec::new(),
        lock_table: None,
        reconnect: false,
        peek_off: sn::get_int(raw, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
            .ok()
            .filter(|&v| v >= 0),
    };
    match (sock_type, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {}
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {
            return udp::collect(raw, s).map(|s| OpenTarget::Inet(Box::new(s)));
        }
        (libc::SOCK_RAW, p) => {
            return Err(format!(
                "{fam} raw socket (protocol {p}) is not supported: raw sockets see \
                 every packet of their protocol and their filters are not checkpointed"
            ))
        }
        (t, p) => {
            return Err(format!(
                "{fam} socket of type {t}, protocol {p} is not supported (only TCP and UDP are)"
            ))
        }
    }
    let what = inet::show(&s);
    let info = sn::tcp_info(raw).map_err(|e| format!("{what}: TCP_INFO: {e}"))?;
    s.state = info.state;
    if let Some(why) = tcp::refuse_state(info.state) {
        return Err(format!("{what}: {why}"));
    }
    s.opts = inet::collect_opts(raw, family, true).map_err(|e| format!("{what}: {e}"))?;
    let ino = std::fs::metadata(format!("/proc/self/fd/{raw}"))
        .map_err(|e| format!("{what}: cannot stat: {e}"))?
        .ino();
    match info.state {
        inetdiag::TCP_LISTEN => {
            let all = idx.tcp_sockets()?;
            let d = tcp::find(all, ino as u32)
                .ok_or_else(|| format!("{what}: this listener is not listed by sock_diag"))?;
            let d = d.clone();
            if d.rqueue > 0 {
                let name = format!(
                    "TCP listener {}",
                    s.local.map(|a| a.to_string()).unwrap_or_default()
                );
                let all = idx.tcp_sockets()?.to_vec();
                let children = accept::queued(&all, &d);
                if children.len() != d.rqueue as usize {
                    return Err(format!(
                        "{name}: {} connection(s) wait in its accept queue, {} found",
                        d.rqueue,
                        children.len()
                    ));
                }
                for c in children {
                    let client = tcp::find_peer(&all, &c.src, &c.dst).map(|p| p.ino as u64);
                    let tree = idx.tree.clone();
                    let inside = client
                        .filter(|&i| i != 0)
                        .is_some_and(|i| idx.holders(i).iter().any(|h| tree.contains(h)));
                    if let Some(why) = accept::refuse(c, inside) {
                        return Err(format!("{name}: {why}"));
                    }
                }
            }
            s.listen = Some(d.wqueue);
        }
        inetdiag::TCP_SYN_SENT => {
            // getpeername says ENOTCONN until the handshake ends: the
            // destination is sock_diag's.
            let all = idx.tcp_sockets()?;
            let d = tcp::find(all, ino as u32).ok_or_else(|| {
                format!("{what}: this connecting socket is not listed by sock_diag")
            })?;
            s.peer = Some(tcp::syn_sent_target(raw, d).map_err(|e| format!("{what}: {e}"))?);
        }
        st if tcp::is_connected(st) => {
            let (Some(l), Some(p)) = (s.local, s.peer) else {
                return Err(format!("{what}: established without both addresses"));
            };
            let (pino, queued_at) = {
                let all = idx.tcp_sockets()?;
                match tcp::find_peer(all, &l, &p) {
                    Some(d) => (
                        Some(d.ino as u64),
                        accept::queued_in(all, d).map(|l| (l.ino as u64, d.clone())),
                    ),
                    None => (None, None),
                }
            };
            if let Some((lino, child)) = queued_at {
                let tree = idx.tree.clone();
                if idx.holders(lino).iter().any(|h| tree.contains(h)) {
                    // Its server end waits in the accept queue of a listener
                    // of the tree: connected again at restore.
                    if let Some(why) = accept::refuse(&child, true) {
                        return Err(format!("{what}: {why}"));
                    }
                    if info.state != inetdiag::TCP_ESTABLISHED {
                        return Err(format!(
                            "{what}: its server end waits in an accept queue and this end has \
                             shut down ({}); retry once the program has accepted it",
                            inetdiag::state_name(info.state)
                        ));
                    }
                    s.reconnect = true;
                }
            }
            let inside = match pino {
                Some(pino) if pino != 0 => {
                    let tree = idx.tree.clone();
                    idx.holders(pino).iter().any(|h| tree.contains(h))
                }
                _ => false,
            };
            if !inside && !s.reconnect {
                if !idx.tcp_established {
                    return Err(format!(
                        "TCP {l} -> {p} is connected to a process outside the tree; \
                         pass --tcp-established"
                    ));
                }
                idx.settle().map_err(|e| format!("{what}: {e}"))?;
                s.lock_table = Some(idx.lock(&l, &p).map_err(|e| format!("{what}: {e}"))?);
            }
            idx.settle().map_err(|e| format!("{what}: {e}"))?;
            if let Some(lock) = &idx.dumped.lock {
                s.lock_table = Some(lock.table.clone());
            }
            if s.reconnect {
                // Its packets pass the lock (its new handshake must).
                s.lock_table = None;
            }
            sn::tcp_repair(raw, sn::REPAIR_ON)
                .map_err(|e| format!("{what}: TCP_REPAIR (needs CAP_NET_ADMIN): {e}"))?;
            // Held in repair mode until the dump ends, whatever happens.
            let conn = tcp::read_established(raw, info.state);
            idx.dumped.repairing.push((own, s.opts.reuseaddr));
            let (conn, at) = conn.map_err(|e| format!("{what}: {e}"))?;
            if s.reconnect && !conn.recv_queue.is_empty() {
                return Err(format!(
                    "{what}: its server end waits in an accept queue, yet it has {} byte(s) \
                     received unread",
                    conn.recv_queue.len()
                ));
            }
            idx.dumped.read_at.push((pid, fd, what.clone(), at));
            s.tcp = Some(conn);
        }
        _ => {}
    }
    Ok(OpenTarget::Inet(Box::new(s)))
}

// ------------------------------------------------------------- restore

/// Opens network socket `o` in crest (an established TCP one still in
/// repair mode until [`finish`]).
pub fn open(o: &OpenFile) -> Result<OwnedFd> {
    match &o.target {
        OpenTarget::Inet(s) if s.sock_type == libc::SOCK_STREAM => tcp::open(o, s),
        OpenTarget::Inet(s) => udp::open(o, s),
        OpenTarget::Netlink(n) => netlink::open(o, n),
        _ => Err(crate::Error::Invalid("not a network socket".into())),
    }
}

/// Takes the established TCP sockets out of repair mode, once every
/// descriptor of the tree is open: `opened` maps object ids to crest's
/// descriptors.
pub fn finish(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>) -> Result<()> {
    for o in &ckpt.objects {
        if let ObjectKind::Open(
            f @ OpenFile {
                target: OpenTarget::Inet(s),
                ..
            },
        ) = &o.kind
        {
            if let Some(&fd) = opened.get(&o.id) {
                tcp::finish(fd, f, s)?;
            }
        }
    }
    Ok(())
}

/// A short description, for `inspect`.
pub fn describe(t: &OpenTarget) -> String {
    match t {
        OpenTarget::Inet(s) if s.sock_type == libc::SOCK_STREAM => tcp::describe(s),
        OpenTarget::Inet(s) => udp::describe(s),
        OpenTarget::Netlink(n) => netlink::describe(n),
        _ => String::new(),
    }
}
