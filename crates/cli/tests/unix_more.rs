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

// ------------------------------- exact rights boundaries in stream queues

/// Two identical stream pairs get the same writes: chunks with and
/// without files in flight, back to back, a write split over several
/// kernel buffers (its files on the first), and, on a pair with
/// SO_PASSCRED, chunks from other processes (which exited).  The first
/// pair is read before the dump with a fixed sequence of read sizes, some
/// stopping inside a chunk with files: that is the kernel's truth.  The
/// second is read after the restore with the same sizes and must give the
/// same bytes, the same files with the same reads, and the same
/// credentials.
const RIGHTS_EXACT: &str = r#"
import array, hashlib
SOL = socket.SOL_SOCKET
e = []
def memfd(tag):
    m = os.memfd_create(tag); os.write(m, tag.encode()); return m
def write(ends, data, tag):
    for s_ in ends:
        if tag is None: s_.sendall(data)
        else:
            m = memfd(tag); socket.send_fds(s_, [data], [m]); os.close(m)
PLAIN = [("p", b"aaaa", None), ("p", b"bbbb", "one"), ("p", b"cccc", None),
         ("p", b"dd", "two"), ("p", b"eee", "three"), ("p", b"f", "four"),
         ("p", b"g" * 100000, None), ("p", b"h" * 50000, "five"), ("p", b"tail", None)]
CREDS = [("p", b"x1x1", None), ("k", b"y1y1y", "six"), ("p", b"z1", "seven"),
         ("k", b"w1w1", None), ("k", b"v1", "eight"), ("k", b"u1u1u1", None), ("p", b"t1", None)]
SIZES = [1, 3, 2, 7, 100, 1, 5000, 40000, 4, 2]
def pairs(passcred):
    out = []
    for _ in range(2):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setsockopt(SOL, socket.SO_SNDBUF, 1 << 20)
        if passcred: b.setsockopt(SOL, socket.SO_PASSCRED, 1)
        out.append((a, b))
    return out
def fill(ps, writes):
    for who, data, tag in writes:
        ends = [a for a, _ in ps]
        if who == "p": write(ends, data, tag); continue
        kid = os.fork()
        if kid == 0:
            try: write(ends, data, tag)
            finally: os._exit(0)
        os.waitpid(kid, 0)
def drain(b, total):
    out, got, i = [], 0, 0
    while got < total:
        n = SIZES[i % len(SIZES)]; i += 1
        data, anc, _, _ = b.recvmsg(n, 4096)
        if not data: out.append("EOF after %d bytes" % got); break
        tags, cr = [], None
        for lv, t, d in anc:
            if lv == SOL and t == socket.SCM_RIGHTS:
                for f in array.array("i", d[:len(d) - len(d) % 4]):
                    tags.append(os.pread(f, 100, 0).decode()); os.close(f)
            elif lv == SOL and t == socket.SCM_CREDENTIALS:
                cr = struct.unpack("3i", d[:12])
        out.append((len(data), hashlib.sha256(data).hexdigest()[:12], tags, cr))
        got += len(data)
    return out
plain, cred = pairs(False), pairs(True)
fill(plain, PLAIN); fill(cred, CREDS)
total = lambda w: sum(len(d) for _, d, _ in w)
truth = (drain(plain[0][1], total(PLAIN)), drain(cred[0][1], total(CREDS)))
# The kernel's behaviour the test relies on: files come with the first
# byte read of their chunk, and a read stops after a chunk with files.
first = [(n, tags) for n, _, tags, _ in truth[0][:6]]
want = [(1, []), (3, []), (2, ["one"]), (7, ["two"]), (4, ["three"]), (1, ["four"])]
if first != want: e.append("before the dump, reads gave %r, expected %r" % (first, want))
ready(); wait_go()
if SABOTAGE: plain[1][1].recv(1)
for _, b in (plain[1], cred[1]): b.settimeout(5)
try:
    got = (drain(plain[1][1], total(PLAIN)), drain(cred[1][1], total(CREDS)))
    for what, t, g in zip(("plain", "credentials"), truth, got):
        for k, (x, y) in enumerate(zip(t, g)):
            if x != y: e.append("%s pair, read %d: %r, before the dump %r" % (what, k, y, x)); break
        if len(t) != len(g): e.append("%s pair: %d reads, before the dump %d" % (what, len(g), len(t)))
