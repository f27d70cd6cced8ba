//! `pty`: a pseudo-terminal pair inside the tree, as under `script`.
//!
//! The root opens a pty pair, keeps the master at fd 30 in packet mode,
//! and sets the pair to raw mode with VMIN 3, VTIME 7, 9600 baud and a
//! 37x123 (801x602 pixel) window.  It forks C, which calls setsid, makes
//! the slave its controlling terminal (TIOCSCTTY), puts it on its
//! stdin/stdout/stderr, sets TIOCEXCL, and forks G, which leads its own
//! process group; C makes G's group the foreground group (tcsetpgrp).
//!
//! After go, C and G each check: stdin, stdout and stderr are one tty;
//! ttyname(0) opens that tty; /dev/tty opens it (the controlling terminal
//! works); termios, window size and exclusive mode are as set; getsid,
//! getpgid, tcgetpgrp and TIOCGSID.  The root checks its master: the pty's
//! number now, that every stdio descriptor of C and G is that pty's slave,
//! packet mode, lock, termios, window size, and (through the master) the
//! session and foreground group.  Then data flows: G writes on the slave
//! and the root reads it from the master (packet mode: each read starts
//! with a TIOCPKT_DATA byte), the root writes on the master and G reads it
//! from its stdin.  G exits 20, C reaps it and exits 10.

use std::ffi::CStr;

use crate::checks::Checks;
use crate::family::{
    die_with_parent, judge, kids_alive, member_wait_go, reap, root_alive, spawn, wait_path, Ids,
    POLL_NS, STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{err_str, errno, fstat, list_fds, readlink, sleep_ns};

const MASTER: i32 = 30;
const WINSIZE: [u16; 4] = [37, 123, 801, 602];
const UP: &[u8] = b"from the slave side: G says hello \x01\x7f\xff";
/// With `unread`: written by G before ready, left unread on the master
/// (and `PENDING_IN` the other way).
const PENDING: &[u8] = b"typed ahead";
const DOWN: &[u8] = b"from the master side: the root answers \x03\x04\x1a";
/// With `unread`: written by the root on the master before ready, left
/// unread on the slave (non-canonical: plain bytes).
const PENDING_IN: &[u8] = b"typed on the master \x7f\x15";
const POLL_MS: i32 = 10_000;
const GO_POLL_NS: u64 = 2_000_000;

/// termios as compared: flags, line, c_cc, speeds.
type Term = (u32, u32, u32, u32, u8, Vec<u8>, u32, u32);

fn term(fd: i32) -> Result<Term, String> {
    // SAFETY: all-zero is a valid termios, which tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(format!("tcgetattr(fd {fd}): {}", err_str(errno())));
    }
    Ok((
        t.c_iflag,
        t.c_oflag,
        t.c_cflag,
        t.c_lflag,
        t.c_line,
        t.c_cc.to_vec(),
        t.c_ispeed,
        t.c_ospeed,
    ))
}

fn winsize(fd: i32) -> Result<[u16; 4], String> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills one winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } != 0 {
        return Err(format!("TIOCGWINSZ(fd {fd}): {}", err_str(errno())));
    }
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

/// An ioctl reading one int: Ok(value) or Err(errno).
fn get_int(fd: i32, req: libc::Ioctl) -> Result<i32, i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int.
    if unsafe { libc::ioctl(fd, req, &mut v) } == 0 {
        Ok(v)
    } else {
        Err(errno())
    }
}

fn rdev(fd: i32) -> Result<u64, i32> {
    fstat(fd).map(|s| s.st_rdev)
}

/// The device number of `path`, opened with `flags`.
fn open_rdev(path: &CStr, flags: i32) -> Result<u64, String> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {path:?}: {}", err_str(errno())));
    }
    let r = rdev(fd).map_err(|e| format!("fstat {path:?}: {}", err_str(e)));
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    r
}

