//! `attrs`: process attributes: ids, umask, rlimits, name, personality,
//! nice, scheduler, credentials, capabilities (bounding, effective,
//! permitted, inheritable, ambient), prctl flags, rseq, robust list,
//! clear_child_tid and the TLS base. Every value is recorded before ready
//! and must read back identical after go; rseq must still be registered.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{err_str, errno, sleep_ns, status_field};

const PR_SET_PDEATHSIG: i32 = 1;
const PR_GET_PDEATHSIG: i32 = 2;
const PR_GET_DUMPABLE: i32 = 3;
const PR_SET_DUMPABLE: i32 = 4;
const PR_GET_KEEPCAPS: i32 = 7;
const PR_GET_TIMING: i32 = 13;
const PR_SET_NAME: i32 = 15;
const PR_GET_NAME: i32 = 16;
const PR_GET_SECCOMP: i32 = 21;
const PR_CAPBSET_READ: i32 = 23;
const PR_CAPBSET_DROP: i32 = 24;
const PR_GET_TSC: i32 = 25;
const PR_GET_SECUREBITS: i32 = 27;
const PR_GET_TIMERSLACK: i32 = 30;
const PR_MCE_KILL_GET: i32 = 34;
const PR_SET_CHILD_SUBREAPER: i32 = 36;
const PR_GET_CHILD_SUBREAPER: i32 = 37;
const PR_SET_NO_NEW_PRIVS: i32 = 38;
const PR_GET_NO_NEW_PRIVS: i32 = 39;
const PR_GET_TID_ADDRESS: i32 = 40;
const PR_GET_THP_DISABLE: i32 = 42;
const PR_CAP_AMBIENT: i32 = 47;
const PR_CAP_AMBIENT_IS_SET: u64 = 1;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_GET_SPECULATION_CTRL: i32 = 52;
const PR_GET_IO_FLUSHER: i32 = 58;
const PR_GET_MDWE: i32 = 66;
const PR_GET_MEMORY_MERGE: i32 = 68;
const ARCH_GET_FS: i32 = 0x1003;
const ARCH_GET_GS: i32 = 0x1004;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_BOOT: u32 = 22;
const CAP_LAST: u32 = 40;
const CAP_V3: u32 = 0x2008_0522;
const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_LEN: u32 = 32;
const NAME: &[u8] = b"crest-wl-attrs";
const GROUPS: [libc::gid_t; 3] = [10, 20, 30];
const GID: libc::gid_t = 1234;
const NICE: i32 = 7;
const UMASK: libc::mode_t = 0o027;
const MSGQUEUE_SOFT: u64 = 12345;
const NOFILE_SOFT: u64 = 1000;

extern "C" {
    /// Offset of glibc's rseq area from the thread pointer (glibc >= 2.35).
    static __rseq_offset: isize;
    /// Size of the registered rseq area; 0 if glibc did not register it.
    static __rseq_size: u32;
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> Result<[CapData; 2], i32> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: v3 header and two data structs, as the ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if r == 0 {
        Ok(d)
    } else {
        Err(errno())
    }
}

fn capset(d: &[CapData; 2]) -> Result<(), i32> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: v3 header and two data structs, as the ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn has(mask: [u32; 2], cap: u32) -> bool {
    mask[(cap / 32) as usize] & (1 << (cap % 32)) != 0
}

/// prctl with integer args; (return value, errno if it failed).
fn prctl(op: i32, a2: u64) -> (i64, i32) {
    // SAFETY: only used for operations whose arguments are plain integers.
    let r = unsafe { libc::prctl(op, a2, 0u64, 0u64, 0u64) } as i64;
    (r, if r < 0 { errno() } else { 0 })
}

/// prctl whose result is written through a pointer in arg2.
fn prctl_out(op: i32) -> (i64, i32, u64) {
    let mut v: u64 = 0;
    // SAFETY: arg2 points to 8 writable bytes (the kernel writes an int or
    // a pointer, both fit).
    let r = unsafe { libc::prctl(op, &mut v as *mut u64, 0u64, 0u64, 0u64) } as i64;
    (r, if r < 0 { errno() } else { 0 }, v)
}

fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux fs:0 holds the TCB's self pointer.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

fn rseq_area() -> (usize, u32) {
    // SAFETY: glibc exports both symbols; they are constant after startup.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    (thread_pointer().wrapping_add_signed(off), size)
}

type Snap = Vec<(String, String)>;

fn snapshot() -> Snap {
    let mut s: Snap = Vec::new();
    let mut put = |k: &str, v: String| s.push((k.to_string(), v));
    // SAFETY: the id getters have no preconditions.
    unsafe {
        put("getpid", libc::getpid().to_string());
        put("getpgid(0)", libc::getpgid(0).to_string());
        put("getsid(0)", libc::getsid(0).to_string());
    }
    for r in 0..16 {
        // SAFETY: valid out-pointer.
        let v = unsafe {
            let mut rl: libc::rlimit = std::mem::zeroed();
            let ok = libc::getrlimit(r as _, &mut rl);
            (ok, rl.rlim_cur, rl.rlim_max)
        };
        put(&format!("getrlimit({r})"), format!("{v:?}"));
    }
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(PR_GET_NAME, name.as_mut_ptr(), 0u64, 0u64, 0u64) };
    put("PR_GET_NAME", String::from_utf8_lossy(&name).into_owned());
    // SAFETY: 0xffffffff only queries the persona.
    let pers = unsafe { libc::personality(0xffff_ffff) };
    put("personality", format!("{pers:#x}"));
    // SAFETY: errno reset then getpriority (whose -1 is a valid value).
    let prio = unsafe {
        *libc::__errno_location() = 0;
        let v = libc::getpriority(libc::PRIO_PROCESS, 0);
        (v, errno())
    };
    put("getpriority", format!("{prio:?}"));
    // SAFETY: scheduler queries on ourselves.
    let (pol, sp) = unsafe {
        let mut sp: libc::sched_param = std::mem::zeroed();
        libc::sched_getparam(0, &mut sp);
        (libc::sched_getscheduler(0), sp.sched_priority)
    };
    put("sched_getscheduler", pol.to_string());
    put("sched_getparam", sp.to_string());
    // SAFETY: valid out-pointers.
    let (u, g) = unsafe {
        let (mut a, mut b, mut c) = (0, 0, 0);
        libc::getresuid(&mut a, &mut b, &mut c);
        let u = (a, b, c);
        libc::getresgid(&mut a, &mut b, &mut c);
        (u, (a, b, c))
    };
    put("getresuid", format!("{u:?}"));
    put("getresgid", format!("{g:?}"));
    let mut groups = [0 as libc::gid_t; 64];
    // SAFETY: buffer of 64 gids.
    let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
    put("getgroups", format!("{:?}", &groups[..n.max(0) as usize]));
    put("capget", format!("{:x?}", capget()));
    let bset: Vec<String> = (0..=CAP_LAST + 2)
        .map(|c| format!("{:?}", prctl(PR_CAPBSET_READ, c.into())))
        .collect();
    put("PR_CAPBSET_READ(0..=42)", bset.join(","));
    let amb: Vec<String> = (0..=CAP_LAST + 2)
        .map(|c| {
            // SAFETY: integer-only prctl.
            let r = unsafe {
                libc::prctl(
                    PR_CAP_AMBIENT,
                    PR_CAP_AMBIENT_IS_SET,
                    u64::from(c),
                    0u64,
                    0u64,
                )
            };
            format!("{r}")
        })
        .collect();
    put("PR_CAP_AMBIENT_IS_SET(0..=42)", amb.join(","));
    for (name, op) in [
        ("PR_GET_DUMPABLE", PR_GET_DUMPABLE),
        ("PR_GET_KEEPCAPS", PR_GET_KEEPCAPS),
        ("PR_GET_TIMING", PR_GET_TIMING),
        ("PR_GET_SECCOMP", PR_GET_SECCOMP),
        ("PR_GET_SECUREBITS", PR_GET_SECUREBITS),
        ("PR_GET_TIMERSLACK", PR_GET_TIMERSLACK),
        ("PR_MCE_KILL_GET", PR_MCE_KILL_GET),
        ("PR_GET_NO_NEW_PRIVS", PR_GET_NO_NEW_PRIVS),
        ("PR_GET_THP_DISABLE", PR_GET_THP_DISABLE),
        ("PR_GET_IO_FLUSHER", PR_GET_IO_FLUSHER),
        ("PR_GET_MDWE", PR_GET_MDWE),
        ("PR_GET_MEMORY_MERGE", PR_GET_MEMORY_MERGE),
    ] {
        put(name, format!("{:?}", prctl(op, 0)));
    }
    for spec in 0..3 {
        put(
            &format!("PR_GET_SPECULATION_CTRL({spec})"),
            format!("{:?}", prctl(PR_GET_SPECULATION_CTRL, spec)),
        );
    }
    for (name, op) in [
        ("PR_GET_PDEATHSIG", PR_GET_PDEATHSIG),
        ("PR_GET_CHILD_SUBREAPER", PR_GET_CHILD_SUBREAPER),
        ("PR_GET_TSC", PR_GET_TSC),
        ("PR_GET_TID_ADDRESS", PR_GET_TID_ADDRESS),
    ] {
        put(name, format!("{:x?}", prctl_out(op)));
    }
    for key in [
        "Name",
        "Umask",
        "Tgid",
        "Pid",
        "Uid",
        "Gid",
        "Groups",
        "NStgid",
        "NSpid",
        "NSpgid",
        "NSsid",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
        "Speculation_Store_Bypass",
        "SpeculationIndirectBranch",
    ] {
        put(
            &format!("/proc/self/status {key}"),
            format!("{:?}", status_field(key)),
        );
    }
    let (mut head, mut len) = (0usize, 0usize);
    // SAFETY: valid out-pointers; pid 0 is ourselves.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    };
    put("get_robust_list", format!("{r} {head:#x} {len}"));
    for (name, code) in [("ARCH_GET_FS", ARCH_GET_FS), ("ARCH_GET_GS", ARCH_GET_GS)] {
        let mut v = 0usize;
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut v as *mut usize) };
        put(name, format!("{r} {v:#x}"));
    }
    put("thread pointer (fs:0)", format!("{:#x}", thread_pointer()));
    put("rseq area, __rseq_size", format!("{:x?}", rseq_area()));
    s
}

