//! /dev/tty held open across dump and restore, through the `crest`
//! binary: a child in a session of its own whose controlling terminal is
//! the slave of a pty whose master the parent holds opens /dev/tty.  After
//! the restore the child checks, through its /dev/tty descriptor, that it
//! is /dev/tty (its name and device 5:0) on that slave (TIOCGDEV), that
//! TIOCGPGRP answers its own group (the terminal is its controlling
//! terminal again), and that bytes written and read through it cross the
//! pty: the parent reads them from the master and answers.

mod common;
mod netkit;
use common::*;
use netkit::*;

/// A restored pty takes back its number: the tests of this binary make
/// their pairs one at a time (as crates/cli/tests/pty.rs does).
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pty_lock() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|e| e.into_inner())
}

const DEV_TTY: &str = r#"
import fcntl, termios, array
TIOCGDEV = 0x80045432
def gdev(fd):
    b = array.array("I", [0]); fcntl.ioctl(fd, TIOCGDEV, b, True); return b[0]
m, s0 = os.openpty()
name = os.ttyname(s0)
os.close(s0)
# No echo: what the parent writes is read by the child only.
pid = os.fork()
if pid == 0:
    os.close(m)
    os.setsid()
    s = os.open(name, os.O_RDWR)  # the session's controlling terminal
    t = termios.tcgetattr(s); t[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, t)
    tty = os.open("/dev/tty", os.O_RDWR)
    os.dup2(tty, 60); os.close(tty); tty = 60
    srdev = os.fstat(s).st_rdev
    e = []
    if gdev(tty) != srdev: e.append("before: TIOCGDEV %x, slave %x" % (gdev(tty), srdev))
    open(D + "/child-set", "w").close()
    wait_go()
    if os.readlink("/proc/self/fd/%d" % tty) != "/dev/tty": e.append("fd 60 is %s, not /dev/tty" % os.readlink("/proc/self/fd/%d" % tty))
    want = os.makedev(5, 0) if not SABOTAGE else srdev
    if os.fstat(tty).st_rdev != want: e.append("fd 60's device is %x, want %x" % (os.fstat(tty).st_rdev, want))
    if os.ttyname(tty) != "/dev/tty": e.append("ttyname(60) is %s" % os.ttyname(tty))
    try:
        if gdev(tty) != os.fstat(s).st_rdev: e.append("after: /dev/tty names %x, the slave is %x" % (gdev(tty), os.fstat(s).st_rdev))
    except OSError as x: e.append("TIOCGDEV: %s" % x)
    try:
        if os.tcgetpgrp(tty) != os.getpgrp(): e.append("TIOCGPGRP through /dev/tty: %d, own group %d" % (os.tcgetpgrp(tty), os.getpgrp()))
    except OSError as x: e.append("TIOCGPGRP through /dev/tty: %s" % x)
    os.write(tty, b"via-dev-tty\n")
    got = os.read(tty, 100)
    if got != b"answer\n": e.append("read %r through /dev/tty" % got)
    try:
        again = os.open("/dev/tty", os.O_RDWR)
        if gdev(again) != os.fstat(s).st_rdev: e.append("a new /dev/tty names another terminal")
    except OSError as x: e.append("opening /dev/tty again: %s" % x)
    open(D + "/child-result", "w").write("\n".join(e))
    os._exit(0)
while not os.path.exists(D + "/child-set"): time.sleep(0.01)
ready(); wait_go()
e = []
buf = b""
deadline = time.time() + 20
while b"via-dev-tty" not in buf and time.time() < deadline:
    r, _, _ = select.select([m], [], [], 1)
    if r: buf += os.read(m, 100)
if b"via-dev-tty" not in buf: e.append("the master read %r, not the child's line" % buf)
os.write(m, b"answer\n")
_, st = os.waitpid(pid, 0)
if st != 0: e.append("child status %d" % st)
if os.path.exists(D + "/child-result"):
    c = open(D + "/child-result").read()
    if c: e += ["child: " + x for x in c.split("\n")]
else: e.append("the child left no result")
result(e)
"#;

#[test]
fn dev_tty_on_a_pty_of_the_tree() {
    let _ptys = pty_lock();
    start("dev-tty", DEV_TTY).cycle();
}

#[test]
fn dev_tty_survives_leave_running() {
    let _ptys = pty_lock();
    start("dev-tty-leave", DEV_TTY).leave_running_and_inspect(&["/dev/tty, naming pty slave"]);
}

#[test]
fn dev_tty_checker_detects_a_slave_in_its_place() {
    let _ptys = pty_lock();
    let w = start(
        "dev-tty-sabotage",
        &format!("ARGS.append('sabotage'); SABOTAGE = True\n{DEV_TTY}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

/// /dev/tty naming a pty whose master the test holds (outside the tree).
const OUTSIDE: &str = r#"
PTS = [a for a in ARGS if a.startswith("/dev/pts/")][0]
pid = os.fork()
if pid == 0:
    os.setsid()
    s = os.open(PTS, os.O_RDWR)
    t = os.open("/dev/tty", os.O_RDWR); os.dup2(t, 60); os.close(t); os.close(s)
    open(D + "/child-set", "w").close()
    wait_go()
    os._exit(0 if os.ttyname(60) == "/dev/tty" else 1)
while not os.path.exists(D + "/child-set"): time.sleep(0.01)
ready(); wait_go()
_, st = os.waitpid(pid, 0)
result([] if st == 0 else ["child status %d" % st])
"#;

#[test]
fn dev_tty_on_a_pty_whose_master_is_outside_is_refused() {
    let _ptys = pty_lock();
    // SAFETY: plain libc calls on a master this test owns.
    let (m, name) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt");
        assert!(libc::grantpt(m) == 0 && libc::unlockpt(m) == 0, "unlockpt");
        let n = libc::ptsname(m);
        assert!(!n.is_null(), "ptsname");
        (
            m,
            std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned(),
        )
    };
    let w = start(
        "dev-tty-outside",
        &format!("ARGS.append({name:?})\n{OUTSIDE}"),
    );
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains("fd 60") && err.contains(&format!("/dev/tty (naming {name})")),
        "unexpected refusal: {err}"
    );
    assert!(alive(w.pid), "the process must keep running");
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
    // SAFETY: closes the master this test opened.
    unsafe { libc::close(m) };
}
