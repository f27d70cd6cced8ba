//! Network sockets through the `crest` binary: TCP listeners (IPv4, IPv6,
//! dual-stack) with their options, established connections inside the
//! tree with data in flight both ways, connections to peers outside the
//! tree (`--tcp-established`, on this host and in another network
//! namespace), UDP with queued datagrams, netlink.  Each workload is a
//! Python script that checks its own sockets after the restore; the test
//! acts as the outside peer where there is one and checks its stream.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Common protocol code: `ready()`, `wait_go()`, `result(errors)`.
const PROTO: &str = r#"
import os, sys, time, socket, random, hashlib, select, struct, subprocess
D = sys.argv[1]
ARGS = open(D + "/args").read().split() if os.path.exists(D + "/args") else []
def ready():
    open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
def wait_go():
    while not os.path.exists(D + "/go"): time.sleep(0.01)
def result(errors):
    open(D + "/result.tmp", "w").write("PASS\n" if not errors else "FAIL\n" + "\n".join(errors) + "\n")
    os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not errors else 1)
def publish(name, value):
    open(D + "/" + name + ".tmp", "w").write(str(value)); os.rename(D + "/" + name + ".tmp", D + "/" + name)
SABOTAGE = "sabotage" in ARGS
"#;

fn script(body: &str) -> String {
    format!("{PROTO}\n{body}")
}

/// Starts a Python workload; `args` go to the script through DIR/args
/// (written before it starts reading them: it reads them first thing).
fn start(name: &str, body: &str) -> Workload {
    Workload::start_python(name, &script(body))
}

fn read_file(w: &Workload, name: &str) -> String {
    let p = w.dir.join(name);
    for _ in 0..500 {
        if let Ok(s) = std::fs::read_to_string(&p) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{name} was not published; log:\n{}", w.log());
}

/// The verdict of a workload expected to fail (its checker works).
fn expect_fail(w: Workload) {
    let res = w.dir.join("result");
    for _ in 0..3000 {
        if res.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL"),
        "the sabotaged workload must fail:\n{text}"
    );
}

// ------------------------------------------------------------ listeners

const LISTENERS: &str = r#"
CC = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
alt = [c for c in CC if c != "cubic"]
socks = []
def mk(fam, addr, opts, v6only=None):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if v6only is not None: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    for (lvl, name, val) in opts: s.setsockopt(lvl, name, val)
    s.bind((addr, 0)); s.listen(socks.__len__() + 3)
    socks.append((s, fam, addr, v6only, opts, s.getsockname()[1]))
    return s
SOL, TCP, IP = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IP
mk(socket.AF_INET, "127.0.0.1", [(SOL, socket.SO_REUSEADDR, 1), (SOL, socket.SO_RCVBUF, 65536),
   (SOL, socket.SO_SNDBUF, 32768), (SOL, socket.SO_KEEPALIVE, 1), (TCP, socket.TCP_KEEPIDLE, 33),
   (TCP, socket.TCP_KEEPINTVL, 7), (TCP, socket.TCP_KEEPCNT, 4), (TCP, socket.TCP_NODELAY, 1),
   (IP, socket.IP_TOS, 0x10), (SOL, socket.SO_MARK, 42), (SOL, socket.SO_PRIORITY, 5),
   (TCP, socket.TCP_USER_TIMEOUT, 12345), (TCP, socket.TCP_FASTOPEN, 16),
   (SOL, socket.SO_LINGER, struct.pack("ii", 1, 9)),
   (SOL, socket.SO_RCVTIMEO, struct.pack("ll", 3, 250000)), (SOL, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))]
   + ([(TCP, socket.TCP_CONGESTION, alt[0].encode())] if alt else []))
