//! `unix-sockets`: AF_UNIX sockets between the members of a tree, with
//! data queued across the checkpoint.
//!
//! The root R forks C1 and C2.  At fixed fd numbers:
//!
//! | fds | what | state at the checkpoint |
//! | --- | --- | --- |
//! | R 30 / C1 31 | stream socketpair | 1000 bytes queued R→C1, 777 C1→R; R's end O_NONBLOCK and SO_RCVBUF 100000; C1's end SO_PEEK_OFF at 10 |
//! | R 32 / C1 33 | datagram socketpair | 3 messages (17, 1 and 300 bytes) queued R→C1 |
//! | R 34 / C2 35 | seqpacket socketpair | 2 messages (5, 2000 bytes) queued R→C2, then R shut its end down for writing; C2's end SO_PASSCRED |
//! | R 40 | stream listener on `<dir>/listen.sock` (mode 0640, O_NONBLOCK, backlog 5) | 2 connections waiting: C1's fd 41 first, then C2's fd 41 |
//! | R 42, R 44 / C2 43 | abstract stream listener `@crest-wl-<pid>` and a connection accepted from it | 200 bytes queued R→C2, 500 C2→R |
//!
//! After go each process checks its fd set, the flags and options, the
//! names, the bytes queued (FIONREAD) and every byte and message boundary;
//! then more data flows both ways on each connection, R accepts the two
//! waiting connections (C1's first) and talks on them, and each
//! connection ends with EOF seen by the side that did not close.  C1 exits
//! 10, C2 11.

use std::path::Path;

use crate::checks::Checks;
use crate::family::{
    die_with_parent, judge, kids_alive, member_wait_go, reap, root_alive, spawn, wait_path,
    STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{err_str, errno, list_fds, pat, readlink};

const R_STREAM: i32 = 30;
const C1_STREAM: i32 = 31;
const R_DGRAM: i32 = 32;
const C1_DGRAM: i32 = 33;
const R_SEQ: i32 = 34;
const C2_SEQ: i32 = 35;
const LISTEN: i32 = 40;
const CLIENT: i32 = 41;
const ABS_LISTEN: i32 = 42;
const ABS_CLIENT: i32 = 43;
const ABS_ACCEPTED: i32 = 44;

const TO_C1: usize = 1000;
const TO_R: usize = 777;
const DGRAMS: [usize; 3] = [17, 1, 300];
const SEQS: [usize; 2] = [5, 2000];
const ABS_TO_C2: usize = 200;
const ABS_TO_R: usize = 500;
const MORE: usize = 3000;
const PEEK_OFF: i32 = 10;
const RCVBUF: i32 = 100_000;
const POLL_MS: i32 = 10_000;
const GO_POLL_NS: u64 = 2_000_000;

fn data(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (pat(seed, k / 8) >> ((k % 8) * 8)) as u8)
        .collect()
}

fn close(fd: i32) {
    // SAFETY: closes one of our own descriptors.
    unsafe { libc::close(fd) };
}

/// Moves descriptor `fd` to number `to`.
fn place(p: &Proto, fd: i32, to: i32) {
    // SAFETY: dup2 onto a number we own (free or ours to replace).
    if unsafe { libc::dup2(fd, to) } != to {
        p.bail_errno(&format!("dup2 to {to}"));
    }
    close(fd);
}

fn pair(p: &Proto, ty: i32, a: i32, b: i32) {
    let mut fds = [0; 2];
    // SAFETY: valid out-array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } != 0 {
        p.bail_errno("socketpair");
    }
    place(p, fds[0], a);
    place(p, fds[1], b);
}

fn sockaddr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: plain data, all zeroes is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    (a, (2 + name.len()) as libc::socklen_t)
}

fn new_sock(p: &Proto, to: i32) {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        p.bail_errno("socket");
    }
    place(p, fd, to);
}

fn bind_listen(p: &Proto, fd: i32, name: &[u8], backlog: i32) {
    let (a, len) = sockaddr(name);
    // SAFETY: valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        p.bail_errno("bind");
    }
    // SAFETY: plain syscall.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        p.bail_errno("listen");
    }
}

fn connect(fd: i32, name: &[u8]) -> Result<(), String> {
    let (a, len) = sockaddr(name);
    // SAFETY: valid sockaddr of `len` bytes.
    if unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(format!("connect fd {fd}: {}", err_str(errno())));
    }
    Ok(())
}

