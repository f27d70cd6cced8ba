//! Live migration (`crest migrate` → `crest restore --listen`).
//!
//! Both crests run on this machine, so they share the PID space: the
//! destination receives and checks the whole stream, then the source
//! kills its tree (the PIDs are handed over) and the destination restores
//! it; if that fails the source restores the tree from its own copy.  The
//! `mutator` workload rewrites its memory all the time and checks after
//! the migration that every page is the one of the instant it was frozen.
//!
//! Every failure path (wrong key, replayed stream, a byte changed in
//! transit, a cut stream, a restore failing on the destination) must end
//! with nothing restored there and the tree running at the source, intact.

mod common;
use common::*;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: &str = "48";

fn key(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [fill; 32]).unwrap();
    p
}

/// A destination `crest restore --listen ... -d`, started with `prefix`
/// (e.g. nsenter) and `env`.
struct Dest {
    child: Child,
    port: u16,
    err: Arc<Mutex<String>>,
    /// Reads the destination's stderr until it closes.
    reader: std::thread::JoinHandle<()>,
    pidfile: PathBuf,
}

impl Dest {
    fn spawn(
        prefix: &[&str],
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Dest {
        init();
        let pidfile = dir.join(format!("dest-pid-{}", rand_tag()));
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(crest_bin());
                c
            }
            None => Command::new(crest_bin()),
        };
        cmd.args(["restore", "-d", "--listen", listen, "--pidfile"])
            .arg(&pidfile)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
                    let port = a.rsplit(':').next().unwrap().parse::<u16>().unwrap();
                    let _ = tx.send(port);
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
            pidfile,
        }
    }

    /// Waits for the destination to end: its status and stderr.
    fn finish(mut self) -> (ExitStatus, String, Option<i32>) {
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Its last words, once stderr is closed (a restored process does
        // not keep it: give up waiting after a while all the same).
        let t0 = Instant::now();
        while !self.reader.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        (st, self.err.lock().unwrap().clone(), pid)
    }
}

fn rand_tag() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn migrate(prefix: &[&str], pid: i32, to: &str, extra: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(crest_bin());
            c
        }
        None => Command::new(crest_bin()),
    };
    cmd.args(["migrate", "-q", "-p", &pid.to_string(), "--to", to])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running crest migrate")
}

/// Reaps the source tree's root once the migration kills it (the PIDs
/// must be free for the destination).
fn reaper(pid: i32) -> std::thread::JoinHandle<Option<Exit>> {
    std::thread::spawn(move || reap(pid, Duration::from_secs(120)))
}

/// The workload still runs here, was not disturbed, and passes its checks.
fn still_fine(w: Workload) {
    assert!(alive(w.pid), "the source tree must run on: {}", w.log());
    std::thread::sleep(Duration::from_millis(200));
    w.go();
    w.expect_pass();
}

/// A successful migration: the tree runs at the destination with its
/// PID and passes its checks; the source's copy is gone.
fn expect_migrated(
    w: Workload,
    out: &Output,
    dest: Dest,
    reaped: std::thread::JoinHandle<Option<Exit>>,
) {
    let (st, err, pid) = dest.finish();
    assert!(
        out.status.success(),
        "migrate failed: {}\ndestination: {err}",
        stderr(out)
    );
    assert!(st.success(), "destination failed: {err}");
    assert_eq!(pid, Some(w.pid), "restored pid; destination: {err}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert!(alive(w.pid), "restored tree not running: {err}");
    w.go();
    w.expect_pass();
}

#[test]
fn migrates_a_mutating_process_over_tcp() {
    let w = Workload::start("mutator", &[MIB]);
    let k = key(&w.dir, "key", 7);
    let ks = k.to_str().unwrap();
    let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &[], &w.dir);
    std::thread::sleep(Duration::from_millis(300));
    let reaped = reaper(w.pid);
    let out = migrate(
        &[],
        w.pid,
        &format!("127.0.0.1:{}", dest.port),
        &["--psk", ks, "--json"],
    );
    let e = stderr(&out);
    eprintln!("{e}");
    let r: serde_json::Value =
        serde_json::from_str(e.lines().last().unwrap_or("")).unwrap_or_default();
    assert!(
        r["precopy_rounds"].as_u64() >= Some(2),
        "no pre-copy rounds: {e}"
    );
    assert!(r["precopied_pages"].as_u64() > Some(0), "{e}");
    expect_migrated(w, &out, dest, reaped);
}