mk(socket.AF_INET, "0.0.0.0", [(SOL, socket.SO_REUSEPORT, 1), (SOL, socket.SO_BINDTODEVICE, b"lo")])
mk(socket.AF_INET6, "::1", [(TCP, socket.TCP_CORK, 1), (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x20)], v6only=1)
mk(socket.AF_INET6, "::", [], v6only=0)
bound = socket.socket(); bound.bind(("127.0.0.1", 0)); bound_at = bound.getsockname()
socks[0][0].setblocking(False)
def state(s):
    g = lambda lvl, name, n=None: s.getsockopt(lvl, name) if n is None else s.getsockopt(lvl, name, n)
    v = [g(SOL, socket.SO_REUSEADDR), g(SOL, socket.SO_REUSEPORT), g(SOL, socket.SO_RCVBUF), g(SOL, socket.SO_SNDBUF),
         g(SOL, socket.SO_KEEPALIVE), g(TCP, socket.TCP_KEEPIDLE), g(TCP, socket.TCP_KEEPINTVL), g(TCP, socket.TCP_KEEPCNT),
         g(TCP, socket.TCP_NODELAY), g(TCP, socket.TCP_CORK), g(SOL, socket.SO_MARK), g(SOL, socket.SO_PRIORITY),
         g(TCP, socket.TCP_USER_TIMEOUT), g(TCP, socket.TCP_FASTOPEN), g(SOL, socket.SO_LINGER, 8),
         g(SOL, socket.SO_RCVTIMEO, 16), g(SOL, socket.SO_SNDTIMEO, 16), g(TCP, socket.TCP_CONGESTION, 16),
         g(SOL, socket.SO_BINDTODEVICE, 16), s.getblocking(), s.getsockname()]
    if s.family == socket.AF_INET6: v += [g(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), g(socket.IPPROTO_IPV6, socket.IPV6_TCLASS)]
    else: v += [g(IP, socket.IP_TOS)]
    return v
def backlog(port):
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) > 2 else None
before = [(state(s), backlog(p)) for (s, *_ , p) in socks]
ready(); wait_go()
e = []
if SABOTAGE: socks[0][0].setsockopt(TCP, socket.TCP_KEEPIDLE, 34)
for i, (s, fam, addr, v6only, opts, port) in enumerate(socks):
    now = (state(s), backlog(port))
    if now != before[i]: e.append("listener %d (%s): %r != %r" % (i, addr, now, before[i]))
    # It still accepts: over IPv4 too for the dual-stack one.
    targets = [(fam, addr if addr not in ("0.0.0.0", "::") else ("127.0.0.1" if fam == socket.AF_INET else "::1"))]
    if addr == "::" and v6only == 0: targets.append((socket.AF_INET, "127.0.0.1"))
    for (tf, ta) in targets:
        try:
            c = socket.socket(tf, socket.SOCK_STREAM); c.settimeout(5); c.connect((ta, port))
            s.setblocking(True); s.settimeout(5); a, _ = s.accept(); c.sendall(b"ping")
            if a.recv(4) != b"ping": e.append("listener %d: no data over %s" % (i, ta))
            a.close(); c.close()
        except Exception as x: e.append("listener %d: connecting over %s: %r" % (i, ta, x))
if bound.getsockname() != bound_at: e.append("the bound socket is at %r" % (bound.getsockname(),))
bound.listen(1); c = socket.create_connection(bound_at, timeout=5); bound.accept()
if not alt: e.append("no congestion control algorithm other than cubic to test with")
result(e)
"#;

#[test]
fn tcp_listeners_with_options() {
    start("tcp-listeners", LISTENERS).cycle();
}

#[test]
fn tcp_listeners_checker_detects_a_changed_option() {
    let w = start(
        "tcp-listeners-sabotage",
        &format!("ARGS.append('sabotage'); SABOTAGE = True\n{LISTENERS}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

#[test]
fn tcp_listener_with_connections_waiting_is_refused() {
    let body = r#"
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
port = l.getsockname()[1]
cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
publish("port", port)
ready(); wait_go()
e = []
l.settimeout(5)
for i in range(2):
    try: a, _ = l.accept()
    except Exception as x: e.append("waiting connection %d lost: %r" % (i, x))
result(e)
"#;
    let w = start("tcp-backlog", body);
    let port = read_file(&w, "port");
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "TCP listener 127.0.0.1:{port}: 2 connection(s) wait in its accept queue"
        )),
        "{err}"
    );
    assert!(err.contains("fd 3"), "names the descriptor: {err}");
    let c = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!c.status.success());
    assert!(stdout(&c).contains("accept queue") || stderr(&c).contains("accept queue"));
    w.go();
    w.expect_pass();
}

// -------------------------------------------------- connections in the tree

/// A server and a client process exchanging 8 MiB each way; before the
/// dump both write until their send queues and the peer's receive queue
/// are full, without reading; after the restore both check every byte.
const PAIR: &str = r#"
TOTAL = 8 << 20
def stream(seed): return random.Random(seed).randbytes(TOTAL)
def fill(s, out):
    s.setblocking(False); sent = 0
    while True:
        try: sent += s.send(out[sent:sent + 65536])
        except BlockingIOError: return sent
