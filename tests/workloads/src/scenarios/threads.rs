//! `threads [N]`: N threads (default 8) besides the main thread, each with
//! state of its own that the checkpoint must keep per thread:
//!
//! - registers: distinct patterns in rbx rbp r12-r15 (plus rdx r8-r10 or
//!   r8 r9) and zmm0-31 + k0-7 (ymm0-15 with AVX, xmm0-15 otherwise) held
//!   across the wait; the threads running the `regs` loop also hold their own
//!   x87 stack, x87 control word and MXCSR (distinct rounding modes);
//! - its name (`wl-t<i>`), its blocked mask, two queued thread-directed
//!   real-time signals with per-thread values, its own sigaltstack (every
//!   other one with SS_AUTODISARM), a `thread_local!` block of patterned
//!   words, glibc's rseq registration, robust list, clear_child_tid, FS base
//!   and tid.
//!
//! Thread 0 spins in user space (`regs busy`), threads 3, 6, 9... sleep in
//! raw `nanosleep` loops polling go (`regs sleep`), the others block in one
//! raw FUTEX_WAIT (shared or private flavour, no timeout) on a word the main
//! thread changes and wakes after go. The main thread itself has a name,
//! mask, altstack, TLS and a pending signal of its own.
//!
//! A process-directed SIGRTMIN+7 with a value is pending, blocked in every
//! thread. After go each thread verifies itself, takes its own signals on
//! its own altstack, and the last thread unblocks SIGRTMIN+7 and must receive
//! it. The main thread then checks the kernel clears each thread's
//! clear_child_tid word on exit, joins them all and reports.

use std::cell::Cell;
use std::ffi::CString;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use super::regs_asm::{
    crest_wl_regs_run, RegsCtx, CODE_TIMEOUT, GPR_NAMES, LEVEL_AVX, LEVEL_AVX512, LEVEL_SSE,
    MODE_BUSY, MODE_SLEEP,
};
use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{
    altstack, check_rseq, checksum, err_str, errno, fs_base, gettid, mmap_anon, readlink,
    robust_list, rseq_area, set_thread_name, sig_bit, sigmask, sleep_ns, splitmix64, status_field,
    status_mask, task_ids, thread_name, thread_pointer, thread_status_mask, tid_address,
};

const DEFAULT_THREADS: usize = 8;
const MAX_THREADS: usize = 4000;
/// SIGRTMIN+7: the process-directed signal, blocked in every thread.
const GROUP_OFF: i32 = 7;
const GROUP_VALUE: usize = 0x6A0C_7007;
const SI_QUEUE: i32 = -1;
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_PRIVATE: u64 = 128;
const FUTEX_WAKE: i32 = 1;
const FUTEX_WAKE_PRIVATE: i32 = 129;
const SS_AUTODISARM: i32 = 1 << 31;
/// sizeof(struct robust_list_head) on x86-64.
const ROBUST_HEAD_LEN: usize = 24;
const STEP_NS: u64 = 1_000_000;
const SETUP_TIMEOUT_NS: u64 = 60_000_000_000;
const DONE_TIMEOUT_NS: u64 = 60_000_000_000;
const EXIT_TIMEOUT_NS: u64 = 10_000_000_000;
const SPIN: u64 = 1_000_000;
const MAX_ITERS_BUSY: u64 = 450_000;
const THREAD_STACK: usize = 512 * 1024;
const TLS_WORDS: usize = 32;

static FUTEX_SHARED: AtomicU32 = AtomicU32::new(0);
static FUTEX_PRIVATE: AtomicU32 = AtomicU32::new(0);
/// Set by the main thread once it has checked the shared pending set: the
/// designated thread may then take the group signal.
static PHASE: AtomicU32 = AtomicU32::new(0);
static GROUP_TID: AtomicI32 = AtomicI32::new(0);
static GROUP_HITS: AtomicU32 = AtomicU32::new(0);

/// One handler run, recorded by the thread that ran it.
struct Entry {
    sig: Cell<i32>,
    code: Cell<i32>,
    pid: Cell<i32>,
    tid: Cell<i32>,
    value: Cell<usize>,
    sp: Cell<usize>,
}

impl Entry {
    const fn new() -> Self {
        Self {
            sig: Cell::new(0),
            code: Cell::new(0),
            pid: Cell::new(0),
            tid: Cell::new(0),
            value: Cell::new(0),
            sp: Cell::new(0),
        }
    }
}

thread_local! {
    /// The per-thread pattern block (its values differ in every thread).
    static TLS: [Cell<u64>; TLS_WORDS] = const { [const { Cell::new(0) }; TLS_WORDS] };
    /// Handler runs of this thread. Const-initialised without destructor:
    /// plain TLS accesses, safe in a signal handler.
    static HLOG: [Entry; 4] = const { [const { Entry::new() }; 4] };
    static HLEN: Cell<usize> = const { Cell::new(0) };
}

fn rt(off: i32) -> i32 {
    libc::SIGRTMIN() + off
}

