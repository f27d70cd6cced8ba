//! `signals`: handlers with every flavour of flags, an alternate stack, a
//! blocked mask and pending signals (process- and thread-directed, standard
//! and queued real-time with values). After go all of it must read back
//! identical, and unblocking must deliver every pending signal, with its
//! siginfo, to the right handler, on the right stack, in the right order.

use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst,
};

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{err_str, errno, mmap_anon, status_mask};

const ALTSTACK_LEN: usize = 64 * 1024;
const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;

/// The kernel's `struct sigaction` (rt_sigaction ABI) on x86-64.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct KSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn rtmin() -> i32 {
    libc::SIGRTMIN()
}

/// One delivery of a signal, recorded by the handlers.
struct Slot {
    sig: AtomicI32,
    code: AtomicI32,
    pid: AtomicI32,
    uid: AtomicU32,
    value: AtomicI64,
    /// Address of a local variable of the handler (which stack it ran on).
    sp: AtomicUsize,
    /// Blocked mask inside the handler.
    mask: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    sig: AtomicI32::new(0),
    code: AtomicI32::new(0),
    pid: AtomicI32::new(0),
    uid: AtomicU32::new(0),
    value: AtomicI64::new(0),
    sp: AtomicUsize::new(0),
    mask: AtomicU64::new(0),
};
static LOG: [Slot; 16] = [EMPTY; 16];
static LOG_LEN: AtomicUsize = AtomicUsize::new(0);

/// Current blocked mask via the raw syscall (async-signal-safe).
fn cur_mask() -> u64 {
    let mut m = 0u64;
    // SAFETY: valid out-pointer of the kernel sigset size (8 bytes).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut m as *mut u64,
            8usize,
        )
    };
    m
}

/// Async-signal-safe: atomics only.
fn log(sig: i32, info: *const libc::siginfo_t) {
    let local = 0u8;
    let i = LOG_LEN.fetch_add(1, SeqCst);
    let Some(s) = LOG.get(i) else { return };
    s.sig.store(sig, SeqCst);
    s.sp.store(std::ptr::addr_of!(local) as usize, SeqCst);
    s.mask.store(cur_mask(), SeqCst);
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers;
        // pid/uid/value are read as the union members SI_USER, SI_QUEUE and
        // SI_TKILL signals fill in.
        unsafe {
            s.code.store((*info).si_code, SeqCst);
            s.pid.store((*info).si_pid(), SeqCst);
            s.uid.store((*info).si_uid(), SeqCst);
            s.value.store((*info).si_value().sival_ptr as i64, SeqCst);
        }
    }
}

extern "C" fn on_info(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    log(sig, info);
}

extern "C" fn on_plain(sig: i32) {
    log(sig, std::ptr::null());
}

fn get_action(sig: i32) -> Result<KSigaction, i32> {
    let mut old = KSigaction::default();
    // SAFETY: raw rt_sigaction query into a correctly laid out struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KSigaction>(),
            &mut old as *mut KSigaction,
            8usize,
        )
    };
    if r == 0 {
        Ok(old)
    } else {
        Err(errno())
    }
}

fn install(p: &Proto, sig: i32, handler: usize, flags: i32, mask: &[i32]) {
    // SAFETY: all-zero sigaction is valid; fields set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    // SAFETY: sa_mask is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        for &m in mask {
            libc::sigaddset(&mut sa.sa_mask, m);
        }
    }
    // SAFETY: valid sigaction; handlers are async-signal-safe.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        p.bail_errno(&format!("sigaction({sig})"));
    }
}

struct State {
    actions: Vec<(i32, Result<KSigaction, i32>)>,
    blocked: u64,
    thread_pending: Option<u64>,
    shared_pending: Option<u64>,
    sigpending: u64,
    altstack: (usize, usize, i32),
}

fn sigset_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: glibc's sigset_t starts with the kernel's 64-bit mask.
    unsafe { *(set as *const libc::sigset_t).cast::<u64>() }
}

