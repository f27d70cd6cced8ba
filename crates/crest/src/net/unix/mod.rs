//! AF_UNIX sockets whose peers are in the tree (held by its processes or
//! in flight in its queues), or, with `--ext-unix-sk`, named outside it.
//!
//! Dump reads each socket from a copy of its descriptor (pidfd_getfd):
//! options with getsockopt, the receive queue with MSG_PEEK from offset 0
//! (SO_PEEK_OFF, put back afterwards), and what only the kernel knows —
//! name, bound file, peer, connections waiting to be accepted, shutdown
//! state — from sock_diag.  Peers refer to each other by their dump-time
//! inode numbers; a peer held outside the tree is refused (without
//! `--ext-unix-sk`).  Files in flight in a queue (SCM_RIGHTS) come back
//! from the peek as descriptors of crest's, which `crate::files` makes
//! objects of ([`queue`]); SO_PEERCRED is recorded for [`creds`].
//!
//! Data a client sent on a connection still waiting in a listener's
//! accept queue is refused: it sits in the queue of the server end, which
//! has no descriptor until the accept, and no interface reads it —
//! sock_diag gives only the size of its buffers, MSG_PEEK on the client
//! reads the client's own queue, recvmsg on a listener fails (EINVAL), and
//! accepting on crest's copy of the listener would take the connection
//! from the program for good.  Waiting connections without data are
//! restored.
//!
//! Restore has two steps.  [`open`] gives each socket's open file
//! description a placeholder (a fresh socket of the right type), which
//! the restore hands out like any other descriptor.  [`restore`], once
//! every descriptor of the tree is open in crest, builds the real sockets
//! together — listeners bound and listening, connected pairs made with
//! socketpair or with connect + accept on their listener (a temporary one
//! when the listener is closed), pending connections made by connecting
//! their clients last — refills every receive queue by sending from the
//! peer with the same rights (the files in flight, opened like any
//! other, see [`in_flight`]), connects datagram sockets, applies shutdowns
//! and options, and
//! puts each socket in place of its placeholder (dup3), before anything
//! (an epoll) refers to those descriptors.

mod build;
mod creds;
mod ops;
mod queue;

pub use build::{in_flight, restore};
pub use creds::agents_for;
pub use ops::open;
use ops::show;
pub(crate) use ops::sockaddr_un;

use crate::error::{steal, Refusal, Result};
use crate::model::{
    Checkpoint, ObjectKind, OpenFile, OpenTarget, UnixFile, UnixMsg, UnixPending, UnixSocket,
};
use crest_sys::sockdiag::{self, UnixDiag};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const SO_PASSPIDFD: i32 = 76;
const SCM_PIDFD: i32 = 4;
/// Receive queues larger than this are refused.
const MAX_QUEUE: usize = 64 << 20;
/// Queued messages beyond this many are refused.
const MAX_MESSAGES: usize = 1 << 20;

// ---------------------------------------------------------------- dump

pub use queue::InFlight;