/// Async-signal-safe: TLS cells, atomics and raw syscalls only.
extern "C" fn on_rt(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let local = 0u8;
    let sp = std::ptr::addr_of!(local) as usize;
    let tid = gettid();
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers; the
    // signals handled here are all queued (SI_QUEUE), which fills pid, uid
    // and value.
    let (code, pid, value) = unsafe {
        (
            (*info).si_code,
            (*info).si_pid(),
            (*info).si_value().sival_ptr as usize,
        )
    };
    if sig == rt(GROUP_OFF) {
        GROUP_TID.store(tid, SeqCst);
        GROUP_HITS.fetch_add(1, SeqCst);
    }
    let k = HLEN.with(|n| {
        let k = n.get();
        n.set(k + 1);
        k
    });
    HLOG.with(|log| {
        if let Some(e) = log.get(k) {
            e.sig.set(sig);
            e.code.set(code);
            e.pid.set(pid);
            e.tid.set(tid);
            e.value.set(value);
            e.sp.set(sp);
        }
    });
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Busy,
    Sleep { ms: u64 },
    Futex { private: bool },
}

fn kind_of(i: usize) -> Kind {
    match (i, i % 3) {
        (0, _) => Kind::Busy,
        (_, 0) => Kind::Sleep {
            ms: 3 + (i as u64 % 5),
        },
        (_, 1) => Kind::Futex { private: false },
        _ => Kind::Futex { private: true },
    }
}

/// Signals some threads block besides the base set (one bit each of a
/// per-thread 32-bit pattern).
fn extra_signals() -> [i32; 32] {
    let mut s = [0; 32];
    let std_sigs = [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGWINCH,
        libc::SIGURG,
        libc::SIGTERM,
        libc::SIGALRM,
        libc::SIGPROF,
        libc::SIGVTALRM,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGCHLD,
    ];
    s[..16].copy_from_slice(&std_sigs);
    for (k, slot) in s[16..].iter_mut().enumerate() {
        *slot = rt(8 + k as i32);
    }
    s
}

/// Blocked in every thread: the four directed signals and the group one.
fn base_mask() -> u64 {
    (1..=4).map(|o| sig_bit(rt(o))).sum::<u64>() | sig_bit(rt(GROUP_OFF))
}

/// What thread `idx` (the main thread is `idx == n`) must look like.
struct Expect {
    what: String,
    name: Vec<u8>,
    dsig: i32,
    values: [usize; 2],
    mask: u64,
    alt: usize,
    alt_size: usize,
    alt_flags: i32,
    tls_seed: u64,
    group: bool,
}

impl Expect {
    fn new(idx: usize, n: usize) -> Self {
        let main = idx == n;
        // An odd multiplier is a bijection on u32: distinct masks per thread.
        let bits = (idx as u32 + 1).wrapping_mul(0x9E37_79B1);
        let extra: u64 = extra_signals()
            .iter()
            .enumerate()
            .filter(|(k, _)| bits & (1 << k) != 0)
            .map(|(_, &s)| sig_bit(s))
            .fold(0, |a, b| a | b);
        Self {
            what: if main {
                "main thread".into()
            } else {
                format!("thread {idx}")
            },
            name: if main {
                b"wl-main".to_vec()
            } else {
                format!("wl-t{idx}").into_bytes()
            },
            dsig: rt(1 + (idx % 4) as i32),
            values: [0x5100_0000 + idx * 16, 0x5100_0000 + idx * 16 + 1],
            mask: base_mask() | extra,
            alt: 0,
            alt_size: (32 + (idx % 8) * 4) * 1024,
            alt_flags: if idx % 2 == 1 { SS_AUTODISARM } else { 0 },
            tls_seed: 0x7150_0000 + idx as u64,
            group: !main && idx + 1 == n,
        }
    }
}

fn tls_pattern(seed: u64, k: usize) -> u64 {
    splitmix64(seed.wrapping_mul(0x100).wrapping_add(k as u64))
}

fn tls_words() -> Vec<u64> {
    TLS.with(|t| t.iter().map(Cell::get).collect())
}

/// Sets the calling thread up as `e` says; fills in the altstack address.
fn prepare(e: &mut Expect) -> Result<(), String> {
    set_thread_name(&e.name).map_err(|x| format!("PR_SET_NAME: {}", err_str(x)))?;
    sigmask(libc::SIG_SETMASK, Some(e.mask));
    let alt = mmap_anon(e.alt_size, libc::PROT_READ | libc::PROT_WRITE, 0)
        .map_err(|x| format!("mmap altstack: {}", err_str(x)))?;
    let ss = libc::stack_t {
        ss_sp: alt.cast(),
        ss_flags: e.alt_flags,
        ss_size: e.alt_size,
    };
    // SAFETY: the mapping stays for the life of the process.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", err_str(errno())));
    }
    e.alt = alt as usize;
    TLS.with(|t| {
        for (k, w) in t.iter().enumerate() {
            w.set(tls_pattern(e.tls_seed, k));
        }
    });
    // SAFETY: getpid/getuid have no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    for v in e.values {
        // SAFETY: an all-zero siginfo is valid; the fields set are those of
        // SI_QUEUE (layout: signo, errno, code, then pid, uid, value).
        let r = unsafe {
            let mut si: libc::siginfo_t = std::mem::zeroed();
            let raw = (&mut si as *mut libc::siginfo_t).cast::<i32>();
            *raw = e.dsig;
            *raw.add(2) = SI_QUEUE;
            *raw.add(4) = pid;
            *raw.add(5) = uid as i32;
            *(raw.add(6).cast::<usize>()) = v;
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                pid,
                gettid(),
                e.dsig,
                &si as *const libc::siginfo_t,
            )
        };
        if r != 0 {
            return Err(format!(
                "rt_tgsigqueueinfo(sig {}, value {v:#x}): {}",
                e.dsig,
                err_str(errno())
            ));
        }
    }
    Ok(())
}

