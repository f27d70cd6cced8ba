//! Network namespaces: a tree started with `unshare --net --uts` whose
//! namespace the test configures (loopback, a veth to a peer namespace
//! of the test's with v4/v6 addresses, MTU, a route, sysctls); a client
//! in the peer namespace stays connected across `dump --tcp-established`
//! and `restore --veth INSIDE=OUTSIDE`.  The workload records its links,
//! addresses, routes, sysctls and hostname before the dump and checks
//! them, and its connection, after the restore.  Every veth and
//! namespace is named `nn-…` and removed after.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs before the echo server: waits for the test to configure the
/// namespace, then records it; `result` checks it again.
const PRELUDE: &str = r#"
import json
open(D + "/started", "w").write(str(os.getpid()))
while not os.path.exists(D + "/netup"): time.sleep(0.01)
socket.sethostname("nn-host")
DEV = open(D + "/dev").read().strip()
SYSCTLS = ["ipv4/ip_forward", "ipv4/conf/%s/rp_filter" % DEV, "ipv4/conf/all/rp_filter",
           "ipv6/conf/%s/forwarding" % DEV, "ipv4/conf/%s/arp_ignore" % DEV]
def run(*a): return json.loads(subprocess.run(["ip", "-j"] + list(a), capture_output=True, text=True).stdout or "[]")
def net_state():
    L = sorted((l["ifname"], l["mtu"], l["address"], "UP" in l["flags"],
                sorted((a["local"], a["prefixlen"]) for a in l.get("addr_info", []) if not a["local"].startswith("fe80")))
               for l in run("addr", "show"))
    R = sorted((r.get("dst"), r.get("gateway", ""), r.get("dev", ""), r.get("protocol", ""))
               for f in ("-4", "-6") for r in run(f, "route", "show", "table", "main"))
    S = [open("/proc/sys/net/" + p).read().strip() for p in SYSCTLS]
    return [L, R, S]
BEFORE = net_state()
publish("before", json.dumps(BEFORE))
ARGS.append(open(D + "/addr").read().strip())
_result = result
def result(e):
    now = net_state()
    if now != BEFORE: e.append("network namespace differs: before %r after %r" % (BEFORE, now))
    if socket.gethostname() != "nn-host": e.append("hostname %r" % socket.gethostname())
    _result(e)
"#;

/// Waits until `path` exists while `ok` holds.
fn wait_file(path: &std::path::Path, timeout: Duration, ok: impl Fn() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        if !ok() {
            return path.exists();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

/// `ip ARGS` inside the network namespace of `pid`.
fn ip_in(pid: i32, args: &[&str]) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "ip {args:?} in {pid}: {}", stderr(&o));
}

fn sysctl_in(pid: i32, path: &str, v: &str) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["sh", "-c", &format!("echo {v} > /proc/sys/net/{path}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{path}: {}", stderr(&o));
}

/// A tree in its own network namespace, its veth, the peer namespace.
struct Setup {
    dir: std::path::PathBuf,
    pid: i32,
    peer: String,
    inner: String,
    outer: String,
    n: u32,
}

fn suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:05x}", (t ^ std::process::id().rotate_left(7)) & 0xfffff)
}