def finish(s, out, sent, inseed, e, who):
    exp = stream(inseed); got = 0
    if SABOTAGE and who == "server": exp = exp[:1000] + bytes([exp[1000] ^ 1]) + exp[1001:]
    while got < TOTAL or sent < TOTAL:
        r, w, _ = select.select([s] if got < TOTAL else [], [s] if sent < TOTAL else [], [], 30)
        if not r and not w: e.append("%s: stalled at sent %d, received %d" % (who, sent, got)); return
        if w:
            try: sent += s.send(out[sent:sent + 65536])
            except BlockingIOError: pass
        if r:
            b = s.recv(1 << 20)
            if not b: e.append("%s: end of stream after %d bytes" % (who, got)); return
            if b != exp[got:got + len(b)]:
                i = next(k for k in range(len(b)) if b[k] != exp[got + k])
                e.append("%s: byte %d differs" % (who, got + i)); return
            got += len(b)
    if hashlib.sha256(exp).digest() != hashlib.sha256(exp[:got]).digest(): e.append("%s: hash" % who)
MODE = globals().get("MODE", "v4")
LFAM, LADDR, CADDR = {"v4": (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    "v6": (socket.AF_INET6, "::1", "::1"), "dual": (socket.AF_INET6, "::", "127.0.0.1")}[MODE]
l = socket.socket(LFAM); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if MODE == "dual": l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind((LADDR, 0)); l.listen(8); port = l.getsockname()[1]
rp, wp = os.pipe()
pid = os.fork()
if pid == 0:
    c = socket.create_connection((CADDR, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = stream(2); sent = fill(c, out)
    os.write(wp, struct.pack("q", sent))
    wait_go(); e = []
    finish(c, out, sent, 1, e, "client")
    if c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 1: e.append("client: TCP_NODELAY lost")
    open(D + "/client", "w").write("\n".join(e))
    os._exit(0 if not e else 1)
a, _ = l.accept()
a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
a.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
out = stream(1); sent = fill(a, out)
reuse = a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
csent = struct.unpack("q", os.read(rp, 8))[0]
if sent >= TOTAL or csent >= TOTAL: print("the queues did not fill", file=sys.stderr)
ready(); wait_go()
e = []
finish(a, out, sent, 2, e, "server")
if a.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) != 77: e.append("server: TCP_KEEPIDLE lost")
if a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != reuse or reuse != 1: e.append("server: SO_REUSEADDR %d, was %d" % (a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), reuse))
c2 = socket.create_connection((CADDR, port), timeout=5); a2, _ = l.accept(); c2.send(b"hi")
if a2.recv(2) != b"hi": e.append("a new connection after the restore carries no data")
_, st = os.waitpid(pid, 0)
if st != 0: e.append("client failed: " + open(D + "/client").read())
result(e)
"#;

#[test]
fn tcp_connection_inside_the_tree_with_data_in_flight() {
    start("tcp-pair", PAIR).cycle();
}

#[test]
fn tcp_connection_inside_the_tree_ipv6() {
    start("tcp-pair6", &format!("MODE = 'v6'\n{PAIR}")).cycle();
}

#[test]
fn tcp_connection_inside_the_tree_ipv4_client_on_a_dual_stack_listener() {
    start("tcp-pair-dual", &format!("MODE = 'dual'\n{PAIR}")).cycle();
}

#[test]
fn tcp_connection_inside_the_tree_twice() {
    start("tcp-pair-twice", PAIR).cycle_twice();
}

#[test]
fn tcp_connection_survives_leave_running() {
    // Repair mode on and off again on a live connection disturbs nothing.
    start("tcp-pair-leave", PAIR).leave_running_and_inspect(&[
        "established:",
        "received unread",
        "listening (backlog 8)",
    ]);
}

#[test]
fn tcp_pair_checker_detects_a_changed_byte() {
    let w = start("tcp-pair-sabotage", &format!("SABOTAGE = True\n{PAIR}"));
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

// ------------------------------------------- a peer outside the tree (here)

/// An echo server: the test is its client, outside the tree.  It checks
/// the count and hash of what it received against the trailer the client
/// sends at the end.
const ECHO: &str = r#"
fam = socket.AF_INET6 if "v6" in ARGS else socket.AF_INET
addr = [a for a in ARGS if a[0].isdigit() or ":" in a]
l = socket.socket(fam); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr[0] if addr else ("::1" if fam == socket.AF_INET6 else "127.0.0.1"), 0)); l.listen(4)
publish("port", l.getsockname()[1])
ready()
c, _ = l.accept()
h = hashlib.sha256(); n = 0; e = []
while True:
    b = c.recv(65536)
    if not b: e.append("end of stream before the trailer"); break
    if b"\n" in b:
        data, rest = b.split(b"\n", 1)
        h.update(data); n += len(data); c.sendall(data)
        while not rest.endswith(b"\n"):
            x = c.recv(100)
            if not x: break
            rest += x
        want = rest.decode().split()
        if want != [str(n), h.hexdigest()]: e.append("received %d bytes %s, the client sent %r" % (n, h.hexdigest(), want))
        c.sendall(b"OK\n" if not e else b"BAD\n")
        break
    h.update(b); n += len(b); c.sendall(b)
