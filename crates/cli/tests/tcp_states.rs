//! TCP connections the peer has closed its side of, through the `crest`
//! binary: CLOSE-WAIT with both ends in the tree (IPv4, IPv6) and with the
//! peer outside it (`--tcp-established`, the test as the peer), LAST-ACK
//! and CLOSING with the peer outside (the test holds back its own packets
//! with an nftables table of its own to keep the connection in the state).
//! Restore rebuilds each established and sends it the peer's FIN again
//! (see crates/crest/src/net/fin.rs); each workload checks after the
//! restore that it reads the queued bytes then the end of the stream, and
//! that what it writes reaches the peer.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

// ----------------------------------------------- both ends in the tree

/// A connection in one process: the client sent 60 kB and shut its side
/// down, the server read nothing (CLOSE-WAIT, the client FIN-WAIT-2) and
/// sent 40 kB the client has not read.  After the restore: the server
/// reads the 60 kB then EOF, writes more, the client reads all of it,
/// then EOF once the server closes.
const IN_TREE: &str = r#"
FAM, ADDR = (socket.AF_INET6, "::1") if "v6" in ARGS else (socket.AF_INET, "127.0.0.1")
def st(s): return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
def until(s, want):
    for _ in range(500):
        if st(s) == want: return True
        time.sleep(0.01)
    return False
l = socket.socket(FAM); l.bind((ADDR, 0)); l.listen(4)
c = socket.create_connection(l.getsockname()[:2]); a, _ = l.accept()
up = random.Random(1).randbytes(60000); down = random.Random(2).randbytes(40000)
c.sendall(up); a.sendall(down); c.shutdown(socket.SHUT_WR)
if not until(a, 8) or not until(c, 5): print("not CLOSE-WAIT / FIN-WAIT-2: %d %d" % (st(a), st(c)), file=sys.stderr)
ready(); wait_go()
e = []
if st(a) != 8: e.append("server end in state %d, not CLOSE-WAIT" % st(a))
if st(c) not in (4, 5): e.append("client end in state %d, not FIN-WAIT" % st(c))
want = up if not SABOTAGE else up[:500] + bytes([up[500] ^ 1]) + up[501:]
a.settimeout(10); c.settimeout(10)
got = b""
while True:
    b = a.recv(65536)
    if not b: break
    got += b
if got != want: e.append("server read %d bytes, %s" % (len(got), "differing" if len(got) == len(want) else "not 60000"))
if a.recv(10) != b"": e.append("a second read after the end of stream returned data")
more = random.Random(3).randbytes(50000)
a.sendall(more)
a.close()
got = b""
while True:
    b = c.recv(65536)
    if not b: break
    got += b
if got != down + more: e.append("client read %d bytes, want %d" % (len(got), len(down) + len(more)))
c2 = socket.create_connection(l.getsockname()[:2], timeout=5); a2, _ = l.accept(); c2.sendall(b"hi")
if a2.recv(2) != b"hi": e.append("a new connection carries no data")
result(e)
"#;

#[test]
fn tcp_close_wait_inside_the_tree() {
    start("tcp-close-wait", IN_TREE).cycle();
}

#[test]
fn tcp_close_wait_inside_the_tree_ipv6() {
    start("tcp-close-wait6", &format!("ARGS.append('v6')\n{IN_TREE}")).cycle();
}

#[test]
fn tcp_close_wait_survives_leave_running() {
    // Repair mode on and off again on a CLOSE-WAIT socket disturbs nothing.
    start("tcp-close-wait-leave", IN_TREE).leave_running_and_inspect(&["FIN received"]);
}

