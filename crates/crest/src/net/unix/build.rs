//! Restore: every AF_UNIX socket of the image built together.

use super::ops::*;
use super::queue::*;
use super::*;
use crate::error::{Context, Error};
use std::os::fd::FromRawFd;

/// Filesystem names bound during the restore, and what to do with them.
#[derive(Default)]
struct Names {
    /// Sockets bound on the filesystem, by inode, once per restore.
    live: Option<Vec<(u32, u32)>>,
    /// Socket files to remove at the end (names whose file was unlinked).
    remove: Vec<std::path::PathBuf>,
}

impl Names {
    /// Makes room for a socket file at `name` (a stale socket file is
    /// removed; anything else is an error), binds `fd` there and gives the
    /// file its mode and owner.
    fn bind(&mut self, fd: &OwnedFd, u: &UnixSocket) -> Result<()> {
        let (name, file) = (&u.name[..], u.file.as_ref());
        if name.is_empty() {
            return Ok(());
        }
        if name[0] == 0 {
            return bind(fd, name);
        }
        let full = resolved(name, u.bound_in.as_deref());
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&full));
        if name[0] != b'/' && u.bound_in.is_none() {
            return Err(Error::Invalid(format!(
                "AF_UNIX socket bound to the relative name {}, with no directory recorded",
                show(name)
            )));
        }
        if file.is_none() && !name_is_free(&full) {
            if name[0] != b'/' {
                return Err(Error::Incompatible(format!(
                    "AF_UNIX socket bound to the relative name {} (in {}): its file was \
                     deleted and the path is taken",
                    show(name),
                    path.display()
                )));
            }
            // The file was deleted and its path is gone or taken: the
            // name alone, with no file anywhere visible.
            return crate::net::sockname::bind_detached(fd, name);
        }
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.file_type().is_socket() {
                return Err(Error::Incompatible(format!(
                    "{} exists and is not a socket; the restored socket must be bound there",
                    path.display()
                )));
            }
            if self.live.is_none() {
                let all = sockdiag::unix_sockets()?;
                self.live = Some(all.values().filter_map(|d| d.vfs).collect());
            }
            let key = (m.ino() as u32, sockdiag::encode_dev(m.dev()));
            if self.live.as_ref().is_some_and(|l| l.contains(&key)) {
                return Err(Error::Incompatible(format!(
                    "{} is the name of a socket in use; the restored socket must be bound there",
                    path.display()
                )));
            }
            std::fs::remove_file(&path).map_err(|e| {
                Error::msg(format!("removing the stale socket {}: {e}", path.display()))
            })?;
        }
        match &u.bound_in {
            Some(dir) if name[0] != b'/' => bind_in(fd, name, dir)?,
            _ => bind(fd, name)?,
        }
        match file {
            Some(f) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o7777))
                    .map_err(|e| Error::msg(format!("chmod {}: {e}", path.display())))?;
                std::os::unix::fs::lchown(&path, Some(f.uid), Some(f.gid))
                    .map_err(|e| Error::msg(format!("chown {}: {e}", path.display())))?;
            }
            None => self.remove.push(path),
        }
        Ok(())
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for p in self.remove.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One socket of the image.
struct Sock<'a> {
    id: u32,
    flags: u32,
    u: &'a UnixSocket,
}