type Snap = Vec<(&'static str, String)>;

/// Everything the calling thread can read about itself.
fn snapshot() -> Snap {
    let tls_addr = TLS.with(|t| t.as_ptr() as usize);
    vec![
        ("gettid()", gettid().to_string()),
        (
            "readlink /proc/thread-self",
            format!("{:?}", readlink("/proc/thread-self")),
        ),
        (
            "PR_GET_NAME",
            String::from_utf8_lossy(&thread_name()).into_owned(),
        ),
        (
            "/proc/thread-self/comm",
            format!(
                "{:?}",
                std::fs::read_to_string("/proc/thread-self/comm").ok()
            ),
        ),
        (
            "blocked mask (rt_sigprocmask)",
            format!("{:#x}", sigmask(libc::SIG_BLOCK, None)),
        ),
        (
            "/proc/thread-self/status SigBlk",
            format!("{:x?}", thread_status_mask("SigBlk")),
        ),
        (
            "/proc/thread-self/status SigPnd",
            format!("{:x?}", thread_status_mask("SigPnd")),
        ),
        (
            "sigaltstack (sp, size, flags)",
            format!("{:x?}", altstack()),
        ),
        ("ARCH_GET_FS", format!("{:#x}", fs_base())),
        ("thread pointer (fs:0)", format!("{:#x}", thread_pointer())),
        ("rseq area, __rseq_size", format!("{:x?}", rseq_area())),
        ("get_robust_list(0)", format!("{:x?}", robust_list())),
        ("PR_GET_TID_ADDRESS", format!("{:x?}", tid_address())),
        ("thread_local! block address", format!("{tls_addr:#x}")),
        (
            "thread_local! block checksum",
            format!("{:#x}", checksum(&tls_words())),
        ),
    ]
}

fn compare(c: &mut Checks, what: &str, before: &Snap, after: &Snap) {
    for ((k, a), (_, b)) in before.iter().zip(after) {
        c.ensure(a == b, || format!("{what}: {k}: expected {a}, got {b}"));
    }
}

/// The values the setup asked for. `pending`: the directed signals have not
/// been taken yet.
fn expectations(c: &mut Checks, e: &Expect, pending: bool) {
    let w = &e.what;
    c.ensure(thread_name() == e.name, || {
        format!(
            "{w}: PR_GET_NAME: expected {:?}, got {:?}",
            String::from_utf8_lossy(&e.name),
            String::from_utf8_lossy(&thread_name())
        )
    });
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    c.ensure(comm.trim_end().as_bytes() == e.name, || {
        format!(
            "{w}: /proc/thread-self/comm: expected {:?}, got {comm:?}",
            String::from_utf8_lossy(&e.name)
        )
    });
    let mask = if pending {
        e.mask
    } else {
        e.mask & !sig_bit(e.dsig) & !if e.group { sig_bit(rt(GROUP_OFF)) } else { 0 }
    };
    let blocked = sigmask(libc::SIG_BLOCK, None);
    c.ensure(blocked == mask, || {
        format!("{w}: blocked mask: expected {mask:#x}, got {blocked:#x}")
    });
    c.eq(
        &format!("{w}: /proc/thread-self/status SigBlk"),
        Some(mask),
        thread_status_mask("SigBlk"),
    );
    let want_pnd = if pending { sig_bit(e.dsig) } else { 0 };
    c.eq(
        &format!("{w}: thread-directed pending (/proc/thread-self/status SigPnd)"),
        Some(want_pnd),
        thread_status_mask("SigPnd"),
    );
    let alt = altstack();
    c.ensure(alt == (e.alt, e.alt_size, e.alt_flags), || {
        format!(
            "{w}: sigaltstack (sp, size, flags): expected {:x?}, got {alt:x?}",
            (e.alt, e.alt_size, e.alt_flags)
        )
    });
    let words = tls_words();
    let bad: Vec<usize> = (0..TLS_WORDS)
        .filter(|&k| words[k] != tls_pattern(e.tls_seed, k))
        .collect();
    c.ensure(bad.is_empty(), || {
        format!(
            "{w}: thread_local! words {bad:?} differ from the thread's pattern (word 0: {:#x}, want {:#x})",
            words[0],
            tls_pattern(e.tls_seed, 0)
        )
    });
    let (_, rseq_size) = rseq_area();
    c.ensure(rseq_size != 0, || {
        format!("{w}: glibc did not register rseq (__rseq_size == 0)")
    });
    let (r, head, len) = robust_list();
    c.ensure(r == 0 && head != 0 && len == ROBUST_HEAD_LEN, || {
        format!("{w}: get_robust_list(0): expected (0, non-null, {ROBUST_HEAD_LEN}), got ({r}, {head:#x}, {len})")
    });
    let (r, addr) = tid_address();
    c.ensure(r == 0 && addr != 0, || {
        format!("{w}: PR_GET_TID_ADDRESS: expected a non-null address, got ({r}, {addr:#x})")
    });
    let (fs, tp) = (fs_base(), thread_pointer());
    c.ensure(fs == tp, || {
        format!("{w}: ARCH_GET_FS {fs:#x} differs from the thread pointer fs:0 {tp:#x}")
    });
}

struct Seen {
    sig: i32,
    code: i32,
    pid: i32,
    tid: i32,
    value: usize,
    sp: usize,
}

fn seen() -> Vec<Seen> {
    let n = HLEN.with(Cell::get);
    HLOG.with(|log| {
        log.iter()
            .take(n)
            .map(|e| Seen {
                sig: e.sig.get(),
                code: e.code.get(),
                pid: e.pid.get(),
                tid: e.tid.get(),
                value: e.value.get(),
                sp: e.sp.get(),
            })
            .collect()
    })
}

fn check_entry(c: &mut Checks, e: &Expect, s: &Seen, sig: i32, value: usize, tag: &str) {
    let w = &e.what;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let tid = gettid();
    c.ensure(s.sig == sig && s.value == value, || {
        format!(
            "{w}: {tag}: expected signal {sig} with si_value {value:#x}, got signal {} with {:#x}",
            s.sig, s.value
        )
    });
    c.ensure(s.code == SI_QUEUE && s.pid == pid, || {
        format!(
            "{w}: {tag}: expected si_code SI_QUEUE, si_pid {pid}, got {} and {}",
            s.code, s.pid
        )
    });
    c.ensure(s.tid == tid, || {
        format!("{w}: {tag}: handler ran in tid {}, expected {tid}", s.tid)
    });
    c.ensure(s.sp >= e.alt && s.sp < e.alt + e.alt_size, || {
        format!(
            "{w}: {tag}: handler local at {:#x}, not on the thread's altstack {:#x}+{:#x}",
            s.sp, e.alt, e.alt_size
        )
    });
}

/// After go: rseq still live, the directed signals (and for the designated
/// thread the group signal) delivered to this thread on its altstack.
fn after_go(c: &mut Checks, e: &Expect) {
    let w = e.what.clone();
    check_rseq(c, &w, rseq_area().0);
    c.eq(
        &format!("{w}: handler runs before unblocking"),
        0,
        HLEN.with(Cell::get),
    );
    sigmask(libc::SIG_UNBLOCK, Some(sig_bit(e.dsig)));
    let s = seen();
    c.ensure(s.len() == 2, || {
        format!(
            "{w}: unblocking signal {} ran the handler {} time(s), expected 2 (values {:#x?})",
            e.dsig,
            s.len(),
            e.values
        )
    });
    for (k, (x, &v)) in s.iter().zip(&e.values).enumerate() {
        check_entry(c, e, x, e.dsig, v, &format!("directed signal #{k}"));
    }
    if e.group {
        let mut slept = 0;
        while PHASE.load(SeqCst) == 0 && slept < DONE_TIMEOUT_NS {
            sleep_ns(STEP_NS);
            slept += STEP_NS;
        }
        let n0 = HLEN.with(Cell::get);
        sigmask(libc::SIG_UNBLOCK, Some(sig_bit(rt(GROUP_OFF))));
        let s = seen();
        c.ensure(s.len() == n0 + 1, || {
            format!(
                "{w}: unblocking the group signal SIGRTMIN+{GROUP_OFF} ran the handler {} time(s), expected 1",
                s.len() - n0
            )
        });
        if let Some(x) = s.get(n0) {
            check_entry(c, e, x, rt(GROUP_OFF), GROUP_VALUE, "group signal");
        }
    }
    expectations(c, e, false);
}

/// Data shared by the main thread and the workers.
struct Shared {
    n: usize,
    level: u64,
    go: CString,
    tids: Vec<AtomicI32>,
    tid_addrs: Vec<AtomicUsize>,
    tls_addrs: Vec<AtomicUsize>,
    ready: AtomicUsize,
    done: AtomicUsize,
    setup_bad: AtomicBool,
    failures: Mutex<Vec<String>>,
}

fn vector_level() -> (u64, &'static str, usize, usize) {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        (LEVEL_AVX512, "zmm", 32, 8)
    } else if std::arch::is_x86_feature_detected!("avx") {
        (LEVEL_AVX, "ymm", 16, 4)
    } else {
        (LEVEL_SSE, "xmm", 16, 2)
    }
}

