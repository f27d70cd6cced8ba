//! TCP sockets: unconnected (maybe bound), listening, and established
//! connections, which the kernel's repair mode (TCP_REPAIR) lets crest
//! read and rebuild without a packet being exchanged.
//!
//! Dump, on crest's copy of an established socket: repair mode on (from
//! then on the socket sends nothing of its own and, closed, goes away
//! silently), then for each queue its sequence number (TCP_QUEUE_SEQ) and
//! content (MSG_PEEK in repair mode reads the send queue too), read twice
//! until both reads agree; the options negotiated at the handshake (MSS
//! clamp, window scales, SACK, timestamps), the timestamp clock and the
//! window state.  The socket stays in repair mode until the dump ends:
//! killed with the tree it closes without a FIN or a reset; a tree that
//! runs on (or a failed dump) gets it back out of repair mode, which only
//! sends a window probe the peer answers with an ACK.
//!
//! Restore: a new socket in repair mode gets both sequence numbers while
//! still closed, binds the original local address (repair mode allows
//! sharing the port with a listener) and "connects" — in repair mode that
//! sends no SYN and makes it established at once; then the negotiated
//! options, the queues (the unacknowledged part of the send queue counts
//! as sent, the receive queue as received), the window.  Leaving repair
//! mode ([`finish`]) waits until every socket of the image exists, so a
//! connection between two restored sockets never meets a missing peer;
//! the part of the send queue never sent goes out then, normally.
//!
//! A connection the program shut down for writing (FIN-WAIT-1/2) is
//! rebuilt established, with the sequence number before its FIN, then
//! shut down in repair mode with the send queue selected: the FIN is
//! queued as sent, not transmitted, and its retransmission is acknowledged
//! again by the peer.  A FIN received from the peer (CLOSE-WAIT, LAST-ACK,
//! CLOSING) cannot be put in by repair mode: the receive queue is rebuilt
//! up to the sequence number before it, and once out of repair mode the
//! socket is sent the peer's FIN again ([`super::fin`]); a LAST-ACK
//! connection is shut down after that (its FIN goes out again, the peer
//! acknowledges it), a CLOSING one before (in repair mode, as above).
//! A connection being set up by the program (SYN-SENT: a non-blocking
//! connect in progress) is connected again at restore, non-blocking, from
//! the same local address: a new SYN, with a new initial sequence number,
//! and the SYN retry count and timeout start again.  Nothing of it was
//! acknowledged, so no byte can be lost or repeated; a SYN-SENT socket
//! with data queued (TCP Fast Open) is refused, as is a peer that already
//! answered the dumped SYN (it sees a second SYN of the same addresses,
//! not part of the connection it knows; such a socket is SYN-RECV on the
//! peer's side, which the dump cannot see when the peer is elsewhere).
//! A connection half set up from the other side (SYN-RECV: a listener's
//! request, in the accept queue once done) is a listener's business
//! ([`super::accept`]).  Connections waiting
//! in a listener's accept queue are connected again when their client is
//! in the tree, refused otherwise ([`super::accept`]).

use super::inet;
use crate::model::{InetSocket, OpenFile, TcpConn};
use crest_sys::inetdiag::{self, InetDiag};
use crest_sys::net as sn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Queued bytes beyond this (per queue) are refused.
const MAX_QUEUE: usize = 64 << 20;

/// (next byte to receive, next to queue, unacknowledged, unread bytes).
pub type Seqs = (u32, u32, u32, u32);

/// The sequence numbers of an established socket in repair mode: (next
/// byte to receive, next byte to queue for sending, bytes not yet
/// acknowledged, bytes received unread).  Equal values at two moments
/// mean nothing moved on the connection between them.
pub fn seqs(fd: RawFd) -> std::io::Result<Seqs> {
    sn::tcp_repair_queue(fd, sn::RECV_QUEUE)?;
    let r = sn::tcp_queue_seq(fd)?;
    sn::tcp_repair_queue(fd, sn::SEND_QUEUE)?;
    let s = sn::tcp_queue_seq(fd)?;
    sn::tcp_repair_queue(fd, sn::NO_QUEUE)?;
    Ok((r, s, sn::outq(fd)?, sn::inq(fd)?))
}

