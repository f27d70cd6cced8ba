//! Incremental dumps with write tracking between crest runs (`dump
//! --track`, then `dump --parent PREV`; see crest::memory::track): the
//! pages the tracker vouches for are kept from the parent unread, and
//! whenever the tracker cannot vouch (killed, restarted target, a parent
//! that is not the last tracked dump) every page is compared by digest.
//! The `mutator` workload rewrites, unmaps, maps, remaps and discards its
//! memory all the while and checks every page after restore.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: &str = "64";
/// How long the mutator runs between dumps.
const RUN: Duration = Duration::from_millis(300);

fn dump_env(w: &Workload, img: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Value, String) {
    let pid = w.pid.to_string();
    let mut args = vec![
        "dump",
        "--leave-running",
        "--json",
        "-q",
        "-p",
        &pid,
        "-o",
        img.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let o = std::process::Command::new(crest_bin())
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "dump {extra:?} failed: {}", stderr(&o));
    let r: Value = serde_json::from_str(stdout(&o).trim()).expect("dump --json prints JSON");
    eprintln!("dump {extra:?} took {:?}: {r}", t.elapsed());
    assert!(alive(w.pid), "the process must keep running");
    (r, stderr(&o))
}

fn dump_to(w: &Workload, img: &Path, extra: &[&str]) -> Value {
    dump_env(w, img, extra, &[]).0
}

fn num(r: &Value, key: &str) -> u64 {
    r[key].as_u64().unwrap_or_else(|| panic!("no {key} in {r}"))
}

fn note(r: &Value) -> String {
    r["tracking"].as_str().unwrap_or_default().to_string()
}