/// The state of socket `fd` of `pid`, or why it cannot be checkpointed.
/// The descriptors in flight in its queue (SCM_RIGHTS) go to `inflight`,
/// by message: crest's copies, which the caller makes objects of and
/// puts in the messages' `rights`.
pub fn collect(
    pid: i32,
    fd: i32,
    net: &mut crate::net::NetIndex,
    inflight: &mut InFlight,
) -> Refusal<OpenTarget> {
    let own = steal(pid, fd).map_err(|e| format!("this socket is not supported ({e})"))?;
    let dom = getsockopt_int(&own, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| format!("this socket is not supported (SO_DOMAIN: {e})"))?;
    if dom != libc::AF_UNIX {
        return Err(format!("{} socket is not supported", family_name(dom)));
    }
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", own.as_raw_fd()))
        .map_err(|e| format!("AF_UNIX socket: cannot stat: {e}"))?
        .ino();
    let view = net.unix_view()?;
    let (all, ext) = (view.all, view.ext_unix_sk);
    let d = all
        .get(&(ino as u32))
        .ok_or_else(|| format!("AF_UNIX socket socket:[{ino}] is not listed by sock_diag"))?;
    let sock_type = d.sock_type as i32;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&sock_type) {
        return Err(format!(
            "AF_UNIX socket of type {sock_type} is not supported"
        ));
    }
    let name = norm_name(&d.name);
    let bound_in = if !name.is_empty() && name[0] != 0 && name[0] != b'/' {
        Some(relative_dir(&own, &name)?)
    } else {
        None
    };
    let mut external = None;
    let outq = d.rqlen.map(|r| r.1).unwrap_or(0);
    let stream = sock_type != libc::SOCK_DGRAM;
    match d.peer {
        // A datagram socket whose peer was closed: it keeps the dead peer
        // (its next send fails with ECONNREFUSED), rebuilt as such.
        Some(0) if !stream => {}
        Some(0) => {
            // Closed, or the server end of a connection not accepted yet
            // (it has no inode): then a listener shows this socket among
            // its waiting connections.
            if let Some(l) = all
                .values()
                .find(|l| l.state == sockdiag::STATE_LISTEN && l.icons.contains(&(ino as u32)))
            {
                let lh = view.holders(l.ino);
                if !lh.iter().any(|p| view.in_tree(*p)) {
                    return Err(match lh.first() {
                        Some(p) => format!(
                            "this UNIX socket waits to be accepted on a socket held by pid {p}, outside the tree"
                        ),
                        None => "this UNIX socket waits to be accepted on a socket that is not in the tree".into(),
                    });
                }
                if outq > 0 {
                    return Err(format!(
                        "this UNIX socket sent data on a connection not accepted yet ({outq} \
                         bytes of kernel buffers; not supported: no interface reads them before \
                         the accept)"
                    ));
                }
            }
        }
        None => {}
        Some(p) => {
            if let Err(why) = check_in_tree(&view, p) {
                external = Some(outside_peer(all, p, ext, why, d)?);
            }
        }
    }
    let listen = (d.state == sockdiag::STATE_LISTEN).then(|| d.rqlen.map(|r| r.1).unwrap_or(0));
    let mut pending = Vec::new();
    if listen.is_some() {
        for &client in &d.icons {
            if client == 0 {
                return Err(
                    "a connection waiting to be accepted on this socket was closed by its client \
                     (not supported)"
                        .into(),
                );
            }
            let h = view.holders(client);
            if !h.iter().any(|p| view.in_tree(*p)) {
                return Err(match h.first() {
                    Some(p) => format!(
                        "a connection waiting to be accepted on this socket comes from pid {p}, outside the tree"
                    ),
                    None => format!(
                        "a connection waiting to be accepted on this socket comes from socket:[{client}], which is not in the tree"
                    ),
                });
            }
            let sent = all
                .get(&client)
                .and_then(|c| c.rqlen)
                .map(|r| r.1)
                .unwrap_or(0);
            if sent > 0 {
                return Err(format!(
                    "a connection waiting to be accepted on this socket carries data from \
                     socket:[{client}] ({sent} bytes of kernel buffers; not supported: no \
                     interface reads them before the accept)"
                ));
            }
            pending.push(UnixPending {
                client: client as u64,
            });
        }
    }
    let file = if !name.is_empty() && name[0] != 0 {
        let full = resolved(&name, bound_in.as_deref());
        let path = std::ffi::OsStr::from_bytes(&full);
        match (std::fs::symlink_metadata(path), d.vfs) {
            (Ok(m), Some((vino, vdev)))
                if m.file_type().is_socket()
                    && m.ino() as u32 == vino
                    && sockdiag::encode_dev(m.dev()) == vdev =>
            {
                Some(UnixFile {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                })
            }
            _ => None,
        }
    } else {
        None
    };
    let opt = |name: i32| {
        getsockopt_int(&own, libc::SOL_SOCKET, name)
            .map_err(|e| format!("AF_UNIX socket: getsockopt({name}): {e}"))
    };
    let passcred = opt(libc::SO_PASSCRED)? != 0;
    let passpidfd = getsockopt_int(&own, libc::SOL_SOCKET, SO_PASSPIDFD).unwrap_or(0) != 0;
    let rcvbuf = opt(libc::SO_RCVBUF)? as u32;
    let sndbuf = opt(libc::SO_SNDBUF)? as u32;
    let peek_off = opt(libc::SO_PEEK_OFF)?;
    let rcvtimeo_us = get_timeout(&own, libc::SO_RCVTIMEO)?;
    let sndtimeo_us = get_timeout(&own, libc::SO_SNDTIMEO)?;
    let queue = if listen.is_some() {
        Vec::new()
    } else {
        let (q, f) = queue::peek_queue(&own, sock_type, peek_off, d)?;
        *inflight = f;
        q
    };
    let peercred = if listen.is_some() || d.peer.is_some() {
        crest_sys::net::peer_cred(own.as_raw_fd())
            .ok()
            .filter(|c| c.0 != 0)
    } else {
        None
    };
    // A holder in a PID namespace below crest's: the number it sees.
    let nested = crest_sys::proc::read_status(pid).is_ok_and(|st| st.ns_pid.len() > 1);
    let peercred_ns = match peercred {
        Some(_) if nested => Some(
            crest_sys::actas::peer_pid_in(pid, own.as_raw_fd())
                .map_err(|e| format!("AF_UNIX socket: SO_PEERCRED in its PID namespace: {e}"))?,
        ),
        _ => None,
    };
    Ok(OpenTarget::Unix(UnixSocket {
        ino,
        sock_type,
        name,
        file,
        listen,
        peer: d.peer.map(u64::from),
        shutdown: d.shutdown,
        queue,
        pending,
        passcred,
        passpidfd,
        rcvbuf,
        sndbuf,
        peek_off,
        rcvtimeo_us,
        sndtimeo_us,
        peercred,
        peercred_ns,
        bound_in,
        external,
    }))
}