/// The state of an established socket, read in repair mode (which the
/// caller turned on and turns off), with the sequence numbers it is
/// consistent with.
pub fn read_established(fd: RawFd, state: u8) -> Result<(TcpConn, Seqs), String> {
    // After shutdown(SHUT_WR) the FIN takes one sequence number after the
    // data; until it is acknowledged it counts in the send queue's length.
    use inetdiag::{TCP_CLOSE_WAIT, TCP_CLOSING, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK};
    let fin_sent = matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
    );
    let fin_unacked = matches!(state, TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSING);
    // The peer's FIN takes one sequence number after the data received
    // (not counted in the receive queue's length, read or not).
    let fin_received = matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let peek_off = sn::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        sn::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1).map_err(io("SO_PEEK_OFF"))?;
    }
    let r = (|| {
        for _ in 0..50 {
            let before = seqs(fd).map_err(io("TCP_QUEUE_SEQ"))?;
            let Some((rseq, recv)) = read_queue(fd, sn::RECV_QUEUE, false)? else {
                continue;
            };
            let Some((sseq, send)) = read_queue(fd, sn::SEND_QUEUE, fin_unacked)? else {
                continue;
            };
            let unsent = sn::outq_notsent(fd).map_err(io("SIOCOUTQNSD"))?;
            sn::tcp_repair_queue(fd, sn::NO_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
            let info = sn::tcp_info(fd).map_err(io("TCP_INFO"))?;
            let mss =
                sn::get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG).map_err(io("TCP_MAXSEG"))?;
            let timestamp = sn::get_int(fd, libc::IPPROTO_TCP, sn::TCP_TIMESTAMP)
                .map_err(io("TCP_TIMESTAMP"))? as u32;
            let window = sn::tcp_repair_window(fd).map_err(io("TCP_REPAIR_WINDOW"))?;
            let after = seqs(fd).map_err(io("TCP_QUEUE_SEQ"))?;
            if before != after || (after.0, after.1) != (rseq, sseq) {
                // A packet came in while it was read: read again.
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let conn = TcpConn {
                snd_seq: sseq
                    .wrapping_sub(send.len() as u32)
                    .wrapping_sub(fin_sent as u32),
                fin_sent,
                rcv_seq: rseq
                    .wrapping_sub(recv.len() as u32)
                    .wrapping_sub(fin_received as u32),
                fin_received,
                unsent: unsent.min(send.len() as u32),
                send_queue: send,
                recv_queue: recv,
                mss: mss as u32,
                wscale: info.options & sn::TCPI_OPT_WSCALE != 0,
                snd_wscale: info.snd_wscale,
                rcv_wscale: info.rcv_wscale,
                sack: info.options & sn::TCPI_OPT_SACK != 0,
                timestamps: info.options & sn::TCPI_OPT_TIMESTAMPS != 0,
                timestamp,
                window,
            };
            return Ok((conn, after));
        }
        Err("its queues kept changing while they were read".to_string())
    })();
    if peek_off >= 0 {
        let _ = sn::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off);
    }
    r
}

/// (sequence number after the queue, its bytes) of one queue; `None`
/// when the queue changed while it was read.
fn read_queue(fd: RawFd, q: i32, fin: bool) -> Result<Option<(u32, Vec<u8>)>, String> {
    let name = if q == sn::SEND_QUEUE {
        "send"
    } else {
        "receive"
    };
    sn::tcp_repair_queue(fd, q).map_err(|e| format!("selecting the {name} queue: {e}"))?;
    let seq = sn::tcp_queue_seq(fd).map_err(|e| format!("TCP_QUEUE_SEQ ({name}): {e}"))?;
    let len = if q == sn::SEND_QUEUE {
        sn::outq(fd)
    } else {
        sn::inq(fd)
    }
    .map_err(|e| format!("the {name} queue's length: {e}"))? as usize;
    // An unacknowledged FIN counts as one byte but carries no data.
    let len = len.saturating_sub(fin as usize);
    if len > MAX_QUEUE {
        return Err(format!(
            "its {name} queue holds {len} bytes (more than {} MiB is not supported)",
            MAX_QUEUE >> 20
        ));
    }
    let mut buf = vec![0u8; len];
    let mut got = 0;
    if len > 0 {
        // One peek returns the whole queue from its start.
        if let Some((n, _, _)) =
            sn::peek(fd, &mut buf, 0).map_err(|e| format!("peeking at the {name} queue: {e}"))?
        {
            got = n;
        }
    }
    Ok((got == len).then_some((seq, buf)))
}