/// The values the setup asked for, checked before ready and after go.
fn expectations(c: &mut Checks, ambient: bool) {
    match capget() {
        Ok(d) => {
            let eff = [d[0].effective, d[1].effective];
            let prm = [d[0].permitted, d[1].permitted];
            let inh = [d[0].inheritable, d[1].inheritable];
            c.ensure(!has(eff, CAP_NET_RAW) && !has(prm, CAP_NET_RAW), || {
                format!("CAP_NET_RAW still in effective/permitted: {d:x?}")
            });
            c.ensure(has(inh, CAP_NET_BIND_SERVICE), || {
                format!("CAP_NET_BIND_SERVICE not inheritable: {d:x?}")
            });
            c.ensure(has(eff, CAP_SETPCAP), || {
                format!("CAP_SETPCAP lost from effective: {d:x?}")
            });
        }
        Err(e) => c.fail(format!("capget: {}", err_str(e))),
    }
    c.eq(
        "PR_CAPBSET_READ(CAP_SYS_BOOT)",
        (0, 0),
        prctl(PR_CAPBSET_READ, CAP_SYS_BOOT.into()),
    );
    if ambient {
        // SAFETY: integer-only prctl.
        let r = unsafe {
            libc::prctl(
                PR_CAP_AMBIENT,
                PR_CAP_AMBIENT_IS_SET,
                u64::from(CAP_NET_BIND_SERVICE),
                0u64,
                0u64,
            )
        };
        c.eq("ambient CAP_NET_BIND_SERVICE", 1, r);
    }
    c.eq("PR_GET_NO_NEW_PRIVS", (1, 0), prctl(PR_GET_NO_NEW_PRIVS, 0));
    c.eq("PR_GET_DUMPABLE", (0, 0), prctl(PR_GET_DUMPABLE, 0));
    c.eq(
        "PR_GET_PDEATHSIG",
        libc::SIGWINCH as u64,
        prctl_out(PR_GET_PDEATHSIG).2,
    );
    c.eq(
        "PR_GET_CHILD_SUBREAPER",
        1,
        prctl_out(PR_GET_CHILD_SUBREAPER).2,
    );
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(PR_GET_NAME, name.as_mut_ptr(), 0u64, 0u64, 0u64) };
    c.eq("PR_GET_NAME", NAME, &name[..NAME.len()]);
    // SAFETY: queries only.
    let (pers, nice, pol) = unsafe {
        *libc::__errno_location() = 0;
        (
            libc::personality(0xffff_ffff),
            libc::getpriority(libc::PRIO_PROCESS, 0),
            libc::sched_getscheduler(0),
        )
    };
    c.ensure(pers & libc::ADDR_NO_RANDOMIZE != 0, || {
        format!("personality {pers:#x} lacks ADDR_NO_RANDOMIZE")
    });
    c.eq("getpriority", NICE, nice);
    c.eq("sched_getscheduler", libc::SCHED_BATCH, pol);
    let mut groups = [0 as libc::gid_t; 8];
    // SAFETY: buffer of 8 gids.
    let n = unsafe { libc::getgroups(8, groups.as_mut_ptr()) };
    c.eq("getgroups", &GROUPS[..], &groups[..n.max(0) as usize]);
    // SAFETY: valid out-pointers.
    let g = unsafe {
        let (mut a, mut b, mut s) = (0, 0, 0);
        libc::getresgid(&mut a, &mut b, &mut s);
        (a, b, s)
    };
    c.eq("getresgid", (GID, GID, 0), g);
    // SAFETY: geteuid has no preconditions.
    c.eq("geteuid", 0, unsafe { libc::geteuid() });
    c.eq(
        "/proc/self/status Umask",
        Some(format!("{UMASK:04o}")),
        status_field("Umask"),
    );
    for (r, name, want) in [
        (libc::RLIMIT_NOFILE, "NOFILE", Some(NOFILE_SOFT)),
        (libc::RLIMIT_CORE, "CORE", Some(0)),
        (libc::RLIMIT_MSGQUEUE, "MSGQUEUE", None),
    ] {
        // SAFETY: valid out-pointer.
        let cur = unsafe {
            let mut rl: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(r, &mut rl);
            rl
        };
        let want = want.unwrap_or(MSGQUEUE_SOFT.min(cur.rlim_max));
        c.eq(&format!("RLIMIT_{name} soft"), want, cur.rlim_cur);
    }
}

