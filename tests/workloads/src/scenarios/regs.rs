//! `regs <busy|sleep>`: distinctive values in every general-purpose, vector,
//! mask and x87 register (plus MXCSR and the x87 control word) across the
//! checkpoint, while spinning in user space (`busy`) or sleeping in a raw
//! `nanosleep` syscall (`sleep`). The assembly loop re-checks all registers
//! every iteration; after go everything is stored and compared here.

use super::regs_asm::{
    crest_wl_regs_run, RegsCtx, CODE_TIMEOUT, GPR_NAMES, LEVEL_AVX, LEVEL_AVX512, LEVEL_SSE,
    MODE_BUSY, MODE_SLEEP,
};
use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::splitmix64;

/// Non-default x87 control word: round down (RC=01), all exceptions masked,
/// 64-bit precision. The default is 0x037F.
const FCW: u16 = 0x077F;
/// Non-default MXCSR: all exceptions masked, round down (RC=01), FTZ.
/// The default is 0x1F80.
const MXCSR: u32 = 0x1F80 | 0x2000 | 0x8000;

const SPIN: u64 = 1_000_000;
/// Iteration limits giving roughly the protocol's 120 s go timeout.
const MAX_ITERS_BUSY: u64 = 450_000;
const MAX_ITERS_SLEEP: u64 = 120_000;

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid exists on every x86-64 CPU; rbx (reserved by LLVM) is
    // saved and restored around it.
    unsafe {
        std::arch::asm!(
            "mov {t:r}, rbx",
            "cpuid",
            "xchg {t:r}, rbx",
            t = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") sub => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        );
    }
    [a, b, c, d]
}

