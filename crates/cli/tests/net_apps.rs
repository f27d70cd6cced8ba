//! UDP, netlink and real servers (redis-server, Python's http.server)
//! through the `crest` binary; see `net.rs` for TCP.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
