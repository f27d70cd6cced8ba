//! Lazy (post-copy) restore (`crest restore --lazy`): the tree runs before
//! its private anonymous memory is in; every page is filled on first
//! touch or pushed in the background.  The `lazy` workload checks every
//! byte of its memory while the pages are still arriving (and drops,
//! moves and forks part of it meanwhile); a lost page source must kill
//! the tree, never let it run with a wrong page.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `crest restore --lazy --json -i IMG` left waiting for the tree (not
/// detached): its first line says the tree runs, its second that every
/// page is in.
struct LazyRestore {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl LazyRestore {
    fn start(img: &std::path::Path, env: &[(&str, &str)]) -> LazyRestore {
        let mut cmd = Command::new(crest_bin());
        cmd.args(["restore", "--lazy", "--json", "-i"])
            .arg(img)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting crest restore");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            use std::io::Read;
            let _ = BufReader::new(err).read_to_string(&mut s);
            s
        });
        LazyRestore {
            child,
            lines,
            stderr,
        }
    }

    fn line(&self, what: &str) -> Option<Value> {
        let l = self.lines.recv_timeout(Duration::from_secs(120)).ok()?;
        Some(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{what}: {l:?}: {e}")))
    }

    /// Waits for crest to exit: its status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.stderr.join().unwrap());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Dumps the `lazy` workload with `args`, restores it lazily, lets it
/// check itself while the pages arrive; returns (restore report, lazy
/// phase report).
fn lazy_cycle(args: &[&str]) -> (Value, Value) {
    let w = Workload::start("lazy", args);
    w.dump_ok();
    let r = LazyRestore::start(&w.image(), &[]);
    let running = r
        .line("the restore report")
        .expect("crest reports the tree runs");
    assert_eq!(running["pid"].as_i64(), Some(w.pid as i64), "{running}");
    let held = running["lazy_pages"].as_u64().unwrap_or(0);
    assert!(held > 0, "no page was held back: {running}");
    w.go();
    let done = r.line("the lazy report");
    let (st, err) = r.finish();
    let text = std::fs::read_to_string(w.dir.join("result")).unwrap_or_default();
    assert!(
        text.starts_with("PASS"),
        "lazily restored workload did not pass:\n{text}\ncrest: {err}\nlog:\n{}",
        w.log()
    );
    assert!(st.success(), "crest restore --lazy: {st:?}: {err}");
    let done = done.unwrap_or_else(|| panic!("no lazy report; crest: {err}"));
    let l = &done["lazy"];
    let filled = l["fault_pages"].as_u64().unwrap() + l["pushed_pages"].as_u64().unwrap();
    // Pages the program dropped before they were filled (region B's
    // MADV_DONTNEED, memory its allocator gave back) are never filled.
    let dropped = l["dropped_pages"].as_u64().unwrap();
    assert!(
        filled + dropped >= held,
        "{held} pages held back, {filled} filled, {dropped} dropped: {l}"
    );
    eprintln!(
        "lazy {args:?}: running after {:.1} ms, all pages after {:.1} ms ({l})",
        running["total_ms"].as_f64().unwrap(),
        l["all_pages_ms"].as_f64().unwrap()
    );
    // The workload (crest's child) was reaped by crest.
    std::mem::forget(w);
    (running, done)
}

#[test]
fn lazy_restore_of_256_mib_checks_every_byte_while_pages_arrive() {
    // `spin`: it reads its memory from the first instant it runs.
    let (_, done) = lazy_cycle(&["256", "spin"]);
    assert!(
        done["lazy"]["fault_pages"].as_u64().unwrap() > 0,
        "the workload touched its memory during the lazy phase, yet no fault: {done}"
    );
}

#[test]
fn fork_during_the_lazy_phase_gets_the_parents_pages() {
    let (_, done) = lazy_cycle(&["64", "fork"]);
    assert_eq!(done["lazy"]["forks"].as_u64(), Some(1), "{done}");
}

#[test]
fn detached_lazy_restore_returns_once_every_page_is_in() {
    let w = Workload::start("lazy", &["32"]);
    w.dump_ok();
    let img = w.image();
    let o = crest(&[
        "restore",
        "--lazy",
        "-d",
        "--json",
        "-i",
        img.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("JSON report");
    assert_eq!(v["pid"].as_i64(), Some(w.pid as i64), "{v}");
    assert!(v["lazy"]["all_pages_ms"].as_f64().is_some(), "{v}");
    w.go();
    w.expect_pass();
}

#[test]
fn lost_page_source_kills_the_tree() {
    let w = Workload::start("lazy", &["64", "spin"]);
    w.dump_ok();
    let r = LazyRestore::start(&w.image(), &[("CREST_FAULT_LAZY_AFTER", "3000")]);
    let (st, err) = r.finish();
    assert!(
        !st.success(),
        "crest restore --lazy succeeded without its pages"
    );
    assert!(
        err.contains("the page source failed") && err.contains("the restored tree was killed"),
        "crest says why: {err}"
    );
    assert!(!alive(w.pid), "pid {} still runs without its memory", w.pid);
    assert!(
        !w.dir.join("result").exists(),
        "the workload ran to a verdict without its memory"
    );
    std::mem::forget(w);
}

#[test]
fn crest_dying_during_the_lazy_phase_takes_the_tree_with_it() {
    let w = Workload::start("lazy", &["256", "spin"]);
    w.dump_ok();
    let r = LazyRestore::start(
        &w.image(),
        &[
            ("CREST_FAULT_LAZY_AFTER", "60000"),
            ("CREST_FAULT_LAZY_STALL", "1"),
        ],
    );
    let running = r.line("the restore report").expect("the tree runs");
    assert_eq!(running["pid"].as_i64(), Some(w.pid as i64), "{running}");
    std::thread::sleep(Duration::from_millis(500));
    let crest_pid = r.child.id() as i32;
    // SAFETY: kills the crest this test started.
    unsafe { libc::kill(crest_pid, libc::SIGKILL) };
    let (st, _) = r.finish();
    assert_eq!(st.code(), None, "crest was killed");
    // The workload comes to this test (a subreaper) once crest is gone.
    let e = reap(w.pid, Duration::from_secs(10));
    assert_eq!(
        e,
        Some(Exit::Signal(libc::SIGKILL)),
        "the tree must be killed when crest dies in the lazy phase"
    );
    assert!(
        !w.dir.join("result").exists(),
        "the workload ran to a verdict without its memory"
    );
    std::mem::forget(w);
}

/// Time to a running tree and until every page is in, 256 MiB vs 1 GiB
/// (printed; the pages are read from the image file first, so the first
/// figure grows with the image too).
#[test]
fn lazy_restore_times_by_size() {
    for mib in ["256", "1024"] {
        let (running, done) = lazy_cycle(&[mib]);
        println!(
            "lazy restore {mib} MiB: running after {:.1} ms, all pages in after {:.1} ms",
            running["total_ms"].as_f64().unwrap(),
            done["lazy"]["all_pages_ms"].as_f64().unwrap()
        );
    }
}

/// A process forked during the lazy phase holds lazily filled memory
/// too: if crest dies then, the watchdog kills it with the restored ones
/// (crest hands it the child's userfaultfd at the fork and its pidfd once
/// found).
#[test]
fn crest_dying_after_a_fork_in_the_lazy_phase_kills_the_child_too() {
    let w = Workload::start("lazy", &["256", "fork"]);
    w.dump_ok();
    let r = LazyRestore::start(
        &w.image(),
        &[
            ("CREST_FAULT_LAZY_AFTER", "60000"),
            ("CREST_FAULT_LAZY_STALL", "1"),
        ],
    );
    let running = r.line("the restore report").expect("the tree runs");
    assert_eq!(running["pid"].as_i64(), Some(w.pid as i64), "{running}");
    // It forks first thing after go.
    w.go();
    let t0 = Instant::now();
    let child = loop {
        if let Some(&c) = descendants(w.pid).first() {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the workload did not fork"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    // Long enough for crest to find it (one turn of its loop).
    std::thread::sleep(Duration::from_millis(300));
    let crest_pid = r.child.id() as i32;
    // SAFETY: kills the crest this test started.
    unsafe { libc::kill(crest_pid, libc::SIGKILL) };
    let (st, _) = r.finish();
    assert_eq!(st.code(), None, "crest was killed");
    let e = reap(w.pid, Duration::from_secs(10));
    assert_eq!(e, Some(Exit::Signal(libc::SIGKILL)), "the restored process");
    // Orphaned, the child comes to this test (a subreaper) too.
    let c = reap(child, Duration::from_secs(10));
    assert_eq!(
        c,
        Some(Exit::Signal(libc::SIGKILL)),
        "the child forked during the lazy phase must be killed with crest"
    );
    assert!(
        !w.dir.join("result").exists(),
        "the workload ran to a verdict without its memory"
    );
    std::mem::forget(w);
}
