//! crest SIGKILLed at random instants, spread uniformly over the whole
//! duration of dumps and restores: every task of a dumped tree must run on
//! exactly as it was (registers — the workloads check their own —, signal
//! mask, memory, maps; not stopped, not traced), and a killed restore must
//! leave no process and no file behind.
//!
//! The duration of an uninterrupted run is measured first; each kill then
//! comes at a uniformly drawn instant in [0, duration].  The short version
//! runs in `cargo test`; `scripts/stress-kill.sh` runs the long one
//! (`CREST_STRESS_KILLS=1`: 1 GiB and 50-process trees, ≥ 200 kills each
//! for dump and restore).  `CREST_KILL_SEED` replays a run.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small PRNG (splitmix64), seeded from the clock unless
/// `CREST_KILL_SEED` is set; the seed is printed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CREST_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random_kill: CREST_KILL_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, d].
    fn instant(&mut self, d: Duration) -> Duration {
        d.mul_f64((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn tracer_of(pid: i32) -> Option<i32> {
    status_field(pid, "TracerPid")?.parse().ok()
}

fn tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What a killed dump must not change in any task of the tree.
#[derive(Debug, PartialEq, Eq)]
struct TreeState {
    /// Per process: pid, /proc/PID/maps.
    maps: Vec<(i32, String)>,
    /// Per thread: tid, SigBlk.
    sigblk: Vec<(i32, String)>,
}

fn tree_pids(root: i32) -> Vec<i32> {
    let mut v = vec![root];
    v.extend(descendants(root));
    v.sort();
    v
}

fn tree_state(root: i32) -> TreeState {
    let mut s = TreeState {
        maps: Vec::new(),
        sigblk: Vec::new(),
    };
    for pid in tree_pids(root) {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        s.maps.push((pid, maps));
        for tid in tids(pid) {
            let blk = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("SigBlk:"))
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_default();
            s.sigblk.push((tid, blk));
        }
    }
    s
}

/// After crest died: every task of the tree is neither stopped nor traced
/// (the kernel detaches a dead tracer's tracees), keeps its mask and maps,
/// and goes on running (the workloads write a `result` as soon as one of
/// their own checks fails, e.g. a register that changed).
fn intact(w: &Workload, before: &TreeState) -> Result<(), String> {
    let start = Instant::now();
    for (pid, _) in &before.maps {
        for tid in tids(*pid) {
            loop {
                let p = format!("/proc/{pid}/task/{tid}/status");
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let get = |f: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                let (state, tracer) = (get("State"), get("TracerPid"));
                if !state.is_empty() && !state.starts_with(['T', 't', 'Z', 'X']) && tracer == "0" {
                    break;
                }
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(format!(
                        "task {tid} of pid {pid}: State {state:?}, TracerPid {tracer:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    // Let every task run a little: one left with a wrong context dies or
    // fails its own checks within a few of its iterations.
    std::thread::sleep(Duration::from_millis(30));
    if w.dir.join("result").exists() {
        return Err(format!(
            "the workload failed its own checks:\n{}",
            std::fs::read_to_string(w.dir.join("result")).unwrap_or_default()
        ));
    }
    let now = tree_state(w.pid);
    if now.maps.len() != before.maps.len() {
        return Err(format!(
            "processes of the tree: {:?} -> {:?}",
            before.maps.iter().map(|m| m.0).collect::<Vec<_>>(),
            now.maps.iter().map(|m| m.0).collect::<Vec<_>>()
        ));
    }
    for (b, n) in before.maps.iter().zip(&now.maps) {
        if b != n {
            let new: Vec<&str> = n.1.lines().filter(|l| !b.1.contains(l)).collect();
            let lost: Vec<&str> = b.1.lines().filter(|l| !n.1.contains(l)).collect();
            return Err(format!(
                "pid {}: /proc/PID/maps changed: new {new:?}, lost {lost:?}",
                b.0
            ));
        }
    }
    if now.sigblk != before.sigblk {
        return Err(format!(
            "blocked masks changed: {:?} -> {:?}",
            before.sigblk, now.sigblk
        ));
    }
    Ok(())
}

/// Runs `crest ARGS`, SIGKILLs it after `after` (unless it ended first)
/// and reaps it; returns whether it ran to its end and succeeded.
fn crest_killed_after(args: &[&str], after: Duration, tmp: &Path) -> bool {
    let mut child = Command::new(crest_bin())
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting crest");
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        let left = after.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_micros(200)));
    }
    let _ = child.kill();
    let st = child.wait().unwrap();
    st.success()
}

/// Times one uninterrupted run of `crest ARGS`, which must succeed.
fn timed(args: &[&str]) -> Duration {
    let t = Instant::now();
    let o = crest(args);
    assert!(o.status.success(), "crest {args:?}: {}", stderr(&o));
    t.elapsed()
}

/// Reaps every process of a tree crest killed (descendants first).
fn reap_tree(pids: &[i32]) {
    for &pid in pids.iter().rev() {
        reap(pid, Duration::from_secs(10));
    }
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    /// Killed before the end: the tree must have been intact.
    interrupted: usize,
    /// The run had finished (or committed the image) before the kill.
    completed: usize,
    harmed: Vec<String>,
}

fn harm(t: &mut Tally, msg: String) {
    eprintln!("random_kill: HARMED: {msg}");
    t.harmed.push(msg);
}

/// `n` dumps of a `scenario ARGS` workload, alternately `--leave-running`
/// and plain, each SIGKILLed at a uniform instant over the duration of an
/// uninterrupted dump of the same kind.
fn dump_kills(scenario: &str, args: &[&str], n: usize, rng: &mut Rng, t: &mut Tally) {
    if !selected(scenario) {
        return;
    }
    let mut w = Workload::start(scenario, args);
    let img = w.image();
    let img_s = img.to_str().unwrap().to_string();
    let pid_s = |w: &Workload| w.pid.to_string();
    // Durations: with --leave-running (the tree stays), then plain (the
    // tree goes with its image; start it again).
    let d_live = timed(&["dump", "-p", &pid_s(&w), "-o", &img_s, "--leave-running"]);
    let pids = tree_pids(w.pid);
    let d_plain = timed(&["dump", "-p", &pid_s(&w), "-o", &img_s]);
    reap_tree(&pids);
    drop(w);
    w = Workload::start(scenario, args);
    let img = w.image();
    let img_s = img.to_str().unwrap().to_string();
    eprintln!("random_kill: {scenario} {args:?}: dump {d_live:?} live, {d_plain:?} plain");
    for i in 0..n {
        let live = i % 2 == 0;
        let d = if live { d_live } else { d_plain };
        let at = rng.instant(d);
        let before = tree_state(w.pid);
        let pids = tree_pids(w.pid);
        let _ = std::fs::remove_file(&img);
        let pid = pid_s(&w);
        let mut a = vec!["dump", "-p", &pid, "-o", &img_s];
        if live {
            a.push("--leave-running");
        }
        let ok = crest_killed_after(&a, at, &w.dir);
        t.kills += 1;
        let what = format!("{scenario} {args:?} dump #{i} (live {live}) killed at {at:?}");
        // SIGKILLs crest sent before it died take a moment to land.
        std::thread::sleep(Duration::from_millis(20));
        let gone = pids.iter().any(|&p| !alive(p));
        if gone {
            // Only a finished plain dump may take the tree: its image
            // must be complete.
            let mut ends = Vec::new();
            for &p in pids.iter().rev() {
                ends.push((p, reap(p, Duration::from_secs(10))));
            }
            let image = crest(&["inspect", &img_s]).status.success();
            let sound = !live
                && image
                && ends
                    .iter()
                    .all(|e| e.1 == Some(Exit::Signal(libc::SIGKILL)));
            if sound {
                t.completed += 1;
            } else {
                harm(
                    t,
                    format!(
                        "{what}: the tree died (crest succeeded: {ok}, image complete: {image}, \
                     ends {ends:?}); log:\n{}",
                        w.log()
                    ),
                );
            }
            drop(w);
            w = Workload::start(scenario, args);
            continue;
        }
        if ok {
            t.completed += 1;
        } else {
            t.interrupted += 1;
        }
        if let Err(e) = intact(&w, &before) {
            harm(t, format!("{what}: {e}"));
            drop(w);
            w = Workload::start(scenario, args);
        }
    }
    let _ = std::fs::remove_file(&img);
    w.go();
    w.expect_pass();
}

/// What a killed restore must not leave: files in the workload's
/// directory and in crest's $TMPDIR (`DIR/tmp`), System V objects.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for d in [dir, &dir.join("tmp")] {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                v.push(e.path().display().to_string());
            }
        }
    }
    for f in ["shm", "sem", "msg"] {
        let t = std::fs::read_to_string(format!("/proc/sysvipc/{f}")).unwrap_or_default();
        v.extend(t.lines().skip(1).map(|l| format!("sysv {f}: {l}")));
    }
    v.sort();
    v
}

