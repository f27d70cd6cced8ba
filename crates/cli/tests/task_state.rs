//! Task state (issue 16): job-control stops with their signals and whether
//! the parent collected them, zombies in groups and sessions not their
//! parent's, every thread's name, oom_score_adj, the audit login uid, and
//! cgroup membership.  Each workload checks itself after the restore.

mod common;
use common::*;

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

/// A cgroup removed between dump and restore: the restore fails before
/// anything is created, naming the cgroup; once it exists again the
/// restore succeeds.
#[test]
fn missing_cgroup_is_refused_by_name() {
    let cg = TestCgroups::new("missing");
    let w = Workload::start("cgroups", &cg.args());
    w.dump_ok();
    // The dumped tree is gone: its child cgroup can go too.
    let gone = &cg.dirs[1];
    let mut removed = false;
    for _ in 0..500 {
        if std::fs::remove_dir(gone).is_ok() {
            removed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(removed, "could not remove {gone}");
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success(), "restore succeeded without {gone}");
    let err = stderr(&o);
    assert!(
        err.contains("/child") && err.contains("does not exist"),
        "the error must name the cgroup: {err}"
    );
    assert!(!alive(w.pid), "a failed restore left pid {} behind", w.pid);
    std::fs::create_dir(gone).unwrap();
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
