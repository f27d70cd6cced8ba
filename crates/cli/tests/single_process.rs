//! One process, dumped and restored through the `crest` binary: each
//! workload sets up state, is checkpointed (and killed), restored with
//! the same PID, and then checks every byte and flag itself.

mod common;
use common::*;

#[test]
fn registers_busy_loop() {
    Workload::start("regs", &["busy"]).cycle();
}

#[test]
fn registers_in_syscalls() {
    Workload::start("regs", &["sleep"]).cycle();
}

#[test]
fn interrupted_nanosleep_resumes() {
    Workload::start("sleep", &[]).cycle();
}

#[test]
fn blocked_read_resumes() {
    Workload::start("read", &[]).cycle();
}

#[test]
fn memory() {
    Workload::start("memory", &["64"]).cycle();
}

#[test]
fn mm_attributes() {
    Workload::start_env("mm", &["a", "b c", "--d=e"], &[("CREST_TEST_ENV", "x y z")]).cycle();
}

#[test]
fn signals() {
    Workload::start("signals", &[]).cycle();
}

#[test]
fn itimers() {
    Workload::start("timers", &[]).cycle();
}

#[test]
fn alarm() {
    Workload::start("alarm", &[]).cycle();
}

#[test]
fn files() {
    Workload::start("files", &[]).cycle();
}

#[test]
fn process_attributes() {
    Workload::start("attrs", &[]).cycle();
}

#[test]
fn restored_process_can_be_dumped_again() {
    Workload::start("memory", &["16"]).cycle_twice();
}

#[test]
fn leave_running_keeps_the_process() {
    let w = Workload::start("memory", &["16"]);
    for _ in 0..3 {
        let o = w.dump(&["--leave-running"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(alive(w.pid));
    }
    w.go();
    w.expect_pass();
}

/// The image of a large process: dump and restore 1 GiB.
#[test]
fn one_gib_process() {
    let w = Workload::start("memory", &["1024"]);
    let t = std::time::Instant::now();
    w.dump_ok();
    let dump = t.elapsed();
    let t = std::time::Instant::now();
    w.restore_ok();
    let restore = t.elapsed();
    eprintln!("1 GiB process: dump {dump:?}, restore {restore:?}");
    w.go();
    w.expect_pass();
}