/// Why a TCP socket in state `state` cannot be checkpointed, if so.
pub fn refuse_state(state: u8) -> Option<String> {
    use inetdiag::*;
    match state {
        TCP_ESTABLISHED | TCP_CLOSE | TCP_LISTEN | TCP_FIN_WAIT1 | TCP_FIN_WAIT2
        | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_SYN_SENT => None,
        TCP_SYN_RECV => Some(
            "the connection is still being set up (SYN-RECV); retry once it is established".into(),
        ),
        s => Some(format!("TCP state {} is not supported", state_name(s))),
    }
}

/// The destination of a connecting (SYN-SENT) socket `fd`, listed by
/// sock_diag as `d`; refused when the SYN carries data (TCP Fast Open:
/// the data would have to be sent again, and the program may not expect
/// its `sendto` to be replayed).
pub fn syn_sent_target(fd: RawFd, d: &InetDiag) -> Result<SocketAddr, String> {
    let queued = sn::outq(fd).map_err(|e| format!("its send queue's length: {e}"))?;
    if queued > 0 {
        return Err(format!(
            "connecting (SYN-SENT) with {queued} byte(s) queued (TCP Fast Open data) is not \
             supported; retry once the connection is established"
        ));
    }
    Ok(d.dst)
}

/// Whether a socket in state `state` is a connection crest rebuilds in
/// repair mode (established, or closed on one side or both).
pub fn is_connected(state: u8) -> bool {
    use inetdiag::*;
    matches!(
        state,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// The listener's entry among the sockets sock_diag lists.
pub fn find(all: &[InetDiag], ino: u32) -> Option<&InetDiag> {
    all.iter().find(|d| d.ino == ino)
}

/// The other end of the connection `local` -> `peer`, if it is a socket of
/// this network namespace.
pub fn find_peer<'a>(
    all: &'a [InetDiag],
    local: &SocketAddr,
    peer: &SocketAddr,
) -> Option<&'a InetDiag> {
    let (l, p) = (inet::canonical(local), inet::canonical(peer));
    all.iter().find(|d| {
        d.state != inetdiag::TCP_LISTEN
            && d.state != inetdiag::TCP_TIME_WAIT
            && inet::canonical(&d.src) == p
            && inet::canonical(&d.dst) == l
    })
}

// ------------------------------------------------------------- restore

fn err(s: &InetSocket, what: &str, e: std::io::Error) -> crate::Error {
    crate::Error::msg(format!("{}: {what}: {e}", inet::show(s)))
}

/// Builds socket `s`: listening or bound ones completely; an established
/// one up to the end of repair mode, which [`finish`] ends.
pub fn open(o: &OpenFile, s: &InetSocket) -> crate::Result<OwnedFd> {
    let fd = sn::socket(s.family, libc::SOCK_STREAM, s.protocol)
        .map_err(|e| err(s, "creating the socket", e))?;
    let raw = fd.as_raw_fd();
    if s.reconnect {
        super::accept::open(raw, s)?;
    } else if let Some(c) = &s.tcp {
        build_established(raw, s, c)?;
    } else {
        inet::apply_early(raw, s.family, &s.opts).map_err(|e| err(s, "options", e))?;
        if let Some(a) = &s.local {
            sn::bind(raw, a).map_err(|e| err(s, &format!("binding to {a}"), e))?;
        }
        if let Some(b) = s.listen {
            sn::listen(raw, b.min(i32::MAX as u32) as i32).map_err(|e| err(s, "listening", e))?;
        }
        if s.state == inetdiag::TCP_SYN_SENT {
            connect_again(raw, s)?;
        }
        inet::apply_late(raw, s.family, true, &s.opts).map_err(|e| err(s, "options", e))?;
        sn::set_flags(raw, o.flags as i32).map_err(|e| err(s, "setting its flags", e))?;
    }
    Ok(fd)
}

/// A SYN-SENT socket, bound to its local address: the non-blocking
/// connect again (its SYN goes out now).
fn connect_again(fd: RawFd, s: &InetSocket) -> crate::Result<()> {
    let Some(peer) = &s.peer else {
        return Err(crate::Error::Invalid(format!(
            "{}: connecting (SYN-SENT) without a destination",
            inet::show(s)
        )));
    };
    sn::set_flags(fd, libc::O_NONBLOCK).map_err(|e| err(s, "setting O_NONBLOCK", e))?;
    match sn::connect(fd, peer) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        // Answered at once (a listener of this host): established
        // already, as it would have become.
        Ok(()) => Ok(()),
        Err(e) => Err(err(s, &format!("connecting again to {peer}"), e)),
    }
}

