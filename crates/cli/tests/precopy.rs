//! Pre-copy (`dump --leave-running`): memory is copied while the process
//! runs, then only what it wrote meanwhile is copied again while it is
//! frozen.  The `mutator` workload rewrites thousands of pages (and
//! remaps, unmaps and discards some) during every copy, so an image with
//! one stale page, or a process harmed by the write tracking, fails its
//! own checks.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// 128 MiB: copying it takes long enough (hundreds of ms) for the mutator
/// to rewrite its hot quarter of pages many times over and a share of the
/// others, interleaved with pages it leaves alone.
const MIB: &str = "128";

/// How long the mutator runs between steps (so a restored process is
/// checkpointed again in the middle of its work).
const RUN: Duration = Duration::from_millis(300);

/// `dump --leave-running --json -q EXTRA…` of `w`; returns the report.
fn dump_json(w: &Workload, extra: &[&str]) -> Value {
    let mut args = vec!["--leave-running", "--json", "-q"];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let o = w.dump(&args);
    let took = t.elapsed();
    assert!(o.status.success(), "dump failed: {}", stderr(&o));
    let out = stdout(&o);
    let r: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("dump --json printed no JSON ({e}): {out:?}"));
    eprintln!("dump {extra:?} took {took:?}: {r}");
    assert!(alive(w.pid), "the process must keep running");
    r
}

fn num(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in the dump report: {r}"))
}

/// The dump pre-copied: no silent fallback to copying everything frozen.
fn assert_precopied(r: &Value) {
    assert!(
        r.get("precopy_skipped").is_none(),
        "pre-copy was skipped: {r}"
    );
    assert!(num(r, "precopied_pages") > 0, "nothing pre-copied: {r}");
}

/// A pre-copied dump of `w` during which the mutator wrote pages (so some
/// were copied again while it was frozen).  On a loaded machine the
/// mutator may get no CPU during one dump: up to five dumps are taken.
fn dump_while_writing(w: &Workload) -> Value {
    for _ in 0..5 {
        let r = dump_json(w, &[]);
        assert_precopied(&r);
        if num(&r, "frozen_copied_pages") > 0 {
            return r;
        }
        std::thread::sleep(RUN);
    }
    panic!("in five dumps the mutator never wrote a page while memory was pre-copied");
}

/// The write tracking of the dump is over: no mapping of `pid` is
/// registered with a userfaultfd (VmFlags `uw`, `um`, `ui`), and the
/// process holds no userfaultfd.
fn assert_untracked(pid: i32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("reading smaps");
    let mut range = "";
    for line in smaps.lines() {
        // A mapping's header line: `start-end perms ...`; the others are
        // `Key: value`.
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| !f.ends_with(':'))
        {
            range = line;
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let uffd: Vec<&str> = flags
                .split_whitespace()
                .filter(|f| matches!(*f, "uw" | "um" | "ui"))
                .collect();
            assert!(
                uffd.is_empty(),
                "pid {pid}: mapping still registered with a userfaultfd ({uffd:?}) after the dump: {range}\n{line}"
            );
        }
    }
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading fds")
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains("userfaultfd"),
            "pid {pid}: fd {:?} is a userfaultfd after the dump",
            fd.file_name()
        );
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: plain kill of a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert_eq!(
        reap(pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL)),
        "the original must be gone before the restore"
    );
}

/// Like `Workload::expect_pass`, keeping the workload (and its image).
fn expect_pass_keep(w: &Workload) {
    let res = w.dir.join("result");
    let start = Instant::now();
    while !res.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let exit = reap(w.pid, Duration::from_secs(30));
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("PASS"),
        "workload {} did not pass (exit {exit:?}):\n{text}\nlog:\n{}",
        w.scenario,
        w.log()
    );
    assert_eq!(exit, Some(Exit::Code(0)), "workload exit status");
}

/// Three pre-copied dumps of a process that keeps mutating: each leaves
/// it untracked and intact (it checks itself after go), and the image of
/// the last one restores to a process that passes too.
#[test]
fn mutating_process_left_running() {
    let t = Instant::now();
    let w = Workload::start("mutator", &[MIB]);
    std::thread::sleep(RUN);
    for _ in 0..3 {
        dump_while_writing(&w);
        assert_untracked(w.pid);
        std::thread::sleep(RUN);
    }
    w.go();
    expect_pass_keep(&w);
    // The last image, restored: go exists already, so it checks itself
    // at once.
    std::fs::remove_file(w.dir.join("result")).unwrap();
    w.restore_ok();
    w.expect_pass();
    eprintln!("took {:?}", t.elapsed());
}

/// Dump with `dump`, kill, restore, twice (the second time from the
/// restored process, still mutating); then the restored process checks
/// the whole snapshot.
fn dump_kill_restore_twice(args: &[&str], dump: fn(&Workload)) {
    let t = Instant::now();
    let w = Workload::start("mutator", args);
    for _ in 0..2 {
        std::thread::sleep(RUN);
        dump(&w);
        kill_and_reap(w.pid);
        w.restore_ok();
        assert!(!w.dir.join("result").exists(), "{}", w.log());
    }
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
    eprintln!("took {:?}", t.elapsed());
}

#[test]
fn mutating_process_restored_from_precopied_image() {
    dump_kill_restore_twice(&[MIB], |w| {
        dump_while_writing(w);
    });
}

/// The same without the mapping churn: only page writes to track (if
/// this passes and the test above fails, look at the munmap, mremap and
/// madvise handling).
#[test]
fn page_writes_only_restored_from_precopied_image() {
    dump_kill_restore_twice(&[MIB, "no-churn"], |w| {
        dump_while_writing(w);
    });
}

#[test]
fn no_pre_copy_flag() {
    dump_kill_restore_twice(&[MIB], |w| {
        let r = dump_json(w, &["--no-pre-copy"]);
        assert_eq!(
            num(&r, "precopied_pages"),
            0,
            "--no-pre-copy pre-copied: {r}"
        );
        assert!(
            num(&r, "frozen_copied_pages") > 0,
            "everything is copied while frozen: {r}"
        );
    });
}