/// A socket whose peer `p` is held outside the tree: with `--ext-unix-sk`
/// the name to connect to again (the peer's bound name, a listener's for
/// an accepted peer), else the refusal `why` with that name.
fn outside_peer(
    all: &HashMap<u32, UnixDiag>,
    p: u32,
    ext: bool,
    why: String,
    d: &UnixDiag,
) -> Refusal<Vec<u8>> {
    let name = all
        .get(&p)
        .map(|pd| norm_name(&pd.name))
        .unwrap_or_default();
    let shown = if name.is_empty() {
        "an unnamed socket".to_string()
    } else {
        show(&name)
    };
    if !ext {
        return Err(format!(
            "{why}: it is connected to {shown}; pass --ext-unix-sk to dump it and connect \
             it to that name again at restore"
        ));
    }
    if name.is_empty() || (name[0] != 0 && name[0] != b'/') {
        return Err(format!(
            "{why}: it is connected to {shown}, which has no absolute or abstract name to \
             connect to again (--ext-unix-sk)"
        ));
    }
    let queued = d.rqlen.map(|r| r.0).unwrap_or(0);
    if queued > 0 {
        return Err(format!(
            "{why}: {queued} bytes from {shown} are queued on it, which --ext-unix-sk cannot \
             send again from there"
        ));
    }
    Ok(name)
}

/// Why the image cannot be restored with these options: sockets to
/// connect outside the tree without `--ext-unix-sk`.
pub fn external_refused(ckpt: &Checkpoint, ext: bool) -> Option<String> {
    if ext {
        return None;
    }
    ckpt.objects.iter().find_map(|o| match &o.kind {
        ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        }) => u.external.as_ref().map(|n| {
            format!(
                "AF_UNIX socket socket:[{}] (object {}) was connected to {} outside the tree; \
                 pass --ext-unix-sk to connect it there again",
                u.ino,
                o.id,
                show(n)
            )
        }),
        _ => None,
    })
}

/// The directory a socket bound to the relative name `name` was bound in:
/// the socket file's absolute path (SIOCUNIXFILE opens it) less `name`.
fn relative_dir(own: &OwnedFd, name: &[u8]) -> Refusal<String> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let f = crest_sys::sockdiag::unix_file(own.as_raw_fd()).map_err(|e| {
        format!("AF_UNIX socket bound to the relative path {shown:?}: cannot find its file ({e})")
    })?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| format!("AF_UNIX socket bound to {shown:?}: {e}"))?;
    let p = path.as_os_str().as_bytes();
    let rel = name.strip_prefix(b"./").unwrap_or(name);
    match p.strip_suffix(rel).and_then(|d| d.strip_suffix(b"/")) {
        Some(d) if p.starts_with(b"/") && !p.ends_with(b" (deleted)") => {
            Ok(String::from_utf8_lossy(if d.is_empty() { b"/" } else { d }).into_owned())
        }
        _ => Err(format!(
            "AF_UNIX socket bound to the relative path {shown:?}: its file is now {} \
             (renamed or deleted; not supported)",
            path.display()
        )),
    }
}

/// A filesystem name as a path crest can use: a relative one joined to
/// the directory it was bound in.
pub(super) fn resolved(name: &[u8], bound_in: Option<&str>) -> Vec<u8> {
    match bound_in {
        Some(d) if name.first().is_some_and(|&b| b != 0 && b != b'/') => {
            let mut v = d.trim_end_matches('/').as_bytes().to_vec();
            v.push(b'/');
            v.extend_from_slice(name);
            v
        }
        _ => name.to_vec(),
    }
}

/// A name as the program sees it: filesystem names lose the NUL the
/// kernel keeps after them.
pub(super) fn norm_name(n: &[u8]) -> Vec<u8> {
    if n.first().is_some_and(|&b| b != 0) {
        let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
        n[..end].to_vec()
    } else {
        n.to_vec()
    }
}

fn family_name(dom: i32) -> String {
    match dom {
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        d => format!("address family {d}"),
    }
}

/// Refuses a peer that no process of the tree holds.
fn check_in_tree(view: &crate::net::UnixView<'_>, peer: u32) -> Refusal<()> {
    let h = view.holders(peer);
    if h.is_empty() || h.iter().any(|p| view.in_tree(*p)) {
        // Held by no process: in flight in a queue, which
        // [`check_peers`] finds among the tree's once all are read.
        return Ok(());
    }
    Err(match h.first() {
        Some(p) => format!("the peer of this UNIX socket is held by pid {p}, outside the tree"),
        None => format!("the peer of this UNIX socket (socket:[{peer}]) is not in the tree"),
    })
}