/// Without pre-copy: the whole image is sent while the tree is frozen.
#[test]
fn migrates_without_pre_copy() {
    let w = Workload::start("mutator", &[MIB]);
    let k = key(&w.dir, "key", 8);
    let ks = k.to_str().unwrap();
    let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &[], &w.dir);
    std::thread::sleep(Duration::from_millis(300));
    let reaped = reaper(w.pid);
    let to = format!("127.0.0.1:{}", dest.port);
    let out = migrate(&[], w.pid, &to, &["--psk", ks, "--json", "--no-pre-copy"]);
    assert!(!stderr(&out).contains("precopy_rounds"), "{}", stderr(&out));
    expect_migrated(w, &out, dest, reaped);
}

/// The destination dies (SIGKILL) in its restore, after the handover:
/// the source sees the connection end and restores the tree itself.
#[test]
fn destination_dying_after_the_handover_brings_the_tree_back() {
    for extra in [&[][..], &["--no-pre-copy"][..]] {
        let w = Workload::start("mutator", &[MIB]);
        let k = key(&w.dir, "key", 6);
        let ks = k.to_str().unwrap();
        let env = [("CREST_FAULT_AT", "1"), ("CREST_FAULT_MODE", "kill")];
        let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &env, &w.dir);
        let reaped = reaper(w.pid);
        let mut args = vec!["--psk", ks];
        args.extend_from_slice(extra);
        let out = migrate(&[], w.pid, &format!("127.0.0.1:{}", dest.port), &args);
        let (st, err, pid) = dest.finish();
        assert!(!st.success(), "{err}");
        assert_eq!(pid, None);
        let e = stderr(&out);
        assert!(!out.status.success(), "{e}");
        assert!(
            e.contains("closed the connection") && e.contains("restored here again"),
            "{e}"
        );
        assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
        still_fine(w);
    }
}

#[test]
fn tcp_listen_and_send_need_a_key() {
    let o = crest(&["restore", "--listen", "127.0.0.1:0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("without --psk"), "{}", stderr(&o));
    let w = Workload::start("mutator", &["8"]);
    let o = migrate(&[], w.pid, "127.0.0.1:9", &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--psk"), "{}", stderr(&o));
    let d = w.dir.join("short");
    std::fs::write(&d, b"short").unwrap();
    let o = migrate(&[], w.pid, "127.0.0.1:9", &["--psk", d.to_str().unwrap()]);
    assert!(stderr(&o).contains("at least 16"), "{}", stderr(&o));
    still_fine(w);
}

#[test]
fn wrong_key_is_refused_before_anything_is_sent() {
    let w = Workload::start("mutator", &[MIB]);
    let a = key(&w.dir, "a", 1);
    let b = key(&w.dir, "b", 2);
    let dest = Dest::spawn(
        &[],
        "127.0.0.1:0",
        &["--psk", a.to_str().unwrap()],
        &[],
        &w.dir,
    );
    let out = migrate(
        &[],
        w.pid,
        &format!("127.0.0.1:{}", dest.port),
        &["--psk", b.to_str().unwrap()],
    );
    let (st, err, pid) = dest.finish();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("same key"), "{}", stderr(&out));
    assert!(!st.success(), "destination accepted a wrong key: {err}");
    assert_eq!(pid, None);
    still_fine(w);
}

/// What the test proxy does to the source's bytes.
#[derive(Clone, Copy)]
enum Meddle {
    /// Flip one bit of the byte at this offset.
    Flip(u64),
    /// Forward this many bytes, then cut both directions.
    Cut(u64),
    /// Forward unchanged.
    Pass,
}

/// A TCP proxy for one connection to `port`; returns its port and, once
/// done, the bytes the source sent.
fn proxy(port: u16, m: Meddle) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s2, mut d2) = (s.try_clone().unwrap(), d.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut d2, &mut s2);
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut at = 0u64;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            seen.extend_from_slice(chunk);
            match m {
                Meddle::Flip(off) if off >= at && off < at + n as u64 => {
                    chunk[(off - at) as usize] ^= 0x10;
                }
                Meddle::Cut(len) if at + n as u64 >= len => {
                    let keep = (len - at) as usize;
                    let _ = d.write_all(&chunk[..keep]);
                    let _ = d.shutdown(std::net::Shutdown::Both);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    break;
                }
                _ => {}
            }
            if d.write_all(chunk).is_err() {
                break;
            }
            at += n as u64;
        }
        let _ = d.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
        seen
    });
    (p, h)
}