fn ttyname0() -> Result<std::ffi::CString, String> {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: the buffer is valid for its length.
    let r = unsafe { libc::ttyname_r(0, buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return Err(format!("ttyname_r(0): {}", err_str(r)));
    }
    // SAFETY: ttyname_r wrote a NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned())
}

/// What C and G check about their terminal.
fn check_tty(c: &mut Checks, w: &str, want: &Term, sid: i32, fg: i32) {
    let r0 = rdev(0);
    for fd in 0..3 {
        // SAFETY: isatty has no preconditions.
        c.ensure(unsafe { libc::isatty(fd) } == 1, || {
            format!("{w}: isatty({fd}) is false")
        });
        c.eq(&format!("{w}: st_rdev of fd {fd} vs fd 0"), r0, rdev(fd));
    }
    let Ok(r0) = r0 else {
        c.fail(format!("{w}: fstat(0) failed"));
        return;
    };
    match ttyname0().and_then(|n| open_rdev(&n, libc::O_RDWR | libc::O_NOCTTY)) {
        Ok(r) => c.eq(&format!("{w}: ttyname(0) opens the tty of fd 0"), r0, r),
        Err(e) => c.fail(format!("{w}: {e}")),
    }
    // SAFETY: valid C string.
    let t = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if t < 0 {
        c.fail(format!(
            "{w}: controlling terminal: open /dev/tty: {}",
            err_str(errno())
        ));
    } else {
        // TIOCGDEV: the device behind /dev/tty.
        let dev = get_int(t, libc::TIOCGDEV).map(|d| d as u32 as u64);
        c.eq(
            &format!("{w}: TIOCGDEV(/dev/tty) vs st_rdev of fd 0"),
            Ok(r0),
            dev,
        );
        // SAFETY: our own descriptor.
        unsafe { libc::close(t) };
    }
    c.eq(&format!("{w}: termios of fd 0"), Ok(want.clone()), term(0));
    c.eq(
        &format!("{w}: window size of fd 0"),
        Ok(WINSIZE),
        winsize(0),
    );
    c.eq(
        &format!("{w}: TIOCGEXCL(0)"),
        Ok(1),
        get_int(0, libc::TIOCGEXCL),
    );
    // SAFETY: plain getters.
    let (s, pg) = unsafe { (libc::getsid(0), libc::tcgetpgrp(0)) };
    c.eq(&format!("{w}: getsid(0)"), sid, s);
    c.eq(&format!("{w}: tcgetpgrp(0)"), fg, pg);
    c.eq(
        &format!("{w}: TIOCGSID(0)"),
        Ok(sid),
        get_int(0, libc::TIOCGSID),
    );
}

fn write_all(fd: i32, data: &[u8]) -> Result<(), String> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the source range lies inside `data`.
        let r = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(format!("write fd {fd}: {}", err_str(errno())));
        }
        done += r as usize;
    }
    Ok(())
}

/// Reads `len` bytes of data from `fd`; with `packet`, each read starts
/// with a packet-mode status byte (0: data follows).
fn read_len(fd: i32, len: usize, packet: bool) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < len {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } == 0 {
            return Err(format!(
                "fd {fd}: no data within {} s after {} of {len} bytes",
                POLL_MS / 1000,
                got.len()
            ));
        }
        // SAFETY: reads into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR || e == libc::EAGAIN {
                continue;
            }
            return Err(format!("read fd {fd}: {}", err_str(e)));
        }
        if n == 0 {
            return Err(format!("fd {fd}: EOF after {} bytes", got.len()));
        }
        let b = &buf[..n as usize];
        match (packet, b[0]) {
            (false, _) => got.extend_from_slice(b),
            (true, 0) => got.extend_from_slice(&b[1..]),
            (true, _) => {} // a flow-control status packet
        }
    }
    Ok(got)
}