fn setopt(fd: i32, name: i32, v: i32) -> Result<(), String> {
    // SAFETY: reads one int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!("setsockopt({fd}, {name}): {}", err_str(errno())));
    }
    Ok(())
}

fn getopt(fd: i32, name: i32) -> Result<i32, i32> {
    let mut v = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    Ok(v)
}

fn send(fd: i32, buf: &[u8]) -> Result<(), String> {
    let mut done = 0;
    loop {
        // SAFETY: the source range lies inside `buf`.
        let n = unsafe {
            libc::send(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR || e == libc::EAGAIN {
                wait_fd(fd, libc::POLLOUT);
                continue;
            }
            return Err(format!(
                "send fd {fd} ({} bytes): {}",
                buf.len(),
                err_str(e)
            ));
        }
        done += n as usize;
        if done >= buf.len() {
            return Ok(());
        }
    }
}

fn wait_fd(fd: i32, ev: i16) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, POLL_MS) > 0 }
}

/// One receive (waiting for data): Ok(bytes, SCM_CREDENTIALS) or Err.
fn recv_msg(fd: i32, max: usize) -> Result<(Vec<u8>, Option<libc::ucred>), String> {
    if !wait_fd(fd, libc::POLLIN) {
        return Err(format!(
            "fd {fd}: nothing to read within {} s",
            POLL_MS / 1000
        ));
    }
    let mut buf = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: plain data, all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: every pointer refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(format!("recvmsg fd {fd}: {}", err_str(errno())));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(format!("fd {fd}: message longer than {max} bytes"));
    }
    buf.truncate(n as usize);
    let mut creds = None;
    // SAFETY: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                creds = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(c).cast::<libc::ucred>(),
                ));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((buf, creds))
}

/// Reads exactly `want` (stream) and compares.
fn expect_stream(c: &mut Checks, w: &str, what: &str, fd: i32, want: &[u8]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        match recv_msg(fd, want.len() - got.len()) {
            Ok((b, _)) if b.is_empty() => {
                c.fail(format!(
                    "{w}: {what}: EOF after {} of {} bytes",
                    got.len(),
                    want.len()
                ));
                return;
            }
            Ok((b, _)) => got.extend(b),
            Err(e) => {
                c.fail(format!(
                    "{w}: {what}: {e} after {} of {} bytes",
                    got.len(),
                    want.len()
                ));
                return;
            }
        }
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    c.ensure(first.is_none(), || {
        format!(
            "{w}: {what}: {} bytes read, first difference at byte {first:?}",
            want.len()
        )
    });
}

/// Receives one message and compares it (boundary included).
fn expect_msg(c: &mut Checks, w: &str, what: &str, fd: i32, want: &[u8]) -> Option<libc::ucred> {
    match recv_msg(fd, 64 * 1024) {
        Ok((b, cr)) => {
            c.ensure(b == want, || {
                format!(
                    "{w}: {what}: got a message of {} bytes, expected {} bytes (content equal: {})",
                    b.len(),
                    want.len(),
                    b == want
                )
            });
            cr
        }
        Err(e) => {
            c.fail(format!("{w}: {what}: {e}"));
            None
        }
    }
}

fn expect_eof(c: &mut Checks, w: &str, what: &str, fd: i32) {
    match recv_msg(fd, 16) {
        Ok((b, _)) => c.ensure(b.is_empty(), || {
            format!("{w}: {what}: expected EOF, got {} bytes", b.len())
        }),
        Err(e) => c.fail(format!("{w}: {what}: expected EOF: {e}")),
    }
}

fn fionread(fd: i32) -> Result<i32, i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 {
        Ok(n)
    } else {
        Err(errno())
    }
}

fn flags(fd: i32) -> i32 {
    // SAFETY: fcntl query.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

/// getsockname (peer = false) or getpeername as raw sun_path bytes.
fn name_of(fd: i32, peer: bool) -> Result<Vec<u8>, i32> {
    // SAFETY: plain data, all zeroes is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_un).cast();
    // SAFETY: writes at most `len` bytes into `a`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Err(errno());
    }
    let mut v: Vec<u8> = a.sun_path[..(len as usize).saturating_sub(2)]
        .iter()
        .map(|&c| c as u8)
        .collect();
    if v.first().is_some_and(|&b| b != 0) {
        while v.last() == Some(&0) {
            v.pop();
        }
    }
    Ok(v)
}