fn x87_value(seed: u64, k: usize) -> [u64; 2] {
    let mant = splitmix64(seed.wrapping_add(k as u64)) | (1 << 63);
    let sign = if k % 2 == 1 { 0x8000u64 } else { 0 };
    let exp = 0x3FF8u64 + k as u64 * 3;
    [mant, sign | exp]
}

fn regs_ctx(sh: &Shared, i: usize, kind: Kind) -> Box<RegsCtx> {
    // SAFETY: RegsCtx is plain data; all-zero is valid, and every field the
    // loop reads is set below.
    let mut ctx: Box<RegsCtx> = Box::new(unsafe { std::mem::zeroed() });
    let seed = 0x7448_0000_0000u64 + ((i as u64) << 12);
    for (k, g) in ctx.gpr_in.iter_mut().enumerate() {
        *g = splitmix64(seed + k as u64) | 1;
    }
    for (r, v) in ctx.vec_in.iter_mut().enumerate() {
        for (k, w) in v.iter_mut().enumerate() {
            *w = splitmix64(seed + 0x100 + (r * 8 + k) as u64);
        }
    }
    for (k, m) in ctx.k_in.iter_mut().enumerate() {
        *m = splitmix64(seed + 0x400 + k as u64) | 1;
    }
    for (k, x) in ctx.x87_in.iter_mut().enumerate() {
        *x = x87_value(seed + 0x800, k);
    }
    // Rounding control differs per thread (never the default), all
    // exceptions masked; odd threads also flush to zero.
    ctx.fcw_in = 0x037F | ((1 + (i % 3) as u16) << 10);
    ctx.mxcsr_in =
        0x1F80 | ((1 + ((i + 1) % 3) as u32) << 13) | if i % 2 == 1 { 0x8000 } else { 0 };
    ctx.go_path = sh.go.as_ptr();
    ctx.level = sh.level;
    match kind {
        Kind::Sleep { ms } => {
            ctx.mode = MODE_SLEEP;
            ctx.ts = [0, (ms * 1_000_000) as i64];
            ctx.max_iters = 120_000 / ms;
        }
        _ => {
            ctx.mode = MODE_BUSY;
            ctx.spin = SPIN;
            ctx.max_iters = MAX_ITERS_BUSY;
        }
    }
    ctx
}