wait_go()
result(e)
"#;

/// The client side: sends `chunks` pseudo-random chunks (no newline in
/// them) and checks each echo; `between` runs after the first half.
fn echo_client(addr: &str, port: u16, between: impl FnOnce(&mut TcpStream, &[u8])) -> Vec<u8> {
    let mut s = TcpStream::connect((addr, port)).expect("connect to the workload");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut all = Vec::new();
    let mut seed = 0x1234_5678u64;
    let mut chunk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let b = (seed >> 33) as u8;
                if b == b'\n' {
                    b'x'
                } else {
                    b
                }
            })
            .collect()
    };
    let exchange = |s: &mut TcpStream, data: &[u8]| {
        s.write_all(data).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).expect("the echo");
        assert!(back == data, "the echo differs");
    };
    for _ in 0..20 {
        let c = chunk(50_000);
        exchange(&mut s, &c);
        all.extend_from_slice(&c);
    }
    // Sent while the tree is frozen or gone: held, then delivered once.
    let held = chunk(30_000);
    all.extend_from_slice(&held);
    between(&mut s, &held);
    let mut back = vec![0u8; held.len()];
    s.read_exact(&mut back)
        .expect("the echo of what was sent during the checkpoint");
    assert!(back == held, "the echo of the held data differs");
    for _ in 0..20 {
        let c = chunk(50_000);
        exchange(&mut s, &c);
        all.extend_from_slice(&c);
    }
    let digest = sha256_hex(&all);
    s.write_all(format!("\n{} {digest}\n", all.len()).as_bytes())
        .unwrap();
    let mut ok = [0u8; 3];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK\n", "the server's verdict on the stream");
    all
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The connection locks of the tree of `pid`.
fn lock_tables(pid: i32) -> Vec<String> {
    let o = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft (installed by .ci/install-deps.sh)");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter(|t| t.starts_with(&format!("crest-{pid}-")))
        .map(str::to_string)
        .collect()
}

fn outside_peer(v6: bool) {
    let w = start(
        if v6 { "tcp-outside6" } else { "tcp-outside" },
        &format!("ARGS.append({:?})\n{ECHO}", if v6 { "v6" } else { "v4" }),
    );
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let addr = if v6 { "::1" } else { "127.0.0.1" };
    echo_client(addr, port, |s, held| {
        let me = s.local_addr().unwrap();
        // Without the flag: refused, by name, and the tree runs on.
        let o = w.dump(&[]);
        assert!(!o.status.success());
        let want = format!(
            "TCP {} -> {me} is connected to a process outside the tree; pass --tcp-established",
            std::net::SocketAddr::new(addr.parse().unwrap(), port)
        );
        assert!(stderr(&o).contains(&want), "{want} in {}", stderr(&o));
        assert!(
            lock_tables(w.pid).is_empty(),
            "a refused dump leaves no lock"
        );
        let o = w.dump(&["--tcp-established"]);
        assert!(o.status.success(), "{}", stderr(&o));
        reap(w.pid, Duration::from_secs(10));
        let tables = lock_tables(w.pid);
        assert_eq!(
            tables.len(),
            1,
            "the lock is in place until the restore: {tables:?}"
        );
        let o = crest(&["inspect", w.image().to_str().unwrap()]);
        assert!(stdout(&o).contains(&tables[0]), "the image names the lock");
        // Sent while the tree is gone: the lock drops it, the kernel
        // retransmits it after the restore.
        s.write_all(held).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        w.restore_ok();
        assert!(lock_tables(w.pid).is_empty(), "restore removed the lock");
        w.go();
    });
    w.expect_pass();
}

#[test]
fn tcp_peer_outside_the_tree_ipv4() {
    outside_peer(false);
}

#[test]
fn tcp_peer_outside_the_tree_ipv6() {
    outside_peer(true);
}