fn kill_and_reap(pid: i32) {
    // SAFETY: plain kill of a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert_eq!(
        reap(pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
}

fn restore_ok(w: &Workload, img: &Path) {
    let o = crest(&["restore", "-d", "-i", img.to_str().unwrap()]);
    assert!(o.status.success(), "restore failed: {}", stderr(&o));
    assert_eq!(stdout(&o).trim().parse::<i32>().ok(), Some(w.pid));
}

/// The tracker processes of the tree rooted at `root`.
fn trackers(root: i32) -> Vec<i32> {
    let want = format!("__track\0{root}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&want))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_no_tracker(root: i32) {
    let t = Instant::now();
    while !trackers(root).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the tracker of {root} stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restores `img` in place of the killed original and lets it check
/// itself.
fn restore_and_check(w: Workload, img: &Path) {
    kill_and_reap(w.pid);
    restore_ok(&w, img);
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
}

/// A tracked chain of three: the second and third dumps keep pages the
/// tracker vouched for without reading them, and the last image restores
/// to a process whose every page is right.  Without --track the last
/// dump ends the tracking.
#[test]
fn tracked_chain_restores_every_byte() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs: Vec<PathBuf> = (0..3).map(|i| w.dir.join(format!("img{i}"))).collect();
    let r = dump_to(&w, &imgs[0], &["--track"]);
    assert!(note(&r).contains("armed"), "{r}");
    assert_eq!(trackers(w.pid).len(), 1, "one tracker");
    std::thread::sleep(RUN);
    let p0 = imgs[0].to_str().unwrap();
    let r = dump_to(&w, &imgs[1], &["--parent", p0, "--track"]);
    let (kept, vouched) = (num(&r, "kept_pages"), num(&r, "vouched_pages"));
    assert!(vouched > 0, "nothing vouched for: {r}");
    assert!(vouched <= kept, "{r}");
    assert!(
        num(&r, "pages_written") > 0,
        "the mutator wrote nothing? {r}"
    );
    std::thread::sleep(RUN);
    let r = dump_to(&w, &imgs[2], &["--parent", imgs[1].to_str().unwrap()]);
    assert!(num(&r, "vouched_pages") > 0, "{r}");
    wait_no_tracker(w.pid);
    restore_and_check(w, &imgs[2]);
}

/// A killed tracker vouches for nothing: every page is compared by
/// digest, and the image is right.
#[test]
fn killed_tracker_falls_back_to_digests() {
    let w = Workload::start("mutator", &[MIB]);
    let (a, b) = (w.dir.join("a"), w.dir.join("b"));
    dump_to(&w, &a, &["--track"]);
    let t = trackers(w.pid);
    assert_eq!(t.len(), 1);
    // SAFETY: plain kill of the tracker crest started for this test.
    assert_eq!(unsafe { libc::kill(t[0], libc::SIGKILL) }, 0);
    wait_no_tracker(w.pid);
    std::thread::sleep(RUN);
    let r = dump_to(&w, &b, &["--parent", a.to_str().unwrap()]);
    assert_eq!(num(&r, "vouched_pages"), 0, "{r}");
    assert!(num(&r, "kept_pages") > 0, "{r}");
    assert!(note(&r).contains("no write tracker"), "{r}");
    restore_and_check(w, &b);
}

/// A parent that is not the last tracked dump (the tracker counts from a
/// later one) gets nothing vouched for; nor does a tracked dump that
/// never finished (no epoch).
#[test]
fn stale_parent_falls_back_to_digests() {
    let w = Workload::start("mutator", &[MIB]);
    let (a, b, c) = (w.dir.join("a"), w.dir.join("b"), w.dir.join("c"));
    dump_to(&w, &a, &["--track"]);
    std::thread::sleep(RUN);
    let r = dump_to(&w, &b, &["--parent", a.to_str().unwrap(), "--track"]);
    assert!(num(&r, "vouched_pages") > 0, "{r}");
    std::thread::sleep(RUN);
    // Against a again: what changed between a and b was protected again
    // at b, the tracker cannot tell.
    let r = dump_to(&w, &c, &["--parent", a.to_str().unwrap()]);
    assert_eq!(num(&r, "vouched_pages"), 0, "{r}");
    assert!(note(&r).contains("counts from image"), "{r}");
    restore_and_check(w, &c);
}

/// A target killed and restored (same pid) has no tracker: its tracker
/// left with it, and the restored process's pages are compared by digest.
#[test]
fn restarted_target_is_not_vouched_for() {
    let w = Workload::start("mutator", &[MIB]);
    let (a, b) = (w.dir.join("a"), w.dir.join("b"));
    dump_to(&w, &a, &["--track"]);
    kill_and_reap(w.pid);
    wait_no_tracker(w.pid);
    restore_ok(&w, &a);
    std::thread::sleep(RUN);
    let r = dump_to(&w, &b, &["--parent", a.to_str().unwrap()]);
    assert_eq!(num(&r, "vouched_pages"), 0, "{r}");
    restore_and_check(w, &b);
}

/// Negative selftest: a tracker sabotaged to vouch for written pages of
/// the largest range (CREST_TEST_TRACK_LIE) makes an image whose restored
/// process fails its checks.
#[test]
fn sabotaged_tracker_is_caught() {
    let w = Workload::start("mutator", &[MIB]);
    let (a, b) = (w.dir.join("a"), w.dir.join("b"));
    let mut done = false;
    for _ in 0..20 {
        dump_to(&w, &a, &["--track"]);
        std::thread::sleep(RUN);
        let (_, err) = dump_env(
            &w,
            &b,
            &["--parent", a.to_str().unwrap()],
            &[("CREST_TEST_TRACK_LIE", "1")],
        );
        let lied = err
            .split("vouched for ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if lied >= 8 {
            done = true;
            break;
        }
    }
    assert!(done, "no written page to lie about");
    kill_and_reap(w.pid);
    restore_ok(&w, &b);
    w.go();
    let res = w.dir.join("result");
    let t = Instant::now();
    while !res.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    reap(w.pid, Duration::from_secs(30));
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        !text.starts_with("PASS"),
        "the workload missed pages the tracker lied about:\n{text}"
    );
    eprintln!("verdict as expected:\n{text}");
}

/// A tracked tree of 8 processes (one userfaultfd and tracker entry
/// each): the second dump is vouched for, the third (which kills the
/// tree) too, and the tree restored from the chain checks every process's
/// memory.
#[test]
fn tracked_tree_restores() {
    let w = Workload::start("tree", &[]);
    let (a, b) = (w.dir.join("a"), w.dir.join("b"));
    let r = dump_to(&w, &a, &["--track"]);
    assert!(note(&r).contains("armed"), "{r}");
    let r = dump_to(&w, &b, &["--parent", a.to_str().unwrap(), "--track"]);
    assert!(num(&r, "vouched_pages") > 0, "{r}");
    let tree = descendants(w.pid);
    assert!(tree.len() >= 7, "the tree: {tree:?}");
    let o = w.dump(&["--parent", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for &pid in tree.iter().rev() {
        reap(pid, Duration::from_secs(10));
    }
    reap(w.pid, Duration::from_secs(10));
    wait_no_tracker(w.pid);
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// crest SIGKILLed in a tracked dump, once the new tracker is armed
/// (before and after the pages are written): the process runs on, the
/// tracker left behind has no epoch and vouches for nothing, and the next
/// dump against the last good image compares by digest and restores right.
#[test]
fn killed_tracked_dump_leaves_a_harmless_tracker() {
    let w = Workload::start("mutator", &[MIB]);
    let (a, b, c) = (w.dir.join("a"), w.dir.join("b"), w.dir.join("c"));
    dump_to(&w, &a, &["--track"]);
    let pid = w.pid.to_string();
    for point in ["dump: collected", "dump: pages written"] {
        std::thread::sleep(RUN);
        let o = std::process::Command::new(crest_bin())
            .args(["dump", "--leave-running", "-q", "-p", &pid, "-o"])
            .arg(&b)
            .args(["--track", "--parent"])
            .arg(&a)
            .env("CREST_FAULT_AT", point)
            .env("CREST_FAULT_MODE", "kill")
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(libc::SIGKILL),
            "crest was not killed at {point}: {}",
            stderr(&o)
        );
        assert!(
            alive(w.pid),
            "killed at {point}, crest took the process along"
        );
        assert_eq!(trackers(w.pid).len(), 1, "killed at {point}");
        std::thread::sleep(RUN);
        let r = dump_to(&w, &c, &["--parent", a.to_str().unwrap(), "--track"]);
        assert_eq!(num(&r, "vouched_pages"), 0, "after a kill at {point}: {r}");
        assert!(note(&r).contains("did not finish"), "{r}");
        // c is tracked now; a stays the parent of the next round.
        dump_to(&w, &a, &["--track"]);
    }
    std::thread::sleep(RUN);
    let r = dump_to(&w, &c, &["--parent", a.to_str().unwrap()]);
    assert!(num(&r, "vouched_pages") > 0, "{r}");
    restore_and_check(w, &c);
}