fn check_regs(c: &mut Checks, w: &str, ctx: &RegsCtx, code: u64, kind: Kind) {
    let (level, prefix, nvec, words) = vector_level();
    if code == CODE_TIMEOUT {
        c.fail(format!("{w}: timeout waiting for go"));
        return;
    }
    c.ensure(code == 0, || {
        format!(
            "{w}: in-loop register check failed at iteration {}: code {code} (10+i: GPR i, 100+i: vector i, 200+i: k_i, 300: FCW, 301: MXCSR, 310+i: ST(i))",
            ctx.iters
        )
    });
    c.ensure(ctx.iters >= 1, || {
        format!("{w}: the register loop never ran")
    });
    if let Kind::Sleep { .. } = kind {
        c.ensure(ctx.sleeps >= 1, || format!("{w}: no nanosleep was issued"));
    }
    c.ensure(ctx.sleep_bad == 0, || {
        format!(
            "{w}: raw nanosleep returned non-zero {} time(s), last {} (expected always 0)",
            ctx.sleep_bad, ctx.sleep_last
        )
    });
    for (k, name) in GPR_NAMES.iter().enumerate() {
        c.ensure(ctx.gpr_in[k] == ctx.gpr_out[k], || {
            format!(
                "{w}: {name}: expected {:#018x}, got {:#018x}",
                ctx.gpr_in[k], ctx.gpr_out[k]
            )
        });
    }
    for r in 0..nvec {
        let (a, b) = (&ctx.vec_in[r][..words], &ctx.vec_out[r][..words]);
        c.ensure(a == b, || {
            format!("{w}: {prefix}{r}: expected {a:016x?}, got {b:016x?}")
        });
    }
    if level == LEVEL_AVX512 {
        for k in 0..8 {
            c.ensure(ctx.k_in[k] == ctx.k_out[k], || {
                format!(
                    "{w}: k{k}: expected {:#018x}, got {:#018x}",
                    ctx.k_in[k], ctx.k_out[k]
                )
            });
        }
    }
    for k in 0..8 {
        let want = ctx.x87_in[7 - k];
        let got = ctx.x87_out[k];
        c.ensure(
            want[0] == got[0] && want[1] & 0xFFFF == got[1] & 0xFFFF,
            || {
                format!(
                    "{w}: x87 ST({k}): expected {:04x}:{:016x}, got {:04x}:{:016x}",
                    want[1] & 0xFFFF,
                    want[0],
                    got[1] & 0xFFFF,
                    got[0]
                )
            },
        );
    }
    c.eq(&format!("{w}: x87 control word"), ctx.fcw_in, ctx.fcw_out);
    c.eq(&format!("{w}: MXCSR"), ctx.mxcsr_in, ctx.mxcsr_out);
}

// ---- the futex waiter: registers held across one FUTEX_WAIT

/// Patterned GPRs of the futex waiter, in `gpr_in` order.
const HOLD_GPR_NAMES: [&str; 8] = ["rbx", "rbp", "r12", "r13", "r14", "r15", "r8", "r9"];

#[repr(C, align(64))]
struct HoldCtx {
    vec_in: [[u64; 8]; 32],
    vec_out: [[u64; 8]; 32],
    gpr_in: [u64; 8],
    gpr_out: [u64; 8],
    k_in: [u64; 8],
    k_out: [u64; 8],
    futex: *const u32,
    op: u64,
    go_path: *const libc::c_char,
    level: u64,
    /// FUTEX_WAIT calls that returned.
    calls: u64,
    max_calls: u64,
    /// Returns other than 0 and -EAGAIN, and the last return value.
    bad: u64,
    last: i64,
    code: u64,
}

extern "C" {
    /// Loads the patterns, then loops: raw FUTEX_WAIT(futex, op, 0, no
    /// timeout); raw access(go); until go exists or `max_calls` waits have
    /// returned (code 1). Stores every register back and returns the code.
    ///
    /// # Safety
    /// `ctx` must be valid and fully initialised, `futex` and `go_path`
    /// valid, and `level` supported by the CPU and OS.
    fn crest_wl_futex_hold(ctx: *mut HoldCtx) -> u64;
}