impl Setup {
    fn new(tag: &str, body: &str) -> Setup {
        init();
        let dir = temp_dir(tag);
        let s = suffix();
        let n = u32::from_str_radix(&s, 16).unwrap() % 200 + 20;
        let inner = format!("nn-i-{s}");
        std::fs::write(dir.join("dev"), &inner).unwrap();
        std::fs::write(dir.join("addr"), format!("10.252.{n}.1")).unwrap();
        let o = Command::new(crest_bin())
            .arg("run")
            .arg("--log")
            .arg(dir.join("log"))
            .args(["--", "unshare", "--net", "--uts", "python3", "-c"])
            .arg(script(&format!("{PRELUDE}\n{body}")))
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let pid: i32 = stdout(&o).trim().parse().unwrap();
        let mut me = Setup {
            dir,
            pid,
            peer: format!("nn-p-{s}"),
            inner,
            outer: format!("nn-o-{s}"),
            n,
        };
        let started = me.dir.join("started");
        assert!(
            wait_file(&started, Duration::from_secs(30), || alive(pid)),
            "{}",
            std::fs::read_to_string(me.dir.join("log")).unwrap_or_default()
        );
        ip(&["netns", "add", &me.peer]);
        let p = pid.to_string();
        ip(&[
            "link", "add", &me.inner, "netns", &p, "mtu", "1400", "type", "veth", "peer", "name",
            &me.outer, "netns", &me.peer, "mtu", "1400",
        ]);
        let a1 = format!("10.252.{n}.1/24");
        let a6 = format!("fd52:{n}::1/64");
        let gw = format!("10.252.{n}.2");
        let lo2 = format!("10.99.{n}.1/32");
        ip_in(pid, &["link", "set", "lo", "up"]);
        ip_in(pid, &["addr", "add", &lo2, "dev", "lo"]);
        sysctl_in(pid, "ipv4/ip_forward", "1");
        sysctl_in(pid, "ipv4/conf/all/rp_filter", "2");
        sysctl_in(pid, &format!("ipv4/conf/{}/arp_ignore", me.inner), "1");
        ip_in(pid, &["addr", "add", &a1, "dev", &me.inner]);
        ip_in(pid, &["addr", "add", &a6, "dev", &me.inner, "nodad"]);
        ip_in(pid, &["link", "set", &me.inner, "up"]);
        ip_in(pid, &["route", "add", "10.253.0.0/16", "via", &gw]);
        me.peer_up();
        std::fs::write(me.dir.join("netup"), "").unwrap();
        me.pid = pid;
        me
    }

