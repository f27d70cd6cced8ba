//! A network namespace owned by the container's user namespace (issue
//! 12): root makes a container as host uid 100000 with `unshare --user
//! --net --pid --fork --mount-proc`, maps 0..65536 onto 100000.., and the
//! container's init, as its namespace's root, brings lo up and listens on
//! it.  After restore it checks, itself: that its network namespace
//! belongs to its user namespace (NS_GET_USERNS), that the user
//! namespace's creator is its uid 0 (NS_GET_OWNER_UID), its NSpid, maps
//! and capabilities, that CAP_NET_ADMIN works there (it adds an address
//! to lo), and that its listener still accepts.  The test checks the
//! ownership from outside too (see crates/crest/src/ns/owned_net.rs).
//! The sabotaged run makes its checks from a user namespace of its own
//! (one that does not own the network namespace): they must fail.

mod common;
use common::*;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const INIT: &str = r#"
import ctypes, fcntl, os, socket, subprocess, sys, time
D = sys.argv[1]
SABOTAGE = len(sys.argv) > 2
while not open("/proc/self/uid_map").read().strip(): time.sleep(0.01)
# It started before uid 0 was mapped: again, as the namespace's root.
if "MAPPED" not in os.environ:
    os.environ["MAPPED"] = "1"
    os.execv(sys.executable, [sys.executable] + sys.argv)
NS_GET_USERNS, NS_GET_OWNER_UID = 0xb701, 0xb704
def state():
    out = []
    for l in open("/proc/self/status"):
        if l.split(":")[0] in ("Uid", "Gid", "CapEff", "CapPrm", "NSpid"): out.append(l.strip())
    out.append("uid_map " + " ".join(open("/proc/self/uid_map").read().split()))
    n = os.open("/proc/self/ns/net", os.O_RDONLY)
    mine = os.stat("/proc/self/ns/user").st_ino
    try:
        owner = fcntl.ioctl(n, NS_GET_USERNS)
        same = os.fstat(owner).st_ino == mine
        os.close(owner)
    except OSError:  # EPERM: the owner is above this user namespace
        same = False
    out.append("net owned by my user namespace: %s" % same)
    u = os.open("/proc/self/ns/user", os.O_RDONLY)
    buf = bytearray(4)
    fcntl.ioctl(u, NS_GET_OWNER_UID, buf)
    out.append("user namespace owner uid: %d" % int.from_bytes(buf, "little"))
    for f in (n, u): os.close(f)
    return out
def ip(*a):
    return subprocess.run(["ip"] + list(a), capture_output=True, text=True)
r = ip("link", "set", "lo", "up")
if r.returncode: open(D + "/result", "w").write("FAIL setup: %s" % r.stderr); sys.exit(1)
l = socket.socket(); l.bind(("127.0.0.1", 7777)); l.listen(4)
before = state()
open(D + "/before", "w").write("\n".join(before))
open(D + "/ready", "w").close()
while not os.path.exists(D + "/go"): time.sleep(0.05)
e = []
if SABOTAGE:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0: e.append("sabotage: unshare failed")
after = state()
if after != before: e.append("state: before %r after %r" % (before, after))
r = ip("addr", "add", "10.9.9.9/32", "dev", "lo")
if r.returncode: e.append("CAP_NET_ADMIN in the network namespace: %s" % r.stderr.strip())
c = socket.create_connection(("127.0.0.1", 7777), timeout=5)
a, _ = l.accept(); c.send(b"x")
if a.recv(1) != b"x": e.append("the listener's connection passes no data")
open(D + "/result", "w").write("FAIL " + "; ".join(e) if e else "PASS")
"#;

struct Ctr {
    dir: std::path::PathBuf,
    init: i32,
    wrapper: i32,
}

impl Drop for Ctr {
    fn drop(&mut self) {
        for p in [self.wrapper, self.init].into_iter().filter(|&p| p > 0) {
            for d in descendants(p).into_iter().rev() {
                // SAFETY: plain kill of a pid this test started.
                unsafe { libc::kill(d, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
            reap(p, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_file(f: &Path, pid: i32) {
    let start = Instant::now();
    while !f.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60) && alive(pid),
            "{} did not appear",
            f.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(tag: &str, sabotage: bool) -> Ctr {
    init();
    let dir = temp_dir(tag);
    std::fs::write(dir.join("init.py"), INIT).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = dir.to_str().unwrap();
    let mut args = vec![format!("{d}/init.py"), d.to_string()];
    if sabotage {
        args.push("sabotage".into());
    }
    let o = Command::new(crest_bin())
        .args(["run", "--log", &format!("{d}/log"), "--"])
        .args(["setpriv", "--reuid=100000", "--regid=100000"])
        .args(["--clear-groups", "unshare", "--user", "--net", "--pid"])
        .args(["--fork", "--mount-proc", "python3"])
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let wrapper: i32 = stdout(&o).trim().parse().unwrap();
    let start = Instant::now();
    let init = loop {
        let kids = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            break k.parse().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no container");
        std::thread::sleep(Duration::from_millis(2));
    };
    std::fs::write(format!("/proc/{init}/uid_map"), "0 100000 65536\n").unwrap();
    std::fs::write(format!("/proc/{init}/gid_map"), "0 100000 65536\n").unwrap();
    wait_file(&dir.join("ready"), init);
    Ctr { dir, init, wrapper }
}

/// The inode of the user namespace owning network namespace of `pid`,
/// and that of `pid`'s user namespace.
fn owners(pid: i32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    // SAFETY: NS_GET_USERNS on a namespace descriptor we own.
    let fd = unsafe { libc::ioctl(net.as_raw_fd(), 0xb701) };
    assert!(
        fd >= 0,
        "NS_GET_USERNS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor we own.
    let owner = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mine = std::fs::metadata(format!("/proc/{pid}/ns/user")).unwrap();
    (owner.metadata().unwrap().ino(), mine.ino())
}

fn dump_and_restore(b: &mut Ctr) {
    let img = b.dir.join("img");
    let (o, u) = owners(b.init);
    assert_eq!(
        o, u,
        "the container's netns is not its userns's before the dump"
    );
    let out = crest(&[
        "dump",
        "-p",
        &b.init.to_string(),
        "-o",
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "dump: {}", stderr(&out));
    reap(b.init, Duration::from_secs(10));
    reap(b.wrapper, Duration::from_secs(10));
    b.wrapper = 0;
    let out = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    b.init = stdout(&out).trim().parse().unwrap();
    let (o, u) = owners(b.init);
    assert_eq!(
        o, u,
        "the restored netns is not owned by the restored userns"
    );
    let map = std::fs::read_to_string(format!("/proc/{}/uid_map", b.init)).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
}

fn verdict(b: &Ctr) -> String {
    std::fs::write(b.dir.join("go"), "").unwrap();
    wait_file(&b.dir.join("result"), b.init);
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(b.dir.join("result")).unwrap()
}

#[test]
fn network_namespace_owned_by_the_containers_user_namespace() {
    let mut b = start("userns-net", false);
    dump_and_restore(&mut b);
    dump_and_restore(&mut b);
    let v = verdict(&b);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn network_namespace_owner_checker_detects_a_foreign_owner() {
    let mut b = start("userns-net-sabotage", true);
    dump_and_restore(&mut b);
    let v = verdict(&b);
    assert!(v.starts_with("FAIL"), "{v}");
    assert!(v.contains("net owned by my user namespace: False"), "{v}");
    assert!(v.contains("CAP_NET_ADMIN"), "{v}");
}