std::arch::global_asm!(
    ".text",
    ".globl crest_wl_futex_hold",
    ".type crest_wl_futex_hold,@function",
    ".p2align 4",
    "crest_wl_futex_hold:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "mov [rsp], rdi",
    "mov rsi, rdi",
    "mov rax, [rsi + {LEVEL}]",
    "cmp rax, 2",
    "je 22f",
    "cmp rax, 1",
    "je 23f",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "movdqu xmm\\i, xmmword ptr [rsi + {VIN} + \\i*64]",
    ".endr",
    "jmp 24f",
    "23:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "vmovdqu ymm\\i, ymmword ptr [rsi + {VIN} + \\i*64]",
    ".endr",
    "jmp 24f",
    "22:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "vmovdqu64 zmm\\i, zmmword ptr [rsi + {VIN} + \\i*64]",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7",
    "kmovq k\\i, qword ptr [rsi + {KIN} + \\i*8]",
    ".endr",
    "24:",
    "mov rbx, [rsi + {GIN} + 0]",
    "mov rbp, [rsi + {GIN} + 8]",
    "mov r12, [rsi + {GIN} + 16]",
    "mov r13, [rsi + {GIN} + 24]",
    "mov r14, [rsi + {GIN} + 32]",
    "mov r15, [rsi + {GIN} + 40]",
    "mov r8, [rsi + {GIN} + 48]",
    "mov r9, [rsi + {GIN} + 56]",
    // futex(addr, op, 0, NULL)
    "30:",
    "mov rsi, [rsp]",
    "mov rdi, [rsi + {FUTEX}]",
    "mov rax, [rsi + {OP}]",
    "mov esi, eax",
    "xor edx, edx",
    "xor r10d, r10d",
    "mov eax, 202",
    "syscall",
    "mov rsi, [rsp]",
    "inc qword ptr [rsi + {CALLS}]",
    "mov [rsi + {LAST}], rax",
    "test rax, rax",
    "jz 40f",
    "cmp rax, -11",
    "je 40f",
    "inc qword ptr [rsi + {BAD}]",
    // access(go, F_OK)
    "40:",
    "mov rdi, [rsi + {PATH}]",
    "xor esi, esi",
    "mov eax, 21",
    "syscall",
    "test rax, rax",
    "jz 50f",
    "mov rsi, [rsp]",
    "mov rax, [rsi + {CALLS}]",
    "cmp rax, [rsi + {MAXC}]",
    "jb 30b",
    "mov eax, 1",
    "jmp 60f",
    "50:",
    "xor eax, eax",
    "60:",
    "mov rsi, [rsp]",
    "mov [rsi + {CODE}], rax",
    "mov [rsi + {GOUT} + 0], rbx",
    "mov [rsi + {GOUT} + 8], rbp",
    "mov [rsi + {GOUT} + 16], r12",
    "mov [rsi + {GOUT} + 24], r13",
    "mov [rsi + {GOUT} + 32], r14",
    "mov [rsi + {GOUT} + 40], r15",
    "mov [rsi + {GOUT} + 48], r8",
    "mov [rsi + {GOUT} + 56], r9",
    "mov rax, [rsi + {LEVEL}]",
    "cmp rax, 2",
    "je 72f",
    "cmp rax, 1",
    "je 73f",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "movdqu xmmword ptr [rsi + {VOUT} + \\i*64], xmm\\i",
    ".endr",
    "jmp 75f",
    "73:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "vmovdqu ymmword ptr [rsi + {VOUT} + \\i*64], ymm\\i",
    ".endr",
    "vzeroupper",
    "jmp 75f",
    "72:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "vmovdqu64 zmmword ptr [rsi + {VOUT} + \\i*64], zmm\\i",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7",
    "kmovq qword ptr [rsi + {KOUT} + \\i*8], k\\i",
    ".endr",
    "vzeroupper",
    "75:",
    "mov rax, [rsi + {CODE}]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".size crest_wl_futex_hold, .-crest_wl_futex_hold",
    VIN = const offset_of!(HoldCtx, vec_in),
    VOUT = const offset_of!(HoldCtx, vec_out),
    GIN = const offset_of!(HoldCtx, gpr_in),
    GOUT = const offset_of!(HoldCtx, gpr_out),
    KIN = const offset_of!(HoldCtx, k_in),
    KOUT = const offset_of!(HoldCtx, k_out),
    FUTEX = const offset_of!(HoldCtx, futex),
    OP = const offset_of!(HoldCtx, op),
    PATH = const offset_of!(HoldCtx, go_path),
    LEVEL = const offset_of!(HoldCtx, level),
    CALLS = const offset_of!(HoldCtx, calls),
    MAXC = const offset_of!(HoldCtx, max_calls),
    BAD = const offset_of!(HoldCtx, bad),
    LAST = const offset_of!(HoldCtx, last),
    CODE = const offset_of!(HoldCtx, code),
);

fn hold_ctx(sh: &Shared, i: usize, private: bool) -> Box<HoldCtx> {
    // SAFETY: HoldCtx is plain data; all-zero is valid, and every field the
    // loop reads is set below.
    let mut ctx: Box<HoldCtx> = Box::new(unsafe { std::mem::zeroed() });
    let seed = 0x4F75_0000_0000u64 + ((i as u64) << 12);
    for (k, g) in ctx.gpr_in.iter_mut().enumerate() {
        *g = splitmix64(seed + k as u64) | 1;
    }
    for (r, v) in ctx.vec_in.iter_mut().enumerate() {
        for (k, w) in v.iter_mut().enumerate() {
            *w = splitmix64(seed + 0x100 + (r * 8 + k) as u64);
        }
    }
    for (k, m) in ctx.k_in.iter_mut().enumerate() {
        *m = splitmix64(seed + 0x400 + k as u64) | 1;
    }
    let word = if private {
        &FUTEX_PRIVATE
    } else {
        &FUTEX_SHARED
    };
    ctx.futex = word.as_ptr();
    ctx.op = if private {
        FUTEX_WAIT_PRIVATE
    } else {
        FUTEX_WAIT
    };
    ctx.go_path = sh.go.as_ptr();
    ctx.level = sh.level;
    ctx.max_calls = 1000;
    ctx
}