fn snapshot() -> State {
    let actions = (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .map(|s| (s, get_action(s)))
        .collect();
    // SAFETY: zeroed sigset_t/stack_t are valid out-parameters.
    let (pend, ss) = unsafe {
        let mut pend: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pend);
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        (pend, ss)
    };
    State {
        actions,
        blocked: cur_mask(),
        thread_pending: status_mask("SigPnd"),
        shared_pending: status_mask("ShdPnd"),
        sigpending: sigset_bits(&pend),
        altstack: (ss.ss_sp as usize, ss.ss_size, ss.ss_flags),
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let rt3 = rtmin() + 3;
    let rt5 = rtmin() + 5;
    let info = on_info as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    let plain = on_plain as extern "C" fn(i32) as usize;
    install(
        p,
        libc::SIGUSR1,
        info,
        libc::SA_SIGINFO | libc::SA_RESTART,
        &[libc::SIGUSR2, libc::SIGTERM],
    );
    install(
        p,
        libc::SIGUSR2,
        info,
        libc::SA_ONSTACK | libc::SA_SIGINFO,
        &[],
    );
    install(
        p,
        libc::SIGHUP,
        plain,
        libc::SA_RESETHAND | libc::SA_NODEFER,
        &[],
    );
    install(p, libc::SIGINT, libc::SIG_IGN, 0, &[]);
    install(p, libc::SIGPIPE, libc::SIG_IGN, 0, &[]);
    // Restore's batch loop stops at an int3, whose SIGTRAP the kernel
    // forces through with the default action when the signal is ignored.
    install(p, libc::SIGTRAP, libc::SIG_IGN, 0, &[]);
    install(p, rt3, info, libc::SA_SIGINFO, &[]);
    install(p, rt5, info, libc::SA_SIGINFO, &[]);

    let alt = mmap_anon(ALTSTACK_LEN, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| p.bail(&format!("setup: mmap altstack: {}", err_str(e))));
    let ss = libc::stack_t {
        ss_sp: alt.cast(),
        ss_flags: 0,
        ss_size: ALTSTACK_LEN,
    };
    // SAFETY: the altstack mapping stays for the life of the process.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        p.bail_errno("sigaltstack");
    }

    let block = [libc::SIGUSR2, rt3, rt5, libc::SIGHUP];
    // SAFETY: plain sigset manipulation and process-local signal calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in block {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            p.bail_errno("sigprocmask");
        }
        let pid = libc::getpid();
        if libc::kill(pid, libc::SIGUSR2) != 0 {
            p.bail_errno("kill(SIGUSR2)");
        }
        for v in [42usize, 43] {
            if libc::sigqueue(
                pid,
                rt3,
                libc::sigval {
                    sival_ptr: v as *mut libc::c_void,
                },
            ) != 0
            {
                p.bail_errno("sigqueue(SIGRTMIN+3)");
            }
        }
        let mut si: libc::siginfo_t = std::mem::zeroed();
        let raw = (&mut si as *mut libc::siginfo_t).cast::<i32>();
        // siginfo layout: signo, errno, code, then (pid, uid, value).
        *raw = rt5;
        *raw.add(2) = SI_QUEUE;
        *raw.add(4) = pid;
        *raw.add(5) = libc::getuid() as i32;
        *(raw.add(6).cast::<usize>()) = 77;
        if libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            libc::gettid(),
            rt5,
            &si as *const libc::siginfo_t,
        ) != 0
        {
            p.bail_errno("rt_tgsigqueueinfo(SIGRTMIN+5)");
        }
        if libc::raise(libc::SIGHUP) != 0 {
            p.bail_errno("raise(SIGHUP)");
        }
    }

    let before = snapshot();
    // Sanity of the recorded state, so the comparisons below are meaningful.
    let want_blocked: u64 = block.iter().map(|&s| bit(s)).sum();
    let want_thread = bit(libc::SIGHUP) | bit(rt5);
    let want_shared = bit(libc::SIGUSR2) | bit(rt3);
    if before.blocked & want_blocked != want_blocked
        || before.thread_pending != Some(want_thread)
        || before.shared_pending != Some(want_shared)
        || LOG_LEN.load(SeqCst) != 0
    {
        p.bail(&format!(
            "setup: unexpected state: blocked {:#x}, SigPnd {:x?} (want {want_thread:#x}), ShdPnd {:x?} (want {want_shared:#x}), handlers run {}",
            before.blocked, before.thread_pending, before.shared_pending, LOG_LEN.load(SeqCst)
        ));
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq("handlers run before unblocking", 0, LOG_LEN.load(SeqCst));
    let after = snapshot();
    compare(&mut c, &before, &after);

    // Deliver everything pending.
    // SAFETY: unblocks the four signals; handlers are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in block {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let delivered = LOG_LEN.load(SeqCst);
    // SAFETY: sends SIGUSR1 to ourselves; its handler only logs.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    check_deliveries(&mut c, delivered, alt as usize);
    base.verify(p, &mut c);
    c
}

fn compare(c: &mut Checks, a: &State, b: &State) {
    for ((sig, x), (_, y)) in a.actions.iter().zip(&b.actions) {
        c.ensure(x == y, || {
            format!("rt_sigaction({sig}) readback: expected {x:x?}, got {y:x?}")
        });
    }
    c.ensure(a.blocked == b.blocked, || {
        format!(
            "blocked mask: expected {:#x}, got {:#x}",
            a.blocked, b.blocked
        )
    });
    c.ensure(a.thread_pending == b.thread_pending, || {
        format!(
            "thread-directed pending (SigPnd): expected {:x?}, got {:x?}",
            a.thread_pending, b.thread_pending
        )
    });
    c.ensure(a.shared_pending == b.shared_pending, || {
        format!(
            "process-directed pending (ShdPnd): expected {:x?}, got {:x?}",
            a.shared_pending, b.shared_pending
        )
    });
    c.ensure(a.sigpending == b.sigpending, || {
        format!(
            "sigpending(): expected {:#x}, got {:#x}",
            a.sigpending, b.sigpending
        )
    });
    c.ensure(a.altstack == b.altstack, || {
        format!(
            "sigaltstack (sp, size, flags): expected {:x?}, got {:x?}",
            a.altstack, b.altstack
        )
    });
}

