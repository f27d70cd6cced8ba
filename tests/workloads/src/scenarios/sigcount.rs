//! `sigcount`: counts the signals it is sent while it is checkpointed,
//! for tests that send signals during a dump.  SIGUSR1 (a standard
//! signal: the sender sends the next one only once the previous one is
//! no longer pending, so none merge) is counted; each SIGRTMIN carries a
//! sequence number in its value (0, 1, 2, …), recorded in delivery order.
//! Both handlers have SA_RESTART; the go-wait's EINTRs are expected here
//! and not counted as failures.
//!
//! After go it reads `<dir>/sent` (`usr1 N` and `rtmin M` lines, written
//! by the sender) and waits up to 10 s for the deliveries to arrive.
//! Then SIGUSR1 must have been delivered exactly N times, and the
//! SIGRTMIN values must be exactly 0..M in order: none lost, none
//! duplicated, none reordered.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MAX_RT: usize = 1 << 16;
static USR1: AtomicU64 = AtomicU64::new(0);
static RT_N: AtomicU32 = AtomicU32::new(0);
static RT_VALUES: [AtomicU32; MAX_RT] = [const { AtomicU32::new(u32::MAX) }; MAX_RT];

extern "C" fn on_usr1(_: libc::c_int) {
    USR1.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_rt(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let v = unsafe { (*info).si_value().sival_ptr } as usize as u32;
    let i = RT_N.fetch_add(1, Ordering::SeqCst) as usize;
    if i < MAX_RT {
        RT_VALUES[i].store(v, Ordering::SeqCst);
    }
}

fn install(p: &Proto, sig: i32, handler: usize, siginfo: bool) {
    // SAFETY: sigaction is plain data; all-zero is a valid start.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART | if siginfo { libc::SA_SIGINFO } else { 0 };
    // SAFETY: the handlers only touch atomics.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        p.bail_errno("sigaction");
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    install(p, libc::SIGUSR1, on_usr1 as *const () as usize, false);
    install(p, libc::SIGRTMIN(), on_rt as *const () as usize, true);
    let base = Baseline::record();
    p.write_ready();
    let _ = p.wait_go();
    let mut c = Checks::new();
    let sent = std::fs::read_to_string(p.dir().join("sent")).unwrap_or_default();
    let field = |k: &str| -> Option<u64> {
        sent.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
    };
    let (Some(usr1), Some(rt)) = (field("usr1 "), field("rtmin ")) else {
        c.fail(format!("<dir>/sent is not `usr1 N` / `rtmin M`: {sent:?}"));
        return c;
    };
    let start = std::time::Instant::now();
    while (USR1.load(Ordering::SeqCst) < usr1 || u64::from(RT_N.load(Ordering::SeqCst)) < rt)
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.eq("SIGUSR1 deliveries", usr1, USR1.load(Ordering::SeqCst));
    let n = RT_N.load(Ordering::SeqCst);
    c.eq("SIGRTMIN deliveries", rt, u64::from(n));
    let bad =
        (0..(n as usize).min(MAX_RT)).find(|&i| RT_VALUES[i].load(Ordering::SeqCst) != i as u32);
    if let Some(i) = bad {
        c.fail(format!(
            "SIGRTMIN delivery {i} carried value {}, expected {i} (lost, duplicated or reordered)",
            RT_VALUES[i].load(Ordering::SeqCst)
        ));
    }
    base.verify(p, &mut c);
    c
}