/// The checks every process makes on its own sockets before reading.
fn check_socket(c: &mut Checks, w: &str, fd: i32, ty: i32, nonblock: bool) {
    let link = readlink(&format!("/proc/self/fd/{fd}")).unwrap_or_default();
    c.ensure(link.starts_with("socket:["), || {
        format!("{w}: fd {fd} links to {link:?}, expected a socket")
    });
    c.eq(
        &format!("{w}: SO_DOMAIN of fd {fd}"),
        Ok(libc::AF_UNIX),
        getopt(fd, libc::SO_DOMAIN),
    );
    c.eq(
        &format!("{w}: SO_TYPE of fd {fd}"),
        Ok(ty),
        getopt(fd, libc::SO_TYPE),
    );
    let f = flags(fd);
    c.ensure(f >= 0 && (f & libc::O_NONBLOCK != 0) == nonblock, || {
        format!("{w}: fd {fd}: O_NONBLOCK expected {nonblock}, F_GETFL {f:#o}")
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    C1,
    C2,
}

fn listen_path(dir: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    dir.join("listen.sock").as_os_str().as_bytes().to_vec()
}

fn abs_name(root: i32) -> Vec<u8> {
    format!("\0crest-wl-{root}").into_bytes()
}

fn member(who: Who, m: &Proto, root: i32) -> Checks {
    die_with_parent(root);
    let dir = m.dir().to_path_buf();
    let mut c = Checks::new();
    let w = if who == Who::C1 { "C1" } else { "C2" };
    let keep: &[i32] = match who {
        Who::C1 => &[C1_STREAM, C1_DGRAM],
        Who::C2 => &[C2_SEQ],
    };
    for fd in [
        R_STREAM,
        C1_STREAM,
        R_DGRAM,
        C1_DGRAM,
        R_SEQ,
        C2_SEQ,
        LISTEN,
        ABS_LISTEN,
        ABS_ACCEPTED,
    ] {
        if !keep.contains(&fd) {
            close(fd);
        }
    }
    let lpath = listen_path(&dir);
    let setup = |c: &mut Checks, r: Result<(), String>| {
        if let Err(e) = r {
            c.fail(format!("{w}: setup: {e}"));
        }
    };
    match who {
        Who::C1 => {
            new_sock(m, CLIENT);
            setup(&mut c, connect(CLIENT, &lpath));
            setup(&mut c, send(C1_STREAM, &data(2, TO_R)));
            setup(&mut c, setopt(C1_STREAM, libc::SO_PEEK_OFF, 0));
            let mut b = [0u8; PEEK_OFF as usize];
            // SAFETY: peeks into a local buffer.
            let n =
                unsafe { libc::recv(C1_STREAM, b.as_mut_ptr().cast(), b.len(), libc::MSG_PEEK) };
            c.eq("C1: setup: peeked bytes", PEEK_OFF as isize, n);
        }
        Who::C2 => {
            if let Err(e) = wait_path(&dir.join("setup-C1"), STEP_TIMEOUT_NS, root_alive(root)) {
                c.fail(format!("C2: setup: {e}"));
            }
            new_sock(m, CLIENT);
            setup(&mut c, connect(CLIENT, &lpath));
            new_sock(m, ABS_CLIENT);
            setup(&mut c, connect(ABS_CLIENT, &abs_name(root)));
            setup(&mut c, send(ABS_CLIENT, &data(5, ABS_TO_R)));
        }
    }
    let fds = list_fds();
    m.write_aux(&format!("setup-{w}"), "");
    let wait = member_wait_go(m, root, GO_POLL_NS);
    wait.report(&mut c, &format!("{w}: go-wait"));
    c.eq(&format!("{w}: open fds"), &fds[..], &list_fds()[..]);
    c.eq(&format!("{w}: getppid()"), root, unsafe_getppid());
    check_socket(&mut c, w, CLIENT, libc::SOCK_STREAM, false);
    c.eq(
        &format!("{w}: getpeername(client)"),
        Ok(lpath.clone()),
        name_of(CLIENT, true),
    );
    // Nothing is sent before the root has looked at its queues.
    if let Err(e) = wait_path(&dir.join("root-checked"), STEP_TIMEOUT_NS, root_alive(root)) {
        c.fail(format!("{w}: {e}"));
    }
    match who {
        Who::C1 => {
            check_socket(&mut c, w, C1_STREAM, libc::SOCK_STREAM, false);
            check_socket(&mut c, w, C1_DGRAM, libc::SOCK_DGRAM, false);
            c.eq(
                "C1: SO_PEEK_OFF",
                Ok(PEEK_OFF),
                getopt(C1_STREAM, libc::SO_PEEK_OFF),
            );
            c.eq(
                "C1: FIONREAD(stream)",
                Ok(TO_C1 as i32),
                fionread(C1_STREAM),
            );
            c.eq(
                "C1: FIONREAD(dgram) (first message)",
                Ok(DGRAMS[0] as i32),
                fionread(C1_DGRAM),
            );
            let want = data(1, TO_C1);
            let mut b = [0u8; 8];
            // SAFETY: peeks into a local buffer.
            let n =
                unsafe { libc::recv(C1_STREAM, b.as_mut_ptr().cast(), b.len(), libc::MSG_PEEK) };
            c.ensure(
                n == 8 && b[..] == want[PEEK_OFF as usize..PEEK_OFF as usize + 8],
                || format!("C1: MSG_PEEK at SO_PEEK_OFF {PEEK_OFF}: got {n} bytes {b:?}"),
            );
            setup(&mut c, setopt(C1_STREAM, libc::SO_PEEK_OFF, -1));
            expect_stream(&mut c, w, "stream data queued by R", C1_STREAM, &want);
            for (i, &len) in DGRAMS.iter().enumerate() {
                expect_msg(
                    &mut c,
                    w,
                    &format!("datagram {i}"),
                    C1_DGRAM,
                    &data(10 + i as u64, len),
                );
            }
            c.eq(
                "C1: FIONREAD(dgram) after the 3 messages",
                Ok(0),
                fionread(C1_DGRAM),
            );
            setup(&mut c, send(C1_DGRAM, &data(13, 99)));
            setup(&mut c, send(C1_STREAM, &data(20, MORE)));
            expect_stream(
                &mut c,
                w,
                "more stream data from R",
                C1_STREAM,
                &data(21, MORE),
            );
            setup(&mut c, send(CLIENT, b"hello from C1"));
            expect_stream(&mut c, w, "listener's answer", CLIENT, b"welcome C1");
            close(C1_STREAM);
            close(CLIENT);
        }
        Who::C2 => {
            check_socket(&mut c, w, C2_SEQ, libc::SOCK_SEQPACKET, false);
            check_socket(&mut c, w, ABS_CLIENT, libc::SOCK_STREAM, false);
            c.eq(
                "C2: SO_PASSCRED(seqpacket)",
                Ok(1),
                getopt(C2_SEQ, libc::SO_PASSCRED),
            );
            c.eq(
                "C2: getpeername(abstract client)",
                Ok(abs_name(root)),
                name_of(ABS_CLIENT, true),
            );
            c.eq(
                "C2: FIONREAD(abstract client)",
                Ok(ABS_TO_C2 as i32),
                fionread(ABS_CLIENT),
            );
            for (i, &len) in SEQS.iter().enumerate() {
                let cr = expect_msg(
                    &mut c,
                    w,
                    &format!("seqpacket message {i}"),
                    C2_SEQ,
                    &data(30 + i as u64, len),
                );
                c.ensure(cr.is_some_and(|u| u.uid == 0 && u.gid == 0), || {
                    format!(
                        "C2: seqpacket message {i}: credentials {:?}, expected uid 0 gid 0",
                        cr.map(|u| (u.pid, u.uid, u.gid))
                    )
                });
            }
            expect_eof(&mut c, w, "seqpacket after R's SHUT_WR", C2_SEQ);
            setup(&mut c, send(C2_SEQ, &data(33, 444)));
            expect_stream(
                &mut c,
                w,
                "abstract: data queued by R",
                ABS_CLIENT,
                &data(6, ABS_TO_C2),
            );
            setup(&mut c, send(ABS_CLIENT, &data(7, MORE)));
            expect_stream(
                &mut c,
                w,
                "abstract: more data from R",
                ABS_CLIENT,
                &data(8, MORE),
            );
            setup(&mut c, send(CLIENT, b"hello from C2"));
            expect_stream(&mut c, w, "listener's answer", CLIENT, b"welcome C2");
            close(ABS_CLIENT);
            close(CLIENT);
            close(C2_SEQ);
        }
    }
    c
}

fn unsafe_getppid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::getppid() }
}

