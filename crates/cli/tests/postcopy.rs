//! Post-copy migration (`crest migrate --lazy` → `crest restore --listen
//! --lazy`): the destination runs the tree at once and its memory follows.
//!
//! Two network namespaces joined by a veth pair stand for the hosts; the
//! destination runs in a PID namespace of its own (post-copy keeps the
//! source tree frozen while the restored one runs, so they cannot share
//! PIDs).  The `lazy` workload checks every byte of its memory after go.
//! Failure paths: the source killed mid-phase, a page of the source tree
//! unreadable (both policies), a wrong key, a destination sharing the
//! PID space; a sabotage run shows a wrong page would be caught.

mod common;
use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

fn key(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [fill; 32]).unwrap();
    p
}

fn tag() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Two network namespaces joined by a veth pair (10.214.N.1 in `a`,
/// .2 in `b`); removed on drop.
struct NetPair {
    a: String,
    b: String,
    addr_b: String,
}

impl NetPair {
    fn new() -> NetPair {
        let n = tag() + 1;
        let t = format!("{}p{n}", std::process::id() % 100_000);
        let net = n % 250;
        let pair = NetPair {
            a: format!("crest-pc-{t}-a"),
            b: format!("crest-pc-{t}-b"),
            addr_b: format!("10.214.{net}.2"),
        };
        let (va, vb) = (format!("cpa{t}"), format!("cpb{t}"));
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("running ip");
            assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &pair.a]);
        ip(&["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, host) in [(&pair.a, &va, 1), (&pair.b, &vb, 2)] {
            let addr = format!("10.214.{net}.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// nsenter into the network namespace only (crest refuses trees in
    /// another mount namespace than its own).
    fn enter(ns: &str) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{ns}")]
    }

    fn workload_in_a(&self, args: &[&str]) -> Workload {
        let path = format!("/run/netns/{}", self.a);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this short-lived thread only; its children
            // are born in the namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Workload::start("lazy", &a)
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// `crest restore --listen --lazy --json` in namespace `b` and a PID
/// namespace of its own (where it is PID 1: it returns the tree's exit
/// status).
struct Dest {
    child: Child,
    port: u16,
    err: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Dest {
    fn spawn(net: &NetPair, k: &Path, own_pidns: bool) -> Dest {
        init();
        let mut pre = NetPair::enter(&net.b);
        if own_pidns {
            pre.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
        }
        let mut cmd = Command::new(&pre[0]);
        cmd.args(&pre[1..])
            .arg(crest_bin())
            .args(["restore", "--listen", &format!("{}:0", net.addr_b)])
            .arg("--psk")
            .arg(k)
            .args(["--lazy", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the destination");
        let err = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let e2 = err.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(a) = line.strip_prefix("crest: listening on ") {
                    let _ = tx.send(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
                }
                let mut e = e2.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("destination did not listen: {}", err.lock().unwrap()));
        Dest {
            child,
            port,
            err,
            reader,
        }
    }

    fn to(&self, net: &NetPair) -> String {
        format!("{}:{}", net.addr_b, self.port)
    }

    /// Waits until the destination's stderr holds a JSON line with `key`.
    fn wait_line(&self, key: &str, limit: Duration) -> Option<Value> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let found = self
                .err
                .lock()
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v.get(key).is_some());
            if found.is_some() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(180) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let t0 = Instant::now();
        while !self.reader.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        (st, self.err.lock().unwrap().clone())
    }
}

fn migrate_cmd(net: &NetPair, pid: i32, to: &str, k: &Path, extra: &[&str]) -> Command {
    let pre = NetPair::enter(&net.a);
    let mut cmd = Command::new(&pre[0]);
    cmd.args(&pre[1..])
        .arg(crest_bin())
        .args(["migrate", "-q", "--lazy", "--json", "-p", &pid.to_string()])
        .args(["--to", to, "--psk"])
        .arg(k)
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

fn json_line(s: &str, key: &str) -> Option<Value> {
    s.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get(key).is_some())
}

/// The tree left this test's PID space: its pid is not ours to kill.
fn forget(w: Workload) -> PathBuf {
    let dir = w.dir.clone();
    std::mem::forget(w);
    dir
}

fn result(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("result")).unwrap_or_default()
}

/// A successful post-copy migration of `lazy` with `args`: go is given
/// `go_early` (while pages still come) or after the migration ended.
fn migrate_ok(args: &[&str], go_early: bool, env: &[(&str, &str)]) -> (String, Value, String) {
    let net = NetPair::new();
    let w = net.workload_in_a(args);
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, true);
    let reaped = {
        let pid = w.pid;
        std::thread::spawn(move || reap(pid, Duration::from_secs(180)))
    };
    let mut cmd = migrate_cmd(&net, w.pid, &dest.to(&net), &k, &[]);
    cmd.envs(env.iter().copied());
    let mig = cmd.stderr(Stdio::piped()).spawn().unwrap();
    if go_early {
        let r = dest.wait_line("lazy_pages", Duration::from_secs(60));
        assert!(
            r.is_some(),
            "no restore report: {}",
            dest.err.lock().unwrap()
        );
        w.go();
    }
    let out = mig.wait_with_output().unwrap();
    let e = stderr(&out);
    assert!(
        out.status.success(),
        "migrate failed: {e}\n{}",
        dest.err.lock().unwrap()
    );
    let report = json_line(&e, "lazy").unwrap_or_else(|| panic!("no report: {e}"));
    assert_eq!(
        report["restored_pid"].as_i64(),
        Some(w.pid as i64),
        "{report}"
    );
    assert_eq!(
        reaped.join().unwrap(),
        Some(Exit::Signal(libc::SIGKILL)),
        "the source tree goes once every page is there"
    );
    if !go_early {
        w.go();
    }
    let dir = forget(w);
    let (st, err) = dest.finish();
    let res = result(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(st.success() || !res.is_empty(), "destination: {err}");
    (res, report, err)
}

/// 256 MiB of patterned memory, re-read all the time (so the restored
/// process faults at once): every byte checked after the lazy phase.
#[test]
fn postcopy_256_mib_between_two_network_namespaces() {
    let (res, report, err) = migrate_ok(&["256", "spin"], false, &[]);
    assert!(res.starts_with("PASS"), "{res}\ndestination: {err}");
    let l = &report["lazy"];
    assert!(l["pages"].as_u64() > Some(65000), "{report}");
    eprintln!(
        "post-copy 256 MiB: running at the destination {:.1} ms after the freeze, all pages \
         in after {:.1} ms, {} pages asked for; image sent frozen {} bytes; destination: {}",
        report["downtime_ms"].as_f64().unwrap_or(-1.0),
        l["all_in_ms"].as_f64().unwrap_or(-1.0),
        l["requested_pages"],
        l["image_bytes"],
        json_line(&err, "lazy")
            .map(|v| v["lazy"].to_string())
            .unwrap_or_default()
    );
}

/// The process forks while most pages are still on their way (go is
/// given as soon as the tree runs): the child checks all of region A and
/// D, the parent everything and the child's verdict.
#[test]
fn fork_during_the_postcopy_phase_gets_every_page() {
    let (res, report, err) = migrate_ok(&["256", "fork"], true, &[]);
    assert!(res.starts_with("PASS"), "{res}\ndestination: {err}");
    let forks = json_line(&err, "lazy").map(|v| v["lazy"]["forks"].clone());
    eprintln!("fork during post-copy: {report}; destination lazy: {forks:?}");
    assert!(
        forks.and_then(|f| f.as_u64()) >= Some(1),
        "the fork came after the lazy phase: {err}"
    );
}

/// Sabotage: the source changes one byte of one page of region A as it
/// sends it; the workload's checks must catch it (so a PASS above means
/// every byte arrived right).
#[test]
fn sabotaged_page_is_caught_by_the_workload() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["64"]);
    let info = std::fs::read_to_string(w.dir.join("info")).unwrap();
    let a = info
        .lines()
        .find_map(|l| l.strip_prefix("a="))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, true);
    let target = format!("{:x}", a + 4096 * 37 + 808);
    let out = migrate_cmd(&net, w.pid, &dest.to(&net), &k, &[])
        .env("CREST_FAULT_POSTCOPY_CORRUPT", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    w.go();
    let dir = forget(w);
    let (_, err) = dest.finish();
    let res = result(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        res.starts_with("FAIL") && res.contains("words wrong"),
        "the changed page must be caught: {res}\ndestination: {err}"
    );
}

/// The source crest dies (SIGKILL) while pages are still missing: the
/// destination kills its tree, which never reaches a verdict, and the
/// source's watchdog kills the frozen tree (the default policy).
#[test]
fn source_dying_mid_phase_kills_the_destination_tree() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["256", "spin"]);
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, true);
    let reaped = {
        let pid = w.pid;
        std::thread::spawn(move || reap(pid, Duration::from_secs(120)))
    };
    let mut mig = migrate_cmd(&net, w.pid, &dest.to(&net), &k, &[])
        .env("CREST_FAULT_POSTCOPY_STALL_AFTER", "20000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        dest.wait_line("lazy_pages", Duration::from_secs(60))
            .is_some(),
        "{}",
        dest.err.lock().unwrap()
    );
    std::thread::sleep(Duration::from_millis(500));
    // nsenter execs crest: this is the source crest.
    mig.kill().unwrap();
    let _ = mig.wait();
    w.go();
    let (st, err) = dest.finish();
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("the restored tree was killed") && err.contains("source"),
        "{err}"
    );
    assert_eq!(
        reaped.join().unwrap(),
        Some(Exit::Signal(libc::SIGKILL)),
        "the source's watchdog kills the frozen tree"
    );
    let dir = forget(w);
    let res = result(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(res.is_empty(), "no copy may come to a verdict: {res}");
}

