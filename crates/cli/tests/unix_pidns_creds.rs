//! SO_PEERCRED and queued SCM_CREDENTIALS of a tree in a PID namespace of
//! its own, through the `crest` binary: dumped from inside one (`unshare
//! --pid --fork`, the workload is PID 1) and restored into a new one
//! (`restore --new-pidns`).  The workload records what its sockets say
//! before the dump — a socketpair and a connection made by a child (uid
//! 65534) that has exited since, its own listener and the end it
//! accepted, a datagram pair with its own credentials queued — and checks
//! after the restore that they say the same, as PIDs of its namespace
//! (see crates/crest/src/net/unix/creds.rs); the sabotaged run replaces
//! the accepted end by one crest connected.  The same two PID namespaces
//! deep.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::time::Duration;

const CREDS: &str = r#"
import struct
SOL = socket.SOL_SOCKET
def peercred(s): return struct.unpack("3i", s.getsockopt(SOL, socket.SO_PEERCRED, 12))
e = []
me = os.getpid()
r, w = os.pipe()
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(D + "/l.sock"); l.listen(4)
os.chmod(D, 0o777); os.chmod(D + "/l.sock", 0o777)
carrier, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
kid = os.fork()
if kid == 0:
    os.setegid(65534); os.seteuid(65534)
    p1, p2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(D + "/l.sock")
    socket.send_fds(inner, [b"k"], [p1.fileno(), p2.fileno(), c.fileno()])
    if "kid-stays" in ARGS: os.close(w); os.read(r, 1)
    os._exit(0)
if "kid-stays" not in ARGS: os.waitpid(kid, 0)
data, fds, _, _ = socket.recv_fds(carrier, 10, 3)
p1, p2, c = (socket.socket(fileno=f) for f in fds)
a, _ = l.accept()
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
y.setsockopt(SOL, socket.SO_PASSCRED, 1)
x.send(b"from me")
before = [peercred(p1), peercred(p2), peercred(c), peercred(a), peercred(x), peercred(l)]
want_before = [(kid, 65534, 65534), (kid, 65534, 65534), (me, 0, 0), (kid, 65534, 65534), (me, 0, 0), (me, 0, 0)]
if before != want_before: e.append("before the dump: %r != %r" % (before, want_before))
publish("pids", "%d %d" % (me, kid))
ready(); wait_go()
if SABOTAGE: a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); a.connect(D + "/l.sock")
if os.getpid() != me: e.append("pid %d after the restore, was %d" % (os.getpid(), me))
after = [peercred(p1), peercred(p2), peercred(c), peercred(a), peercred(x), peercred(l)]
if after != before: e.append("SO_PEERCRED after the restore: %r != %r" % (after, before))
y.settimeout(5)
msg, anc, _, _ = y.recvmsg(100, 256)
cr = [struct.unpack("3i", d[:12]) for (lv, t, d) in anc if lv == SOL and t == socket.SCM_CREDENTIALS]
if (msg, cr) != (b"from me", [(me, 0, 0)]): e.append("queued credentials: %r" % ((msg, cr),))
p1.send(b"q"); p2.settimeout(5)
if p2.recv(1) != b"q": e.append("the pair does not pass data")
if "kid-stays" in ARGS:
    os.close(w); os.waitpid(kid, 0)
result(e)
"#;

/// `crest run -- unshare --pid --fork --mount-proc python3 -c CREDS DIR`
/// (`levels` 1): the workload is PID 1 of its namespace, the wrapper's
/// only child.  Deeper, each level's init is an `unshare --pid --fork`
/// waiting for the next (the inner ones share the top one's mount
/// namespace and /proc); the tree dumped is the wrapper's child, the init
/// of the top one.
fn start_in_pidns_levels(tag: &str, sabotage: bool, args: &str, levels: usize) -> Workload {
    init();
    let dir = temp_dir(tag);
    let body = format!(
        "{}{args}{CREDS}",
        if sabotage { "SABOTAGE = True\n" } else { "" }
    );
    let out = std::process::Command::new(crest_bin())
        .arg("run")
        .arg("--log")
        .arg(dir.join("log"))
        .args(["--", "unshare", "--pid", "--fork", "--mount-proc"])
        .args((1..levels).flat_map(|_| ["unshare", "--pid", "--fork"]))
        .args(["python3", "-c", &script(&body)])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("crest run");
    assert!(out.status.success(), "crest run failed: {}", stderr(&out));
    let wrapper: i32 = stdout(&out).trim().parse().expect("crest run prints a pid");
    let ready = dir.join("ready");
    let t = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the workload did not get ready; log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let kids = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
        .unwrap_or_default();
    let pid = kids
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .expect("the wrapper has a child");
    Workload::adopt(pid, dir, tag)
}