/// Migrates `w` through a proxy doing `m`; expects both sides to fail
/// with `dest_says` in the destination's error.
fn meddled(w: &Workload, m: Meddle, dest_says: &str) {
    let k = key(&w.dir, "key", 9);
    let ks = k.to_str().unwrap();
    let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &[], &w.dir);
    let (p, h) = proxy(dest.port, m);
    let out = migrate(
        &[],
        w.pid,
        &format!("127.0.0.1:{p}"),
        &["--psk", ks, "--timeout", "20"],
    );
    let (st, err, pid) = dest.finish();
    let _ = h.join();
    assert!(
        !out.status.success(),
        "migrate succeeded through a meddling proxy"
    );
    assert!(stderr(&out).contains("runs on here"), "{}", stderr(&out));
    assert!(
        !st.success(),
        "destination accepted a meddled stream: {err}"
    );
    assert!(err.contains(dest_says), "destination said: {err}");
    assert!(err.contains("nothing was restored"), "{err}");
    assert_eq!(pid, None);
    assert!(alive(w.pid));
}

#[test]
fn changed_byte_is_refused() {
    let w = Workload::start("mutator", &[MIB]);
    // Inside the page data of the third DATA frame.
    meddled(
        &w,
        Meddle::Flip(2 * (1 << 20) + 12345),
        "failed authentication",
    );
    still_fine(w);
}

#[test]
fn cut_stream_is_refused() {
    let w = Workload::start("mutator", &[MIB]);
    meddled(&w, Meddle::Cut(5 * (1 << 20) + 7), "truncated");
    still_fine(w);
}

/// A stream recorded from a real migration (which fails at the
/// destination's restore, so the tree is restored at the source again)
/// and replayed to a new destination is refused: the new destination's
/// nonce differs.
#[test]
fn replayed_stream_is_refused_and_failed_restore_returns_the_tree() {
    let w = Workload::start("mutator", &[MIB]);
    let k = key(&w.dir, "key", 5);
    let ks = k.to_str().unwrap();
    // The first fault point of the destination is in its restore.
    let dest = Dest::spawn(
        &[],
        "127.0.0.1:0",
        &["--psk", ks],
        &[("CREST_FAULT_AT", "1")],
        &w.dir,
    );
    let (p, h) = proxy(dest.port, Meddle::Pass);
    let reaped = reaper(w.pid);
    let out = migrate(&[], w.pid, &format!("127.0.0.1:{p}"), &["--psk", ks]);
    let (st, err, pid) = dest.finish();
    let recorded = h.join().unwrap();
    assert!(!st.success(), "{err}");
    assert!(err.contains("injected fault"), "{err}");
    assert_eq!(pid, None);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("restored here again"), "{e}");
    // The original was handed over (killed) and is back, restored here.
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert!(alive(w.pid), "the tree must be back: {e}");
    assert!(recorded.len() > 1 << 20);

    let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &[], &w.dir);
    let mut s = TcpStream::connect(("127.0.0.1", dest.port)).unwrap();
    let _ = s.write_all(&recorded);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let (st, err, pid) = dest.finish();
    assert!(!st.success(), "a replayed stream was accepted: {err}");
    assert!(err.contains("failed authentication"), "{err}");
    assert_eq!(pid, None);
    still_fine(w);
}