pub(super) fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

pub(super) fn setsockopt_raw<T>(fd: RawFd, level: i32, name: i32, v: &T) -> std::io::Result<()> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from a valid reference.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn get_timeout(fd: &OwnedFd, name: i32) -> Refusal<u64> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!(
            "AF_UNIX socket: reading a timeout: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

/// A short description of a UNIX socket, for `inspect`.
pub fn describe(u: &UnixSocket) -> String {
    let t = match u.sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    };
    let mut s = format!("AF_UNIX {t} socket:[{}]", u.ino);
    if !u.name.is_empty() {
        s += &format!(" {}", show(&u.name));
    }
    if let Some(b) = u.listen {
        s += &format!(", listening (backlog {b}, {} waiting)", u.pending.len());
    }
    match u.peer {
        Some(0) => s += ", peer closed or not accepted yet",
        Some(p) => s += &format!(", peer socket:[{p}]"),
        None => {}
    }
    let bytes: usize = u.queue.iter().map(|m| m.data.len()).sum();
    if !u.queue.is_empty() {
        s += &format!(", {} messages / {bytes} bytes queued", u.queue.len());
    }
    let rights: usize = u.queue.iter().map(|m| m.rights.len()).sum();
    if rights > 0 {
        s += &format!(", {rights} descriptors in flight");
    }
    if u.shutdown != 0 {
        s += &format!(", shutdown {}", u.shutdown);
    }
    s
}

/// Whether a socket file can be made at `name` for a while: its
/// directory exists and nothing is there.
pub(super) fn name_is_free(name: &[u8]) -> bool {
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    path.parent().is_some_and(|d| d.is_dir())
        && matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Why the filesystem name of socket `u` could not be bound again here
/// (checked at dump too, while the tree still runs).  A name whose file
/// is gone is bound without a file (see `crate::net::sockname`), but then
/// nothing can connect to it by path: a listener that restore must
/// reconnect accepted or waiting connections to is refused.
pub fn name_problem(u: &UnixSocket, ckpt: &Checkpoint) -> Option<String> {
    let full = resolved(&u.name, u.bound_in.as_deref());
    if full.first() != Some(&b'/') {
        return None;
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&full));
    let shown = path.display();
    if u.file.is_none() {
        if name_is_free(&full) {
            return None;
        }
        let accepted = ckpt.objects.iter().any(|o| {
            matches!(&o.kind, ObjectKind::Open(OpenFile { target: OpenTarget::Unix(v), .. })
                if v.ino != u.ino && v.name == u.name && v.peer.is_some_and(|p| p != 0))
        });
        if u.listen.is_some() && (accepted || !u.pending.is_empty()) {
            return Some(format!(
                "AF_UNIX socket bound to {shown}, whose file was deleted and whose path is \
                 now gone or taken: its connections are remade through that path (not supported)"
            ));
        }
        return None;
    }
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            return Some(format!(
                "AF_UNIX socket bound to {shown}: its directory {} was removed; the name \
                 cannot be bound again (not supported)",
                dir.display()
            ));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Some(format!(
            "AF_UNIX socket bound to {shown}: that path now holds another file, so the \
             name cannot be bound again (not supported)"
        )),
        _ => None,
    }
}

/// Once every descriptor of the tree is read: the peer of each UNIX
/// socket (held by no process, it was in flight) must be in the image
/// too, else the socket could not be connected to it again.
pub fn check_peers(
    objects: &[crate::model::Object],
    root: i32,
    obstacles: &mut Vec<crate::Obstacle>,
) {
    let unix = || {
        objects.iter().filter_map(|o| match &o.kind {
            ObjectKind::Open(OpenFile {
                target: OpenTarget::Unix(u),
                ..
            }) => Some(u),
            _ => None,
        })
    };
    let inos: std::collections::HashSet<u64> = unix().map(|u| u.ino).collect();
    for u in unix().filter(|u| u.external.is_none()) {
        let wanted = u
            .peer
            .filter(|&p| p != 0)
            .into_iter()
            .chain(u.pending.iter().map(|p| p.client));
        for p in wanted {
            if !inos.contains(&p) {
                obstacles.push(crate::Obstacle {
                    pid: root,
                    object: format!("AF_UNIX socket socket:[{}]", u.ino),
                    reason: format!(
                        "its peer socket:[{p}] is held by no process and is not in flight in \
                         the tree's queues (it may be in flight outside the tree)"
                    ),
                });
            }
        }
    }
}