fn setup(p: &Proto) -> bool {
    // SAFETY: all calls below change only this process's attributes; every
    // pointer passed is valid for the call.
    unsafe {
        libc::umask(UMASK);
        for (r, soft) in [
            (libc::RLIMIT_NOFILE, NOFILE_SOFT),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_MSGQUEUE, MSGQUEUE_SOFT),
        ] {
            let mut rl: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(r, &mut rl);
            rl.rlim_cur = soft.min(rl.rlim_max);
            if libc::setrlimit(r, &rl) != 0 {
                p.bail_errno("setrlimit");
            }
        }
        let mut name = [0u8; 16];
        name[..NAME.len()].copy_from_slice(NAME);
        if libc::prctl(PR_SET_NAME, name.as_ptr(), 0u64, 0u64, 0u64) != 0 {
            p.bail_errno("PR_SET_NAME");
        }
        let cur = libc::personality(0xffff_ffff);
        if libc::personality((cur | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong) < 0 {
            p.bail_errno("personality");
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, NICE) != 0 {
            p.bail_errno("setpriority");
        }
        let sp = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_BATCH, &sp) != 0 {
            p.bail_errno("sched_setscheduler(SCHED_BATCH)");
        }
        if libc::setgroups(GROUPS.len(), GROUPS.as_ptr()) != 0 {
            p.bail_errno("setgroups");
        }
        if libc::setresgid(GID, GID, 0) != 0 {
            p.bail_errno("setresgid");
        }
        if libc::prctl(PR_CAPBSET_DROP, u64::from(CAP_SYS_BOOT), 0u64, 0u64, 0u64) != 0 {
            p.bail_errno("PR_CAPBSET_DROP(CAP_SYS_BOOT)");
        }
    }
    let mut d = capget().unwrap_or_else(|e| p.bail(&format!("setup: capget: {}", err_str(e))));
    let (w, b) = ((CAP_NET_RAW / 32) as usize, 1u32 << (CAP_NET_RAW % 32));
    d[w].effective &= !b;
    d[w].permitted &= !b;
    let (w, b) = (
        (CAP_NET_BIND_SERVICE / 32) as usize,
        1u32 << (CAP_NET_BIND_SERVICE % 32),
    );
    d[w].inheritable |= b;
    if let Err(e) = capset(&d) {
        p.bail(&format!("setup: capset: {}", err_str(e)));
    }
    // SAFETY: integer-only prctls on ourselves.
    unsafe {
        let ambient = libc::prctl(
            PR_CAP_AMBIENT,
            PR_CAP_AMBIENT_RAISE,
            u64::from(CAP_NET_BIND_SERVICE),
            0u64,
            0u64,
        ) == 0;
        for (op, arg, what) in [
            (PR_SET_NO_NEW_PRIVS, 1u64, "PR_SET_NO_NEW_PRIVS"),
            (PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE"),
            (PR_SET_PDEATHSIG, libc::SIGWINCH as u64, "PR_SET_PDEATHSIG"),
            (PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER"),
        ] {
            if libc::prctl(op, arg, 0u64, 0u64, 0u64) != 0 {
                p.bail_errno(what);
            }
        }
        ambient
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let ambient = setup(p);
    let mut pre = Checks::new();
    expectations(&mut pre, ambient);
    let (area, size) = rseq_area();
    if size == 0 {
        pre.fail("glibc did not register rseq (__rseq_size == 0)");
    }
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    p.write_aux(
        "info",
        &format!("ambient_raised={ambient}\nrseq_area={area:#x}\nrseq_size={size}\n"),
    );
    let before = snapshot();
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    let after = snapshot();
    for ((k, a), (_, b)) in before.iter().zip(&after) {
        c.ensure(a == b, || format!("{k}: expected {a}, got {b}"));
    }
    expectations(&mut c, ambient);
    // SAFETY: umask has no preconditions; the old mask is put back.
    let old = unsafe { libc::umask(0) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    c.ensure(old == UMASK, || {
        format!("umask: expected {UMASK:04o}, got {old:04o}")
    });
    check_rseq(&mut c, area);
    base.verify(p, &mut c);
    c
}

fn check_rseq(c: &mut Checks, area: usize) {
    // SAFETY: the rseq area is glibc's, in our TLS block, live for the
    // thread's lifetime; cpu_id (offset 4) is a u32 the kernel rewrites on
    // return to user space after we are scheduled out.
    let cpu_id = (area + 4) as *mut u32;
    // SAFETY: see above.
    unsafe { std::ptr::write_volatile(cpu_id, u32::MAX) };
    sleep_ns(20_000_000);
    // SAFETY: see above.
    let got = unsafe { std::ptr::read_volatile(cpu_id) };
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u32;
    c.ensure(got < ncpu, || format!("rseq cpu_id after a 20 ms sleep: {got:#x} (expected < {ncpu}: kernel no longer updates the area)"));
    // SAFETY: re-registering the same area: the kernel only compares it.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, RSEQ_LEN, 0, RSEQ_SIG) };
    let e = errno();
    c.ensure(r == -1 && e == libc::EBUSY, || {
        format!("rseq(area {area:#x}, 32, 0, RSEQ_SIG): expected EBUSY (already registered), got {r} ({})", err_str(e))
    });
}