fn grandchild(m: &Proto, root: i32, parent: i32, want: Term, unread: bool) -> Checks {
    die_with_parent(parent);
    // SAFETY: plain calls.
    let me = unsafe {
        libc::setpgid(0, 0);
        libc::getpid()
    };
    let mut waited = 0;
    // SAFETY: plain getter.
    while unsafe { libc::tcgetpgrp(0) } != me {
        if waited > STEP_TIMEOUT_NS {
            m.bail("setup: G's group never became the foreground group");
        }
        sleep_ns(POLL_NS);
        waited += POLL_NS;
    }
    if unread {
        if let Err(e) = write_all(1, PENDING) {
            m.bail(&format!("setup: {e}"));
        }
    }
    let ids = Ids::now();
    let fds = list_fds();
    m.write_aux("setup-G", "");
    let wait = member_wait_go(m, root, GO_POLL_NS);
    let mut c = Checks::new();
    wait.report(&mut c, "G: go-wait");
    Ids::now().check(&mut c, &ids);
    c.eq("G: open fds", fds, list_fds());
    check_tty(&mut c, "G", &want, parent, me);
    if let Err(e) = write_all(1, UP) {
        c.fail(format!("G: writing on the slave: {e}"));
    }
    let mut down = if unread {
        PENDING_IN.to_vec()
    } else {
        Vec::new()
    };
    down.extend_from_slice(DOWN);
    match read_len(0, down.len(), false) {
        Ok(got) => c.eq("G: bytes read from the slave", &down[..], &got[..]),
        Err(e) => c.fail(format!("G: reading the slave: {e}")),
    }
    c
}

