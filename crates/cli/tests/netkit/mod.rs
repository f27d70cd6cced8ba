//! Shared by the network tests: the Python workload protocol, the echo
//! server workload and its client (the test as the peer outside the tree),
//! and the nftables tables of a tree.

#![allow(dead_code)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Common protocol code: `ready()`, `wait_go()`, `result(errors)`.
pub const PROTO: &str = r#"
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

pub fn script(body: &str) -> String {
    format!("{PROTO}\n{body}")
}

/// Starts a Python workload; `args` go to the script through DIR/args
/// (written before it starts reading them: it reads them first thing).
pub fn start(name: &str, body: &str) -> Workload {
    Workload::start_python(name, &script(body))
}

pub fn read_file(w: &Workload, name: &str) -> String {
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
pub fn expect_fail(w: Workload) {
    let res = w.dir.join("result");
    for _ in 0..12000 {
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

/// An echo server: the test is its client, outside the tree.  It checks
/// the count and hash of what it received against the trailer the client
/// sends at the end.
pub const ECHO: &str = r#"
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
pub fn echo_client(addr: &str, port: u16, between: impl FnOnce(&mut TcpStream, &[u8])) -> Vec<u8> {
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

pub fn sha256_hex(data: &[u8]) -> String {
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
pub fn lock_tables(pid: i32) -> Vec<String> {
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

/// Runs an nftables script (`nft -f -`); panics if it fails.
pub fn nft(script: &str) {
    let mut c = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (installed by .ci/install-deps.sh)");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft -f - with {script}");
}

/// Waits up to 20 s for the file `name` in the workload's directory.
pub fn wait_for(w: &Workload, name: &str) {
    for _ in 0..2000 {
        if w.dir.join(name).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{name} did not appear; log:\n{}", w.log());
}
