//! `many [children] [threads-per-child] [MiB-per-child]` (defaults 50, 2,
//! 4): a scale test. The root forks `children` processes; each runs
//! `threads-per-child` threads in all (its main thread included) and fills
//! `MiB-per-child` MiB of private anonymous memory with a pattern of its own
//! (the root holds a region of the same size). Worker threads block in
//! FUTEX_WAIT on a word of their process and hold a named identity, a
//! `thread_local!` pattern and a 16 KiB pattern on their stack.
//!
//! After go each child checks its pid, ppid, pgid, sid and fds, its memory,
//! its thread ids, then wakes its workers, which check themselves, joins
//! them and reports in `<dir>/child-<pid>`, exiting with 100 + (i % 100).
//! The root checks its own memory, reaps every child and checks every exit
//! code and verdict.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family::{
    die_with_parent, judge, kids_alive, member_wait_go, reap, spawn, wait_path, Ids,
    STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{
    count_bad, err_str, errno, fill, gettid, mmap_anon, pat, set_thread_name, sleep_ns, task_ids,
    thread_name,
};

const DEFAULT_CHILDREN: usize = 50;
const DEFAULT_THREADS: usize = 2;
const DEFAULT_MIB: usize = 4;
const MAX_CHILDREN: usize = 4000;
const MAX_THREADS: usize = 256;
const MAX_MIB: usize = 64 * 1024;
/// Members poll go less often than the root: there may be thousands.
const GO_POLL_NS: u64 = 10_000_000;
const STEP_NS: u64 = 1_000_000;
/// For reaping all children after go, in total.
const REAP_TIMEOUT_NS: u64 = 300_000_000_000;
const STACK_WORDS: usize = 2048;
const FUTEX_WAIT_PRIVATE: i32 = 128;
const FUTEX_WAKE_PRIVATE: i32 = 129;

/// The word every worker of a process waits on (0 until go).
static WAKE: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static TLS: [Cell<u64>; 8] = const { [const { Cell::new(0) }; 8] };
}

fn parse(p: &Proto, args: &[String], k: usize, default: usize, max: usize, what: &str) -> usize {
    match args.get(k).map(|a| a.parse::<usize>()) {
        None => default,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => p.bail(&format!(
            "setup: many <children> <threads-per-child> <MiB-per-child>: {what} must be in 1..={max}, got {:?}",
            args[k]
        )),
    }
}

fn wait_until(timeout_ns: u64, mut cond: impl FnMut() -> bool) -> bool {
    let mut slept = 0;
    while !cond() {
        if slept >= timeout_ns {
            return false;
        }
        sleep_ns(STEP_NS);
        slept += STEP_NS;
    }
    true
}

/// Private memory filled with the pattern stream `seed`.
struct Region {
    ptr: *mut u8,
    len: usize,
    seed: u64,
}

impl Region {
    fn new(p: &Proto, mib: usize, seed: u64) -> Self {
        let len = mib << 20;
        let ptr = mmap_anon(len, libc::PROT_READ | libc::PROT_WRITE, 0)
            .unwrap_or_else(|e| p.bail(&format!("setup: mmap {mib} MiB: {}", err_str(e))));
        // SAFETY: fresh mapping of `len` bytes.
        unsafe { fill(ptr, len, seed) };
        Self { ptr, len, seed }
    }

    fn check(&self, c: &mut Checks, what: &str) {
        // SAFETY: our mapping, `len` readable bytes.
        let (bad, first) = unsafe { count_bad(self.ptr, self.len, self.seed) };
        c.ensure(bad == 0, || {
            format!(
                "{what} ({} MiB at {:#x}): {bad} words differ from the pattern, first at byte {first:?}",
                self.len >> 20,
                self.ptr as usize
            )
        });
    }
}

struct Workers {
    tids: Vec<AtomicI32>,
    ready: AtomicUsize,
    done: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

fn worker(w: Arc<Workers>, child: usize, j: usize) {
    let name = format!("wl-c{child}-t{j}");
    let tid = gettid();
    w.tids[j - 1].store(tid, SeqCst);
    let seed = 0x3A70_0000_0000 + ((child as u64) << 16) + j as u64;
    let mut c = Checks::new();
    if let Err(e) = set_thread_name(name.as_bytes()) {
        c.fail(format!("setup: PR_SET_NAME: {}", err_str(e)));
    }
    TLS.with(|t| {
        for (k, x) in t.iter().enumerate() {
            x.set(pat(seed, k));
        }
    });
    let mut stack = [0u64; STACK_WORDS];
    for (k, x) in stack.iter_mut().enumerate() {
        *x = pat(seed ^ 0x57AC, k);
    }
    let stack = std::hint::black_box(stack);
    w.ready.fetch_add(1, SeqCst);
    let mut calls = 0u32;
    let mut errs = Vec::new();
    while WAKE.load(SeqCst) == 0 {
        // SAFETY: FUTEX_WAIT on a valid aligned u32, no timeout.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                WAKE.as_ptr(),
                FUTEX_WAIT_PRIVATE,
                0,
                std::ptr::null::<libc::timespec>(),
            )
        };
        calls += 1;
        if r != 0 && errno() != libc::EAGAIN {
            errs.push(err_str(errno()));
        }
    }
    let w2 = format!("thread {j} (tid {tid})");
    c.ensure(errs.is_empty(), || {
        format!(
            "{w2}: FUTEX_WAIT failed {} time(s) out of {calls}: {errs:?}",
            errs.len()
        )
    });
    c.ensure(calls <= 1, || {
        format!("{w2}: FUTEX_WAIT returned {calls} times (expected once, when woken)")
    });
    c.eq(&format!("{w2}: gettid()"), tid, gettid());
    c.eq(
        &format!("{w2}: PR_GET_NAME"),
        name.as_bytes(),
        &thread_name()[..],
    );
    let tls: Vec<u64> = TLS.with(|t| t.iter().map(Cell::get).collect());
    let bad_tls = (0..8).filter(|&k| tls[k] != pat(seed, k)).count();
    c.ensure(bad_tls == 0, || {
        format!("{w2}: {bad_tls} thread_local! words differ from the thread's pattern")
    });
    let bad_stack = (0..STACK_WORDS)
        .filter(|&k| stack[k] != pat(seed ^ 0x57AC, k))
        .count();
    c.ensure(bad_stack == 0, || {
        format!("{w2}: {bad_stack} words of a 16 KiB stack array differ from the pattern")
    });
    w.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(c.failures().iter().cloned());
    w.done.fetch_add(1, SeqCst);
}

