//! `cgroups <v1-dir> <v1-child-dir> <v2-dir> <v1-thread-dir>`: cgroup
//! membership of processes and threads. The harness creates the four
//! cgroup directories (and removes them afterwards): the root joins
//! `v1-dir` (a v1 hierarchy) and `v2-dir` (the unified hierarchy), its
//! child C joins `v1-child-dir`, and one thread of the root joins
//! `v1-thread-dir` alone (its tid into `tasks`: a v1 hierarchy where
//! threads may differ, such as cpu). After go each compares
//! /proc/self/cgroup and every /proc/self/task/TID/cgroup with what they
//! were; C exits 10.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family;
use crate::proto::Proto;
use crate::util::{gettid, sleep_ns};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static RELEASE: AtomicBool = AtomicBool::new(false);
static THREAD_JOINED: AtomicI32 = AtomicI32::new(0);

/// Every thread's /proc/self/task/TID/cgroup, by tid.
fn thread_cgroups() -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let tid: i32 = e.file_name().to_str()?.parse().ok()?;
                    Some((tid, std::fs::read_to_string(e.path().join("cgroup")).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn join(p: &Proto, dir: &str, file: &str, id: i32) {
    if let Err(e) = std::fs::write(format!("{dir}/{file}"), format!("{id}\n")) {
        p.bail(&format!("setup: joining {dir}: {e}"));
    }
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let [v1, v1_child, v2, v1_thread] = args else {
        p.bail("usage: cgroups <v1-dir> <v1-child-dir> <v2-dir> <v1-thread-dir>")
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    join(p, v1, "cgroup.procs", 0);
    join(p, v2, "cgroup.procs", 0);
    let child_dir = v1_child.clone();
    let c = family::spawn(p, 10, move |m| {
        family::die_with_parent(me);
        let mut c = Checks::new();
        if let Err(e) = std::fs::write(format!("{child_dir}/cgroup.procs"), "0\n") {
            c.fail(format!("joining {child_dir}: {e}"));
            return c;
        }
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        m.write_aux("c-ready", "");
        family::member_wait_go(m, me, family::POLL_NS).report(&mut c, "C go-wait");
        let after = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        c.ensure(before == after, || {
            format!("C /proc/self/cgroup: expected {before:?}, got {after:?}")
        });
        c
    });
    let dir = v1_thread.clone();
    let t = std::thread::spawn(move || {
        let ok = std::fs::write(format!("{dir}/tasks"), format!("{}\n", gettid())).is_ok();
        THREAD_JOINED.store(if ok { 1 } else { -1 }, Ordering::SeqCst);
        while !RELEASE.load(Ordering::SeqCst) {
            sleep_ns(2_000_000);
        }
    });
    while THREAD_JOINED.load(Ordering::SeqCst) == 0 {
        sleep_ns(1_000_000);
    }
    if THREAD_JOINED.load(Ordering::SeqCst) < 0 {
        p.bail(&format!("setup: the thread could not join {v1_thread}"));
    }
    if family::wait_path(&p.dir().join("c-ready"), family::STEP_TIMEOUT_NS, || Ok(())).is_err() {
        p.bail("setup: C did not get ready");
    }
    let before = thread_cgroups();
    let procs = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if before.len() != 2 || before[0].1 == before[1].1 {
        p.bail("setup: the thread's cgroups are not its own");
    }
    p.write_aux("info", &format!("c={c}\n"));
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    let now = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    ck.ensure(procs == now, || {
        format!("/proc/self/cgroup: expected {procs:?}, got {now:?}")
    });
    let after = thread_cgroups();
    ck.ensure(before == after, || {
        format!("threads' cgroups: expected {before:?}, got {after:?}")
    });
    let st = family::reap(c, family::STEP_TIMEOUT_NS);
    family::judge(&mut ck, p.dir(), "C", c, st, 10);
    RELEASE.store(true, Ordering::SeqCst);
    let _ = t.join();
    base.verify(p, &mut ck);
    ck
}