/// A page of the source tree cannot be read: the destination hears
/// ABORT and kills its tree; by default the source tree is killed too
/// (its copy may have run there).
#[test]
fn unreadable_source_page_kills_both_copies_by_default() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["256", "spin"]);
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, true);
    let reaped = {
        let pid = w.pid;
        std::thread::spawn(move || reap(pid, Duration::from_secs(120)))
    };
    let out = migrate_cmd(&net, w.pid, &dest.to(&net), &k, &[])
        .env("CREST_FAULT_POSTCOPY_UNREADABLE_AFTER", "20000")
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("reading its page") && e.contains("killed too"),
        "{e}"
    );
    assert_eq!(
        reaped.join().unwrap(),
        Some(Exit::Signal(libc::SIGKILL)),
        "{e}"
    );
    let dir = forget(w);
    let (st, err) = dest.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("the source failed") && err.contains("the restored tree was killed"),
        "{err}"
    );
}

/// The same with --lazy-resume-on-failure: the source tree resumes,
/// intact.
#[test]
fn unreadable_source_page_with_resume_on_failure_resumes_the_source() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["256", "spin"]);
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, true);
    let out = migrate_cmd(
        &net,
        w.pid,
        &dest.to(&net),
        &k,
        &["--lazy-resume-on-failure"],
    )
    .env("CREST_FAULT_POSTCOPY_UNREADABLE_AFTER", "20000")
    .output()
    .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("resumed here"), "{e}");
    let (st, err) = dest.finish();
    assert!(
        !st.success() && err.contains("the restored tree was killed"),
        "{err}"
    );
    assert!(alive(w.pid), "the source tree must run on: {e}");
    w.go();
    w.expect_pass();
}