    /// Configures the outer end in the peer namespace (moving it there
    /// first when it is in crest's, as restore leaves it).
    fn peer_up(&self) {
        let home = |args: &[&str]| {
            Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", std::process::id()))
                .arg("ip")
                .args(args)
                .output()
                .unwrap()
        };
        let here = home(&["link", "show", &self.outer]);
        if here.status.success() {
            // The old pair may still be on its way out of the peer.
            for i in 0.. {
                let o = home(&["link", "set", &self.outer, "netns", &self.peer]);
                if o.status.success() {
                    break;
                }
                assert!(i < 100, "moving {}: {}", self.outer, stderr(&o));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let a2 = format!("10.252.{}.2/24", self.n);
        ip(&["-n", &self.peer, "addr", "add", &a2, "dev", &self.outer]);
        ip(&["-n", &self.peer, "link", "set", &self.outer, "up"]);
        ip(&["-n", &self.peer, "link", "set", "lo", "up"]);
    }

    fn in_peer<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.peer);
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

    fn result(&self) -> String {
        let res = self.dir.join("result");
        wait_file(&res, Duration::from_secs(60), || true);
        std::fs::read_to_string(&res).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // SAFETY: plain kill of a pid this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        reap(self.pid, Duration::from_secs(5));
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .status();
    }
}

/// `crest ARGS` in the test's own network namespace (from any thread:
/// the client's thread is in the peer's).
fn crest_home(args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", std::process::id()))
        .arg("--")
        .arg(crest_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn img(s: &Setup) -> String {
    s.dir.join("img").to_str().unwrap().to_string()
}

#[test]
fn tcp_connection_across_a_recreated_network_namespace() {
    let s = Setup::new("nn-tcp", ECHO);
    let port: u16 = {
        let p = s.dir.join("port");
        assert!(wait_file(&p, Duration::from_secs(30), || alive(s.pid)));
        std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
    };
    let server = format!("10.252.{}.1", s.n);
    let (pid, image, dir, veth) = (
        s.pid,
        img(&s),
        s.dir.clone(),
        format!("{}={}", s.inner, s.outer),
    );
    let (outer, peer, n) = (s.outer.clone(), s.peer.clone(), s.n);
    s.in_peer(move || {
        echo_client(&server, port, |c, held| {
            let p = pid.to_string();
            let o = crest_home(&["dump", "-p", &p, "-o", &image, "--tcp-established"]);
            assert!(o.status.success(), "{}", stderr(&o));
            reap(pid, Duration::from_secs(10));
            c.write_all(held).unwrap();
            let o = crest_home(&["restore", "-i", &image, "-d"]);
            assert!(!o.status.success(), "a veth without --veth is refused");
            assert!(stderr(&o).contains("--veth nn-i-"), "{}", stderr(&o));
            let o = crest_home(&["restore", "-i", &image, "-d", "--veth", &veth]);
            assert!(o.status.success(), "{}", stderr(&o));
            // The outer end is in crest's namespace: the test moves it.
            let tmp = Setup {
                dir: dir.clone(),
                pid: 0,
                peer: peer.clone(),
                inner: String::new(),
                outer: outer.clone(),
                n,
            };
            tmp.peer_up();
            std::mem::forget(tmp);
            std::fs::write(dir.join("go"), b"go\n").unwrap();
        });
    });
    let text = s.result();
    assert!(text.starts_with("PASS"), "{text}");
}

const IDLE: &str = r#"
l = socket.socket(); l.bind((ARGS[-1], 0)); l.listen(1)
ready(); wait_go()
e = []
c = socket.create_connection(l.getsockname()); a, _ = l.accept(); c.sendall(b"x")
if a.recv(1) != b"x": e.append("the restored listener does not work")
result(e)
"#;

/// Dumps the tree of `s` once it is ready (the tree is gone after).
fn dump_when_ready(s: &Setup) {
    assert!(wait_file(
        &s.dir.join("ready"),
        Duration::from_secs(30),
        || alive(s.pid)
    ));
    let o = crest(&["dump", "-p", &s.pid.to_string(), "-o", &img(s)]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(s.pid, Duration::from_secs(10));
}

#[test]
fn checker_reports_a_changed_network_namespace() {
    let s = Setup::new("nn-neg", IDLE);
    dump_when_ready(&s);
    let veth = format!("{}={}", s.inner, s.outer);
    let o = crest(&["restore", "-i", &img(&s), "-d", "--veth", &veth]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    // Sabotage: another MTU than the recorded one.
    ip_in(pid, &["link", "set", "dev", &s.inner, "mtu", "1300"]);
    std::fs::write(s.dir.join("go"), b"go\n").unwrap();
    let text = s.result();
    assert!(text.starts_with("FAIL"), "{text}");
    assert!(text.contains("differs"), "{text}");
}

/// A restore that fails once the network namespace and its veth exist
/// (just before the tree would run) leaves neither: no veth end in crest's
/// namespace, no process; the next restore then succeeds.
#[test]
fn failed_restore_removes_the_veth_it_made() {
    let s = Setup::new("nn-fail", IDLE);
    dump_when_ready(&s);
    let veth = format!("{}={}", s.inner, s.outer);
    let o = Command::new(crest_bin())
        .args(["restore", "-i", &img(&s), "-d", "--veth", &veth])
        .env("CREST_FAULT_AT", "restore: before resuming")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("injected fault"),
        "the fault was not injected: {}",
        stderr(&o)
    );
    reap(s.pid, Duration::from_secs(5));
    assert!(!alive(s.pid), "a failed restore left pid {} behind", s.pid);
    let link = Command::new("ip")
        .args(["link", "show", "dev", &s.outer])
        .output()
        .unwrap();
    assert!(
        !link.status.success(),
        "a failed restore left veth {} in crest's namespace",
        s.outer
    );
    let o = crest(&["restore", "-i", &img(&s), "-d", "--veth", &veth]);
    assert!(o.status.success(), "{}", stderr(&o));
    s.peer_up();
    std::fs::write(s.dir.join("go"), b"go\n").unwrap();
    let text = s.result();
    assert!(text.starts_with("PASS"), "{text}");
}
