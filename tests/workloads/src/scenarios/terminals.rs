//! `terminals <A> <B> | alias`: the machine's terminals held open.
//! fd 60 is /dev/console (O_WRONLY), fd 61 /dev/ttyA (O_RDWR |
//! O_NONBLOCK), fd 62 /dev/ttyB (O_RDONLY) whose termios the program set
//! (VMIN 7, VTIME 3, no ECHO, no ICANON); all opened O_NOCTTY.  After go:
//! each one's fdinfo flags, device, real terminal (TIOCGDEV), termios
//! and window size are what they were, and a zero-length write to the
//! console succeeds (nothing is ever written to it).
//!
//! `alias`: the program makes a pty slave its controlling terminal and
//! holds /dev/tty open at fd 63 (crest reopens it on the restored pty);
//! after go only the common checks run.

use std::ffi::CString;

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;

fn open(p: &Proto, path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        p.bail_errno(&format!("open {path}"));
    }
    fd
}

fn place(p: &Proto, fd: i32, at: i32) {
    // SAFETY: moving our own descriptor.
    if unsafe { libc::dup2(fd, at) } != at || unsafe { libc::close(fd) } != 0 {
        p.bail_errno(&format!("placing fd {at}"));
    }
}

/// (flags line of fdinfo, rdev, TIOCGDEV, termios2 fields, winsize).
type State = (String, u64, u32, Vec<u32>, Vec<u8>, [u16; 4]);

fn state(fd: i32) -> Result<State, String> {
    let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| e.to_string())?
        .lines()
        .find(|l| l.starts_with("flags:"))
        .unwrap_or("")
        .to_string();
    // SAFETY: plain ioctls into local, zero-initialised plain structs.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(format!("fstat {fd}"));
        }
        let mut dev: libc::c_uint = 0;
        if libc::ioctl(fd, libc::TIOCGDEV, &mut dev) != 0 {
            return Err(format!("TIOCGDEV {fd}"));
        }
        let mut t: libc::termios2 = std::mem::zeroed();
        if libc::ioctl(fd, libc::TCGETS2, &mut t) != 0 {
            return Err(format!("TCGETS2 {fd}"));
        }
        let mut w: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) != 0 {
            return Err(format!("TIOCGWINSZ {fd}"));
        }
        Ok((
            flags,
            st.st_rdev,
            dev,
            vec![
                t.c_iflag,
                t.c_oflag,
                t.c_cflag,
                t.c_lflag,
                t.c_line as u32,
                t.c_ispeed,
                t.c_ospeed,
            ],
            t.c_cc.to_vec(),
            [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel],
        ))
    }
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    if args.first().is_some_and(|a| a == "alias") {
        return run_alias(p);
    }
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        p.bail("usage: terminals <A> <B> | alias");
    };
    let nc = libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = open(p, "/dev/console", libc::O_WRONLY | nc);
    place(p, fd, 60);
    let fd = open(
        p,
        &format!("/dev/tty{a}"),
        libc::O_RDWR | libc::O_NONBLOCK | nc,
    );
    place(p, fd, 61);
    let fd = open(p, &format!("/dev/tty{b}"), libc::O_RDONLY | nc);
    place(p, fd, 62);
    // SAFETY: termios2 round trip on our own descriptor.
    unsafe {
        let mut t: libc::termios2 = std::mem::zeroed();
        if libc::ioctl(62, libc::TCGETS2, &mut t) != 0 {
            p.bail_errno("TCGETS2");
        }
        t.c_cc[libc::VMIN] = 7;
        t.c_cc[libc::VTIME] = 3;
        t.c_lflag &= !(libc::ECHO | libc::ICANON);
        if libc::ioctl(62, libc::TCSETS2, &t) != 0 {
            p.bail_errno("TCSETS2");
        }
    }
    let before: Vec<Result<State, String>> = (60..63).map(state).collect();
    if let Some(Err(e)) = before.iter().find(|s| s.is_err()) {
        p.bail(&format!("setup: {e}"));
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    for (i, b) in before.into_iter().enumerate() {
        let fd = 60 + i as i32;
        ck.eq(
            &format!("fd {fd}: (fdinfo flags, rdev, TIOCGDEV, termios, c_cc, winsize)"),
            b,
            state(fd),
        );
    }
    // SAFETY: a zero-length write from a valid pointer.
    let w = unsafe { libc::write(60, b"".as_ptr().cast(), 0) };
    ck.eq("zero-length write to /dev/console", 0, w);
    base.verify(p, &mut ck);
    ck
}

fn run_alias(p: &Proto) -> Checks {
    // A session of its own (under `crest run` it is one already).
    // SAFETY: plain syscall; EPERM when already a session leader.
    unsafe { libc::setsid() };
    let m = open(p, "/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY);
    // SAFETY: plain calls on our master.
    let name = unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            p.bail_errno("unlockpt");
        }
        let n = libc::ptsname(m);
        if n.is_null() {
            p.bail_errno("ptsname");
        }
        std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned()
    };
    place(p, m, 64);
    // A session leader with no terminal: this open makes it the
    // controlling one.
    let s = open(p, &name, libc::O_RDWR);
    place(p, s, 65);
    let t = open(p, "/dev/tty", libc::O_RDWR);
    place(p, t, 63);
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();
    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    base.verify(p, &mut ck);
    ck
}
