//! x86-64: general registers, the XSAVE area and CPU identification.
//!
//! Sizes come from CPUID and from the kernel, never from constants: the
//! XSAVE area is 2432 bytes on one machine and 832 or 11008 on others.

use std::arch::asm;
use std::mem::size_of;

/// The name crest writes into images for this architecture.
pub const ARCH: &str = "x86_64";

/// `struct user_regs_struct` as PTRACE_GETREGSET(NT_PRSTATUS) fills it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Number of 64-bit words in [`UserRegs`].
pub const USER_REGS_WORDS: usize = size_of::<UserRegs>() / 8;

const _: () = assert!(size_of::<UserRegs>() == 27 * 8);

impl UserRegs {
    /// The registers as raw bytes (for PTRACE_SETREGSET).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: UserRegs is repr(C), made only of u64 fields, no padding.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast(), size_of::<Self>()) }
    }

    /// The registers as mutable raw bytes (for PTRACE_GETREGSET).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; every bit pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut((self as *mut Self).cast(), size_of::<Self>()) }
    }

    /// The registers as an array of words, in kernel order.
    pub fn to_words(&self) -> [u64; USER_REGS_WORDS] {
        let mut w = [0u64; USER_REGS_WORDS];
        for (i, c) in self.as_bytes().chunks_exact(8).enumerate() {
            w[i] = u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
        }
        w
    }

    /// Builds registers from words in kernel order.
    pub fn from_words(w: &[u64; USER_REGS_WORDS]) -> Self {
        let mut r = UserRegs::default();
        for (c, v) in r.as_bytes_mut().chunks_exact_mut(8).zip(w) {
            c.copy_from_slice(&v.to_ne_bytes());
        }
        r
    }
}

/// Syscall return values the kernel uses to ask for a restart; they are
/// never seen by user space.
pub mod restart {
    pub const ERESTARTSYS: i64 = -512;
    pub const ERESTARTNOINTR: i64 = -513;
    pub const ERESTARTNOHAND: i64 = -514;
    pub const ERESTART_RESTARTBLOCK: i64 = -516;
}

const NR_RESTART_SYSCALL: u64 = 219;

impl UserRegs {
    /// Whether the task was stopped inside a syscall the kernel wants to
    /// restart (its return value is one of the ERESTART codes).
    pub fn in_restartable_syscall(&self) -> bool {
        (self.orig_rax as i64) >= 0
            && matches!(
                self.rax as i64,
                restart::ERESTARTSYS
                    | restart::ERESTARTNOINTR
                    | restart::ERESTARTNOHAND
                    | restart::ERESTART_RESTARTBLOCK
            )
    }

    /// The registers the task resumes with in the same kernel task when
    /// no signal handler runs: an interrupted syscall is set up to run
    /// again (through restart_syscall for a restart block), as the
    /// kernel's own signal path would do on the way out.
    pub fn restarted_in_place(&self) -> UserRegs {
        let mut r = *self;
        if r.in_restartable_syscall() {
            r.rax = if r.rax as i64 == restart::ERESTART_RESTARTBLOCK {
                NR_RESTART_SYSCALL
            } else {
                r.orig_rax
            };
            r.rip = r.rip.wrapping_sub(2);
        }
        r.orig_rax = u64::MAX;
        r
    }
}

/// The `syscall` instruction.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Result of the CPUID instruction.
#[derive(Debug, Clone, Copy)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Runs CPUID for a leaf and sub-leaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// The CPU vendor string, e.g. "AuthenticAMD".
pub fn cpu_vendor() -> String {
    let r = cpuid(0, 0);
    let mut v = Vec::with_capacity(12);
    for w in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// Whether the OS enabled XSAVE (CPUID.1:ECX.OSXSAVE).
pub fn has_osxsave() -> bool {
    cpuid(1, 0).ecx & (1 << 27) != 0
}

/// The XSAVE feature mask the kernel enabled (XCR0), 0 without XSAVE.
pub fn xcr0() -> u64 {
    if !has_osxsave() {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX=0 is valid when CPUID reports OSXSAVE.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Size in bytes of the XSAVE area for the features in XCR0 (CPUID leaf
/// 0xD), or 512 (the legacy FXSAVE area) without XSAVE.
pub fn xsave_size() -> usize {
    if !has_osxsave() {
        return 512;
    }
    cpuid(0xd, 0).ebx as usize
}

/// Offset of XSTATE_BV (the features present in an XSAVE image).
pub const XSAVE_HEADER_OFFSET: usize = 512;

/// The feature bits present in a saved XSAVE image (its XSTATE_BV).
pub fn xstate_bv(xsave: &[u8]) -> u64 {
    xsave
        .get(XSAVE_HEADER_OFFSET..XSAVE_HEADER_OFFSET + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// Names of XSAVE feature bits, for messages.
pub fn xfeature_name(bit: u32) -> &'static str {
    match bit {
        0 => "x87",
        1 => "SSE",
        2 => "AVX",
        3 => "MPX bounds",
        4 => "MPX CSR",
        5 => "AVX-512 opmask",
        6 => "AVX-512 ZMM_Hi256",
        7 => "AVX-512 Hi16_ZMM",
        9 => "PKRU",
        11 => "CET user",
        12 => "CET supervisor",
        17 => "AMX TILECFG",
        18 => "AMX TILEDATA",
        19 => "APX",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_words_round_trip() {
        let r = UserRegs {
            rip: 0x1234,
            gs: 7,
            ..Default::default()
        };
        let w = r.to_words();
        assert_eq!(w[16], 0x1234);
        assert_eq!(UserRegs::from_words(&w), r);
    }

    #[test]
    fn xsave_size_is_sane() {
        let n = xsave_size();
        assert!(n >= 512 && n.is_multiple_of(64), "xsave size {n}");
        if xcr0() & 0b111 == 0b111 {
            assert!(n >= 576 + 256);
        }
    }
}