except Exception as x: e.append("reading after the restore: %r" % (x,))
result(e)
"#;

#[test]
fn rights_boundaries_in_stream_queues_are_exact() {
    start("unix-rights-exact", RIGHTS_EXACT).cycle();
}

#[test]
fn rights_boundaries_twice() {
    start("unix-rights-exact-twice", RIGHTS_EXACT).cycle_twice();
}

#[test]
fn rights_boundaries_checker_detects_a_consumed_byte() {
    let w = start(
        "unix-rights-exact-sabotage",
        &format!("SABOTAGE = True\n{RIGHTS_EXACT}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

// ------------------------- peer credentials naming a PID taken at restore

/// A child makes a socketpair and a listener, passes them up and exits:
/// their SO_PEERCRED names its PID.  With that PID held by an unrelated
/// process at restore, the restore fails naming a socket and the PID,
/// leaving nothing; once the PID is free again it restores exactly.
#[test]
fn peer_credentials_of_a_taken_pid_fail_the_restore() {
    let body = r#"
SOL = socket.SOL_SOCKET
def peercred(s): return struct.unpack("3i", s.getsockopt(SOL, socket.SO_PEERCRED, 12))
carrier, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
kid = os.fork()
if kid == 0:
    p1, p2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(D + "/l.sock"); l.listen(2)
    socket.send_fds(inner, [b"k"], [p1.fileno(), p2.fileno(), l.fileno()])
    os._exit(0)
os.waitpid(kid, 0)
_, fds, _, _ = socket.recv_fds(carrier, 10, 3)
p1, p2, l = (socket.socket(fileno=f) for f in fds)
before = [peercred(p1), peercred(p2), peercred(l)]
publish("kid", kid)
ready(); wait_go()
e = []
after = [peercred(p1), peercred(p2), peercred(l)]
if after != before or before[0][0] != kid: e.append("SO_PEERCRED %r, before %r (kid %d)" % (after, before, kid))
p1.send(b"x"); p2.settimeout(5)
if p2.recv(1) != b"x": e.append("the pair does not pass data")
result(e)
"#;
    let w = start("unix-creds-taken", body);
    let kid: i32 = read_file(&w, "kid").trim().parse().unwrap();
    w.dump_ok();
    let sleeper = occupy(kid);
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "the restore must fail: {err}");
    assert!(
        err.contains("socket:[") && err.contains(&format!("pid {kid}")) && err.contains("sleep"),
        "{err}"
    );
    assert!(!alive(w.pid), "a failed restore leaves no process");
    // SAFETY: plain kill of the placeholder this test started.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    reap(sleeper, std::time::Duration::from_secs(5));
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// Starts `sleep` with PID `pid`, so the restore cannot make calls as it.
fn occupy(pid: i32) -> i32 {
    let prog = std::ffi::CString::new("/bin/sleep").unwrap();
    let arg = std::ffi::CString::new("60").unwrap();
    let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
    // SAFETY: the child only calls execv and _exit (async-signal-safe) on
    // data prepared before the fork.
    match unsafe { crest_sys::process::clone_with_pid(pid, 0) }.expect("clone3 set_tid") {
        // SAFETY: as above.
        crest_sys::process::Forked::Child => unsafe {
            libc::execv(prog.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        },
        crest_sys::process::Forked::Parent(p) => {
            // Until it runs sleep (its comm names it).
            for _ in 0..500 {
                let c = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                if c.trim() == "sleep" {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            p
        }
    }
}

// ------------------- data on connections not accepted yet: refused, intact

/// Bytes a client sent on a connection still in a listener's accept queue
/// sit in the queue of the server end, which has no descriptor yet: no
/// interface reads them (sock_diag gives only their size, MSG_PEEK on the
/// client reads the client's own queue, recvmsg on a listener fails, and
/// accepting on crest's copy of the listener would take the connection
/// from the program).  Check and dump refuse, naming both sockets, and the
/// tree keeps running untouched: after go it accepts and reads everything.
const NOT_ACCEPTED: &str = r#"
e = []
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(D + "/acc.sock"); l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(D + "/acc.sock")
c.send(b"early bytes")
q = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); q.connect(D + "/acc.sock")
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); a.send(b"pair data")
publish("fds", "%d %d" % (l.fileno(), c.fileno()))
ready(); wait_go()
def want(what, got, exp):
    if got != exp: e.append("%s: %r != %r" % (what, got, exp))
try:
    for s_ in (l, b, c, q): s_.settimeout(5)
    s, _ = l.accept(); s.settimeout(5)
    if SABOTAGE: s.recv(1)
    want("bytes sent before the accept", s.recv(100), b"early bytes")
    s2, _ = l.accept(); s2.settimeout(5)
    q.send(b"q"); want("the second waiting connection", s2.recv(10), b"q")
    c.send(b"more"); want("the first connection after the accept", s.recv(10), b"more")
    s.send(b"back"); want("the first connection, back", c.recv(10), b"back")
    want("the pair", b.recv(100), b"pair data")
except Exception as x: e.append("checking: %r" % (x,))
result(e)
"#;

#[test]
fn data_on_a_connection_not_accepted_yet_is_refused_and_the_tree_keeps_running() {
    let w = start("unix-not-accepted", NOT_ACCEPTED);
    let fds = read_file(&w, "fds");
    let (lfd, cfd) = fds.split_once(' ').unwrap();
    let c = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!c.status.success(), "check must refuse");
    let all = stdout(&c) + &stderr(&c);
    assert!(
        all.contains(&format!("fd {lfd}"))
            && all.contains(&format!("fd {cfd}"))
            && all.contains("carries data from socket:[")
            && all.contains("sent data on a connection not accepted yet")
            && all.contains("no interface reads them before the accept"),
        "{all}"
    );
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("fd {lfd}")) && err.contains("before the accept"),
        "{err}"
    );
    assert!(alive(w.pid), "the refused tree must keep running");
    w.go();
    w.expect_pass();
}

#[test]
fn not_accepted_checker_detects_a_lost_byte() {
    let w = start(
        "unix-not-accepted-sabotage",
        &format!("SABOTAGE = True\n{NOT_ACCEPTED}"),
    );
    read_file(&w, "fds");
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    w.go();
    expect_fail(w);
}

// ----------------------- peer credentials in a PID namespace of its own

/// Restored into a PID namespace of its own, a tree's socketpair is made
/// in that namespace (see crest's net/unix/creds.rs and
/// crates/cli/tests/unix_pidns_creds.rs): no warning that it is not.
/// The pair itself works.
#[test]
fn peer_credentials_in_a_new_pid_namespace_are_exact() {
    let body = r#"
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
publish("ino", os.fstat(a.fileno()).st_ino)
ready(); wait_go()
e = []
a.send(b"x"); b.settimeout(5)
if b.recv(1) != b"x": e.append("the pair does not pass data")
result(e)
"#;
    let mut w = start("unix-creds-pidns", body);
    let ino = read_file(&w, "ino");
    w.dump_ok();
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d", "--new-pidns"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains(&format!("socket:[{ino}]")), "{err}");
    w.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    w.go();
    w.expect_pass();
}

/// A connection waiting to be accepted (no data) is restored, and the
/// restore says its accepted end's SO_PEERCRED will be crest's.
#[test]
fn waiting_connection_restored_with_a_warning_about_its_credentials() {
    let body = r#"
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(D + "/w.sock"); l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(D + "/w.sock")
publish("ino", os.fstat(l.fileno()).st_ino)
ready(); wait_go()
e = []
l.settimeout(5); c.settimeout(5)
s, _ = l.accept(); s.settimeout(5)
c.send(b"hi")
if s.recv(10) != b"hi": e.append("the waiting connection lost its client")
result(e)
"#;
    let w = start("unix-waiting-warn", body);
    let ino = read_file(&w, "ino");
    w.dump_ok();
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("socket:[{ino}] (1 waiting)")) && err.contains("crest's pid"),
        "{err}"
    );
    w.go();
    w.expect_pass();
}