fn child(m: &Proto, i: usize, threads: usize, mib: usize, root: i32, root_ids: Ids) -> Checks {
    die_with_parent(root);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let want = Ids {
        pid,
        ppid: root,
        pgid: root_ids.pgid,
        sid: root_ids.sid,
    };
    let mem = Region::new(m, mib, pat(0x3A77, i) ^ pid as u64);
    let w = Arc::new(Workers {
        tids: (1..threads).map(|_| AtomicI32::new(0)).collect(),
        ready: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::new();
    for j in 1..threads {
        let w2 = w.clone();
        match std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || worker(w2, i, j))
        {
            Ok(h) => handles.push(h),
            Err(e) => m.bail(&format!("setup: spawning thread {j}: {e}")),
        }
    }
    // Quiescent before ready: every worker blocked in FUTEX_WAIT.
    let in_futex = |tid: i32| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .is_ok_and(|s| s.starts_with("202 "))
    };
    let settled = wait_until(STEP_TIMEOUT_NS, || {
        w.ready.load(SeqCst) == threads - 1 && w.tids.iter().all(|t| in_futex(t.load(SeqCst)))
    });
    if !settled {
        m.bail("setup: the worker threads never all blocked in FUTEX_WAIT");
    }
    let tasks = task_ids();
    let mut pre = Checks::new();
    Ids::now().check(&mut pre, &want);
    pre.eq("threads in /proc/self/task", threads, tasks.len());
    mem.check(&mut pre, "private memory");
    if !pre.passed() {
        m.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    let base = Baseline::record();
    m.write_aux(&format!("setup-{i}"), &format!("{pid}\n"));
    let wait = member_wait_go(m, root, GO_POLL_NS);

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    Ids::now().check(&mut c, &want);
    c.eq("/proc/self/task thread ids", &tasks, &task_ids());
    mem.check(&mut c, "private memory");
    base.verify_member(&mut c);
    WAKE.store(1, SeqCst);
    // SAFETY: FUTEX_WAKE on a valid aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, WAKE.as_ptr(), FUTEX_WAKE_PRIVATE, i32::MAX) };
    if !wait_until(STEP_TIMEOUT_NS, || w.done.load(SeqCst) == threads - 1) {
        c.fail(format!(
            "only {} of {} worker threads finished their checks",
            w.done.load(SeqCst),
            threads - 1
        ));
        return c;
    }
    for h in handles {
        if h.join().is_err() {
            c.fail("a worker thread panicked");
        }
    }
    for l in w.failures.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        c.fail(l.clone());
    }
    c
}

fn code(i: usize) -> i32 {
    100 + (i % 100) as i32
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let children = parse(p, args, 0, DEFAULT_CHILDREN, MAX_CHILDREN, "children");
    let threads = parse(
        p,
        args,
        1,
        DEFAULT_THREADS,
        MAX_THREADS,
        "threads-per-child",
    );
    let mib = parse(p, args, 2, DEFAULT_MIB, MAX_MIB, "MiB-per-child");
    let root_ids = Ids::now();
    let root = root_ids.pid;
    let mut kids: Vec<(String, i32)> = Vec::with_capacity(children);
    for i in 0..children {
        let pid = spawn(p, code(i), move |m| {
            child(m, i, threads, mib, root, root_ids)
        });
        kids.push((format!("child {i}"), pid));
    }
    // Allocated after the forks, so no child inherits a copy of it.
    let mem = Region::new(p, mib, pat(0x3A77, usize::MAX) ^ root as u64);
    let dir = p.dir().to_path_buf();
    {
        let mut ok = kids_alive(&dir, &kids);
        for i in 0..children {
            if let Err(e) = wait_path(&dir.join(format!("setup-{i}")), STEP_TIMEOUT_NS, &mut ok) {
                p.bail(&format!("setup: {e}"));
            }
        }
    }
    let mut pre = Checks::new();
    mem.check(&mut pre, "root: private memory");
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    p.write_aux(
        "info",
        &format!(
            "children={children}\nthreads_per_child={threads}\nmib_per_child={mib}\npids={}\n",
            kids.iter()
                .map(|k| k.1.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "root: go-wait");
    Ids::now().check_root(&mut c, &root_ids);
    mem.check(&mut c, "root: private memory");
    let mut left = REAP_TIMEOUT_NS;
    for (i, (name, pid)) in kids.iter().enumerate() {
        let t0 = crate::util::clock_ns(libc::CLOCK_MONOTONIC);
        let st = reap(*pid, left.max(STEP_NS));
        let spent = (crate::util::clock_ns(libc::CLOCK_MONOTONIC) - t0).max(0) as u64;
        left = left.saturating_sub(spent);
        judge(&mut c, &dir, name, *pid, st, code(i));
    }
    base.verify(p, &mut c);
    c
}
