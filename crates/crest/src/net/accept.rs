//! Connections waiting in a listener's accept queue.
//!
//! The server end of such a connection has no descriptor, and no kernel
//! interface puts a socket into an accept queue: a socket rebuilt in
//! repair mode and "connected" to the listener is established on its own,
//! never queued.  What can be rebuilt exactly is a connection whose client
//! is in the dumped tree too: restore has the client connect again, by a
//! fresh handshake, from its own address to the listener (listening again
//! by then), so the kernel queues the new server end and `accept()`
//! returns it; the client's bytes not yet acknowledged are written again.
//! The new socket takes the client's descriptor, options and flags.
//!
//! Refused, by name (the tree runs on): a queued server end holding
//! received bytes (they were acknowledged, the client no longer has them,
//! and no descriptor reads them), a client that has shut its side down, a
//! client outside the tree (nothing rebuilds its connection's server end).
//!
//! The connections are queued again in the order of their clients'
//! objects in the image (the kernel does not show the order of an accept
//! queue).

use super::inet::canonical;
use crate::model::{InetSocket, OpenFile};
use crest_sys::inetdiag::{self, InetDiag};
use crest_sys::net as sn;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Whether listener `l` (bound to `l.src`) is the one server end `child`
/// was accepted by: same port, and the same address unless `l` listens on
/// the unspecified one.
fn listens_for(l: &InetDiag, child: &InetDiag) -> bool {
    if l.state != inetdiag::TCP_LISTEN || l.src.port() != child.src.port() {
        return false;
    }
    let la = canonical(&l.src);
    la.ip().is_unspecified() || la.ip() == canonical(&child.src).ip()
}

/// The listener whose accept queue `d` (a socket no descriptor refers to)
/// waits in, if it does.
pub fn queued_in<'a>(all: &'a [InetDiag], d: &InetDiag) -> Option<&'a InetDiag> {
    if d.ino != 0 || d.state == inetdiag::TCP_LISTEN || d.state == inetdiag::TCP_TIME_WAIT {
        return None;
    }
    all.iter().find(|l| listens_for(l, d))
}

/// The server ends waiting in the accept queue of listener `l`.
pub fn queued<'a>(all: &'a [InetDiag], l: &InetDiag) -> Vec<&'a InetDiag> {
    all.iter()
        .filter(|d| {
            d.ino == 0
                && d.state != inetdiag::TCP_LISTEN
                && d.state != inetdiag::TCP_TIME_WAIT
                && d.state != inetdiag::TCP_SYN_RECV
                && listens_for(l, d)
        })
        .collect()
}

/// Why server end `child` (with `client`, its other end, if found, and
/// whether a process of the tree holds it) cannot be queued again, if so.
pub fn refuse(child: &InetDiag, client_in_tree: bool) -> Option<String> {
    let who = format!("the connection from {}", child.dst);
    if !client_in_tree {
        return Some(format!(
            "{who} waits in its accept queue and its client is outside the tree: no kernel \
             interface puts a rebuilt connection into an accept queue, so only connections \
             whose client is in the tree are rebuilt (by connecting again); retry once the \
             program has accepted it"
        ));
    }
    if child.state != inetdiag::TCP_ESTABLISHED {
        return Some(format!(
            "{who} waits in its accept queue in state {} (the client has shut its side down): \
             a new connection would not carry its FIN; retry once the program has accepted it",
            inetdiag::state_name(child.state)
        ));
    }
    if child.rqueue > 0 {
        return Some(format!(
            "{who} waits in its accept queue with {} byte(s) received and acknowledged, which \
             only its server end holds and nothing can read before it is accepted; retry \
             once the program has accepted it",
            child.rqueue
        ));
    }
    None
}

// ------------------------------------------------------------- restore

fn err(s: &InetSocket, what: &str, e: std::io::Error) -> crate::Error {
    crate::Error::msg(format!(
        "{} (queued in the listener's accept queue): {what}: {e}",
        super::inet::show(s)
    ))
}

/// The client socket `s`: options set and bound to its own address;
/// [`finish`] connects it once the listener listens again.
pub fn open(fd: RawFd, s: &InetSocket) -> crate::Result<()> {
    super::inet::apply_early(fd, s.family, &s.opts).map_err(|e| err(s, "options", e))?;
    if let Some(a) = &s.local {
        // The dumped client's old socket may still hold the address
        // (FIN-WAIT or TIME-WAIT after the tree was killed): bound in
        // repair mode, which the kernel lets take it, then a plain socket
        // again for the handshake.
        sn::tcp_repair(fd, sn::REPAIR_ON).map_err(|e| err(s, "entering repair mode", e))?;
        sn::bind(fd, a).map_err(|e| err(s, &format!("binding to {a}"), e))?;
        sn::tcp_repair(fd, sn::REPAIR_OFF_NO_PROBE)
            .map_err(|e| err(s, "leaving repair mode", e))?;
    }
    Ok(())
}

/// Connects client `s` to its listener again (the kernel queues the new
/// server end), writes its unacknowledged bytes again, sets its options
/// and flags.
pub fn finish(fd: RawFd, o: &OpenFile, s: &InetSocket) -> crate::Result<()> {
    let peer: SocketAddr = s.peer.ok_or_else(|| {
        crate::Error::Invalid(format!("{}: a client without a peer", super::inet::show(s)))
    })?;
    sn::connect(fd, &peer).map_err(|e| err(s, &format!("connecting to {peer}"), e))?;
    super::inet::apply_late(fd, s.family, true, &s.opts).map_err(|e| err(s, "options", e))?;
    if let Some(c) = &s.tcp {
        if !c.send_queue.is_empty() {
            sn::send_all(fd, &c.send_queue, None)
                .map_err(|e| err(s, "writing its unacknowledged bytes again", e))?;
        }
    }
    sn::set_flags(fd, o.flags as i32).map_err(|e| err(s, "setting its flags", e))?;
    Ok(())
}
