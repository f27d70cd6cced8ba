//! AF_UNIX state beyond plain queues, through the `crest` binary: files
//! in flight in SCM_RIGHTS messages (held by no process, sockets inside
//! sockets, a socket in its own queue), credentials (SO_PASSCRED, queued
//! SCM_CREDENTIALS, SO_PEERCRED), sockets bound to relative paths, and
//! datagram sockets whose peer has closed.  Each workload is a Python
//! script that checks its own sockets after the restore; a sabotaged run
//! shows each checker sees a wrong state.

mod common;
mod netkit;
use common::*;
use netkit::*;

// ------------------------------------------------------- SCM_RIGHTS

const RIGHTS: &str = r#"
import array, stat, fcntl
def send_fds(s, data, fds): return socket.send_fds(s, [data], fds)
def recv_fds(s, n, m=16): return socket.recv_fds(s, n, m)
def memfd(name, content):
    m = os.memfd_create(name); os.write(m, content); os.lseek(m, 0, 0); return m
e = []
# A stream pair: plain bytes, then a message carrying a pipe's read end
# (its write end closed: the pipe is only in flight, with bytes in it),
# more plain bytes, a message with a regular file (at offset 3) and a
# memfd, then a socket inside the socket: x, whose own queue holds a
# memfd, its peer y held here.
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.send(b"plain-one")
pr, pw = os.pipe(); os.write(pw, b"bytes in the pipe"); os.close(pw)
send_fds(a, b"with-a-pipe", [pr]); os.close(pr)
a.send(b"plain-two")
open(D + "/reg", "w").write("0123456789")
rf = os.open(D + "/reg", os.O_RDWR); os.lseek(rf, 3, 0)
mf = memfd("crest-inflight", b"memfd content")
send_fds(a, b"file-and-memfd", [rf, mf]); os.close(rf); os.close(mf)
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
m2 = memfd("crest-inner", b"inner memfd")
send_fds(y, b"inner", [m2]); os.close(m2)
send_fds(a, b"a-socket", [x.fileno()]); x.close()
a.send(b"tail")
# A seqpacket pair carrying a connected pair p, q, both only in flight,
# p with a message from q queued.
e1, f1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
p, q = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
q.send(b"deep")
send_fds(e1, b"seq-pair", [p.fileno(), q.fileno()]); p.close(); q.close()
e1.send(b"seq-plain")
# A datagram pair: a file, then a plain datagram.
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
df = os.open(D + "/reg", os.O_RDONLY | os.O_APPEND)
send_fds(c, b"dgram-file", [df]); os.close(df)
c.send(b"dgram-plain")
# A socket in its own queue.
g, h = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
send_fds(h, b"itself", [g.fileno()])
ready(); wait_go()
if SABOTAGE: b.recv(3)
for s_ in (b, f1, d, g, y): s_.settimeout(5)
def want(what, got, exp):
    if got != exp: e.append("%s: %r != %r" % (what, got, exp))
