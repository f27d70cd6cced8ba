//! The cgroup freezer (issue 12): a tree that keeps forking, alone in a
//! cgroup of its own (made by the test under its own name, v2 and v1), is
//! frozen through it before being seized: the dump passes the point where
//! the cgroup is frozen, succeeds, and leaves the cgroup thawed and the
//! tree forking on; a dump that fails while the cgroup is frozen thaws
//! it; a cgroup shared with a process outside the tree is never frozen.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const POINT: &str = "dump: the tree's cgroup frozen";

/// Joins the cgroup, then forks without end: four loops running
/// /bin/true, and a loop of `sh -c 'sleep 0.01'`; counts rounds in
/// $2/count.
const CHURN: &str = r#"#!/bin/sh
echo $$ > "$1/cgroup.procs" || exit 2
for i in 1 2 3 4; do ( while :; do /bin/true; done ) & done
n=0
while :; do sh -c 'sleep 0.01'; n=$((n+1)); echo $n > "$2/count"; done
"#;

struct Cg {
    dir: PathBuf,
    v2: bool,
}

impl Cg {
    fn new(v2: bool) -> Cg {
        let base = if v2 {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup/freezer"
        };
        let dir = PathBuf::from(format!(
            "{base}/crest-test-{}-fz-{}",
            std::process::id(),
            if v2 { "v2" } else { "v1" }
        ));
        std::fs::create_dir(&dir).unwrap();
        Cg { dir, v2 }
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn thawed(&self) -> bool {
        if self.v2 {
            let ev = std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap();
            std::fs::read_to_string(self.dir.join("cgroup.freeze")).unwrap().trim() == "0"
                && ev.lines().any(|l| l == "frozen 0")
        } else {
            std::fs::read_to_string(self.dir.join("freezer.state")).unwrap().trim() == "THAWED"
        }
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let state = if self.v2 { "cgroup.freeze" } else { "freezer.state" };
        let _ = std::fs::write(self.dir.join(state), if self.v2 { "0" } else { "THAWED" });
        let start = Instant::now();
        loop {
            let left = self.procs();
            for &p in &left {
                // SAFETY: plain kill of a process in the test's own cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
                reap(p, Duration::from_millis(100));
            }
            if (left.is_empty() && std::fs::remove_dir(&self.dir).is_ok())
                || start.elapsed() > Duration::from_secs(10)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn start_churn(cg: &Cg, dir: &Path) -> i32 {
    let script = dir.join("churn.sh");
    std::fs::write(&script, CHURN).unwrap();
    let o = crest(&[
        "run",
        "--",
        "sh",
        script.to_str().unwrap(),
        cg.dir.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    let start = Instant::now();
    while count(dir) < 3 || cg.procs().len() < 5 {
        assert!(start.elapsed() < Duration::from_secs(20), "churn did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    pid
}

fn count(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("count"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn dump_traced(pid: i32, img: &Path, fault_at: Option<u64>) -> std::process::Output {
    let mut c = std::process::Command::new(crest_bin());
    c.args(["dump", "--leave-running", "-p", &pid.to_string(), "-o"])
        .arg(img)
        .env("CREST_FAULT_TRACE", "1")
        .env_remove("CREST_FAULT_MODE")
        .stdin(std::process::Stdio::null());
    match fault_at {
        Some(n) => c.env("CREST_FAULT_AT", n.to_string()),
        None => c.env_remove("CREST_FAULT_AT"),
    };
    c.output().unwrap()
}

/// The number of the freezer's point in a traced run, if it was passed.
fn point_number(o: &std::process::Output) -> Option<u64> {
    stderr(o).lines().find_map(|l| {
        let rest = l.strip_prefix("crest-fault-point ")?;
        let (n, name) = rest.split_once(' ')?;
        (name == POINT).then(|| n.parse().ok()).flatten()
    })
}

fn frozen_dump_of_a_forking_tree(v2: bool) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let dir = temp_dir(if v2 { "fz-v2" } else { "fz-v1" });
    let cg = Cg::new(v2);
    let pid = start_churn(&cg, &dir);
    let img = dir.join("img");
    let o = dump_traced(pid, &img, None);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    assert!(point_number(&o).is_some(), "the cgroup was not frozen: {}", stderr(&o));
    assert!(cg.thawed(), "the cgroup is still frozen after the dump");
    // The tree runs on and forks on.
    let before = count(&dir);
    let start = Instant::now();
    while count(&dir) < before + 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "the tree stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let inspect = crest(&["inspect", img.to_str().unwrap()]);
    let procs = stdout(&inspect)
        .lines()
        .filter(|l| l.starts_with("process "))
        .count();
    assert!(procs >= 5, "{}", stdout(&inspect));
    // A dump that fails while the cgroup is frozen thaws it and leaves
    // the tree running.
    let n = point_number(&dump_traced(pid, &img, None)).expect("point");
    let o = dump_traced(pid, &img, Some(n));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("injected fault"), "{}", stderr(&o));
    assert!(cg.thawed(), "a failed dump left the cgroup frozen");
    let before = count(&dir);
    let start = Instant::now();
    while count(&dir) < before + 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "the tree stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(alive(pid));
    drop(cg);
    reap(pid, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forking_tree_frozen_through_cgroup_v2() {
    frozen_dump_of_a_forking_tree(true);
}

#[test]
fn forking_tree_frozen_through_cgroup_v1_freezer() {
    frozen_dump_of_a_forking_tree(false);
}

/// A process outside the tree in the same cgroup: the cgroup is not the
/// tree's own, so it is not frozen (the outside process never stops).
#[test]
fn shared_cgroup_is_not_frozen() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let dir = temp_dir("fz-shared");
    let cg = Cg::new(true);
    let pid = start_churn(&cg, &dir);
    let mut other = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    std::fs::write(cg.dir.join("cgroup.procs"), other.id().to_string()).unwrap();
    let o = dump_traced(pid, &dir.join("img"), None);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    assert_eq!(point_number(&o), None, "a shared cgroup was frozen");
    assert!(cg.thawed());
    let _ = other.kill();
    let _ = other.wait();
    drop(cg);
    reap(pid, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}