#[test]
fn tcp_established_leave_running_removes_the_lock() {
    let w = start("tcp-outside-leave", &format!("ARGS.append('v4')\n{ECHO}"));
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    echo_client("127.0.0.1", port, |s, held| {
        let o = w.dump(&["--tcp-established", "--leave-running"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(lock_tables(w.pid).is_empty(), "the tree runs on: no lock");
        s.write_all(held).unwrap();
        w.go();
    });
    w.expect_pass();
}

#[test]
fn failed_restore_removes_the_lock() {
    let w = start("tcp-outside-fail", &format!("ARGS.append('v4')\n{ECHO}"));
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"abc").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    let o = w.dump(&["--tcp-established"]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(w.pid, Duration::from_secs(10));
    assert_eq!(lock_tables(w.pid).len(), 1);
    // A damaged image: the restore fails, and must take the lock away.
    let img = w.image();
    let mut bytes = std::fs::read(&img).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 10); // a damaged image
    std::fs::write(&img, &bytes).unwrap();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(
        lock_tables(w.pid).is_empty(),
        "a failed restore removed the lock"
    );
    drop(s);
}

// ------------------------------- a peer in another network namespace

/// Two network namespaces of the test's own, joined by a veth pair:
/// crest and the tree run in `a` (10.251.N.1), the peer in `b` (.2).
struct NetNs {
    a: String,
    b: String,
    tree: Option<i32>,
}

impl NetNs {
    fn new() -> NetNs {
        let id = std::process::id();
        let n = (id % 200) + 20;
        let ns = NetNs {
            a: format!("crest-ta-{id}"),
            b: format!("crest-tb-{id}"),
            tree: None,
        };
        let va = format!("cva{id}");
        let vb = format!("cvb{id}");
        let sh = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
        };
        sh(&["netns", "add", &ns.a]);
        sh(&["netns", "add", &ns.b]);
        sh(&[
            "link", "add", &va, "netns", &ns.a, "type", "veth", "peer", "name", &vb, "netns", &ns.b,
        ]);
        for (netns, dev, last) in [(&ns.a, &va, 1), (&ns.b, &vb, 2)] {
            let addr = format!("10.251.{n}.{last}/24");
            sh(&["-n", netns, "addr", "add", &addr, "dev", dev]);
            sh(&["-n", netns, "link", "set", dev, "up"]);
            sh(&["-n", netns, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn addr(&self, last: u8) -> String {
        format!("10.251.{}.{last}", (std::process::id() % 200) + 20)
    }

    /// `crest ARGS…` inside namespace `a` (network only: nsenter keeps
    /// every other namespace, as crest requires).
    fn crest(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.a))
            .arg("--")
            .arg(crest_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("nsenter crest")
    }

    /// Runs `f` on a thread in namespace `b`.
    fn in_b<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.b);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace file we hold.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(p) = self.tree {
            // SAFETY: plain kill of a pid this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
            reap(p, Duration::from_secs(5));
        }
        for n in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

#[test]
fn tcp_peer_in_another_network_namespace() {
    init();
    let mut ns = NetNs::new();
    let dir = temp_dir("tcp-netns");
    let server = ns.addr(1);
    let o = ns.crest(&[
        "run",
        "--log",
        dir.join("log").to_str().unwrap(),
        "--",
        "python3",
        "-c",
        &script(&format!("ARGS.append({server:?})\n{ECHO}")),
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    ns.tree = Some(pid);
    let port_file = dir.join("port");
    for _ in 0..1000 {
        if port_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let img = dir.join("img");
    let (a, dir2, img2) = (ns.a.clone(), dir.clone(), img.clone());
    let run_crest = move |args: Vec<String>| {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{a}"))
            .arg("--")
            .arg(crest_bin())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    ns.in_b(move || {
        echo_client(&server, port, |s, held| {
            let p = pid.to_string();
            let i = img2.to_str().unwrap().to_string();
            let o = run_crest(vec![
                "dump".into(),
                "-p".into(),
                p.clone(),
                "-o".into(),
                i.clone(),
            ]);
            assert!(!o.status.success());
            assert!(
                stderr(&o)
                    .contains("is connected to a process outside the tree; pass --tcp-established"),
                "{}",
                stderr(&o)
            );
            let o = run_crest(vec![
                "dump".into(),
                "-p".into(),
                p,
                "-o".into(),
                i.clone(),
                "--tcp-established".into(),
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            reap(pid, Duration::from_secs(10));
            s.write_all(held).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let o = run_crest(vec!["restore".into(), "-i".into(), i, "-d".into()]);
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::write(dir2.join("go"), b"go\n").unwrap();
        });
    });
    let res = dir.join("result");
    for _ in 0..3000 {
        if res.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(text.starts_with("PASS"), "{text}");
    let e = reap(pid, Duration::from_secs(10));
    assert_eq!(e, Some(Exit::Code(0)));
    ns.tree = None;
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.a, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("crest-"),
        "the lock is gone"
    );
}

// ------------------------------------------------------------------ UDP

const UDP: &str = r#"
e = []
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0)); b.connect(a.getsockname())
c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); c6.bind(("::1", 0))
d6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); d6.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 300000)
d6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); d6.bind(("::", 0))
free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # never bound
sent_a = [bytes([i]) * (100 + 37 * i) for i in range(20)] + [os.urandom(60000)]
for m in sent_a: b.send(m)
sent_c = [b"v6-%d" % i for i in range(5)]
for m in sent_c: d6.sendto(m, c6.getsockname())
# A peek by the program must not be disturbed: its offset is kept.
a.setsockopt(socket.SOL_SOCKET, 42, 0)
first = a.recv(10, socket.MSG_PEEK)
addrs = [s.getsockname() for s in (a, b, c6, d6)]
peer_b = b.getpeername()
ready(); wait_go()
if SABOTAGE: sent_a = sent_a[1:]
if [s.getsockname() for s in (a, b, c6, d6)] != addrs: e.append("addresses changed")
if b.getpeername() != peer_b: e.append("b is no longer connected to a")
if d6.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) != 600000: e.append("SO_RCVBUF %d" % d6.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
if d6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 1: e.append("IPV6_V6ONLY")
if a.getsockopt(socket.SOL_SOCKET, 42) != 10: e.append("SO_PEEK_OFF %d" % a.getsockopt(socket.SOL_SOCKET, 42))
a.setsockopt(socket.SOL_SOCKET, 42, -1)
a.setblocking(False); c6.setblocking(False)
for i, m in enumerate(sent_a):
    try:
        got, frm = a.recvfrom(65536)
        if got != m: e.append("datagram %d on a: %d bytes, expected %d" % (i, len(got), len(m)))
        if frm != b.getsockname(): e.append("datagram %d on a came from %r" % (i, frm))
    except BlockingIOError: e.append("datagram %d on a is missing" % i); break
try: a.recv(10); e.append("a has an extra datagram")
except BlockingIOError: pass
for i, m in enumerate(sent_c):
    try:
        got, frm = c6.recvfrom(100)
        if got != m: e.append("v6 datagram %d: %r" % (i, got))
        if frm[:2] != d6.getsockname()[:2] and frm[1] != d6.getsockname()[1]: e.append("v6 datagram from %r" % (frm,))
    except BlockingIOError: e.append("v6 datagram %d missing" % i); break
# Still working both ways.
a.sendto(b"back", b.getsockname()); b.settimeout(5)
if b.recv(10) != b"back": e.append("a -> b after the restore")
free.sendto(b"x", a.getsockname()); time.sleep(0.05)
if a.recv(10) != b"x": e.append("an unbound socket sends after the restore")
result(e)
"#;

#[test]
fn udp_sockets_with_queued_datagrams() {
    start("udp", UDP).cycle();
}

#[test]
fn udp_leave_running_keeps_the_queues() {
    start("udp-leave", UDP).leave_running_and_inspect(&["UDP 127.0.0.1:", "21 datagrams"]);
}

#[test]
fn udp_checker_detects_a_lost_datagram() {
    let w = start("udp-sabotage", &format!("SABOTAGE = True\n{UDP}"));
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

#[test]
fn udp_multicast_member_is_refused() {
    let body = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0))
mreq = struct.pack("4s4s", socket.inet_aton("239.1.2.3"), socket.inet_aton("127.0.0.1"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
ready(); wait_go(); result([])
"#;
    let w = start("udp-mcast", body);
    let o = w.dump(&[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("member of the multicast group 239.1.2.3"),
        "{}",
        stderr(&o)
    );
    w.go();
    w.expect_pass();
}

// -------------------------------------------------------------- netlink

#[test]
fn netlink_sockets_keep_port_id_and_groups() {
    let body = r#"
e = []
r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
r.bind((0, 0)); r.setsockopt(270, 1, 1); r.setsockopt(270, 1, 5)   # RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR
u = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)       # NETLINK_KOBJECT_UEVENT
u.bind((os.getpid() + 100000, 1))
g = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)        # NETLINK_GENERIC
g.bind((0, 0))
names = [s.getsockname() for s in (r, u, g)]
def groups(s): return s.getsockopt(270, 9, 8)                     # NETLINK_LIST_MEMBERSHIPS
gr = [groups(s) for s in (r, u, g)]
ready(); wait_go()
if [s.getsockname() for s in (r, u, g)] != names: e.append("port ids %r != %r" % ([s.getsockname() for s in (r, u, g)], names))
if [groups(s) for s in (r, u, g)] != gr: e.append("groups changed")
# A request on the route socket is answered on the restored socket.
req = struct.pack("=LHHLLBBH", 20, 18, 0x301, 1, 0, 0, 0, 0)    # RTM_GETLINK dump
g.close()
r.send(req); r.settimeout(5)
try:
    ans = r.recv(65536)
    if struct.unpack("=LHH", ans[:8])[1] not in (16, 3): e.append("unexpected answer type")
except Exception as x: e.append("no answer: %r" % x)
result(e)
"#;
    start("netlink", body).cycle();
}

#[test]
fn netlink_with_a_queued_message_is_refused() {
    let body = r#"
r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE); r.bind((0, 0))
r.send(struct.pack("=LHHLLBBH", 20, 18, 0x301, 1, 0, 0, 0, 0)); time.sleep(0.1)
ready(); wait_go()
result([] if r.recv(65536) else ["the queued answer is gone"])
"#;
    let w = start("netlink-queued", body);
    let o = w.dump(&[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("AF_NETLINK socket (NETLINK_ROUTE): a message of"),
        "{}",
        stderr(&o)
    );
    w.go();
    w.expect_pass();
}

// -------------------------------------------------------- real programs

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One RESP command; returns the raw reply line (and bulk body).
fn redis_cmd(s: &mut (impl Read + Write), args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    // The first line, then a bulk string's body if there is one.
    while !out.ends_with(b"\r\n") {
        s.read_exact(&mut b).expect("a reply from redis");
        out.push(b[0]);
    }
    if out[0] == b'$' {
        let n: i64 = String::from_utf8_lossy(&out[1..out.len() - 2])
            .parse()
            .unwrap();
        if n >= 0 {
            let mut body = vec![0u8; n as usize + 2];
            s.read_exact(&mut body).unwrap();
            out.extend_from_slice(&body);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn redis_server_with_a_client_connected_across_the_dump() {
    let port = free_port();
    let body = format!(
        r#"
ready()
os.execvp("redis-server", ["redis-server", "--port", "{port}", "--bind", "127.0.0.1",
    "--unixsocket", D + "/redis.sock", "--save", "", "--appendonly", "no", "--daemonize", "no"])
"#
    );
    let w = start("redis", &body);
    let connect = || -> TcpStream {
        for _ in 0..500 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis does not listen; log:\n{}", w.log());
    };
    let mut c1 = connect();
    let sock = w.dir.join("redis.sock");
    {
        let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        assert_eq!(redis_cmd(&mut u, &["SET", "ukey", "over-unix"]), "+OK\r\n");
    }
    for i in 0..200 {
        let (k, v) = (format!("key{i}"), format!("value-{i}-{}", "x".repeat(i)));
        assert_eq!(redis_cmd(&mut c1, &["SET", &k, &v]), "+OK\r\n");
    }
    assert_eq!(redis_cmd(&mut c1, &["INCRBY", "counter", "41"]), ":41\r\n");
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(
        stdout(&o).contains("pass --tcp-established")
            || stderr(&o).contains("pass --tcp-established"),
        "check names the client connection: {} {}",
        stdout(&o),
        stderr(&o)
    );
    let o = w.dump(&["--tcp-established"]);
    assert!(o.status.success(), "dump of redis: {}", stderr(&o));
    reap(w.pid, Duration::from_secs(10));
    w.restore_ok();
    // The connection held across the dump: its next command works.
    assert_eq!(redis_cmd(&mut c1, &["INCR", "counter"]), ":42\r\n");
    assert_eq!(
        redis_cmd(&mut c1, &["GET", "key7"]),
        format!("$15\r\nvalue-7-xxxxxxx\r\n")
    );
    // New connections, over TCP and the unix socket.
    let mut c2 = connect();
    assert_eq!(redis_cmd(&mut c2, &["DBSIZE"]), ":202\r\n");
    let v = format!("value-150-{}", "x".repeat(150));
    assert_eq!(
        redis_cmd(&mut c2, &["GET", "key150"]),
        format!("${}\r\n{v}\r\n", v.len())
    );
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    assert_eq!(redis_cmd(&mut u, &["GET", "ukey"]), "$9\r\nover-unix\r\n");
    assert_eq!(redis_cmd(&mut c1, &["PING"]), "+PONG\r\n");
}

#[test]
fn python_http_server_with_a_keep_alive_client_in_the_tree() {
    let body = r#"
import http.server, http.client, threading
os.makedirs(D + "/www", exist_ok=True)
open(D + "/www/hello.txt", "w").write("hello from crest\n" * 100)
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *a, **k): super().__init__(*a, directory=D + "/www", **k)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
port = srv.server_address[1]
rp, wp = os.pipe()
pid = os.fork()
if pid == 0:
    srv.socket.close()
    e = []
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/hello.txt"); r = c.getresponse(); body = r.read()
    if body != b"hello from crest\n" * 100: e.append("first response")
    local = c.sock.getsockname()
    os.write(wp, b"x"); wait_go()
    c.request("GET", "/hello.txt"); r = c.getresponse()
    if r.read() != b"hello from crest\n" * 100: e.append("second response on the kept-alive connection")
    if c.sock.getsockname() != local: e.append("the client reconnected instead of keeping its connection")
    c2 = http.client.HTTPConnection("127.0.0.1", port, timeout=10); c2.request("GET", "/hello.txt")
    if c2.getresponse().status != 200: e.append("a new connection")
    open(D + "/client", "w").write("\n".join(e)); os._exit(1 if e else 0)
threading.Thread(target=srv.serve_forever, daemon=True).start()
os.read(rp, 1)
time.sleep(0.2)
ready(); wait_go()
_, st = os.waitpid(pid, 0)
result([] if st == 0 else ["client: " + open(D + "/client").read()])
"#;
    start("http-server", body).cycle();
}

#[test]
fn failed_dump_leaves_the_connection_undisturbed() {
    // A raw socket at fd 100, after the connection's descriptor: the dump
    // reads the connection in repair mode, then fails on the raw socket,
    // and must take the connection out of repair mode and drop the lock.
    let w = start(
        "tcp-failed-dump",
        &format!(
            "ARGS.append('v4')\n_r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)\nos.dup2(_r.fileno(), 100)\n{ECHO}"
        ),
    );
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    echo_client("127.0.0.1", port, |s, held| {
        let o = w.dump(&["--tcp-established"]);
        assert!(!o.status.success(), "the raw socket stops the dump");
        let err = stderr(&o);
        assert!(err.contains("fd 100: AF_INET raw socket"), "{err}");
        assert!(
            lock_tables(w.pid).is_empty(),
            "the failed dump removed its lock"
        );
        assert!(alive(w.pid));
        s.write_all(held).unwrap();
        w.go();
    });
    w.expect_pass();
}

// ------------------------------------------------------ half-closed

#[test]
fn tcp_half_closed_by_the_tree_fin_wait() {
    // The server sent its banner and shut its side down (FIN-WAIT-2 once
    // the client's kernel acknowledged the FIN); the client (this test,
    // outside the tree) goes on sending across the dump.
    let body = r#"
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
publish("port", l.getsockname()[1])
ready()
c, _ = l.accept()
c.sendall(b"banner\n"); c.shutdown(socket.SHUT_WR)
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
wait_go()
want = open(D + "/expect").read().split()
result([] if [str(n), h.hexdigest()] == want else ["received %d bytes %s, the client sent %r" % (n, h.hexdigest(), want)])
"#;
    let w = start("tcp-fin-wait", body);
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut banner = Vec::new();
    s.read_to_end(&mut banner).unwrap();
    assert_eq!(banner, b"banner\n");
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    s.write_all(&data[..200_000]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let o = w.dump(&["--tcp-established"]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(w.pid, Duration::from_secs(10));
    let o = crest(&["inspect", w.image().to_str().unwrap()]);
    assert!(stdout(&o).contains("FIN sent"), "{}", stdout(&o));
    s.write_all(&data[200_000..300_000]).unwrap();
    w.restore_ok();
    s.write_all(&data[300_000..]).unwrap();
    std::fs::write(
        w.dir.join("expect"),
        format!("{} {}", data.len(), sha256_hex(&data)),
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    w.go();
    w.expect_pass();
}

#[test]
fn tcp_closed_by_the_peer_close_wait_is_refused() {
    // Both ends in the tree: the client shut its side down, the server has
    // not read the FIN yet (CLOSE-WAIT), which repair mode cannot rebuild.
    let body = r#"
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
c.sendall(b"bye"); c.shutdown(socket.SHUT_WR); time.sleep(0.1)
ready(); wait_go()
e = []
if a.recv(10) != b"bye": e.append("data")
if a.recv(10) != b"": e.append("no end of stream")
result(e)
"#;
    let w = start("tcp-close-wait", body);
    let o = w.dump(&[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("has closed its side of the connection (CLOSE-WAIT)"),
        "{err}"
    );
    w.go();
    w.expect_pass();
}
