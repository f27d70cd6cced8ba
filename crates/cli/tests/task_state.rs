//! Task state (issue 16): job-control stops with their signals and whether
//! the parent collected them, zombies in groups and sessions not their
//! parent's, every thread's name, oom_score_adj, the audit login uid, and
//! cgroup membership.  Each workload checks itself after the restore.

mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn stops_zombies_names_and_scores() {
    Workload::start("task-state", &[]).cycle();
}

/// cgroups this test creates (and removes once their processes are gone):
/// a pids (v1) cgroup with a child cgroup, a unified (v2) one, and a cpu
/// (v1) one for a thread.
struct TestCgroups {
    dirs: Vec<String>,
}

impl TestCgroups {
    fn new(tag: &str) -> TestCgroups {
        let name = format!("crest-test-{}-{tag}", std::process::id());
        let dirs = vec![
            format!("/sys/fs/cgroup/pids/{name}"),
            format!("/sys/fs/cgroup/pids/{name}/child"),
            format!("/sys/fs/cgroup/unified/{name}"),
            format!("/sys/fs/cgroup/cpu/{name}"),
        ];
        for d in &dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("creating cgroup {d}: {e}"));
        }
        TestCgroups { dirs }
    }

    fn args(&self) -> Vec<&str> {
        self.dirs.iter().map(String::as_str).collect()
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // A cgroup empties once its processes have been reaped.
            for _ in 0..500 {
                if std::fs::remove_dir(d).is_ok() || !std::path::Path::new(d).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn cgroup_membership_of_processes_and_threads() {
    let cg = TestCgroups::new("member");
    Workload::start("cgroups", &cg.args()).cycle();
}

fn write(path: &str, v: &str) {
    std::fs::write(path, v).unwrap_or_else(|e| panic!("writing {v:?} into {path}: {e}"));
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_string()
}

/// Removes cgroup `d` once the dumped tree has left it.
fn remove_cgroup(d: &str) {
    for _ in 0..500 {
        if std::fs::remove_dir(d).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("could not remove {d}");
}

/// The settings this test gives its cgroups: (file, value).
fn limits(cg: &TestCgroups) -> Vec<(String, &'static str)> {
    let [pids, child, v2, cpu] = [0, 1, 2, 3].map(|i| cg.dirs[i].as_str());
    vec![
        (format!("{pids}/pids.max"), "50"),
        (format!("{child}/pids.max"), "7"),
        (format!("{pids}/empty/pids.max"), "3"),
        (format!("{v2}/cgroup.max.descendants"), "4"),
        (format!("{cpu}/cpu.cfs_period_us"), "200000"),
        (format!("{cpu}/cpu.cfs_quota_us"), "50000"),
        (format!("{cpu}/cpu.shares"), "512"),
    ]
}

/// cgroups that hold only the tree's processes are the tree's own: gone
/// after the dump, restore makes them again (with an empty cgroup below
/// one of them) with their limits, before the processes join them; a
/// restore that fails after that removes them.
#[test]
fn own_cgroups_are_recreated_with_their_limits() {
    let cg = TestCgroups::new("own");
    let empty = format!("{}/empty", cg.dirs[0]);
    std::fs::create_dir(&empty).unwrap();
    for (f, v) in limits(&cg) {
        write(&f, v);
    }
    let w = Workload::start("cgroups", &cg.args());
    let tree = descendants(w.pid);
    assert!(!tree.is_empty(), "the workload's child");
    w.dump_ok();
    let json = crest(&["inspect", w.image().to_str().unwrap(), "--json"]);
    let inspect = stdout(&json);
    assert!(
        inspect.contains("cfs_quota_us"),
        "inspect shows the cgroups: {inspect}"
    );
    remove_cgroup(&empty);
    for d in cg.dirs.iter().rev() {
        remove_cgroup(d);
    }
    // A restore failing just before the tree would run removes them.
    let img = w.image();
    let failed = Command::new(crest_bin())
        .args(["restore", "-i", img.to_str().unwrap(), "-d"])
        .env("CREST_FAULT_AT", "restore: before resuming")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stderr(&failed).contains("injected fault"),
        "the fault was not injected: {}",
        stderr(&failed)
    );
    // Stubs orphaned by the failed restore come to this subreaper.
    for &p in &tree {
        reap(p, std::time::Duration::from_secs(2));
    }
    assert!(!alive(w.pid), "a failed restore left pid {} behind", w.pid);
    for d in cg.dirs.iter().chain([&empty]) {
        assert!(
            !std::path::Path::new(d).exists(),
            "a failed restore left cgroup {d} behind"
        );
    }
    w.restore_ok();
    for (f, v) in limits(&cg) {
        assert_eq!(read(&f), v, "{f} after restore");
    }
    w.go();
    w.expect_pass();
    remove_cgroup(&empty);
}

/// A cgroup the tree shares with a process outside it is not the tree's:
/// removed between dump and restore, the restore fails before anything is
/// created, naming it; once it exists again the restore succeeds.
#[test]
fn missing_shared_cgroup_is_refused_by_name() {
    let cg = TestCgroups::new("missing");
    let gone = cg.dirs[1].clone();
    // Another process in the child cgroup makes it not the tree's.
    let mut other = Command::new("sleep").arg("600").spawn().unwrap();
    write(&format!("{gone}/cgroup.procs"), &other.id().to_string());
    let w = Workload::start("cgroups", &cg.args());
    w.dump_ok();
    other.kill().unwrap();
    other.wait().unwrap();
    remove_cgroup(&gone);
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success(), "restore succeeded without {gone}");
    let err = stderr(&o);
    assert!(
        err.contains("/child") && err.contains("does not exist"),
        "the error must name the cgroup: {err}"
    );
    assert!(!alive(w.pid), "a failed restore left pid {} behind", w.pid);
    std::fs::create_dir(&gone).unwrap();
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// pidfds of a process of the tree, of the process itself (nonblocking)
/// and of an exited, reaped one.
#[test]
fn pidfds() {
    Workload::start("pidfd", &[]).cycle();
}
