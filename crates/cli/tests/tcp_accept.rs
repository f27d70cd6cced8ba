//! Connections waiting in a TCP listener's accept queue, through the
//! `crest` binary.  With their clients in the tree they are connected
//! again at restore (see crates/crest/src/net/accept.rs): the workload
//! then accepts each, and checks the peer addresses, the order, and data
//! both ways.  Refused by name, the tree running on: a queued server end
//! with bytes received, a client that shut its side down, a client
//! outside the tree.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::net::TcpStream;

/// A listener with three connections from clients of the same process
/// waiting to be accepted (IPv4, or IPv6 with "v6"), a fourth accepted
/// one, and per ARGS one that makes the dump refuse: "data" (a client
/// wrote to its queued server end), "fin" (a client shut down).
const QUEUE: &str = r#"
FAM, ADDR = (socket.AF_INET6, "::1") if "v6" in ARGS else (socket.AF_INET, "127.0.0.1")
l = socket.socket(FAM); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((ADDR, 0)); l.listen(8); port = l.getsockname()[1]
publish("port", port)
first = socket.create_connection((ADDR, port)); fa, _ = l.accept()
cs = [socket.create_connection((ADDR, port)) for _ in range(3)]
cs[1].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
cs[2].setblocking(False)
if "data" in ARGS: cs[0].sendall(b"early")
if "fin" in ARGS: cs[2].shutdown(socket.SHUT_WR)
time.sleep(0.1)
names = [c.getsockname() for c in cs]
ready(); wait_go()
e = []
if cs[1].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 1: e.append("TCP_NODELAY lost")
if cs[2].getblocking(): e.append("O_NONBLOCK lost")
cs[2].setblocking(True)
for i, c in enumerate(cs):
    if c.getsockname() != names[i]: e.append("client %d at %r, was %r" % (i, c.getsockname(), names[i]))
l.settimeout(5)
acc = []
for i in range(3):
    try: acc.append(l.accept())
    except Exception as x: e.append("waiting connection %d lost: %r" % (i, x))
l.setblocking(False)
try:
    l.accept(); e.append("a fourth connection was queued")
except BlockingIOError: pass
order = [names.index(p) if p in names else -1 for (_, p) in acc]
if order != [0, 1, 2]: e.append("accepted in the order %r" % order)
for (a, p) in acc:
    if p not in names: continue
    i = names.index(p); c = cs[i]; a.settimeout(5); c.settimeout(5)
    up = ("client %d " % i).encode() * 1000; down = ("server %d " % i).encode() * 3000
    want = up
    if "data" in ARGS and i == 0: want = b"early" + up
    if "fin" in ARGS and i == 2: up = want = b""
    if SABOTAGE and i == 1: want = want[:10] + bytes([want[10] ^ 1]) + want[11:]
    if up: c.sendall(up)
    a.sendall(down)
    got = b""
    while len(got) < len(want):
        b = a.recv(65536)
        if not b: break
        got += b
    if got != want: e.append("server end %d read %d bytes" % (i, len(got)))
    got = b""
    while len(got) < len(down):
        b = c.recv(65536)
        if not b: break
        got += b
    if got != down: e.append("client %d read %d bytes" % (i, len(got)))
first.sendall(b"ping")
if fa.recv(4) != b"ping": e.append("the accepted connection carries no data")
result(e)
"#;

#[test]
fn tcp_accept_queue_with_clients_in_the_tree() {
    start("tcp-accept", QUEUE).cycle();
}

#[test]
fn tcp_accept_queue_with_clients_in_the_tree_ipv6() {
    start("tcp-accept6", &format!("ARGS.append('v6')\n{QUEUE}")).cycle();
}

#[test]
fn tcp_accept_queue_checker_detects_a_changed_byte() {
    let w = start(
        "tcp-accept-sabotage",
        &format!("ARGS.append('sabotage'); SABOTAGE = True\n{QUEUE}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

fn refused(tag: &str, arg: &str, want: &str) {
    let w = start(tag, &format!("ARGS.append({arg:?})\n{QUEUE}"));
    let port = read_file(&w, "port");
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "TCP listener 127.0.0.1:{port}: the connection from"
        )),
        "{err}"
    );
    assert!(err.contains(want), "{want} in {err}");
    assert!(alive(w.pid), "the tree runs on");
    let c = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!c.status.success());
    assert!(
        stdout(&c).contains(want) || stderr(&c).contains(want),
        "check names it too"
    );
    // The workload's own check fails on "data" and "fin" only for what it
    // did itself: it still accepts all three and the data flows.
    w.go();
    w.expect_pass();
}

#[test]
fn tcp_accept_queue_with_received_bytes_is_refused() {
    refused(
        "tcp-accept-data",
        "data",
        "waits in its accept queue with 5 byte(s) received and acknowledged",
    );
}

#[test]
fn tcp_accept_queue_with_a_client_fin_is_refused() {
    refused(
        "tcp-accept-fin",
        "fin",
        "waits in its accept queue in state CLOSE-WAIT",
    );
}

#[test]
fn tcp_accept_queue_with_a_client_outside_the_tree_is_refused() {
    let body = r#"
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
publish("port", l.getsockname()[1])
ready(); wait_go()
e = []
l.settimeout(5)
try:
    a, _ = l.accept()
    if a.recv(5) != b"hello": e.append("no data from the waiting connection")
except Exception as x: e.append("waiting connection lost: %r" % (x,))
result(e)
"#;
    let w = start("tcp-accept-outside", body);
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = s.local_addr().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    for extra in [&[][..], &["--tcp-established"][..]] {
        let o = w.dump(extra);
        assert!(!o.status.success(), "the dump must be refused");
        let err = stderr(&o);
        let want = format!(
            "TCP listener 127.0.0.1:{port}: the connection from {me} waits in its accept queue \
             and its client is outside the tree: no kernel interface puts a rebuilt connection \
             into an accept queue"
        );
        assert!(err.contains(&want), "{want} in {err}");
        assert!(err.contains("fd 3"), "names the descriptor: {err}");
        assert!(alive(w.pid));
    }
    std::io::Write::write_all(&mut s, b"hello").unwrap();
    w.go();
    w.expect_pass();
}