def checks():
    def kind(fd): return stat.S_IFMT(os.fstat(fd).st_mode)
    # Exact boundaries: the plain bytes come without rights.
    data, fds, _, _ = recv_fds(b, len(b"plain-one"))
    want("first plain chunk", (data, fds), (b"plain-one", []))
    data, fds, _, _ = recv_fds(b, 100)
    want("pipe message", (data, len(fds)), (b"with-a-pipe", 1))
    if fds:
        want("pipe kind", kind(fds[0]), stat.S_IFIFO)
        want("pipe content", os.read(fds[0], 100), b"bytes in the pipe")
        want("pipe EOF (no writer anywhere)", os.read(fds[0], 100), b"")
    data, fds, _, _ = recv_fds(b, len(b"plain-two"))
    want("second plain chunk", (data, fds), (b"plain-two", []))
    data, fds, _, _ = recv_fds(b, 100)
    want("file+memfd message", (data, len(fds)), (b"file-and-memfd", 2))
    if len(fds) == 2:
        want("file offset", os.lseek(fds[0], 0, 1), 3)
        want("file access mode", fcntl.fcntl(fds[0], fcntl.F_GETFL) & 3, os.O_RDWR)
        want("file path", os.readlink("/proc/self/fd/%d" % fds[0]), D + "/reg")
        want("file rest", os.read(fds[0], 100), b"3456789")
        want("memfd name", os.readlink("/proc/self/fd/%d" % fds[1]), "/memfd:crest-inflight (deleted)")
        want("memfd content", os.pread(fds[1], 100, 0), b"memfd content")
    data, fds, _, _ = recv_fds(b, 100)
    want("socket message", (data, len(fds)), (b"a-socket", 1))
    if fds:
        xs = socket.socket(fileno=fds[0])
        d2, f2, _, _ = recv_fds(xs, 100)
        want("inner message", (d2, len(f2)), (b"inner", 1))
        if f2: want("inner memfd", os.pread(f2[0], 100, 0), b"inner memfd")
        xs.send(b"back"); y.settimeout(5)
        want("the inner socket's peer", y.recv(100), b"back")
    want("tail", recv_fds(b, 100)[:2], (b"tail", []))
    data, fds, _, _ = recv_fds(f1, 100)
    want("seqpacket pair message", (data, len(fds)), (b"seq-pair", 2))
    if len(fds) == 2:
        ps, qs = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
        ps.settimeout(5); qs.settimeout(5)
        want("in-flight p's queue", ps.recv(100), b"deep")
        ps.send(b"pq")
        want("in-flight p and q connected", qs.recv(100), b"pq")
    want("seqpacket plain", recv_fds(f1, 100)[:2], (b"seq-plain", []))
    data, fds, _, _ = recv_fds(d, 100)
    want("datagram file message", (data, len(fds)), (b"dgram-file", 1))
    if fds:
        fl = fcntl.fcntl(fds[0], fcntl.F_GETFL)
        want("datagram file O_APPEND", bool(fl & os.O_APPEND), True)
        want("datagram file content", os.pread(fds[0], 100, 0), b"0123456789")
    want("datagram plain", recv_fds(d, 100)[:2], (b"dgram-plain", []))
    data, fds, _, _ = recv_fds(g, 100)
    want("self message", (data, len(fds)), (b"itself", 1))
    if fds: want("the socket in its own queue", os.fstat(fds[0]).st_ino, os.fstat(g.fileno()).st_ino)
try: checks()
except Exception as x: e.append("checking: %r" % (x,))
result(e)
"#;

#[test]
fn files_in_flight_in_unix_queues() {
    start("unix-rights", RIGHTS).cycle();
}

#[test]
fn files_in_flight_twice() {
    // A restored tree's files in flight can be checkpointed again.
    start("unix-rights-twice", RIGHTS).cycle_twice();
}

#[test]
fn files_in_flight_survive_leave_running() {
    // Peeking at the rights (copies installed in crest) consumes nothing.
    start("unix-rights-leave", RIGHTS).leave_running_and_inspect(&["descriptors in flight"]);
}

#[test]
fn files_in_flight_checker_detects_a_consumed_byte() {
    let w = start(
        "unix-rights-sabotage",
        &format!("SABOTAGE = True\n{RIGHTS}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

#[test]
fn unsupported_file_in_flight_is_refused_by_name() {
    let body = r#"
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
pk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
socket.send_fds(a, [b"packet"], [pk.fileno()]); pk.close()
publish("fd", b.fileno())
ready(); wait_go()
data, fds, _, _ = socket.recv_fds(b, 100, 4)
result([] if (data, len(fds)) == (b"packet", 1) else ["lost: %r" % ((data, fds),)])
"#;
    let w = start("unix-rights-refused", body);
    let fd = read_file(&w, "fd");
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("fd {fd}"))
            && err.contains("a file in flight (SCM_RIGHTS) in message 0 queued on this socket")
            && err.contains("AF_PACKET"),
        "{err}"
    );
    let c = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!c.status.success());
    let all = stdout(&c) + &stderr(&c);
    assert!(all.contains("in flight (SCM_RIGHTS)"), "{all}");
    w.go();
    w.expect_pass();
}