fn build_established(fd: RawFd, s: &InetSocket, c: &TcpConn) -> crate::Result<()> {
    let (Some(local), Some(peer)) = (&s.local, &s.peer) else {
        return Err(crate::Error::Invalid(format!(
            "{}: an established connection without both addresses",
            inet::show(s)
        )));
    };
    let io = |what: &'static str| move |e: std::io::Error| err(s, what, e);
    // Room for the queues whatever the buffers were.
    let mut opts = s.opts.clone();
    opts.sndbuf = opts.sndbuf.max(2 * c.send_queue.len() as u32 + 65536);
    opts.rcvbuf = opts.rcvbuf.max(2 * c.recv_queue.len() as u32 + 65536);
    inet::apply_early(fd, s.family, &opts).map_err(io("options"))?;
    // After SO_REUSEADDR: repair mode makes the port shareable with the
    // listener the connection was accepted from (SO_REUSEADDR would undo it).
    sn::tcp_repair(fd, sn::REPAIR_ON).map_err(io("TCP_REPAIR on"))?;
    sn::set_int(fd, libc::IPPROTO_TCP, sn::TCP_TIMESTAMP, c.timestamp as i32)
        .map_err(io("TCP_TIMESTAMP"))?;
    sn::tcp_repair_queue(fd, sn::SEND_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    sn::set_tcp_queue_seq(fd, c.snd_seq).map_err(io("the send sequence number"))?;
    sn::tcp_repair_queue(fd, sn::RECV_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    sn::set_tcp_queue_seq(fd, c.rcv_seq).map_err(io("the receive sequence number"))?;
    sn::tcp_repair_queue(fd, sn::NO_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    if let Err(e) = sn::bind(fd, local) {
        if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) || s.opts.freebind {
            return Err(err(s, "binding to its local address", e));
        }
        // The address is not on this host (any more): bind anyway.
        let (lvl, name) = if s.family == libc::AF_INET6 {
            (libc::IPPROTO_IPV6, 78)
        } else {
            (libc::IPPROTO_IP, 15)
        };
        sn::set_int(fd, lvl, name, 1).map_err(io("IP_FREEBIND"))?;
        sn::bind(fd, local).map_err(io("binding to its local address"))?;
    }
    sn::connect(fd, peer).map_err(io("connecting in repair mode"))?;
    let mut ropts = vec![(sn::TCPOPT_MSS, c.mss)];
    if c.wscale {
        ropts.push((
            sn::TCPOPT_WINDOW,
            c.snd_wscale as u32 | (c.rcv_wscale as u32) << 16,
        ));
    }
    if c.sack {
        ropts.push((sn::TCPOPT_SACK_PERM, 0));
    }
    if c.timestamps {
        ropts.push((sn::TCPOPT_TIMESTAMP, 0));
    }
    sn::set_tcp_repair_options(fd, &ropts).map_err(io("TCP_REPAIR_OPTIONS"))?;
    // After a FIN nothing can be written normally: all of it is queued
    // as sent, and goes out by retransmission.
    let sent = if c.fin_sent {
        c.send_queue.len()
    } else {
        c.send_queue.len() - (c.unsent as usize).min(c.send_queue.len())
    };
    if sent > 0 {
        sn::tcp_repair_queue(fd, sn::SEND_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
        for chunk in c.send_queue[..sent].chunks(64 << 10) {
            sn::send_all(fd, chunk, None).map_err(io("refilling the send queue"))?;
        }
    }
    if !c.recv_queue.is_empty() {
        sn::tcp_repair_queue(fd, sn::RECV_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
        for chunk in c.recv_queue.chunks(64 << 10) {
            sn::send_all(fd, chunk, None).map_err(io("refilling the receive queue"))?;
        }
    }
    if c.fin_sent && !last_ack(s, c) {
        // In repair mode with the send queue selected the FIN is queued as
        // sent, not transmitted: FIN-WAIT-1 until the peer acknowledges its
        // retransmission again (FIN-WAIT-2); CLOSING once the peer's FIN
        // is delivered too (see [`finish`]).
        sn::tcp_repair_queue(fd, sn::SEND_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
        sn::shutdown_write(fd).map_err(io("shutting down for writing"))?;
    }
    sn::tcp_repair_queue(fd, sn::NO_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    let mut window = c.window;
    if c.fin_received {
        // The window was last updated after the peer's FIN, which this
        // socket has not received yet: rcv_wup may not be past rcv_nxt.
        let rcv_nxt = super::fin::fin_seq(c);
        if (window[4].wrapping_sub(rcv_nxt) as i32) > 0 {
            window[4] = rcv_nxt;
        }
    }
    sn::set_tcp_repair_window(fd, &window).map_err(io("TCP_REPAIR_WINDOW"))?;
    Ok(())
}

/// Whether `s` is in LAST-ACK: its FIN follows the peer's (shut down
/// only once the peer's FIN is delivered, see [`finish`]).
fn last_ack(s: &InetSocket, c: &TcpConn) -> bool {
    c.fin_received && c.fin_sent && s.state == inetdiag::TCP_LAST_ACK
}

/// Ends the repair of established socket `s` (descriptor `fd`), once every
/// socket of the image exists: repair mode off, the unsent data queued
/// normally, the peer's FIN delivered again, the options and file flags
/// set.
pub fn finish(fd: RawFd, o: &OpenFile, s: &InetSocket) -> crate::Result<()> {
    if s.reconnect {
        return super::accept::finish(fd, o, s);
    }
    let Some(c) = &s.tcp else {
        return Ok(());
    };
    let io = |what: &'static str| move |e: std::io::Error| err(s, what, e);
    sn::tcp_repair(fd, sn::REPAIR_OFF).map_err(io("TCP_REPAIR off"))?;
    // Options first: TCP_CORK holds back the unsent data as it did.
    inet::apply_late(fd, s.family, true, &s.opts).map_err(io("options"))?;
    let unsent = (c.unsent as usize).min(c.send_queue.len());
    if unsent > 0 && !c.fin_sent {
        let from = c.send_queue.len() - unsent;
        sn::send_all(fd, &c.send_queue[from..], None).map_err(io("queueing the unsent data"))?;
    }
    if c.fin_received {
        super::fin::deliver(s, c).map_err(io("delivering the peer's FIN again"))?;
        let want = if c.fin_sent && !last_ack(s, c) {
            inetdiag::TCP_CLOSING
        } else {
            inetdiag::TCP_CLOSE_WAIT
        };
        wait_state(fd, want).map_err(|e| {
            crate::Error::msg(format!(
                "{}: the peer's FIN, delivered again: {e}",
                inet::show(s)
            ))
        })?;
        if last_ack(s, c) {
            // Its FIN goes out (again) now: the peer acknowledges it.
            sn::shutdown_write(fd).map_err(io("shutting down for writing"))?;
        }
    }
    // Buffers as they were (they were raised for the refill).
    // Leaving repair mode cleared SO_REUSEADDR.
    if s.opts.reuseaddr {
        sn::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(io("SO_REUSEADDR"))?;
    }
    let mut o2 = s.opts.clone();
    o2.reuseaddr = false;
    o2.reuseport = false;
    o2.freebind = false;
    o2.bindtodevice.clear();
    o2.v6only = sn::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0;
    inet::apply_early(fd, s.family, &o2).map_err(io("buffer sizes"))?;
    if let Some(off) = s.peek_off {
        sn::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off).map_err(io("SO_PEEK_OFF"))?;
    }
    sn::set_flags(fd, o.flags as i32).map_err(io("setting its flags"))?;
    Ok(())
}

/// Waits (up to 2 s) until socket `fd` is in state `want`: the segment
/// crest sent it is processed on the loopback path, as a softirq.
fn wait_state(fd: RawFd, want: u8) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    loop {
        let st = sn::tcp_info(fd)
            .map_err(|e| format!("TCP_INFO: {e}"))?
            .state;
        if st == want {
            return Ok(());
        }
        if t0.elapsed() > std::time::Duration::from_secs(2) {
            return Err(format!(
                "the socket is in state {}, not {}",
                inetdiag::state_name(st),
                inetdiag::state_name(want)
            ));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// A description of a TCP socket, for `inspect`.
pub fn describe(s: &InetSocket) -> String {
    let mut out = inet::show(s);
    if let Some(b) = s.listen {
        out += &format!(", listening (backlog {b})");
    }
    if let Some(c) = &s.tcp {
        out += &format!(
            ", established: {} bytes to send ({} unsent), {} received unread, mss {}",
            c.send_queue.len(),
            c.unsent,
            c.recv_queue.len(),
            c.mss
        );
        if c.fin_sent {
            out += ", FIN sent";
        }
        if c.fin_received {
            out += ", FIN received";
        }
    }
    if s.state == inetdiag::TCP_SYN_SENT {
        out += ", connecting (SYN-SENT): connects again";
    }
    if s.reconnect {
        out += ", connects again (its server end was in the accept queue)";
    }
    if let Some(t) = &s.lock_table {
        out += &format!(", packets held by nftables table inet {t}");
    }
    out
}