/// A wrong key on the lazy path: refused before anything is sent.
#[test]
fn postcopy_with_a_wrong_key_is_refused() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["16"]);
    let k = key(&w.dir, "key", 7);
    let bad = key(&w.dir, "bad", 8);
    let dest = Dest::spawn(&net, &k, true);
    let out = migrate_cmd(&net, w.pid, &dest.to(&net), &bad, &[])
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success() && e.contains("same key"), "{e}");
    let (st, err) = dest.finish();
    assert!(!st.success(), "{err}");
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}

/// A destination in this PID space cannot take the tree post-copy (the
/// frozen source tree holds its PIDs): refused, the tree runs on.
#[test]
fn postcopy_into_the_same_pid_space_is_refused() {
    let net = NetPair::new();
    let w = net.workload_in_a(&["16"]);
    let k = key(&w.dir, "key", 7);
    let dest = Dest::spawn(&net, &k, false);
    let out = migrate_cmd(&net, w.pid, &dest.to(&net), &k, &[])
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success() && e.contains("PID space"), "{e}");
    let _ = dest.finish();
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}

/// Time until the tree runs at the destination, and until every page is
/// there, 256 MiB vs 1 GiB (printed): the first is the frozen part (the
/// state without the lazily sent pages), which should not grow with the
/// memory; the second does.
#[test]
fn postcopy_times_by_size() {
    for mib in ["256", "1024"] {
        let (res, report, err) = migrate_ok(&[mib, "spin"], false, &[]);
        assert!(res.starts_with("PASS"), "{res}\ndestination: {err}");
        let d = json_line(&err, "lazy_pages").unwrap_or_default();
        eprintln!(
            "post-copy {mib} MiB: freeze to running there {:.1} ms (destination restore {:.1} \
             ms), all pages in {:.1} ms after the freeze; {} pages sent lazily, {} on request",
            report["downtime_ms"].as_f64().unwrap_or(-1.0),
            d["restore_ms"].as_f64().unwrap_or(-1.0),
            report["lazy"]["all_in_ms"].as_f64().unwrap_or(-1.0),
            report["lazy"]["pages"],
            report["lazy"]["requested_pages"],
        );
    }
}