fn accept(c: &mut Checks, fd: i32) -> Option<i32> {
    if !wait_fd(fd, libc::POLLIN) {
        c.fail(format!(
            "root: accept on fd {fd}: no connection within {} s",
            POLL_MS / 1000
        ));
        return None;
    }
    // SAFETY: accept without an address.
    let r = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        c.fail(format!("root: accept on fd {fd}: {}", err_str(errno())));
        return None;
    }
    Some(r)
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    // SAFETY: getpid has no preconditions.
    let root = unsafe { libc::getpid() };
    let dir = p.dir().to_path_buf();
    let lpath = listen_path(&dir);
    let _ = std::fs::remove_file(dir.join("listen.sock"));
    pair(p, libc::SOCK_STREAM, R_STREAM, C1_STREAM);
    pair(p, libc::SOCK_DGRAM, R_DGRAM, C1_DGRAM);
    pair(p, libc::SOCK_SEQPACKET, R_SEQ, C2_SEQ);
    new_sock(p, LISTEN);
    bind_listen(p, LISTEN, &lpath, 5);
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::set_permissions(
            dir.join("listen.sock"),
            std::fs::Permissions::from_mode(0o640),
        )
        .is_err()
        {
            p.bail("chmod listen.sock");
        }
    }
    new_sock(p, ABS_LISTEN);
    bind_listen(p, ABS_LISTEN, &abs_name(root), 4);
    let fail = |r: Result<(), String>| {
        if let Err(e) = r {
            p.bail(&format!("setup: {e}"));
        }
    };
    fail(setopt(C2_SEQ, libc::SO_PASSCRED, 1));
    fail(setopt(R_STREAM, libc::SO_RCVBUF, RCVBUF));
    fail(send(R_STREAM, &data(1, TO_C1)));
    for (i, &len) in DGRAMS.iter().enumerate() {
        fail(send(R_DGRAM, &data(10 + i as u64, len)));
    }
    for (i, &len) in SEQS.iter().enumerate() {
        fail(send(R_SEQ, &data(30 + i as u64, len)));
    }
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::shutdown(R_SEQ, libc::SHUT_WR) } != 0 {
        p.bail_errno("shutdown");
    }
    // SAFETY: fcntl on our descriptors.
    unsafe {
        libc::fcntl(R_STREAM, libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(LISTEN, libc::F_SETFL, libc::O_NONBLOCK);
    }
    let c1 = spawn(p, 10, move |m| member(Who::C1, m, root));
    let c2 = spawn(p, 11, move |m| member(Who::C2, m, root));
    for fd in [C1_STREAM, C1_DGRAM, C2_SEQ] {
        close(fd);
    }
    let names = [("C1", c1), ("C2", c2)];
    let mut ok = kids_alive(&dir, &names);
    for w in ["C1", "C2"] {
        if let Err(e) = wait_path(&dir.join(format!("setup-{w}")), STEP_TIMEOUT_NS, &mut ok) {
            p.bail(&format!("setup: {e}"));
        }
    }
    // The abstract listener's only connection is C2's.
    let mut pre = Checks::new();
    match accept(&mut pre, ABS_LISTEN) {
        Some(fd) => place(p, fd, ABS_ACCEPTED),
        None => p.bail(&format!("setup: {}", pre.failures().join("; "))),
    }
    fail(send(ABS_ACCEPTED, &data(6, ABS_TO_C2)));
    // C2's 500 bytes reached the accepted socket.
    if !wait_fd(ABS_ACCEPTED, libc::POLLIN) || fionread(ABS_ACCEPTED) != Ok(ABS_TO_R as i32) {
        p.bail("setup: the abstract connection's data did not arrive");
    }
    let rcvbuf = getopt(R_STREAM, libc::SO_RCVBUF);
    p.write_aux("info", &format!("root={root}\nC1={c1}\nC2={c2}\n"));
    let fds = list_fds();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    let w = "root";
    wait.report(&mut c, "root: go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("root: getpid() vs ready", p.ready_pid(), unsafe {
        libc::getpid()
    });
    c.eq("root: open fds", &fds[..], &list_fds()[..]);
    check_socket(&mut c, w, R_STREAM, libc::SOCK_STREAM, true);
    check_socket(&mut c, w, R_DGRAM, libc::SOCK_DGRAM, false);
    check_socket(&mut c, w, R_SEQ, libc::SOCK_SEQPACKET, false);
    check_socket(&mut c, w, LISTEN, libc::SOCK_STREAM, true);
    check_socket(&mut c, w, ABS_LISTEN, libc::SOCK_STREAM, false);
    check_socket(&mut c, w, ABS_ACCEPTED, libc::SOCK_STREAM, false);
    c.eq(
        "root: SO_RCVBUF(stream)",
        rcvbuf,
        getopt(R_STREAM, libc::SO_RCVBUF),
    );
    c.eq(
        "root: SO_PASSCRED(stream)",
        Ok(0),
        getopt(R_STREAM, libc::SO_PASSCRED),
    );
    c.eq(
        "root: SO_ACCEPTCONN(listener)",
        Ok(1),
        getopt(LISTEN, libc::SO_ACCEPTCONN),
    );
    c.eq(
        "root: getsockname(listener)",
        Ok(lpath.clone()),
        name_of(LISTEN, false),
    );
    c.eq(
        "root: getsockname(abstract listener)",
        Ok(abs_name(root)),
        name_of(ABS_LISTEN, false),
    );
    c.eq(
        "root: getsockname(accepted)",
        Ok(abs_name(root)),
        name_of(ABS_ACCEPTED, false),
    );
    c.eq(
        "root: getsockname(stream pair end)",
        Ok(Vec::new()),
        name_of(R_STREAM, false),
    );
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let md = std::fs::symlink_metadata(dir.join("listen.sock"));
        c.ensure(
            md.as_ref().is_ok_and(|m| {
                m.file_type().is_socket() && m.permissions().mode() & 0o7777 == 0o640
            }),
            || format!("root: listen.sock: expected a socket file with mode 0640, got {md:?}"),
        );
    }
    c.eq(
        "root: FIONREAD(stream)",
        Ok(TO_R as i32),
        fionread(R_STREAM),
    );
    c.eq(
        "root: FIONREAD(accepted)",
        Ok(ABS_TO_R as i32),
        fionread(ABS_ACCEPTED),
    );
    p.write_aux("root-checked", "");
    // Nothing waits to be read: EAGAIN on the non-blocking listener
    // would only come with no connection, and two are waiting.
    expect_stream(
        &mut c,
        w,
        "stream data queued by C1",
        R_STREAM,
        &data(2, TO_R),
    );
    expect_stream(
        &mut c,
        w,
        "abstract: data queued by C2",
        ABS_ACCEPTED,
        &data(5, ABS_TO_R),
    );
    // Each child checks its queue before sending more: answer only then.
    expect_stream(
        &mut c,
        w,
        "more stream data from C1",
        R_STREAM,
        &data(20, MORE),
    );
    expect_stream(
        &mut c,
        w,
        "abstract: more data from C2",
        ABS_ACCEPTED,
        &data(7, MORE),
    );
    setup_send(&mut c, send(R_STREAM, &data(21, MORE)));
    setup_send(&mut c, send(ABS_ACCEPTED, &data(8, MORE)));
    expect_msg(&mut c, w, "datagram from C1", R_DGRAM, &data(13, 99));
    expect_msg(
        &mut c,
        w,
        "seqpacket message from C2",
        R_SEQ,
        &data(33, 444),
    );
    // The waiting connections, C1's first.
    for who in ["C1", "C2"] {
        if let Some(fd) = accept(&mut c, LISTEN) {
            let hello = format!("hello from {who}");
            expect_stream(
                &mut c,
                w,
                &format!("connection {who}: greeting"),
                fd,
                hello.as_bytes(),
            );
            setup_send(&mut c, send(fd, format!("welcome {who}").as_bytes()));
            expect_eof(
                &mut c,
                w,
                &format!("connection {who} after the client closed"),
                fd,
            );
            close(fd);
        }
    }
    expect_eof(&mut c, w, "stream after C1 closed", R_STREAM);
    expect_eof(&mut c, w, "abstract after C2 closed", ABS_ACCEPTED);
    expect_eof(&mut c, w, "seqpacket after C2 closed", R_SEQ);
    for (name, k, code) in [("C1", c1, 10), ("C2", c2, 11)] {
        let st = reap(k, STEP_TIMEOUT_NS);
        judge(&mut c, &dir, name, k, st, code);
    }
    let _ = std::fs::remove_file(dir.join("listen.sock"));
    c
}

fn setup_send(c: &mut Checks, r: Result<(), String>) {
    if let Err(e) = r {
        c.fail(format!("root: {e}"));
    }
}