fn check_hold(c: &mut Checks, w: &str, ctx: &HoldCtx, code: u64) {
    let (level, prefix, nvec, words) = vector_level();
    if code == CODE_TIMEOUT {
        c.fail(format!(
            "{w}: FUTEX_WAIT returned {} times without go",
            ctx.calls
        ));
        return;
    }
    c.ensure(ctx.calls == 1, || {
        format!(
            "{w}: FUTEX_WAIT returned {} times (expected exactly once, when woken after go)",
            ctx.calls
        )
    });
    c.ensure(ctx.bad == 0, || {
        format!(
            "{w}: FUTEX_WAIT returned an error {} time(s), last {} (expected 0, or -EAGAIN if woken before it slept)",
            ctx.bad, ctx.last
        )
    });
    for (k, name) in HOLD_GPR_NAMES.iter().enumerate() {
        c.ensure(ctx.gpr_in[k] == ctx.gpr_out[k], || {
            format!(
                "{w}: {name} across FUTEX_WAIT: expected {:#018x}, got {:#018x}",
                ctx.gpr_in[k], ctx.gpr_out[k]
            )
        });
    }
    for r in 0..nvec {
        let (a, b) = (&ctx.vec_in[r][..words], &ctx.vec_out[r][..words]);
        c.ensure(a == b, || {
            format!("{w}: {prefix}{r} across FUTEX_WAIT: expected {a:016x?}, got {b:016x?}")
        });
    }
    if level == LEVEL_AVX512 {
        for k in 0..8 {
            c.ensure(ctx.k_in[k] == ctx.k_out[k], || {
                format!(
                    "{w}: k{k} across FUTEX_WAIT: expected {:#018x}, got {:#018x}",
                    ctx.k_in[k], ctx.k_out[k]
                )
            });
        }
    }
}

fn report(sh: &Shared, c: &Checks, tid: i32) {
    let mut f = sh.failures.lock().unwrap_or_else(|e| e.into_inner());
    for l in c.failures() {
        f.push(format!("(tid {tid}) {l}"));
    }
}

fn worker(sh: Arc<Shared>, i: usize) {
    let tid = gettid();
    sh.tids[i].store(tid, SeqCst);
    sh.tid_addrs[i].store(tid_address().1, SeqCst);
    sh.tls_addrs[i].store(TLS.with(|t| t.as_ptr() as usize), SeqCst);
    let kind = kind_of(i);
    let mut e = Expect::new(i, sh.n);
    let mut pre = Checks::new();
    if let Err(msg) = prepare(&mut e) {
        pre.fail(format!("{}: setup: {msg}", e.what));
    }
    expectations(&mut pre, &e, true);
    let before = snapshot();
    if !pre.passed() {
        report(&sh, &pre, tid);
        sh.setup_bad.store(true, SeqCst);
    }
    let w = format!("{} ({kind:?})", e.what);
    let mut c = Checks::new();
    match kind {
        Kind::Futex { private } => {
            let mut ctx = hold_ctx(&sh, i, private);
            sh.ready.fetch_add(1, SeqCst);
            // SAFETY: ctx is fully initialised; the futex word and go path
            // live as long as the process; the level was detected by std.
            let code = unsafe { crest_wl_futex_hold(&mut *ctx) };
            check_hold(&mut c, &w, &ctx, code);
        }
        _ => {
            let mut ctx = regs_ctx(&sh, i, kind);
            sh.ready.fetch_add(1, SeqCst);
            // SAFETY: as above, for the regs loop.
            let code = unsafe { crest_wl_regs_run(&mut *ctx) };
            check_regs(&mut c, &w, &ctx, code, kind);
        }
    }
    let after = snapshot();
    compare(&mut c, &e.what, &before, &after);
    expectations(&mut c, &e, true);
    after_go(&mut c, &e);
    report(&sh, &c, tid);
    sh.done.fetch_add(1, SeqCst);
}

fn install(p: &Proto, sig: i32) {
    // SAFETY: all-zero sigaction is valid; fields set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_rt as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: valid sigaction; the handler is async-signal-safe.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        p.bail_errno(&format!("sigaction({sig})"));
    }
}