/// The widest vector state both the CPU and the OS (XCR0) support.
fn detect_level() -> (u64, &'static str) {
    let l1 = cpuid(1, 0);
    let osxsave = l1[2] & (1 << 27) != 0;
    let avx = l1[2] & (1 << 28) != 0;
    if !osxsave || !avx {
        return (LEVEL_SSE, "sse");
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so XGETBV is enabled for user space.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
    if xcr0 & 0b110 != 0b110 {
        return (LEVEL_SSE, "sse");
    }
    if cpuid(0, 0)[0] >= 7 {
        let l7 = cpuid(7, 0);
        let f = l7[1] & (1 << 16) != 0;
        let bw = l7[1] & (1 << 30) != 0;
        // opmask, ZMM_Hi256, Hi16_ZMM
        if f && bw && xcr0 & 0xE0 == 0xE0 {
            return (LEVEL_AVX512, "avx512");
        }
    }
    (LEVEL_AVX, "avx")
}

fn cpuinfo_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

fn x87_value(i: usize) -> [u64; 2] {
    // Normalised 80-bit values (explicit integer bit) whose 64-bit mantissas
    // do not fit a double; alternating signs, varied exponents.
    let mant = splitmix64(0x8700 + i as u64) | (1 << 63);
    let sign = if i % 2 == 1 { 0x8000u64 } else { 0 };
    let exp = 0x3FFFu64 + i as u64 * 3 - 7;
    [mant, sign | exp]
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mode = match args.first().map(String::as_str) {
        Some("busy") => MODE_BUSY,
        Some("sleep") => MODE_SLEEP,
        other => p.bail(&format!(
            "setup: regs needs 'busy' or 'sleep', got {other:?}"
        )),
    };
    let (level, level_name) = detect_level();
    let nvec = if level == LEVEL_AVX512 { 32 } else { 16 };
    let vec_words = match level {
        LEVEL_AVX512 => 8,
        LEVEL_AVX => 4,
        _ => 2,
    };

    // SAFETY: RegsCtx is plain data; all-zero is valid (null go_path is set
    // below before use).
    let mut ctx: Box<RegsCtx> = Box::new(unsafe { std::mem::zeroed() });
    for (i, g) in ctx.gpr_in.iter_mut().enumerate() {
        *g = splitmix64(0x6770_0000 + i as u64) | 1;
    }
    for (i, v) in ctx.vec_in.iter_mut().enumerate() {
        for (j, w) in v.iter_mut().enumerate() {
            *w = splitmix64(0x7EC0_0000 + (i * 8 + j) as u64);
        }
    }
    for (i, k) in ctx.k_in.iter_mut().enumerate() {
        *k = splitmix64(0x4B00_0000 + i as u64) | 1;
    }
    for (i, x) in ctx.x87_in.iter_mut().enumerate() {
        *x = x87_value(i);
    }
    ctx.fcw_in = FCW;
    ctx.mxcsr_in = MXCSR;
    ctx.go_path = p.go_path().as_ptr();
    ctx.ts = [0, 1_000_000];
    ctx.level = level;
    ctx.mode = mode;
    ctx.spin = SPIN;
    ctx.max_iters = if mode == MODE_BUSY {
        MAX_ITERS_BUSY
    } else {
        MAX_ITERS_SLEEP
    };
    let expect_avx512 = cpuinfo_has("avx512f") && cpuinfo_has("avx512bw");

    let base = Baseline::record();
    p.write_ready();
    // SAFETY: ctx is fully initialised, go_path points into `p` which
    // outlives the call, and `level` was detected from cpuid/xgetbv.
    let code = unsafe { crest_wl_regs_run(&mut *ctx) };
    if code == CODE_TIMEOUT {
        p.bail("timeout waiting for go");
    }

    let mut c = Checks::new();
    p.write_aux(
        "info",
        &format!(
            "vector={level_name}\niterations={}\nsleeps={}\n",
            ctx.iters, ctx.sleeps
        ),
    );
    if expect_avx512 && level != LEVEL_AVX512 {
        c.fail(format!(
            "/proc/cpuinfo lists avx512f+avx512bw but cpuid/xgetbv detection chose {level_name}"
        ));
    }
    if code != 0 {
        c.fail(format!(
            "in-loop register check failed at iteration {}: {} changed",
            ctx.iters,
            code_name(code)
        ));
    }
    c.ensure(ctx.iters >= 1, || "the loop never ran".into());
    if mode == MODE_SLEEP {
        c.ensure(ctx.sleeps >= 1, || "sleep mode issued no nanosleep".into());
    }
    if ctx.sleep_bad != 0 {
        c.fail(format!(
            "raw nanosleep(1 ms) returned non-zero {} time(s), last {} (expected always 0)",
            ctx.sleep_bad, ctx.sleep_last
        ));
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        c.ensure(ctx.gpr_in[i] == ctx.gpr_out[i], || {
            format!(
                "{name}: expected {:#018x}, got {:#018x}",
                ctx.gpr_in[i], ctx.gpr_out[i]
            )
        });
    }
    let prefix = match level {
        LEVEL_AVX512 => "zmm",
        LEVEL_AVX => "ymm",
        _ => "xmm",
    };
    for i in 0..nvec {
        let (a, b) = (&ctx.vec_in[i][..vec_words], &ctx.vec_out[i][..vec_words]);
        c.ensure(a == b, || {
            format!("{prefix}{i}: expected {a:016x?}, got {b:016x?}")
        });
    }
    if level == LEVEL_AVX512 {
        for i in 0..8 {
            c.ensure(ctx.k_in[i] == ctx.k_out[i], || {
                format!(
                    "k{i}: expected {:#018x}, got {:#018x}",
                    ctx.k_in[i], ctx.k_out[i]
                )
            });
        }
    }
    for i in 0..8 {
        // ST(i) holds the value loaded (7 - i)-th.
        let want = ctx.x87_in[7 - i];
        let got = ctx.x87_out[i];
        c.ensure(
            want[0] == got[0] && want[1] & 0xFFFF == got[1] & 0xFFFF,
            || {
                format!(
                    "x87 ST({i}): expected {:04x}:{:016x}, got {:04x}:{:016x}",
                    want[1] & 0xFFFF,
                    want[0],
                    got[1] & 0xFFFF,
                    got[0]
                )
            },
        );
    }
    c.eq("x87 control word", FCW, ctx.fcw_out);
    c.eq("MXCSR", MXCSR, ctx.mxcsr_out);
    base.verify(p, &mut c);
    c
}

fn code_name(code: u64) -> String {
    match code {
        10..=19 => GPR_NAMES[(code - 10) as usize].to_string(),
        100..=131 => format!("vector register {}", code - 100),
        200..=207 => format!("k{}", code - 200),
        300 => "x87 control word".into(),
        301 => "MXCSR".into(),
        310..=317 => format!("x87 ST({})", code - 310),
        _ => format!("unknown code {code}"),
    }
}