/// `--to -` and `--listen -` joined both ways (as through ssh with a
/// duplex helper): the same protocol with replies.
#[test]
fn migrates_over_a_duplex_stdio_channel() {
    let w = Workload::start("mutator", &[MIB]);
    init();
    let pidfile = w.dir.join("dest-pid");
    let mut dest = Command::new(crest_bin())
        .args(["restore", "-d", "--listen", "-", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reaped = reaper(w.pid);
    let src = Command::new(crest_bin())
        .args(["migrate", "-q", "-p", &w.pid.to_string(), "--to", "-"])
        .stdin(Stdio::from(dest.stdout.take().unwrap()))
        .stdout(Stdio::from(dest.stdin.take().unwrap()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let d = dest.wait_with_output().unwrap();
    assert!(src.status.success(), "{}", stderr(&src));
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, w.pid);
    w.go();
    w.expect_pass();
}

/// `crest migrate --to - --one-way | crest restore --listen -`: no reply
/// channel; the tree is killed once the stream is out.
#[test]
fn migrates_through_a_one_way_pipe() {
    let w = Workload::start("mutator", &[MIB]);
    init();
    let pidfile = w.dir.join("dest-pid");
    let mut src = Command::new(crest_bin())
        .args([
            "migrate",
            "-q",
            "--one-way",
            "-p",
            &w.pid.to_string(),
            "--to",
            "-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reaped = reaper(w.pid);
    let d = Command::new(crest_bin())
        .args(["restore", "-d", "--listen", "-", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::from(src.stdout.take().unwrap()))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(src.wait().unwrap().success());
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    w.go();
    w.expect_pass();
}

/// A one-way stream without the reply channel it does not ask for is
/// refused on a TCP port and on a terminal; `--to -` without a reply
/// channel (standard input a terminal) is refused too — the tree runs on.
#[test]
fn keyed_one_way_stream_needs_the_same_key() {
    let w = Workload::start("mutator", &["8"]);
    let k = key(&w.dir, "k", 3);
    let mut src = Command::new(crest_bin())
        .args([
            "migrate",
            "-q",
            "--one-way",
            "-p",
            &w.pid.to_string(),
            "--to",
            "-",
        ])
        .arg("--psk")
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Command::new(crest_bin())
        .args(["restore", "-d", "--listen", "-"])
        .stdin(Stdio::from(src.stdout.take().unwrap()))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let s = src.wait().unwrap();
    assert!(!d.status.success());
    assert!(stderr(&d).contains("give --psk"), "{}", stderr(&d));
    // The destination went away before the stream: the source failed and
    // the tree runs on.
    assert!(!s.success());
    still_fine(w);
}

/// Two network namespaces joined by a veth pair, addresses 10.213.N.1
/// (a) and 10.213.N.2 (b); removed on drop, also when the test fails.
struct NetPair {
    a: String,
    b: String,
    addr_b: String,
}

impl NetPair {
    fn new() -> NetPair {
        let n = rand_tag() + 1;
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let pair = NetPair {
            a: format!("crest-mig-{tag}-a"),
            b: format!("crest-mig-{tag}-b"),
            addr_b: format!("10.213.{}.2", n % 250),
        };
        let (va, vb) = (format!("cma{tag}"), format!("cmb{tag}"));
        let net = n % 250;
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
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.213.{net}.{host}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs a command in namespace `ns` (network only: nsenter, not `ip
    /// netns exec`, which also makes a mount namespace of its own, and
    /// crest refuses trees in another mount namespace than its own).
    fn enter(ns: &str) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{ns}")]
    }

    /// Starts a workload inside namespace `a`.
    fn workload_in_a(&self, scenario: &str, args: &[&str]) -> Workload {
        let path = format!("/run/netns/{}", self.a);
        let (scenario, args): (String, Vec<String>) = (
            scenario.into(),
            args.iter().map(|s| s.to_string()).collect(),
        );
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this (short-lived) thread only; its
            // children are born in the namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Workload::start(&scenario, &a)
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

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Source and destination in two network namespaces ("hosts") joined by
/// a veth pair; they share the machine's PID space, so the PIDs are
/// handed over.
#[test]
fn migrates_between_two_network_namespaces() {
    let net = NetPair::new();
    let w = net.workload_in_a("mutator", &[MIB]);
    let k = key(&w.dir, "key", 4);
    let ks = k.to_str().unwrap();
    let ea = NetPair::enter(&net.a);
    let eb = NetPair::enter(&net.b);
    let dest = Dest::spawn(
        &strs(&eb),
        &format!("{}:0", net.addr_b),
        &["--psk", ks],
        &[],
        &w.dir,
    );
    let reaped = reaper(w.pid);
    std::thread::sleep(Duration::from_millis(300));
    let to = format!("{}:{}", net.addr_b, dest.port);
    let out = migrate(&strs(&ea), w.pid, &to, &["--psk", ks, "--json"]);
    eprintln!("{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"handover\":true"),
        "{}",
        stderr(&out)
    );
    // The restored process lives in b's network namespace.
    let ns_b = std::fs::read_link(format!("/proc/{}/ns/net", w.pid));
    expect_migrated_keep(&w, &out, dest, reaped);
    let b_ino = std::fs::metadata(format!("/run/netns/{}", net.b)).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(
        ns_b.unwrap().to_string_lossy(),
        format!("net:[{}]", b_ino.unwrap()),
        "the restored tree is not in the destination's namespace"
    );
    w.go();
    w.expect_pass();
}

/// Like [`expect_migrated`], leaving the go to the caller.
fn expect_migrated_keep(
    w: &Workload,
    out: &Output,
    dest: Dest,
    reaped: std::thread::JoinHandle<Option<Exit>>,
) {
    let (st, err, pid) = dest.finish();
    assert!(
        out.status.success(),
        "migrate failed: {}\ndestination: {err}",
        stderr(out)
    );
    assert!(st.success(), "destination failed: {err}");
    assert_eq!(pid, Some(w.pid), "restored pid; destination: {err}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert!(alive(w.pid), "restored tree not running: {err}");
}

/// A destination in another PID space whose restore fails: the source
/// tree, frozen all along, resumes (it was never killed).
#[test]
fn failed_restore_in_another_pid_namespace_resumes_the_tree() {
    let net = NetPair::new();
    let w = net.workload_in_a("mutator", &[MIB]);
    let k = key(&w.dir, "key", 4);
    let ks = k.to_str().unwrap();
    let ea = NetPair::enter(&net.a);
    let mut eb = NetPair::enter(&net.b);
    eb.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
    let listen = format!("{}:0", net.addr_b);
    let dest = Dest::spawn(
        &strs(&eb),
        &listen,
        &["--psk", ks],
        &[("CREST_FAULT_AT", "1")],
        &w.dir,
    );
    let to = format!("{}:{}", net.addr_b, dest.port);
    let out = migrate(&strs(&ea), w.pid, &to, &["--psk", ks]);
    let (st, err, _) = dest.finish();
    assert!(!st.success(), "{err}");
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("restore on the destination failed") && e.contains("runs on here"),
        "{e}"
    );
    still_fine(w);
}

/// A destination in a PID namespace of its own (`unshare --pid`) is
/// another PID space: no handover; it restores while the source tree is
/// still frozen (its PIDs are free there), and only its RUNNING makes
/// the source kill its tree.  The restored process's parent is the
/// destination crest (PID 1 there), which waits for it and returns its
/// exit status.
#[test]
fn migrates_into_another_pid_namespace_without_handover() {
    let net = NetPair::new();
    let w = net.workload_in_a("mutator", &[MIB]);
    let k = key(&w.dir, "key", 4);
    let ks = k.to_str().unwrap();
    let ea = NetPair::enter(&net.a);
    let mut eb = NetPair::enter(&net.b);
    eb.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
    init();
    let mut cmd = Command::new(&eb[0]);
    cmd.args(&eb[1..])
        .arg(crest_bin())
        .args([
            "restore",
            "--listen",
            &format!("{}:0", net.addr_b),
            "--psk",
            ks,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.rsplit(':').next().unwrap().to_string();
    let reaped = reaper(w.pid);
    let to = format!("{}:{}", net.addr_b, port);
    let out = migrate(&strs(&ea), w.pid, &to, &["--psk", ks, "--json"]);
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("\"handover\":false"), "{e}");
    assert!(e.contains(&format!("\"restored_pid\":{}", w.pid)), "{e}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    w.go();
    let st = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let result = std::fs::read_to_string(w.dir.join("result")).unwrap_or_default();
    assert!(
        result.starts_with("PASS"),
        "{result}\n{rest:?}\n{}",
        w.log()
    );
    assert!(st.success(), "destination: {rest:?}");
    // The pid is not ours to kill any more: it may be reused here.
    let dir = w.dir.clone();
    std::mem::forget(w);
    let _ = std::fs::remove_dir_all(dir);
}

/// A lazy destination (`restore --listen --lazy`): the tree runs there
/// before the pages received are written in, and the mutator (which
/// rewrites, remaps, unmaps and discards memory all the time) goes on
/// meanwhile; it checks every page after go.
#[test]
fn migrates_to_a_lazy_destination() {
    let w = Workload::start("mutator", &[MIB]);
    let k = key(&w.dir, "key", 9);
    let ks = k.to_str().unwrap();
    let dest = Dest::spawn(
        &[],
        "127.0.0.1:0",
        &["--psk", ks, "--lazy", "--json"],
        &[],
        &w.dir,
    );
    std::thread::sleep(Duration::from_millis(300));
    let reaped = reaper(w.pid);
    let to = format!("127.0.0.1:{}", dest.port);
    let out = migrate(&[], w.pid, &to, &["--psk", ks, "--json"]);
    let (st, err, pid) = dest.finish();
    assert!(
        out.status.success(),
        "migrate failed: {}\ndestination: {err}",
        stderr(&out)
    );
    assert!(st.success(), "destination failed: {err}");
    assert_eq!(pid, Some(w.pid), "restored pid; destination: {err}");
    let report: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("lazy").is_some())
        .unwrap_or_else(|| panic!("no lazy report from the destination: {err}"));
    assert!(
        report["lazy_pages"].as_u64() > Some(0),
        "nothing was restored lazily: {report}"
    );
    eprintln!("lazy destination: {report}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert!(alive(w.pid), "restored tree not running: {err}");
    w.go();
    w.expect_pass();
}

/// 256 MiB of patterned memory migrated between two network namespaces
/// to a lazy destination: the workload checks every byte after go.
#[test]
fn migrates_256_mib_to_a_lazy_destination_between_two_network_namespaces() {
    let net = NetPair::new();
    let w = net.workload_in_a("lazy", &["256"]);
    let k = key(&w.dir, "key", 5);
    let ks = k.to_str().unwrap();
    let ea = NetPair::enter(&net.a);
    let eb = NetPair::enter(&net.b);
    let dest = Dest::spawn(
        &strs(&eb),
        &format!("{}:0", net.addr_b),
        &["--psk", ks, "--lazy", "--json"],
        &[],
        &w.dir,
    );
    let reaped = reaper(w.pid);
    std::thread::sleep(Duration::from_millis(300));
    let to = format!("{}:{}", net.addr_b, dest.port);
    let out = migrate(&strs(&ea), w.pid, &to, &["--psk", ks, "--json"]);
    let (st, err, pid) = dest.finish();
    assert!(
        out.status.success(),
        "migrate failed: {}\ndestination: {err}",
        stderr(&out)
    );
    assert!(st.success(), "destination failed: {err}");
    assert_eq!(pid, Some(w.pid), "restored pid; destination: {err}");
    let report: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("lazy").is_some())
        .unwrap_or_else(|| panic!("no lazy report from the destination: {err}"));
    assert!(report["lazy_pages"].as_u64() > Some(60000), "{report}");
    eprintln!("source: {}\ndestination: {report}", stderr(&out));
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert!(alive(w.pid), "restored tree not running: {err}");
    w.go();
    w.expect_pass();
}

/// A migration of the `mutator` (its memory rewritten all the time, and
/// its churn slots unmapped, mapped again, moved with mremap, dropped with
/// MADV_DONTNEED and MADV_FREE during the rounds) to a destination that
/// builds the memory while the source runs (see
/// `crest::migrate::prebuild`), with `env` on the destination.  Returns
/// the workload (migrated, go given) and the destination's report.
fn prebuilt_migration(env: &[(&str, &str)]) -> (Workload, serde_json::Value) {
    prebuilt_migration_of("mutator", &[MIB], env, 1000)
}

/// [`prebuilt_migration`] of `scenario args`, at least `min_pages` kept.
fn prebuilt_migration_of(
    scenario: &str,
    args: &[&str],
    env: &[(&str, &str)],
    min_pages: u64,
) -> (Workload, serde_json::Value) {
    let w = Workload::start(scenario, args);
    let k = key(&w.dir, "key", 9);
    let ks = k.to_str().unwrap();
    let dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks, "--json"], env, &w.dir);
    std::thread::sleep(Duration::from_millis(300));
    let reaped = reaper(w.pid);
    let to = format!("127.0.0.1:{}", dest.port);
    let out = migrate(&[], w.pid, &to, &["--psk", ks, "--json"]);
    let (st, err, pid) = dest.finish();
    assert!(
        out.status.success(),
        "migrate: {}\ndest: {err}",
        stderr(&out)
    );
    assert!(st.success(), "destination failed: {err}");
    assert_eq!(pid, Some(w.pid), "restored pid; destination: {err}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    let r: serde_json::Value = err
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let p = &r["prebuilt"];
    assert!(
        p["mappings"].as_u64() >= Some(1),
        "nothing pre-built: {err}"
    );
    assert!(p["pages_kept"].as_u64() >= Some(min_pages), "{err}");
    w.go();
    (w, r)
}

/// Every byte of the pre-built memory is the source's at the freeze.
#[test]
fn memory_built_on_the_destination_is_exact() {
    let (w, _) = prebuilt_migration(&[]);
    w.expect_pass();
}

/// Pages the destination holds an older copy of (it keeps only the first
/// copy sent of each page, and notes so) are found at the freeze and
/// copied again from the spool.
#[test]
fn stale_prebuilt_pages_are_found_and_rewritten() {
    let (w, r) = prebuilt_migration(&[("CREST_PREBUILD_SABOTAGE", "stale")]);
    assert!(
        r["prebuilt"]["pages_rewritten"].as_u64() > Some(0),
        "no stale page found: {r}"
    );
    w.expect_pass();
}

/// Selftest: with the bookkeeping lying (older copies noted as the
/// newest), the stale pages reach the restored process, and its check
/// must fail.
#[test]
fn selftest_stale_prebuilt_pages_are_caught_by_the_workload() {
    let (w, _) = prebuilt_migration(&[("CREST_PREBUILD_SABOTAGE", "lie")]);
    let res = w.dir.join("result");
    let t0 = Instant::now();
    while !res.exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL"),
        "stale pages went unnoticed: {text}"
    );
}

/// The destination is killed while it builds the memory (pre-copy rounds
/// under way): the source resumes its tree, intact; nothing is left of
/// the destination.
#[test]
fn destination_killed_while_prebuilding_resumes_the_source() {
    let w = Workload::start("mutator", &["256"]);
    let k = key(&w.dir, "key", 10);
    let ks = k.to_str().unwrap();
    let mut dest = Dest::spawn(&[], "127.0.0.1:0", &["--psk", ks], &[], &w.dir);
    let to = format!("127.0.0.1:{}", dest.port);
    let dpid = dest.child.id() as i32;
    let killer = std::thread::spawn(move || {
        // Once pre-built memory arrives: crest's resident set grows.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let rss = std::fs::read_to_string(format!("/proc/{dpid}/statm"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0);
            if rss * 4096 > 32 << 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: plain kill of the destination this test started.
        unsafe { libc::kill(dpid, libc::SIGKILL) };
    });
    let out = migrate(&[], w.pid, &to, &["--psk", ks, "--json"]);
    killer.join().unwrap();
    let _ = dest.child.wait();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("it runs on here"), "{e}");
    assert!(!alive(dpid));
    still_fine(w);
}

/// A tree of 8 processes whose mappings share addresses (fork keeps
/// them), to a destination in a PID namespace of its own: only the first
/// process's ranges at an address are pre-built, the others' come from
/// the image; every process checks its memory after go.
#[test]
fn tree_with_shared_addresses_is_prebuilt_exactly() {
    let net = NetPair::new();
    let w = net.workload_in_a("tree", &[]);
    let k = key(&w.dir, "key", 11);
    let ks = k.to_str().unwrap();
    let ea = NetPair::enter(&net.a);
    let mut eb = NetPair::enter(&net.b);
    eb.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
    init();
    let mut cmd = Command::new(&eb[0]);
    cmd.args(&eb[1..])
        .arg(crest_bin())
        .args([
            "restore",
            "--json",
            "--listen",
            &format!("{}:0", net.addr_b),
            "--psk",
            ks,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.rsplit(':').next().unwrap().to_string();
    let reaped = reaper(w.pid);
    let to = format!("{}:{}", net.addr_b, port);
    let out = migrate(&strs(&ea), w.pid, &to, &["--psk", ks, "--json"]);
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert_eq!(reaped.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    w.go();
    let st = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let result = std::fs::read_to_string(w.dir.join("result")).unwrap_or_default();
    assert!(
        result.starts_with("PASS"),
        "{result}\n{rest:?}\n{}",
        w.log()
    );
    assert!(st.success(), "destination: {rest:?}");
    let r: serde_json::Value = rest
        .iter()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    assert!(
        r["prebuilt"]["mappings"].as_u64() >= Some(1),
        "nothing pre-built: {rest:?}"
    );
    let dir = w.dir.clone();
    std::mem::forget(w);
    let _ = std::fs::remove_dir_all(dir);
}
