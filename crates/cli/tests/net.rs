//! TCP through the `crest` binary: listeners (IPv4, IPv6, dual-stack) with
//! their options, established connections inside the tree with data in
//! flight both ways, connections to peers outside the tree
//! (`--tcp-established`, on this host and in another network namespace),
//! half-closed connections (closed by the peer: `tcp_states.rs`; accept
//! queues: `tcp_accept.rs`).  Each workload is a Python script that checks
//! its own sockets after the restore; the test acts as the outside peer
//! where there is one and checks its stream.  UDP, netlink and real
//! servers are in `net_apps.rs`.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
if e: a.close()  # the client stops at once instead of stalling
if e: result(e)
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
