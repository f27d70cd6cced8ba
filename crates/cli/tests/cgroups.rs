//! cgroup namespaces (issue 12): a process at the root of its own cgroup
//! namespace, made by `unshare --cgroup` inside cgroups this test
//! creates, is restored at the root of a new one placed on the same
//! cgroups; the workload checks its own view of /proc/self/cgroup.

mod common;
use common::*;
use std::time::Duration;

/// Cgroups this test creates (pids v1 and the unified v2 hierarchy),
/// removed once empty.
struct TestCgroups {
    dirs: Vec<String>,
}

impl TestCgroups {
    fn new(tag: &str) -> TestCgroups {
        let name = format!("crest-test-userns-{}-{tag}", std::process::id());
        let dirs = vec![
            format!("/sys/fs/cgroup/pids/{name}"),
            format!("/sys/fs/cgroup/unified/{name}"),
        ];
        for d in &dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("creating cgroup {d}: {e}"));
        }
        TestCgroups { dirs }
    }

    /// `sh -c` that joins them, then runs `unshare --cgroup --fork`.
    fn wrapper(&self) -> Vec<String> {
        let joins: String = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {d}/cgroup.procs && "))
            .collect();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{joins}exec unshare --cgroup --fork \"$@\""),
            "sh".into(),
        ]
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(format!("{d}/other"));
            for _ in 0..500 {
                if std::fs::remove_dir(d).is_ok() || !std::path::Path::new(d).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn start(cg: &TestCgroups) -> Workload {
    let w = cg.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    Workload::start_wrapped("cgroupns", &w, &[], "ready")
}

/// Dumped and restored: the new process is at the root of a new cgroup
/// namespace, in the same cgroups.
#[test]
fn cgroup_namespace_root_is_recreated() {
    let cg = TestCgroups::new("cgns");
    let mut w = start(&cg);
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = w.dump(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = std::time::Instant::now();
    while alive(w.pid) && start.elapsed().as_secs() < 10 {
        reap_all();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!alive(w.pid), "the dumped process is still there");
    w.restore_moved(&[]);
    let mine = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/cgroup", w.pid)).unwrap();
    assert_ne!(mine, theirs, "restored into crest's cgroup namespace");
    let procs = std::fs::read_to_string(format!("{}/cgroup.procs", cg.dirs[0])).unwrap();
    assert!(
        procs.split_whitespace().any(|p| p == w.pid.to_string()),
        "not in {}: {procs}",
        cg.dirs[0]
    );
    w.go();
    w.expect_pass();
}

/// The checker sees a wrong place: moved from outside into a child
/// cgroup of its namespace's root before go, it must fail.
#[test]
fn cgroupns_checker_detects_a_move() {
    let cg = TestCgroups::new("cgns-neg");
    let w = start(&cg);
    let other = format!("{}/other", cg.dirs[0]);
    std::fs::create_dir(&other).unwrap();
    std::fs::write(format!("{other}/cgroup.procs"), w.pid.to_string()).unwrap();
    w.go();
    let res = w.dir.join("result");
    let start = std::time::Instant::now();
    while !res.exists() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL") && text.contains("/other"),
        "{text}"
    );
}