struct Seen {
    sig: i32,
    code: i32,
    pid: i32,
    uid: u32,
    value: i64,
    sp: usize,
    mask: u64,
}

fn check_deliveries(c: &mut Checks, n_unblock: usize, alt: usize) {
    let n = LOG_LEN.load(SeqCst).min(LOG.len());
    let seen: Vec<Seen> = LOG[..n]
        .iter()
        .map(|s| Seen {
            sig: s.sig.load(SeqCst),
            code: s.code.load(SeqCst),
            pid: s.pid.load(SeqCst),
            uid: s.uid.load(SeqCst),
            value: s.value.load(SeqCst),
            sp: s.sp.load(SeqCst),
            mask: s.mask.load(SeqCst),
        })
        .collect();
    // SAFETY: getpid/getuid have no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    let (rt3, rt5) = (rtmin() + 3, rtmin() + 5);
    let of = |sig: i32| seen.iter().filter(move |s| s.sig == sig);
    let order: Vec<i32> = seen.iter().map(|s| s.sig).collect();
    c.eq(
        "handler runs on unblocking (HUP, USR2, RTMIN+3 x2, RTMIN+5)",
        5,
        n_unblock,
    );

    let usr2: Vec<&Seen> = of(libc::SIGUSR2).collect();
    c.ensure(usr2.len() == 1, || {
        format!(
            "SIGUSR2 handler: expected 1 run, got {} (deliveries {order:?})",
            usr2.len()
        )
    });
    if let Some(s) = usr2.first() {
        c.eq("SIGUSR2 si_code", SI_USER, s.code);
        c.eq("SIGUSR2 si_pid", pid, s.pid);
        c.eq("SIGUSR2 si_uid", uid, s.uid);
        c.ensure(s.sp >= alt && s.sp < alt + ALTSTACK_LEN, || {
            format!(
                "SIGUSR2 (SA_ONSTACK) handler local at {:#x}, not on the altstack {alt:#x}+64K",
                s.sp
            )
        });
    }
    let r3: Vec<&Seen> = of(rt3).collect();
    let vals: Vec<i64> = r3.iter().map(|s| s.value).collect();
    c.eq("SIGRTMIN+3 si_value sequence", vec![42i64, 43], vals);
    for s in &r3 {
        c.eq("SIGRTMIN+3 si_code", SI_QUEUE, s.code);
        c.eq("SIGRTMIN+3 si_pid", pid, s.pid);
    }
    let r5: Vec<&Seen> = of(rt5).collect();
    let vals: Vec<i64> = r5.iter().map(|s| s.value).collect();
    c.eq("SIGRTMIN+5 si_value sequence", vec![77i64], vals);
    for s in &r5 {
        c.eq("SIGRTMIN+5 si_code", SI_QUEUE, s.code);
        c.eq("SIGRTMIN+5 si_pid", pid, s.pid);
    }
    let hup: Vec<&Seen> = of(libc::SIGHUP).collect();
    c.ensure(hup.len() == 1, || {
        format!(
            "SIGHUP handler: expected 1 run, got {} (deliveries {order:?})",
            hup.len()
        )
    });
    if let Some(s) = hup.first() {
        c.ensure(s.mask & bit(libc::SIGHUP) == 0, || {
            format!(
                "SIGHUP (SA_NODEFER) blocked inside its own handler: mask {:#x}",
                s.mask
            )
        });
    }
    match get_action(libc::SIGHUP) {
        Ok(a) => c.ensure(a.handler == libc::SIG_DFL, || {
            format!(
                "SIGHUP (SA_RESETHAND) after delivery: expected SIG_DFL, got handler {:#x}",
                a.handler
            )
        }),
        Err(e) => c.fail(format!("rt_sigaction(SIGHUP): {}", err_str(e))),
    }
    let usr1: Vec<&Seen> = of(libc::SIGUSR1).collect();
    c.ensure(usr1.len() == 1, || {
        format!("SIGUSR1 handler: expected 1 run, got {}", usr1.len())
    });
    if let Some(s) = usr1.first() {
        let want = bit(libc::SIGUSR1) | bit(libc::SIGUSR2) | bit(libc::SIGTERM);
        c.ensure(s.mask & want == want, || {
            format!(
                "mask inside SIGUSR1 handler {:#x} lacks USR1/USR2/TERM ({want:#x}) from sa_mask",
                s.mask
            )
        });
        c.eq("SIGUSR1 si_code", SI_USER, s.code);
    }
    // SAFETY: zeroed sigset_t is a valid out-parameter.
    let left = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        sigset_bits(&set)
    };
    c.eq("signals still pending after delivery", 0, left);
}