/// Builds every AF_UNIX socket of the image and puts each in place of its
/// placeholder: `opened` maps object ids to crest's descriptors.  Runs
/// once every descriptor of the tree is open, before anything else refers
/// to the sockets' descriptors.
/// `agents`: the early processes serving the calls made as themselves in
/// PID namespaces of the tree (see [`super::creds`]).
pub fn restore(
    ckpt: &Checkpoint,
    opened: &HashMap<u32, RawFd>,
    agents: &[crate::restore::stub::AgentRef<'_>],
) -> Result<()> {
    let mut socks: Vec<Sock> = Vec::new();
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            flags,
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            if opened.contains_key(&o.id) {
                valid_type(u.sock_type)?;
                socks.push(Sock {
                    id: o.id,
                    flags: *flags,
                    u,
                });
            }
        }
    }
    if socks.is_empty() {
        return Ok(());
    }
    let mut by_ino: HashMap<u64, usize> = HashMap::new();
    for (i, s) in socks.iter().enumerate() {
        if by_ino.insert(s.u.ino, i).is_some() {
            return Err(Error::Invalid(format!(
                "two AF_UNIX sockets of the image have inode {}",
                s.u.ino
            )));
        }
    }
    // Connections waiting on listeners: client inode → listener.
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    for (i, s) in socks.iter().enumerate() {
        for p in &s.u.pending {
            if waiting.insert(p.client, i).is_some() {
                return Err(Error::Invalid(format!(
                    "socket {} waits on two listeners",
                    p.client
                )));
            }
        }
    }
    let what = |s: &Sock| {
        let name = if s.u.name.is_empty() {
            String::new()
        } else {
            format!(" {}", show(&s.u.name))
        };
        format!(
            "AF_UNIX socket socket:[{}]{name} (object {})",
            s.u.ino, s.id
        )
    };
    let creds = super::creds::Creds::new(ckpt, agents)?;
    // Every recorded PID the calls are made as must be free here: checked
    // before anything is built (a socket connected outside the tree takes
    // the outside listener's credentials as they are).
    let mut inexact = Vec::new();
    for s in socks.iter().filter(|s| s.u.external.is_none()) {
        creds.check(&what(s), "peer credentials (SO_PEERCRED)", s.u.peercred)?;
        for (k, m) in s.u.queue.iter().enumerate() {
            creds.check(
                &what(s),
                &format!("queued message {k}'s credentials"),
                m.creds,
            )?;
        }
        if !creds.exact(s.u.peercred) || s.u.queue.iter().any(|m| !creds.exact(m.creds)) {
            inexact.push(format!("socket:[{}]", s.u.ino));
        }
    }
    if creds.nested() && !inexact.is_empty() {
        eprintln!(
            "crest: warning: the tree is restored in a PID namespace of its own: the peer \
             credentials and queued credentials of AF_UNIX {} carry crest's pid, not the \
             recorded one (no process of their PID namespace can make the calls here; the \
             README's \"Credentials\" lists the cases)",
            inexact.join(", ")
        );
    }
    let pending: Vec<String> = socks
        .iter()
        .filter(|s| !s.u.pending.is_empty())
        .map(|s| format!("socket:[{}] ({} waiting)", s.u.ino, s.u.pending.len()))
        .collect();
    if !pending.is_empty() {
        // Who connected is not recorded anywhere crest can read (the
        // server end has no descriptor before the accept).
        eprintln!(
            "crest: warning: connections waiting to be accepted on AF_UNIX {} are made again \
             by crest: once accepted, their SO_PEERCRED names crest's pid, not the \
             connecting process's",
            pending.join(", ")
        );
    }
    let mut names = Names::default();
    let mut built: Vec<Option<OwnedFd>> = (0..socks.len()).map(|_| None).collect();
    // The other end of a socketpair made for one socket whose peer was
    // closed; and the partner of each socketpair.
    let mut orphan_peer: HashMap<usize, OwnedFd> = HashMap::new();
    let mut partner: HashMap<usize, usize> = HashMap::new();
    let listener_named = |name: &[u8], t: i32| {
        socks
            .iter()
            .position(|s| s.u.listen.is_some() && s.u.name == name && s.u.sock_type == t)
    };
    // 1. Listeners, bound and listening.
    for (i, s) in socks.iter().enumerate() {
        if let Some(backlog) = s.u.listen {
            let fd = new_socket(s.u.sock_type)?;
            names.bind(&fd, s.u).context(|| what(s))?;
            creds.listen(&fd, backlog, &s.u.name, s.u.peercred)?;
            built[i] = Some(fd);
        }
    }
    // 2. Connected sockets and the others.
    for i in 0..socks.len() {
        if built[i].is_some() {
            continue;
        }
        let s = &socks[i];
        let u = s.u;
        let peer = u
            .peer
            .filter(|&p| p != 0)
            .and_then(|p| by_ino.get(&p).copied());
        let stream = u.sock_type != libc::SOCK_DGRAM;
        match (u.peer, peer) {
            (Some(0), _) if stream && waiting.contains_key(&u.ino) => {
                // The client end of a connection not accepted yet: it
                // connects once the listener's accepted ones are made.
                let fd = new_socket(u.sock_type)?;
                names.bind(&fd, u)?;
                built[i] = Some(fd);
            }
            (Some(0), _) if !stream => {
                // Its peer was closed: a pair whose other end sends what
                // is queued, then is closed (a send fails with
                // ECONNREFUSED again).
                let (a, b) = creds.socketpair(u.sock_type, u.peercred)?;
                names.bind(&a, u).context(|| what(s))?;
                built[i] = Some(a);
                orphan_peer.insert(i, b);
            }
            (Some(0), _) if stream => {
                // Its peer was closed: a pair whose other end is closed
                // once the queue is refilled.
                let (a, b) = creds.socketpair(u.sock_type, u.peercred)?;
                built[i] = Some(a);
                orphan_peer.insert(i, b);
            }
            (Some(_), Some(j)) if stream => {
                let v = socks[j].u;
                if v.peer != Some(u.ino) || v.sock_type != u.sock_type {
                    return Err(Error::Invalid(format!(
                        "{}: its peer is not connected back to it",
                        what(s)
                    )));
                }
                if u.name.is_empty() && v.name.is_empty() {
                    let (a, b) = creds.socketpair(u.sock_type, u.peercred)?;
                    built[i] = Some(a);
                    built[j] = Some(b);
                    partner.insert(i, j);
                    partner.insert(j, i);
                    continue;
                }
                // One end was accepted (it shows its listener's name).
                let la = (!u.name.is_empty())
                    .then(|| listener_named(&u.name, u.sock_type))
                    .flatten();
                let lb = (!v.name.is_empty())
                    .then(|| listener_named(&v.name, u.sock_type))
                    .flatten();
                let (acc, cli) = match (u.name.is_empty(), v.name.is_empty(), la, lb) {
                    (false, true, _, _) => (i, j),
                    (true, false, _, _) => (j, i),
                    (_, _, Some(_), None) => (i, j),
                    (_, _, None, Some(_)) => (j, i),
                    _ => {
                        return Err(Error::Incompatible(format!(
                            "{}: cannot tell which end of its connection was accepted",
                            what(s)
                        )))
                    }
                };
                let (aname, cu) = (socks[acc].u.name.clone(), socks[cli].u);
                let atarget = resolved(&aname, socks[acc].u.bound_in.as_deref());
                let client = new_socket(u.sock_type)?;
                names.bind(&client, cu)?;
                let accepted = match listener_named(&aname, u.sock_type) {
                    Some(l) => {
                        let lfd = built[l].as_ref().expect("listeners are built first");
                        creds.connect(&client, &atarget, socks[acc].u.peercred)?;
                        accept(lfd, &aname)?
                    }
                    None => {
                        // The listener is closed: a temporary one with its name.
                        let tmp = new_socket(u.sock_type)?;
                        names.bind(&tmp, socks[acc].u)?;
                        creds.listen(&tmp, 1, &aname, cu.peercred)?;
                        creds.connect(&client, &atarget, socks[acc].u.peercred)?;
                        accept(&tmp, &aname)?
                    }
                };
                built[acc] = Some(accepted);
                built[cli] = Some(client);
            }
            (Some(_), None) if stream && u.external.is_some() => {
                // Connected outside the tree: to its peer's name again.
                let fd = new_socket(u.sock_type)?;
                names.bind(&fd, u)?;
                let n = u.external.as_deref().unwrap_or_default();
                connect(&fd, n).context(|| what(s))?;
                built[i] = Some(fd);
            }
            (Some(p), None) if stream => {
                return Err(Error::Invalid(format!(
                    "{}: its peer socket {p} is not in the image",
                    what(s)
                )));
            }
            (Some(_), Some(j))
                if u.name.is_empty()
                    && socks[j].u.name.is_empty()
                    && socks[j].u.peer == Some(u.ino)
                    && socks[j].u.sock_type == u.sock_type =>
            {
                let (a, b) = creds.socketpair(u.sock_type, u.peercred)?;
                built[i] = Some(a);
                built[j] = Some(b);
                partner.insert(i, j);
                partner.insert(j, i);
            }
            _ => {
                let fd = new_socket(u.sock_type)?;
                names.bind(&fd, u).context(|| what(s))?;
                built[i] = Some(fd);
            }
        }
    }
    let fd_of = |built: &Vec<Option<OwnedFd>>, i: usize| -> Result<RawFd> {
        built[i].as_ref().map(|f| f.as_raw_fd()).ok_or_else(|| {
            Error::msg(format!(
                "AF_UNIX socket object {} was not built",
                socks[i].id
            ))
        })
    };
    // Room for the refill in every sender's buffer.
    for f in built.iter().flatten().chain(orphan_peer.values()) {
        let _ = setsockopt_raw(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &(32i32 << 20),
        );
    }
    // 3. Refill the receive queues, sending from the peer, with the
    // descriptors in flight (a socket among them is the built one).
    let by_id: HashMap<u32, usize> = socks.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    for (i, s) in socks.iter().enumerate() {
        if s.u.queue.is_empty() {
            continue;
        }
        let u = s.u;
        let stream = u.sock_type != libc::SOCK_DGRAM;
        let me_target = resolved(&u.name, u.bound_in.as_deref());
        for m in &u.queue {
            let mut rights = Vec::with_capacity(m.rights.len());
            for id in &m.rights {
                rights.push(match (by_id.get(id), opened.get(id)) {
                    (Some(&j), _) => fd_of(&built, j)?,
                    (None, Some(&f)) => f,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{}: object {id}, in flight in its queue, was not opened",
                            what(s)
                        )))
                    }
                });
            }
            let (from, to): (RawFd, Option<&[u8]>) = if stream {
                let f = match (orphan_peer.get(&i), u.peer.and_then(|p| by_ino.get(&p))) {
                    (Some(o), _) => o.as_raw_fd(),
                    (None, Some(&j)) => fd_of(&built, j)?,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{}: data queued but no peer to send it from",
                            what(s)
                        )))
                    }
                };
                (f, None)
            } else if let Some(o) = orphan_peer.get(&i).filter(|_| m.from.is_empty()) {
                (o.as_raw_fd(), None)
            } else if let Some(&j) = partner
                .get(&i)
                .filter(|&&j| m.from.is_empty() || m.from == socks[j].u.name)
            {
                (fd_of(&built, j)?, None)
            } else if u.name.is_empty() {
                return Err(Error::Incompatible(format!(
                    "{}: a datagram queued on this unnamed socket came from {} and cannot be sent to it again",
                    what(s),
                    show(&m.from)
                )));
            } else if m.from.is_empty() {
                (-1, Some(&me_target[..]))
            } else {
                match socks
                    .iter()
                    .position(|x| x.u.name == m.from && x.u.sock_type == libc::SOCK_DGRAM)
                {
                    Some(j) => (fd_of(&built, j)?, Some(&me_target[..])),
                    None => {
                        return Err(Error::Incompatible(format!(
                            "{}: a datagram queued on it came from {}, which no socket of the image has",
                            what(s),
                            show(&m.from)
                        )))
                    }
                }
            };
            if from < 0 {
                let tmp = new_socket(libc::SOCK_DGRAM)?;
                send(
                    &tmp,
                    &m.data,
                    to,
                    m.creds,
                    creds.sender(m.creds)?,
                    &rights,
                    &creds,
                )?;
            } else {
                // SAFETY: `from` is a descriptor owned by `built` or
                // `orphan_peer`, alive for this call; the borrowed copy is
                // forgotten, not closed.
                let f = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(from) });
                send(
                    &f,
                    &m.data,
                    to,
                    m.creds,
                    creds.sender(m.creds)?,
                    &rights,
                    &creds,
                )
                .context(|| what(s))?;
            }
        }
    }
    orphan_peer.clear(); // the peers of those sockets are closed again
                         // 4. Datagram sockets connected to a named socket; pending connections.
    for (i, s) in socks.iter().enumerate() {
        let u = s.u;
        if u.sock_type != libc::SOCK_DGRAM || partner.contains_key(&i) {
            continue;
        }
        if let Some(n) = &u.external {
            let f = built[i].as_ref().expect("built above");
            connect(f, n).context(|| what(s))?;
            continue;
        }
        if let Some(p) = u.peer.filter(|&p| p != 0) {
            let Some(&j) = by_ino.get(&p) else {
                return Err(Error::Invalid(format!(
                    "{}: its peer {p} is not in the image",
                    what(s)
                )));
            };
            let pname = &socks[j].u.name;
            if pname.is_empty() {
                return Err(Error::Incompatible(format!(
                    "{}: it is connected to an unnamed datagram socket",
                    what(s)
                )));
            }
            let f = built[i].as_ref().expect("built above");
            let target = resolved(pname, socks[j].u.bound_in.as_deref());
            connect(f, &target).context(|| what(s))?;
        }
    }
    for l in socks.iter() {
        for p in &l.u.pending {
            let Some(&c) = by_ino.get(&p.client) else {
                return Err(Error::Invalid(format!(
                    "{}: the client {} of a pending connection is not in the image",
                    what(l),
                    p.client
                )));
            };
            let f = built[c].as_ref().expect("built above");
            let target = resolved(&l.u.name, l.u.bound_in.as_deref());
            connect(f, &target).context(|| what(&socks[c]))?;
        }
    }
    // 5. Shutdown state, options, file flags; then into place.
    for (i, s) in socks.iter().enumerate() {
        let u = s.u;
        let f = built[i].as_ref().expect("built above");
        if u.peer != Some(0) {
            shutdown(f, u.shutdown).context(|| what(s))?;
        }
        set_int(f, libc::SO_PASSCRED, u.passcred as i32, "SO_PASSCRED")?;
        if u.passpidfd {
            set_int(f, SO_PASSPIDFD, 1, "SO_PASSPIDFD")?;
        }
        set_int(f, libc::SO_SNDBUFFORCE, (u.sndbuf / 2) as i32, "SO_SNDBUF")?;
        set_int(f, libc::SO_RCVBUFFORCE, (u.rcvbuf / 2) as i32, "SO_RCVBUF")?;
        set_int(f, libc::SO_PEEK_OFF, u.peek_off, "SO_PEEK_OFF")?;
        set_timeout(f, libc::SO_RCVTIMEO, u.rcvtimeo_us, "SO_RCVTIMEO")?;
        set_timeout(f, libc::SO_SNDTIMEO, u.sndtimeo_us, "SO_SNDTIMEO")?;
        // SAFETY: plain fcntl on a descriptor we own.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, s.flags as i32) };
        check(r as libc::c_long, || {
            format!("{}: setting its flags", what(s))
        })?;
    }
    for (i, s) in socks.iter().enumerate() {
        let f = built[i].as_ref().expect("built above");
        let place = opened[&s.id];
        // SAFETY: replaces crest's placeholder at `place` (owned by the
        // restore's held descriptors) with the built socket.
        let r = unsafe { libc::dup3(f.as_raw_fd(), place, libc::O_CLOEXEC) };
        check(r as libc::c_long, || {
            format!("{}: putting it in place", what(s))
        })?;
    }
    Ok(())
}

/// The open files in flight in the queues of the image's UNIX sockets
/// that no descriptor of the tree opened: `opened` maps the opened ones.
pub fn in_flight<'a>(
    ckpt: &'a Checkpoint,
    opened: &HashMap<u32, RawFd>,
) -> Vec<(u32, &'a OpenFile)> {
    let mut out: Vec<(u32, &OpenFile)> = Vec::new();
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            for id in u.queue.iter().flat_map(|m| &m.rights) {
                if opened.contains_key(id) || out.iter().any(|(i, _)| i == id) {
                    continue;
                }
                if let Some(ObjectKind::Open(f)) = ckpt.object(*id) {
                    out.push((*id, f));
                }
            }
        }
    }
    out
}