#[test]
fn tcp_close_wait_checker_detects_a_changed_byte() {
    let w = start(
        "tcp-close-wait-sabotage",
        &format!("ARGS.append('sabotage'); SABOTAGE = True\n{IN_TREE}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

// ---------------------------------------- the peer outside the tree

/// The server end, the test the client: the test sends 60 kB and shuts
/// its side down (in closing: sends nothing); per MODE the server then:
/// - close-wait: reads nothing until after the restore;
/// - last-ack: reads everything and EOF, waits for the test's "held" file
///   (the test drops its own packets to the server from then on), sends
///   its reply and shuts down (its FIN goes unacknowledged: LAST-ACK);
/// - closing: sends its reply, shuts down once the test drops the
///   server's packets to it (the test never sees the FIN), and gets the
///   test's FIN, which does not acknowledge its own (CLOSING).
///
/// After the restore it checks what it received and its state, and in
/// close-wait sends its reply then; the test checks the reply and EOF.
const OUTSIDE: &str = r#"
MODE = [a for a in ARGS if a in ("close-wait", "last-ack", "closing")][0]
FAM, ADDR = (socket.AF_INET6, "::1") if "v6" in ARGS else (socket.AF_INET, "127.0.0.1")
def st(s): return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
def until(s, want, n=500):
    for _ in range(n):
        if st(s) == want: return True
        time.sleep(0.01)
    return False
def wait_file(name):
    while not os.path.exists(D + "/" + name): time.sleep(0.01)
l = socket.socket(FAM); l.bind((ADDR, 0)); l.listen(1)
publish("port", l.getsockname()[1])
ready()
a, _ = l.accept()
up = random.Random(1).randbytes(60000); reply = random.Random(2).randbytes(80000)
e = []
def read_all():
    got = b""
    a.settimeout(20)
    while True:
        b = a.recv(65536)
        if not b: return got
        got += b
if MODE == "close-wait":
    if not until(a, 8, 2000): e.append("not CLOSE-WAIT before the dump: %d" % st(a))
    want = 8
elif MODE == "last-ack":
    got = read_all()
    if got != up: e.append("before the dump: read %d bytes" % len(got))
    wait_file("held")
    a.sendall(reply); a.shutdown(socket.SHUT_WR)
    time.sleep(0.3)
    want = 9
else:
    a.sendall(reply)
    wait_file("held")
    a.shutdown(socket.SHUT_WR)
    publish("shut", 1)
    if not until(a, 11, 2000): e.append("not CLOSING before the dump: %d" % st(a))
    want = 11
if st(a) != want: e.append("state %d before the dump, want %d" % (st(a), want))
publish("set", 1); wait_go()
if st(a) != want: e.append("state %d after the restore, want %d" % (st(a), want))
if MODE == "close-wait":
    got = read_all()
    if got != up: e.append("after the restore: read %d bytes%s" % (len(got), " (differing)" if len(got) == len(up) else ""))
    a.sendall(reply)
    a.close()
else:
    if a.recv(10) != b"": e.append("no end of stream after the restore")
    try:
        a.send(b"x"); e.append("a write after shutdown succeeded")
    except OSError: pass
    # The test no longer holds its packets: the peer acknowledges the FIN.
    if not until(a, 7, 2000): e.append("state %d, not closed, after the peer's ACK" % st(a))
result(e)
"#;

/// A table of the test's own dropping packets from `from` to `to` (with
/// `fin_too` false, not those with the FIN flag: the FIN crest delivers
/// again to the restored socket comes from the test's address).
struct Hold(String);

impl Hold {
    fn new(tag: &str, from: std::net::SocketAddr, to: std::net::SocketAddr, fin_too: bool) -> Hold {
        let t = format!("crtest-{tag}-{}", std::process::id());
        let ip = if from.is_ipv6() { "ip6" } else { "ip" };
        let script = format!(
            "add table inet {t}\n\
             add chain inet {t} out {{ type filter hook output priority -400; policy accept; }}\n\
             add rule inet {t} out {ip} saddr {} tcp sport {} {ip} daddr {} tcp dport {} {}drop\n",
            from.ip(),
            from.port(),
            to.ip(),
            to.port(),
            if fin_too { "" } else { "tcp flags & fin == 0 " }
        );
        nft(&script);
        Hold(t)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.0));
    }
}

fn outside(mode: &str, v6: bool) {
    let tag = format!("tcp-{mode}{}", if v6 { "6" } else { "" });
    let args = format!("ARGS += [{mode:?}{}]\n", if v6 { ", 'v6'" } else { "" });
    let w = start(&tag, &format!("{args}{OUTSIDE}"));
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let addr = if v6 { "::1" } else { "127.0.0.1" };
    let mut s = TcpStream::connect((addr, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let me = s.local_addr().unwrap();
    let server = s.peer_addr().unwrap();
    let up = pyrandom(1, 60_000);
    let reply = pyrandom(2, 80_000);
    let mut hold = None;
    match mode {
        "close-wait" => {
            s.write_all(&up).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        "last-ack" => {
            s.write_all(&up).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // The server's ACK of our FIN (delayed) has been sent by now.
            std::thread::sleep(Duration::from_millis(400));
            hold = Some(Hold::new(mode, me, server, false));
            std::fs::write(w.dir.join("held"), "").unwrap();
        }
        _ => {
            let mut got = vec![0u8; reply.len()];
            s.read_exact(&mut got).unwrap();
            assert!(got == reply, "the reply before the dump differs");
            hold = Some(Hold::new(mode, server, me, true));
            std::fs::write(w.dir.join("held"), "").unwrap();
            wait_for(&w, "shut");
            std::thread::sleep(Duration::from_millis(100));
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
    }
    wait_for(&w, "set");
    let o = w.dump(&[]);
    assert!(!o.status.success(), "refused without --tcp-established");
    assert!(
        stderr(&o).contains("pass --tcp-established"),
        "{}",
        stderr(&o)
    );
    let o = w.dump(&["--tcp-established"]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(w.pid, Duration::from_secs(10));
    let o = crest(&["inspect", w.image().to_str().unwrap()]);
    assert!(stdout(&o).contains("FIN received"), "{}", stdout(&o));
    w.restore_ok();
    assert!(lock_tables(w.pid).is_empty(), "restore removed the lock");
    drop(hold);
    w.go();
    // What the server sent: the reply (before the dump, or now) and EOF.
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let want: &[u8] = if mode == "closing" { &[] } else { &reply };
    assert!(
        got == want,
        "the test read {} bytes after the {mode} connection was restored, want {}",
        got.len(),
        want.len()
    );
    w.expect_pass();
}

/// The bytes of Python's `random.Random(seed).randbytes(n)` (the
/// workloads' streams), from Python itself.
fn pyrandom(seed: u32, n: usize) -> Vec<u8> {
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import random,sys; sys.stdout.buffer.write(random.Random({seed}).randbytes({n}))"
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(o.stdout.len(), n);
    o.stdout
}

#[test]
fn tcp_close_wait_peer_outside_the_tree() {
    outside("close-wait", false);
}

#[test]
fn tcp_close_wait_peer_outside_the_tree_ipv6() {
    outside("close-wait", true);
}

#[test]
fn tcp_last_ack_peer_outside_the_tree() {
    outside("last-ack", false);
}

#[test]
fn tcp_closing_peer_outside_the_tree() {
    outside("closing", false);
}