fn child(m: &Proto, root: i32, slave: &CStr, want: Term, unread: bool) -> Checks {
    die_with_parent(root);
    // SAFETY: plain calls on our own descriptors and a valid path.
    unsafe {
        libc::close(MASTER);
        if libc::setsid() < 0 {
            m.bail_errno("setsid");
        }
        let s = libc::open(slave.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if s < 0 {
            m.bail_errno("opening the slave");
        }
        if libc::ioctl(s, libc::TIOCSCTTY, 0) != 0 {
            m.bail_errno("TIOCSCTTY");
        }
        for fd in 0..3 {
            if libc::dup2(s, fd) != fd {
                m.bail_errno("dup2 of the slave");
            }
        }
        libc::close(s);
        if libc::ioctl(0, libc::TIOCEXCL) != 0 {
            m.bail_errno("TIOCEXCL");
        }
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let want_g = want.clone();
    let g = spawn(m, 20, move |m| grandchild(m, root, me, want_g, unread));
    // SAFETY: plain calls; both sides set G's group (whoever runs first).
    unsafe {
        libc::setpgid(g, g);
        if libc::tcsetpgrp(0, g) != 0 {
            m.bail_errno("tcsetpgrp");
        }
    }
    let dir = m.dir().to_path_buf();
    if let Err(e) = wait_path(&dir.join("setup-G"), STEP_TIMEOUT_NS, root_alive(root)) {
        m.bail(&format!("setup: {e}"));
    }
    let ids = Ids::now();
    let fds = list_fds();
    m.write_aux("setup-C", "");
    let wait = member_wait_go(m, root, GO_POLL_NS);
    let mut c = Checks::new();
    wait.report(&mut c, "C: go-wait");
    Ids::now().check(&mut c, &ids);
    c.eq("C: open fds", fds, list_fds());
    check_tty(&mut c, "C", &want, me, g);
    let st = reap(g, STEP_TIMEOUT_NS);
    judge(&mut c, &dir, "G", g, st, 20);
    c
}

/// Sets up the pair; returns the slave's path and its termios.
/// Owner, group and permissions given to the slave node at setup.
const SLAVE_OWNER: (u32, u32, u32) = (4242, 5, 0o620);

/// The number of the pty made at setup.
static PTY_NUMBER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn setup_pty(p: &Proto) -> (std::ffi::CString, Term) {
    // SAFETY: plain calls on our own descriptors; buffers valid.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if m < 0 || libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            p.bail_errno("posix_openpt/grantpt/unlockpt");
        }
        let mut buf = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()) != 0 {
            p.bail_errno("ptsname_r");
        }
        let name = CStr::from_ptr(buf.as_ptr()).to_owned();
        if let Some(n) = name.to_str().ok().and_then(|s| s.strip_prefix("/dev/pts/")) {
            PTY_NUMBER.store(
                n.parse().unwrap_or(-1),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if libc::dup2(m, MASTER) != MASTER {
            p.bail_errno("dup2 of the master");
        }
        libc::close(m);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if s < 0 {
            p.bail_errno("opening the slave");
        }
        // The slave node's owner and mode, as a terminal emulator sets them.
        if libc::fchown(s, SLAVE_OWNER.0, SLAVE_OWNER.1) != 0 || libc::fchmod(s, SLAVE_OWNER.2) != 0
        {
            p.bail_errno("chown/chmod of the slave");
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(s, &mut t) != 0 {
            p.bail_errno("tcgetattr");
        }
        libc::cfmakeraw(&mut t);
        t.c_cc[libc::VMIN] = 3;
        t.c_cc[libc::VTIME] = 7;
        t.c_cc[libc::VINTR] = 0x07;
        t.c_cc[libc::VKILL] = 0x0b;
        if libc::cfsetispeed(&mut t, libc::B9600) != 0
            || libc::cfsetospeed(&mut t, libc::B9600) != 0
            || libc::tcsetattr(s, libc::TCSANOW, &t) != 0
        {
            p.bail_errno("tcsetattr");
        }
        let w = libc::winsize {
            ws_row: WINSIZE[0],
            ws_col: WINSIZE[1],
            ws_xpixel: WINSIZE[2],
            ws_ypixel: WINSIZE[3],
        };
        if libc::ioctl(s, libc::TIOCSWINSZ, &w) != 0 {
            p.bail_errno("TIOCSWINSZ");
        }
        let want = term(s).unwrap_or_else(|e| p.bail(&e));
        libc::close(s);
        let one: libc::c_int = 1;
        if libc::ioctl(MASTER, libc::TIOCPKT, &one) != 0 {
            p.bail_errno("TIOCPKT");
        }
        (name, want)
    }
}

/// The root's checks of its master and of who holds the slave.
fn check_master(c: &mut Checks, want: &Term, members: &[(&str, i32)], sid: i32, fg: i32) {
    // SAFETY: fcntl query.
    let fl = unsafe { libc::fcntl(MASTER, libc::F_GETFL) };
    c.eq(
        "root: F_GETFL(master) & (O_ACCMODE|O_NONBLOCK)",
        libc::O_RDWR,
        fl & (libc::O_ACCMODE | libc::O_NONBLOCK),
    );
    let n = get_int(MASTER, libc::TIOCGPTN);
    c.ensure(n.is_ok(), || format!("root: TIOCGPTN(master): {n:?}"));
    c.eq(
        "root: the pty's number (/dev/pts/N) as before",
        Ok(PTY_NUMBER.load(std::sync::atomic::Ordering::Relaxed)),
        n,
    );
    if let Ok(n) = n {
        let want_link = format!("/dev/pts/{n}");
        let owner = std::fs::metadata(&want_link).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.uid(), m.gid(), m.mode() & 0o7777)
        });
        c.eq(
            "root: owner, group and mode of the slave node",
            Some(SLAVE_OWNER),
            owner,
        );
        for &(w, pid) in members {
            for fd in 0..3 {
                c.eq(
                    &format!("root: /proc/{pid}/fd/{fd} of {w} (the slave of the root's master)"),
                    Some(want_link.clone()),
                    readlink(&format!("/proc/{pid}/fd/{fd}")),
                );
            }
        }
    }
    c.eq(
        "root: TIOCGPKT(master)",
        Ok(1),
        get_int(MASTER, libc::TIOCGPKT),
    );
    c.eq(
        "root: TIOCGPTLCK(master)",
        Ok(0),
        get_int(MASTER, libc::TIOCGPTLCK),
    );
    c.eq(
        "root: termios through the master",
        Ok(want.clone()),
        term(MASTER),
    );
    c.eq(
        "root: window size through the master",
        Ok(WINSIZE),
        winsize(MASTER),
    );
    c.eq(
        "root: TIOCGSID(master)",
        Ok(sid),
        get_int(MASTER, libc::TIOCGSID),
    );
    c.eq(
        "root: TIOCGPGRP(master)",
        Ok(fg),
        get_int(MASTER, libc::TIOCGPGRP),
    );
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let unread = match args.first().map(String::as_str) {
        None => false,
        Some("unread") => true,
        Some(a) => p.bail(&format!(
            "pty: unknown argument {a:?} (expected nothing or unread)"
        )),
    };
    let (slave, want) = setup_pty(p);
    // SAFETY: getpid has no preconditions.
    let root = unsafe { libc::getpid() };
    let want_c = want.clone();
    let cpid = spawn(p, 10, move |m| child(m, root, &slave, want_c, unread));
    let dir = p.dir().to_path_buf();
    let kids = [("C", cpid)];
    if let Err(e) = wait_path(
        &dir.join("setup-C"),
        STEP_TIMEOUT_NS,
        kids_alive(&dir, &kids),
    ) {
        p.bail(&format!("setup: {e}"));
    }
    // G leads the foreground group of C's session.
    let Ok(g) = get_int(MASTER, libc::TIOCGPGRP) else {
        p.bail("setup: no foreground group on the pty");
    };
    p.write_aux("info", &format!("root={root}\nC={cpid}\nG={g}\n"));
    let members = [("C", cpid), ("G", g)];
    if unread {
        if let Err(e) = write_all(MASTER, PENDING_IN) {
            p.bail(&format!("setup: writing on the master: {e}"));
        }
        // Until it is in the slave's buffer (seen through a slave
        // description of our own, closed again).
        // SAFETY: TIOCGPTPEER returns a new descriptor or -1.
        let peer = unsafe {
            libc::ioctl(
                MASTER,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if peer < 0 {
            p.bail_errno("setup: TIOCGPTPEER");
        }
        let mut slept = 0;
        while get_int(peer, libc::FIONREAD) != Ok(PENDING_IN.len() as i32)
            && slept < STEP_TIMEOUT_NS
        {
            sleep_ns(POLL_NS);
            slept += POLL_NS;
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(peer) };
    }
    let fds = list_fds();
    let mut pre = Checks::new();
    check_master(&mut pre, &want, &members, cpid, g);
    // The slave's writes reach the master's buffer asynchronously.
    let pending = if unread { PENDING.len() as i32 } else { 0 };
    let mut slept = 0;
    while get_int(MASTER, libc::FIONREAD) != Ok(pending) && slept < STEP_TIMEOUT_NS {
        sleep_ns(POLL_NS);
        slept += POLL_NS;
    }
    pre.eq(
        "root: FIONREAD(master)",
        Ok(pending),
        get_int(MASTER, libc::FIONREAD),
    );
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "root: go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("root: getpid() vs ready", p.ready_pid(), unsafe {
        libc::getpid()
    });
    c.eq("root: open fds", fds, list_fds());
    check_master(&mut c, &want, &members, cpid, g);
    let mut up = if unread { PENDING.to_vec() } else { Vec::new() };
    up.extend_from_slice(UP);
    match read_len(MASTER, up.len(), true) {
        Ok(got) => c.eq("root: bytes read from the master", &up[..], &got[..]),
        Err(e) => c.fail(format!("root: reading the master: {e}")),
    }
    if let Err(e) = write_all(MASTER, DOWN) {
        c.fail(format!("root: writing on the master: {e}"));
    }
    let st = reap(cpid, 2 * STEP_TIMEOUT_NS);
    judge(&mut c, &dir, "C", cpid, st, 10);
    c
}
