//! x86-64 signal frames, written by crest so that a task can return to its
//! own context by itself with `rt_sigreturn`, and the trampoline code that
//! does so after an injected syscall.
//!
//! The kernel's `rt_sigreturn` takes the frame at `sp - 8` (a handler's
//! `ret` has popped the frame's first word, `pretcode`) and restores from
//! its `ucontext`: the general registers, flags, cs/ss, the blocked-signal
//! mask, the alternate signal stack, and the FPU/vector state from the
//! XSAVE area `fpstate` points to.  It also sets `orig_ax` to -1, so no
//! syscall restart follows, and resets the thread's restart block (see
//! [`UserRegs::restarted_through_sigreturn`](crate::arch::UserRegs)).
//!
//! * The XSAVE area is the thread's own, as PTRACE_GETREGSET(NT_X86_XSTATE)
//!   gives it (standard format).  The kernel restores it with XRSTOR only
//!   if its software-reserved bytes carry FP_XSTATE_MAGIC1 with sizes that
//!   fit this task and FP_XSTATE_MAGIC2 follows the area; otherwise it would
//!   restore the legacy x87/SSE part alone and reset AVX and up.  So both
//!   are written here, sizes taken from the kernel's buffer.  The area is
//!   64-byte aligned (XRSTOR requires it).
//! * `uc_stack` has an invalid `ss_flags` (3): `rt_sigreturn` then leaves
//!   the thread's alternate stack as it is (sigaltstack refuses invalid
//!   flags before changing anything, and `rt_sigreturn` ignores that
//!   error), which is what the thread had.

use crate::arch::UserRegs;

/// The code crest writes into a task (18 bytes), with two entries:
///
/// ```text
///  0: syscall               ; CLOSING entry: a call that returns a descriptor
///  2: mov edi, eax
///  4: mov eax, 3            ; close(the descriptor just made)
///  9: syscall               ; PLAIN entry: any call
/// 11: mov eax, 15           ; rt_sigreturn — PARK: where a task waits
/// 16: syscall               ;   between calls
/// ```
pub const TRAMPOLINE: [u8; 18] = [
    0x0f, 0x05, 0x89, 0xc7, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00,
    0x0f, 0x05,
];
/// Offset of the entry for a call whose result is a descriptor that is
/// closed again right after (by crest, or by the task itself).
pub const CLOSING_ENTRY: u64 = 0;
/// Offset where the closing entry's own call returns.
pub const CLOSING_RETURN: u64 = 2;
/// Offset of the entry for any call.
pub const PLAIN_ENTRY: u64 = 9;
/// Offset of the `rt_sigreturn`: every call returns here, and a task
/// waits here between calls, so that it unwinds if crest is gone.
pub const PARK: u64 = 11;

/// `sizeof(struct rt_sigframe)` without the FPU area: pretcode (8),
/// `ucontext` (304: flags, link, stack_t, sigcontext, sigset), siginfo (128).
const FRAME_LEN: u64 = 8 + 304 + 128;
const UC_FLAGS: usize = 8;
const UC_STACK_FLAGS: usize = 8 + 8 + 8 + 8;
const MCONTEXT: usize = 8 + 40;
const SIGMASK: usize = MCONTEXT + 256;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// An `ss_flags` the kernel refuses (SS_ONSTACK | SS_DISABLE).
const SS_INVALID: u32 = 3;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of `sw_reserved` (struct _fpx_sw_bytes) in the FXSAVE area.
const SW_RESERVED: usize = 464;

/// A frame ready to be written at `start`; the task returns through it
/// with its stack pointer at `sp`.
pub struct Frame {
    pub start: u64,
    pub bytes: Vec<u8>,
    pub sp: u64,
}

/// Builds a frame ending at or below `top` that returns the thread to
/// `regs` with `blocked` signals blocked and the FPU state `xstate`
/// (as PTRACE_GETREGSET(NT_X86_XSTATE) returned it); `xfeatures` are the
/// user features the kernel enabled (XCR0).
pub fn build(top: u64, regs: &UserRegs, blocked: u64, xstate: &[u8], xfeatures: u64) -> Frame {
    let xlen = xstate.len() as u64;
    let fp = (top - xlen - 4) & !63;
    let start = (fp - FRAME_LEN) & !15;
    let mut b = vec![0u8; (fp + xlen + 4 - start) as usize];
    let put = |b: &mut [u8], off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    let flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
    put(&mut b, UC_FLAGS, &flags.to_ne_bytes());
    put(&mut b, UC_STACK_FLAGS, &SS_INVALID.to_ne_bytes());
    let gprs = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, v) in gprs.iter().enumerate() {
        put(&mut b, MCONTEXT + i * 8, &v.to_ne_bytes());
    }
    // cs, gs, fs, ss (16 bits each); gs and fs are not restored on x86-64.
    put(&mut b, MCONTEXT + 144, &(regs.cs as u16).to_ne_bytes());
    put(&mut b, MCONTEXT + 150, &(regs.ss as u16).to_ne_bytes());
    put(&mut b, MCONTEXT + 184, &fp.to_ne_bytes());
    put(&mut b, SIGMASK, &blocked.to_ne_bytes());
    let x = (fp - start) as usize;
    put(&mut b, x, xstate);
    let sw = x + SW_RESERVED;
    put(&mut b, sw, &FP_XSTATE_MAGIC1.to_ne_bytes());
    put(&mut b, sw + 4, &((xlen + 4) as u32).to_ne_bytes());
    put(&mut b, sw + 8, &xfeatures.to_ne_bytes());
    put(&mut b, sw + 16, &(xlen as u32).to_ne_bytes());
    put(&mut b, x + xlen as usize, &FP_XSTATE_MAGIC2.to_ne_bytes());
    Frame {
        start,
        bytes: b,
        sp: start + 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let regs = UserRegs {
            rip: 0x1111,
            rsp: 0x2222,
            cs: 0x33,
            ss: 0x2b,
            ..Default::default()
        };
        let xs = vec![0u8; 2432];
        let f = build(0x10_0000, &regs, 0x55, &xs, 7);
        assert_eq!(f.start % 16, 0);
        assert!(f.start + f.bytes.len() as u64 <= 0x10_0000);
        let word = |off: usize| u64::from_ne_bytes(f.bytes[off..off + 8].try_into().unwrap());
        assert_eq!(word(MCONTEXT + 128), 0x1111);
        assert_eq!(word(MCONTEXT + 120), 0x2222);
        assert_eq!(word(SIGMASK), 0x55);
        let fp = word(MCONTEXT + 184);
        assert_eq!(fp % 64, 0);
        let x = (fp - f.start) as usize;
        let magic2 = u32::from_ne_bytes(f.bytes[x + 2432..x + 2436].try_into().unwrap());
        assert_eq!(magic2, FP_XSTATE_MAGIC2);
        assert_eq!(f.bytes.len(), x + 2436);
    }
}
