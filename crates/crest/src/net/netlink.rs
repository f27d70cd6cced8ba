//! Netlink sockets (NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT, NETLINK_GENERIC,
//! NETLINK_AUDIT …): protocol, bound port id, multicast groups, connected
//! peer and buffer sizes are recreated.
//!
//! What is queued in them — replies to requests not yet read, and
//! notifications of the groups — is kernel-generated and tied to requests
//! of the old socket: it is not checkpointed, and a socket with messages
//! waiting is refused (retry once the program has read them).  A request
//! the program sent whose reply has not arrived yet is lost (the kernel
//! answers synchronously, so that only happens with NETLINK_AUDIT-like
//! protocols served by a process).

use crate::model::{NetlinkSocket, OpenFile, OpenTarget};
use crest_sys::net as sn;
use std::os::fd::{AsRawFd, OwnedFd};

fn proto_name(p: i32) -> String {
    match p {
        0 => "NETLINK_ROUTE".into(),
        4 => "NETLINK_SOCK_DIAG".into(),
        6 => "NETLINK_XFRM".into(),
        9 => "NETLINK_AUDIT".into(),
        12 => "NETLINK_NETFILTER".into(),
        15 => "NETLINK_KOBJECT_UEVENT".into(),
        16 => "NETLINK_GENERIC".into(),
        p => format!("netlink protocol {p}"),
    }
}

pub fn collect(own: &OwnedFd) -> Result<OpenTarget, String> {
    let fd = own.as_raw_fd();
    let protocol = sn::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)
        .map_err(|e| format!("AF_NETLINK socket: SO_PROTOCOL: {e}"))?;
    let what = format!("AF_NETLINK socket ({})", proto_name(protocol));
    let e = |w: &str| {
        let w = format!("{what}: {w}");
        move |x: std::io::Error| format!("{w}: {x}")
    };
    let sock_type = sn::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(e("SO_TYPE"))?;
    let (portid, _) = sn::nl_local(fd).map_err(e("getsockname"))?;
    let peer = sn::nl_peer(fd).map_err(e("getpeername"))?;
    let bitmap = sn::get_bytes(fd, libc::SOL_NETLINK, sn::NETLINK_LIST_MEMBERSHIPS, 1024)
        .map_err(e("NETLINK_LIST_MEMBERSHIPS"))?;
    let mut groups = Vec::new();
    for (i, w) in bitmap.chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes(w.try_into().expect("4 bytes"));
        for b in 0..32 {
            if w & (1 << b) != 0 {
                groups.push(i as u32 * 32 + b + 1);
            }
        }
    }
    let mut buf = [0u8; 16];
    if let Some((_, len, _)) = sn::peek(fd, &mut buf, libc::MSG_TRUNC).map_err(e("peeking"))? {
        return Err(format!(
            "{what}: a message of {len} bytes waits in its receive queue; netlink messages \
             (replies, notifications) are not checkpointed (retry once it is read)"
        ));
    }
    Ok(OpenTarget::Netlink(NetlinkSocket {
        protocol,
        sock_type,
        portid,
        groups,
        peer: (peer != (0, 0)).then_some(peer),
        rcvbuf: sn::get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).map_err(e("SO_RCVBUF"))? as u32,
        sndbuf: sn::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(e("SO_SNDBUF"))? as u32,
    }))
}

pub fn open(o: &OpenFile, n: &NetlinkSocket) -> crate::Result<OwnedFd> {
    let what = format!("AF_NETLINK socket ({})", proto_name(n.protocol));
    let e = |w: &str| {
        let w = format!("{what}: {w}");
        move |x: std::io::Error| crate::Error::msg(format!("{w}: {x}"))
    };
    let fd = sn::socket(libc::AF_NETLINK, n.sock_type, n.protocol).map_err(e("socket"))?;
    let raw = fd.as_raw_fd();
    if n.portid != 0 {
        sn::nl_bind(raw, n.portid).map_err(e(&format!("binding port id {}", n.portid)))?;
    }
    for g in &n.groups {
        sn::set_int(
            raw,
            libc::SOL_NETLINK,
            sn::NETLINK_ADD_MEMBERSHIP,
            *g as i32,
        )
        .map_err(e(&format!("joining group {g}")))?;
    }
    if let Some((pid, groups)) = n.peer {
        sn::nl_connect(raw, pid, groups).map_err(e("connecting"))?;
    }
    if sn::get_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF).ok() != Some(n.rcvbuf as i32) {
        sn::set_int(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (n.rcvbuf / 2) as i32,
        )
        .map_err(e("SO_RCVBUF"))?;
    }
    if sn::get_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF).ok() != Some(n.sndbuf as i32) {
        sn::set_int(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (n.sndbuf / 2) as i32,
        )
        .map_err(e("SO_SNDBUF"))?;
    }
    sn::set_flags(raw, o.flags as i32).map_err(e("setting its flags"))?;
    Ok(fd)
}

pub fn describe(n: &NetlinkSocket) -> String {
    let mut s = format!("{} socket, port id {}", proto_name(n.protocol), n.portid);
    if !n.groups.is_empty() {
        s += &format!(", groups {:?}", n.groups);
    }
    s
}
