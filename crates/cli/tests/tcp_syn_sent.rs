//! A TCP connect in progress (SYN-SENT) across dump and restore, through
//! the `crest` binary: the test drops the SYNs to a listener of the tree
//! (an nftables table of its own), the workload starts a non-blocking
//! connect to it; crest dumps it as connecting and restore connects again
//! from the same local address (see crates/crest/src/net/tcp.rs).  After
//! the restore the workload checks the socket is still connecting, from
//! the same address; the test stops dropping the SYNs, and the workload
//! checks the connect completes (a retransmitted SYN gets through), that
//! the listener accepts it from that address and that bytes flow.

mod common;
mod netkit;
use common::*;
use netkit::*;

const SYN_SENT: &str = r#"
import errno
FAM, ADDR = (socket.AF_INET6, "::1") if "v6" in ARGS else (socket.AF_INET, "127.0.0.1")
def st(s): return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
def wait_file(name):
    while not os.path.exists(D + "/" + name): time.sleep(0.01)
l = socket.socket(FAM); l.bind((ADDR, 0)); l.listen(4)
port = l.getsockname()[1]
publish("port", port)
ready()
wait_file("held")
e = []
c = socket.socket(FAM); c.setblocking(False)
r = c.connect_ex((ADDR, port))
if r != errno.EINPROGRESS: e.append("connect_ex returned %d, not EINPROGRESS" % r)
time.sleep(0.2)
if st(c) != 2: e.append("state %d before the dump, not SYN-SENT" % st(c))
mine = c.getsockname()[:2]
publish("set", 1)
wait_go()
s = st(c)
# The test stopped dropping before go: a retransmitted SYN may be through.
if s not in (1, 2): e.append("state %d after the restore, not SYN-SENT" % s)
want = mine if not SABOTAGE else (mine[0], mine[1] + 1)
if c.getsockname()[:2] != want: e.append("local address %s after the restore, was %s" % (c.getsockname()[:2], want))
p = select.poll(); p.register(c, select.POLLOUT)
if not p.poll(30000): e.append("the connect did not complete in 30 s")
err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
if err: e.append("the connect failed: %s" % os.strerror(err))
if st(c) != 1: e.append("state %d once connected, not ESTABLISHED" % st(c))
l.settimeout(10)
try:
    a, who = l.accept()
    if who[:2] != mine: e.append("the listener accepted %s, not %s" % (who[:2], mine))
    c.setblocking(True); c.settimeout(10); a.settimeout(10)
    c.sendall(b"ping"); a.sendall(b"pong")
    if a.recv(4) != b"ping" or c.recv(4) != b"pong": e.append("no bytes through the connection")
except OSError as x:
    e.append("after the connect: %s" % x)
result(e)
"#;

/// A table of the test's own that drops TCP SYNs (without ACK) to `port`.
struct DropSyn(String);

impl DropSyn {
    fn new(tag: &str, v6: bool, port: u16) -> DropSyn {
        let t = format!("crtest-{tag}-{}", std::process::id());
        let (ip, addr) = if v6 {
            ("ip6", "::1")
        } else {
            ("ip", "127.0.0.1")
        };
        nft(&format!(
            "add table inet {t}\n\
             add chain inet {t} out {{ type filter hook output priority -400; policy accept; }}\n\
             add rule inet {t} out {ip} daddr {addr} tcp dport {port} \
             tcp flags & (syn | ack) == syn drop\n"
        ));
        DropSyn(t)
    }
}

impl Drop for DropSyn {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.0));
    }
}

/// Runs the workload up to the dump with its SYNs dropped; returns it and
/// the table.
fn connecting(tag: &str, v6: bool, sabotage: bool) -> (Workload, DropSyn) {
    let mut args = String::new();
    if v6 {
        args += "ARGS.append('v6')\n";
    }
    if sabotage {
        args += "ARGS.append('sabotage'); SABOTAGE = True\n";
    }
    let w = start(tag, &format!("{args}{SYN_SENT}"));
    let port: u16 = read_file(&w, "port").trim().parse().unwrap();
    let hold = DropSyn::new(tag, v6, port);
    std::fs::write(w.dir.join("held"), "").unwrap();
    wait_for(&w, "set");
    (w, hold)
}

fn cycle(tag: &str, v6: bool) {
    let (w, hold) = connecting(tag, v6, false);
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = crest(&["inspect", w.image().to_str().unwrap()]);
    assert!(
        stdout(&o).contains("connecting (SYN-SENT)"),
        "{}",
        stdout(&o)
    );
    let img = w.image();
    if img.is_dir() {
        std::fs::remove_dir_all(&img).unwrap();
    } else {
        std::fs::remove_file(&img).unwrap();
    }
    w.dump_ok();
    w.restore_ok();
    drop(hold);
    w.go();
    w.expect_pass();
}

#[test]
fn tcp_syn_sent_connects_again() {
    cycle("tcp-syn-sent", false);
}

#[test]
fn tcp_syn_sent_connects_again_ipv6() {
    cycle("tcp-syn-sent6", true);
}

#[test]
fn tcp_syn_sent_checker_detects_another_local_port() {
    let (w, hold) = connecting("tcp-syn-sent-sabotage", false, true);
    w.dump_ok();
    w.restore_ok();
    drop(hold);
    w.go();
    expect_fail(w);
}