/// `n` restores of a dumped `scenario ARGS` workload, each SIGKILLed at a
/// uniform instant over the duration of an uninterrupted restore.
fn restore_kills(scenario: &str, args: &[&str], n: usize, rng: &mut Rng, t: &mut Tally) {
    if !selected(scenario) {
        return;
    }
    let w = Workload::start(scenario, args);
    let pids = tree_pids(w.pid);
    w.dump_ok();
    let img = w.image();
    let img_s = img.to_str().unwrap().to_string();
    let restore = ["restore", "-i", img_s.as_str(), "-d"];
    let kill_restored = || {
        for &p in pids.iter() {
            // SAFETY: plain kill of a pid of the tree this test restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        reap_tree(&pids);
    };
    let d = timed(&restore);
    kill_restored();
    eprintln!("random_kill: {scenario} {args:?}: restore {d:?}");
    let tmp = w.dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let before = leftovers(&w.dir);
    for i in 0..n {
        let at = rng.instant(d);
        let ok = crest_killed_after(&restore, at, &tmp);
        t.kills += 1;
        let what = format!("{scenario} {args:?} restore #{i} killed at {at:?}");
        if ok {
            t.completed += 1;
            if !alive(w.pid) {
                t.harmed
                    .push(format!("{what}: restore succeeded, no process"));
            }
            kill_restored();
            continue;
        }
        // Killed after the tree was let go (crest was about to exit): a
        // complete restore, no longer traced and running the program.
        std::thread::sleep(Duration::from_millis(20));
        let exe = std::fs::read_link(format!("/proc/{}/exe", w.pid)).ok();
        if alive(w.pid) && tracer_of(w.pid) == Some(0) && exe == Some(workload_bin()) {
            t.completed += 1;
            kill_restored();
            continue;
        }
        t.interrupted += 1;
        // The stubs die with crest (they are reparented to this test,
        // which reaps them).
        reap_tree(&pids);
        let stray: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if !stray.is_empty() {
            harm(t, format!("{what}: processes left: {stray:?}"));
            kill_restored();
        }
        let now = leftovers(&w.dir);
        if now != before {
            let new: Vec<&String> = now.iter().filter(|l| !before.contains(l)).collect();
            let lost: Vec<&String> = before.iter().filter(|l| !now.contains(l)).collect();
            harm(t, format!("{what}: left behind: {new:?} (gone: {lost:?})"));
        }
    }
    w.restore_ok();
    w.go();
    w.expect_pass();
}

fn report(t: &Tally, what: &str) {
    eprintln!(
        "random_kill: {what}: {} kills, {} interrupted, {} completed first, {} harmed",
        t.kills,
        t.interrupted,
        t.completed,
        t.harmed.len()
    );
    assert!(
        t.harmed.is_empty(),
        "{what}: {} of {} kills harmed the target:\n{}",
        t.harmed.len(),
        t.kills,
        t.harmed.join("\n")
    );
}

/// `CREST_KILL_ONLY=SCENARIO` runs the kills of one workload alone.
fn selected(scenario: &str) -> bool {
    std::env::var("CREST_KILL_ONLY").map_or(true, |s| s == scenario)
}

fn stress() -> bool {
    std::env::var_os("CREST_STRESS_KILLS").is_some()
}

/// The tests share the machine's two cores; one at a time keeps the kill
/// instants meaningful.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dump_killed_at_random_instants() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new();
    let mut t = Tally::default();
    if stress() {
        dump_kills("regs", &["sleep"], 50, &mut rng, &mut t);
        dump_kills("regs", &["busy"], 50, &mut rng, &mut t);
        dump_kills("many", &["50", "2", "4"], 70, &mut rng, &mut t);
        dump_kills("memory", &["1024"], 60, &mut rng, &mut t);
    } else {
        dump_kills("regs", &["sleep"], 10, &mut rng, &mut t);
        dump_kills("regs", &["busy"], 10, &mut rng, &mut t);
        dump_kills("memory", &["128"], 10, &mut rng, &mut t);
        dump_kills("many", &["50", "1", "1"], 10, &mut rng, &mut t);
    }
    report(&t, "dump");
}

#[test]
fn restore_killed_at_random_instants() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new();
    let mut t = Tally::default();
    if stress() {
        restore_kills("many", &["50", "2", "4"], 80, &mut rng, &mut t);
        restore_kills("files", &[], 60, &mut rng, &mut t);
        restore_kills("memory", &["1024"], 60, &mut rng, &mut t);
    } else {
        restore_kills("memory", &["64"], 7, &mut rng, &mut t);
        restore_kills("many", &["50", "1", "1"], 7, &mut rng, &mut t);
        restore_kills("files", &[], 6, &mut rng, &mut t);
    }
    report(&t, "restore");
}

#[test]
fn status_field_reads_proc() {
    // The checker's own selftest: it sees this process's mask and tracer.
    let me = std::process::id() as i32;
    assert_eq!(status_field(me, "TracerPid").as_deref(), Some("0"));
    assert!(status_field(me, "SigBlk").is_some());
}