// ------------------------------------------------------- credentials

const CREDS: &str = r#"
import struct, pwd
SOL = socket.SOL_SOCKET
def peercred(s): return struct.unpack("3i", s.getsockopt(SOL, socket.SO_PEERCRED, 12))
e = []
me = os.getpid()
# A child (uid/gid 65534 for its socket calls) makes a socketpair and a
# listener, connects to our listener, and passes the sockets up; then
# it exits.  Its PID stays in SO_PEERCRED.
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
    os._exit(0)
os.waitpid(kid, 0)
data, fds, _, _ = socket.recv_fds(carrier, 10, 3)
p1, p2, c = (socket.socket(fileno=f) for f in fds)
a, _ = l.accept()
# SO_PASSCRED with credentials queued: ours, then the pair's.
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
y.setsockopt(SOL, socket.SO_PASSCRED, 1)
x.send(b"from me")
before = [peercred(p1), peercred(p2), peercred(c), peercred(a), peercred(x), peercred(l)]
want_before = [(kid, 65534, 65534), (kid, 65534, 65534), (me, 0, 0), (kid, 65534, 65534), (me, 0, 0), (me, 0, 0)]
if before != want_before: e.append("before the dump: %r != %r" % (before, want_before))
ready(); wait_go()
if SABOTAGE: a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); a.connect(D + "/l.sock")
after = [peercred(p1), peercred(p2), peercred(c), peercred(a), peercred(x), peercred(l)]
if after != before: e.append("SO_PEERCRED after the restore: %r != %r" % (after, before))
if y.getsockopt(SOL, socket.SO_PASSCRED) != 1: e.append("SO_PASSCRED lost")
y.settimeout(5)
msg, anc, _, _ = y.recvmsg(100, 256)
cr = [struct.unpack("3i", d[:12]) for (lv, t, d) in anc if lv == SOL and t == socket.SCM_CREDENTIALS]
if (msg, cr) != (b"from me", [(me, 0, 0)]): e.append("queued credentials: %r" % ((msg, cr),))
result(e)
"#;

#[test]
fn peer_credentials_and_queued_credentials() {
    start("unix-creds", CREDS).cycle();
}

#[test]
fn peer_credentials_twice() {
    start("unix-creds-twice", CREDS).cycle_twice();
}

#[test]
fn peer_credentials_checker_detects_crests_pid() {
    let w = start("unix-creds-sabotage", &format!("SABOTAGE = True\n{CREDS}"));
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

// ------------------------------------- relative names, closed datagram peers

const NAMES: &str = r#"
import errno
e = []
os.mkdir(D + "/sub"); os.chdir(D)
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind("sub/rel.sock"); l.listen(3)
g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); g.bind("g.sock")
os.chdir("/")
c = socket.socket(socket.AF_UNIX); c.connect(D + "/sub/rel.sock"); s, _ = l.accept()
# Datagram sockets whose peer closed: one of a pair, with a datagram
# from it still queued; one connected to a named socket.
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.send(b"before close"); b.close()
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.bind(D + "/n.sock")
m = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); m.connect(D + "/n.sock"); n.close(); os.unlink(D + "/n.sock")
ready(); wait_go()
if SABOTAGE: os.unlink(D + "/sub/rel.sock")
def want(what, got, exp):
    if got != exp: e.append("%s: %r != %r" % (what, got, exp))
want("cwd", os.getcwd(), "/")
want("listener name", l.getsockname(), "sub/rel.sock")
want("accepted name", s.getsockname(), "sub/rel.sock")
want("client's peer", c.getpeername(), "sub/rel.sock")
want("datagram name", g.getsockname(), "g.sock")
try:
    c2 = socket.socket(socket.AF_UNIX); c2.settimeout(5); c2.connect(D + "/sub/rel.sock")
    l.settimeout(5); s2, _ = l.accept(); c2.send(b"hi"); s2.settimeout(5)
    want("a new connection by path", s2.recv(10), b"hi")