/// Dumps a workload of `start_in_pidns` (the wrapper reaps it) and
/// restores it, reporting what restore printed on stderr.
fn dump_and_restore(w: &mut Workload) -> String {
    let o = w.dump(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = std::time::Instant::now();
    while alive(w.pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    w.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    err
}

/// The workload `levels` PID namespaces deep, dumped and restored
/// `rounds` times: each restore makes every call as its process (no
/// warning), and the workload finds its credentials as they were.
fn exact_after(tag: &str, args: &str, levels: usize, rounds: usize) {
    let mut w = start_in_pidns_levels(tag, false, args, levels);
    for _ in 0..rounds {
        let err = dump_and_restore(&mut w);
        assert!(!err.contains("warning"), "{err}");
    }
    w.go();
    w.expect_pass();
}

/// The sabotaged workload (an accepted end crest connected) fails its
/// own check after a restore.
fn sabotaged(tag: &str, levels: usize) {
    let mut w = start_in_pidns_levels(tag, true, "", levels);
    dump_and_restore(&mut w);
    w.go();
    expect_fail(w);
}

const KID_STAYS: &str = "ARGS.append('kid-stays')\n";

#[test]
fn peer_credentials_in_an_unshared_pid_namespace() {
    exact_after("unix-creds-unshared", "", 1, 1);
}

/// The child that made the sockets still runs (its PID is found in the
/// image's process table).
#[test]
fn peer_credentials_in_an_unshared_pid_namespace_of_a_live_child() {
    exact_after("unix-creds-unshared-live", KID_STAYS, 1, 1);
}

#[test]
fn peer_credentials_in_an_unshared_pid_namespace_checker_detects_crests_connection() {
    sabotaged("unix-creds-unshared-sabotage", 1);
}

/// Two PID namespaces deep: the sockets are made by PID 1 and 2 of the
/// inner one, whose init is created, with the outer init above it,
/// before the sockets are built.
#[test]
fn peer_credentials_in_nested_pid_namespaces() {
    exact_after("unix-creds-nested", "", 2, 2);
}

/// The same, the child that made the sockets still running: a process
/// of the inner namespace the calls are made as by a helper there.
#[test]
fn peer_credentials_in_nested_pid_namespaces_of_a_live_child() {
    exact_after("unix-creds-nested-live", KID_STAYS, 2, 1);
}

#[test]
fn peer_credentials_in_nested_pid_namespaces_checker_detects_crests_connection() {
    sabotaged("unix-creds-nested-sabotage", 2);
}

/// Restored into a new PID namespace: every task keeps its PID there, so
/// SO_PEERCRED says what it said before.
#[test]
fn peer_credentials_with_restore_new_pidns() {
    let mut w = start("unix-creds-new-pidns", CREDS);
    w.dump_ok();
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d", "--new-pidns"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    w.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    w.go();
    w.expect_pass();
}

#[test]
fn peer_credentials_with_restore_new_pidns_checker_detects_crests_connection() {
    let mut w = start(
        "unix-creds-new-pidns-sabotage",
        &format!("SABOTAGE = True\n{CREDS}"),
    );
    w.dump_ok();
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d", "--new-pidns"]);
    assert!(o.status.success(), "{}", stderr(&o));
    w.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    w.go();
    expect_fail(w);
}

/// Waits for the maps the test writes, then again as the namespace's
/// root (it started before uid 0 was mapped).
const MAPPED: &str = r#"
import os, sys, time
while not open("/proc/self/uid_map").read().strip(): time.sleep(0.01)
if "MAPPED" not in os.environ:
    os.environ["MAPPED"] = "1"
    os.execv(sys.executable, [sys.executable] + sys.argv)
"#;

/// The same workload as PID 1 of a PID namespace owned by a user
/// namespace that root made as host uid 100000, mapping 0..65536 onto
/// 100000..: the credentials' ids are read inside (0, and 65534 for the
/// child) and held by the kernel in host terms.
fn start_in_userns(tag: &str, sabotage: bool) -> Workload {
    init();
    let dir = temp_dir(tag);
    // The container's root owns it (and may chmod it).
    std::os::unix::fs::chown(&dir, Some(100000), Some(100000)).unwrap();
    let body = format!(
        "{MAPPED}{}",
        script(&format!(
            "{}{CREDS}",
            if sabotage { "SABOTAGE = True\n" } else { "" }
        ))
    );
    let file = dir.join("w.py");
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new(crest_bin())
        .arg("run")
        .arg("--log")
        .arg(dir.join("log"))
        .args(["--", "setpriv", "--reuid=100000", "--regid=100000"])
        .args(["--clear-groups", "unshare", "--user", "--pid", "--fork"])
        .args(["--mount-proc", "python3"])
        .arg(&file)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("crest run");
    assert!(out.status.success(), "crest run failed: {}", stderr(&out));
    let wrapper: i32 = stdout(&out).trim().parse().expect("crest run prints a pid");
    let t = std::time::Instant::now();
    let pid: i32 = loop {
        let kids = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            break k.parse().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no container");
        std::thread::sleep(Duration::from_millis(2));
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 100000 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 100000 65536\n").unwrap();
    let ready = dir.join("ready");
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the workload did not get ready; log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Workload::adopt(pid, dir, tag)
}

#[test]
fn peer_credentials_in_a_user_namespace() {
    let mut w = start_in_userns("unix-creds-userns", false);
    let err = dump_and_restore(&mut w);
    assert!(!err.contains("warning"), "{err}");
    let err = dump_and_restore(&mut w);
    assert!(!err.contains("warning"), "{err}");
    w.go();
    w.expect_pass();
}

#[test]
fn peer_credentials_in_a_user_namespace_checker_detects_crests_connection() {
    let mut w = start_in_userns("unix-creds-userns-sabotage", true);
    dump_and_restore(&mut w);
    w.go();
    expect_fail(w);
}