/// The first field of /proc/self/task/<tid>/syscall (the syscall number the
/// thread is blocked in, or "running").
fn blocked_in(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
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

fn futex_wake(word: &AtomicU32, op: i32) -> i64 {
    // SAFETY: FUTEX_WAKE on a valid aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, i32::MAX, 0, 0, 0) }
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let n = match args.first().map(|a| a.parse::<usize>()) {
        None => DEFAULT_THREADS,
        Some(Ok(n)) if (1..=MAX_THREADS).contains(&n) => n,
        Some(_) => p.bail(&format!(
            "setup: threads needs a thread count in 1..={MAX_THREADS}, got {args:?}"
        )),
    };
    for o in [1, 2, 3, 4, GROUP_OFF] {
        install(p, rt(o));
    }
    // Block the base set before any thread exists, so no window lets a
    // queued signal through.
    sigmask(libc::SIG_BLOCK, Some(base_mask()));
    let sh = Arc::new(Shared {
        n,
        level: vector_level().0,
        go: p.go_path().to_owned(),
        tids: (0..n).map(|_| AtomicI32::new(0)).collect(),
        tid_addrs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        tls_addrs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        ready: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        setup_bad: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let s = sh.clone();
        match std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || worker(s, i))
        {
            Ok(h) => handles.push(h),
            Err(e) => p.bail(&format!("setup: spawning thread {i}: {e}")),
        }
    }
    let mut me = Expect::new(n, n);
    if let Err(msg) = prepare(&mut me) {
        p.bail(&format!("setup: main thread: {msg}"));
    }
    if !wait_until(SETUP_TIMEOUT_NS, || sh.ready.load(SeqCst) == n) {
        p.bail(&format!(
            "setup: only {} of {n} threads got ready",
            sh.ready.load(SeqCst)
        ));
    }
    if sh.setup_bad.load(SeqCst) {
        let f = sh.failures.lock().unwrap_or_else(|e| e.into_inner());
        p.bail(&format!("setup: {}", f.join("; ")));
    }
    // Each waiter must really be inside its wait before the checkpoint.
    for i in 0..n {
        let tid = sh.tids[i].load(SeqCst);
        let want = match kind_of(i) {
            Kind::Futex { .. } => "202",
            Kind::Sleep { .. } => "35",
            _ => continue,
        };
        if !wait_until(SETUP_TIMEOUT_NS, || blocked_in(tid) == want) {
            p.bail(&format!(
                "setup: thread {i} (tid {tid}) never blocked in syscall {want} (now {:?})",
                blocked_in(tid)
            ));
        }
    }
    // The process-directed signal, blocked in every thread.
    // SAFETY: queues a signal every thread blocks; its handler is safe.
    if unsafe {
        libc::sigqueue(
            libc::getpid(),
            rt(GROUP_OFF),
            libc::sigval {
                sival_ptr: GROUP_VALUE as *mut libc::c_void,
            },
        )
    } != 0
    {
        p.bail_errno("sigqueue(SIGRTMIN+7)");
    }
    let group = sig_bit(rt(GROUP_OFF));
    let info: String = (0..n)
        .map(|i| {
            format!(
                "thread {i} {} {:#x} {:?}\n",
                sh.tids[i].load(SeqCst),
                sh.tls_addrs[i].load(SeqCst),
                kind_of(i)
            )
        })
        .collect();
    p.write_aux("info", &format!("vector={}\n{info}", vector_level().1));
    let mut pre = Checks::new();
    pre.eq("ShdPnd after sigqueue", Some(group), status_mask("ShdPnd"));
    expectations(&mut pre, &me, true);
    let tasks = task_ids();
    pre.eq("threads in /proc/self/task", n + 1, tasks.len());
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    let before = snapshot();
    let threads_line = status_field("Threads");
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "main thread go-wait");
    c.eq("/proc/self/task thread ids", &tasks, &task_ids());
    c.eq(
        "/proc/self/status Threads",
        threads_line,
        status_field("Threads"),
    );
    c.eq(
        "process-directed pending (ShdPnd) after go",
        Some(group),
        status_mask("ShdPnd"),
    );
    let after = snapshot();
    compare(&mut c, "main thread", &before, &after);
    expectations(&mut c, &me, true);
    after_go(&mut c, &me);

    PHASE.store(1, SeqCst);
    FUTEX_SHARED.store(1, SeqCst);
    futex_wake(&FUTEX_SHARED, FUTEX_WAKE);
    FUTEX_PRIVATE.store(1, SeqCst);
    futex_wake(&FUTEX_PRIVATE, FUTEX_WAKE_PRIVATE);

    if !wait_until(DONE_TIMEOUT_NS, || sh.done.load(SeqCst) == n) {
        let f = sh.failures.lock().unwrap_or_else(|e| e.into_inner());
        for l in f.iter() {
            c.fail(l.clone());
        }
        c.fail(format!(
            "only {} of {n} threads finished their checks within {} s after go",
            sh.done.load(SeqCst),
            DONE_TIMEOUT_NS / 1_000_000_000
        ));
        return c;
    }
    for l in sh
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        c.fail(l);
    }
    c.eq(
        "ShdPnd after the group signal was taken",
        Some(0),
        status_mask("ShdPnd"),
    );
    c.eq("group signal deliveries", 1, GROUP_HITS.load(SeqCst));
    let designated = sh.tids[n - 1].load(SeqCst);
    c.eq(
        "tid that received the group signal",
        designated,
        GROUP_TID.load(SeqCst),
    );

    // Each exiting thread must clear its clear_child_tid word (glibc's
    // pthread tid field) before it may be joined.
    for (i, h) in handles.into_iter().enumerate() {
        let addr = sh.tid_addrs[i].load(SeqCst);
        // SAFETY: the word lies in the thread's descriptor, which glibc keeps
        // until the thread is joined; the kernel writes it atomically.
        let word = unsafe { &*(addr as *const AtomicI32) };
        if wait_until(EXIT_TIMEOUT_NS, || word.load(SeqCst) == 0) {
            if h.join().is_err() {
                c.fail(format!("thread {i}: panicked"));
            }
        } else {
            c.fail(format!(
                "thread {i}: clear_child_tid word at {addr:#x} still {} {} s after the thread finished (not cleared by the kernel on exit)",
                word.load(SeqCst),
                EXIT_TIMEOUT_NS / 1_000_000_000
            ));
        }
    }
    // The kernel clears a thread's tid word (which ends the join) before
    // it unhashes the task: /proc/self/task may list it a moment longer.
    wait_until(2_000_000_000, || task_ids() == vec![gettid()]);
    c.eq("/proc/self/task after joining", vec![gettid()], task_ids());
    base.verify(p, &mut c);
    c
}