except Exception as x: e.append("connecting to the relative name by path: %r" % (x,))
try:
    t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); t.sendto(b"dg", D + "/g.sock"); g.settimeout(5)
    want("datagram by path", g.recv(10), b"dg")
except Exception as x: e.append("datagram to the relative name: %r" % (x,))
a.settimeout(5)
want("datagram from the closed peer", a.recv(100), b"before close")
for sock, what in ((a, "pair"), (m, "named")):
    try: sock.send(b"x"); e.append("%s: send to a closed peer succeeded" % what)
    except ConnectionRefusedError: pass
    except Exception as x: e.append("%s: send to a closed peer: %r" % (what, x))
    try: sock.send(b"x"); e.append("%s: second send succeeded" % what)
    except OSError as x:
        if x.errno != errno.ENOTCONN: e.append("%s: second send: %r" % (what, x))
result(e)
"#;

#[test]
fn relative_names_and_closed_datagram_peers() {
    start("unix-relnames", NAMES).cycle();
}

#[test]
fn relative_names_checker_detects_a_missing_file() {
    let w = start(
        "unix-relnames-sabotage",
        &format!("SABOTAGE = True\n{NAMES}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

// ------------------------------------------- peers outside the tree

#[test]
fn sockets_connected_outside_the_tree_need_ext_unix_sk() {
    use std::io::Read;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::time::{Duration, Instant};
    let dir = temp_dir("ext-unix-sk");
    let lpath = dir.join("run.sock");
    let gpath = dir.join("log");
    let l = UnixListener::bind(&lpath).unwrap();
    let g = UnixDatagram::bind(&gpath).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = format!(
        r#"
LISTEN, LOG = {:?}, {:?}
st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); st.connect(LISTEN)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); dg.connect(LOG)
st.send(b"before")
publish("fd", st.fileno())
ready(); wait_go()
e = []
if st.getpeername() != LISTEN: e.append("stream peer %r" % (st.getpeername(),))
if dg.getpeername() != LOG: e.append("datagram peer %r" % (dg.getpeername(),))
try: st.send(b"after"); dg.send(b"log after")
except Exception as x: e.append("sending: %r" % (x,))
result(e)
"#,
        lpath.to_str().unwrap(),
        gpath.to_str().unwrap()
    );
    let mut w = start("unix-ext", &body);
    let (mut first, _) = l.accept().unwrap();
    let mut b = [0u8; 6];
    first.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"before");
    let fd = read_file(&w, "fd");
    // Without the flag: refused, naming the socket and its peer's path.
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("fd {fd}"))
            && err.contains(lpath.to_str().unwrap())
            && err.contains("--ext-unix-sk"),
        "{err}"
    );
    let c = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!c.status.success());
    assert!((stdout(&c) + &stderr(&c)).contains("--ext-unix-sk"));
    let c = crest(&["check", "-p", &w.pid.to_string(), "--ext-unix-sk"]);
    assert!(c.status.success(), "{}", stdout(&c) + &stderr(&c));
    // With it: dumped, and restored only with it too.
    let o = w.dump(&["--ext-unix-sk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(w.pid, Duration::from_secs(10));
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(
        !o.status.success(),
        "restore without --ext-unix-sk must fail"
    );
    assert!(stderr(&o).contains("--ext-unix-sk"), "{}", stderr(&o));
    assert!(!alive(w.pid), "a failed restore leaves no process");
    w.restore_moved(&["--ext-unix-sk"]);
    w.go();
    l.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut again = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the restored socket did not connect again: {e}"),
        }
    };
    again.set_nonblocking(false).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 5];
    again.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"after");
    let mut d = [0u8; 32];
    let n = g.recv(&mut d).unwrap();
    assert_eq!(&d[..n], b"log after");
    w.expect_pass();
    let _ = std::fs::remove_dir_all(&dir);
}
