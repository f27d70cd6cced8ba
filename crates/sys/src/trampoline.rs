//! The code through which crest runs syscalls in a task so that the task
//! returns to its own context by itself if crest dies, and the block of
//! the task's own state that code restores.
//!
//! The task runs each injected call at [`PLAIN_ENTRY`] with its stack
//! pointer on its [`Block`] (written on its own stack, below the red
//! zone) and comes back to [`PARK`], where it also waits between calls.
//! From there, with no tracer, it restores itself:
//!
//! ```text
//!  0: syscall                ; CLOSING_ENTRY: a call that makes a descriptor
//!  2: mov edi, eax
//!  4: mov eax, 3             ;   close(that descriptor)
//!  9: syscall                ; PLAIN_ENTRY: any call
//! 11: mov eax, 14            ; PARK: rt_sigprocmask(SIG_SETMASK, &block.mask, 0, 8)
//!     mov edi, 2
//!     mov rsi, rsp
//!     xor edx, edx
//!     mov r10d, 8
//!     syscall
//!     add rsp, 8
//!     pop r15 … pop r8, pop rdi, rsi, rbp, rbx, rdx, rcx, rax
//!     popfq
//!     pop rsp                ; the task's own stack pointer
//!     jmp [rsp - 136]        ; its own instruction pointer, kept just below
//!                            ; the 128-byte red zone
//! ```
//!
//! After it, the batch entry reads signal dispositions in bulk with one
//! injected call: `clone(CLONE_VM | CLONE_THREAD | … | CLONE_VFORK)`
//! starts a thread of the task's own (not traced: crest seizes without
//! PTRACE_O_TRACECLONE) that runs `rt_sigaction(sig, NULL, r12 + sig *
//! 32, 8)` for `sig` from `rbx` up to `r13` and exits; the vfork makes the
//! call return only once it has.  The calling thread then parks as after
//! any call, so a crest that dies meanwhile changes nothing:
//!
//! ```text
//! 70: syscall                ; BATCH_ENTRY: clone
//! 72: test rax, rax
//!     jnz PARK               ; the calling thread (or a failed clone)
//! 81: mov eax, 13            ; the new thread: rt_sigaction(ebx, NULL,
//!     mov edi, ebx           ;   r12 + rbx * 32, 8)
//!     xor esi, esi
//!     mov rdx, rbx
//!     shl rdx, 5
//!     add rdx, r12
//!     mov r10d, 8
//!     syscall
//!     inc ebx
//!     cmp ebx, r13d
//!     jb 81
//!     mov eax, 60            ; exit (this thread only)
//!     xor edi, edi
//!     syscall
//!     ud2
//! ```
//!
//! The new thread touches memory only through its syscalls (a bad address
//! is an EFAULT, never a fault that would kill the process), uses no
//! stack, and inherits the caller's mask, every signal blocked.
//!
//! Every general register, the flags, the stack and instruction pointers
//! and the blocked-signal mask come back as they were; the FPU and vector
//! registers, the alternate signal stack and the restart block are never
//! touched by the calls crest makes, so they need nothing.  A thread
//! interrupted in a syscall resumes set up to re-issue it (through
//! `restart_syscall` for a restart block, which stays intact) as the
//! kernel would have.  (An `rt_sigreturn` over a signal frame would be
//! atomic, but it resets the thread's restart block, so a sleep restarted
//! once already would then fail with EINTR.)  Signals that were queued
//! meanwhile are delivered when the mask comes back, a few instructions
//! before the task is in its own context again: only a handler that looks
//! at the interrupted context could tell, and only if crest died.

use crate::arch::UserRegs;

/// The trampoline (see the module documentation).
pub const TRAMPOLINE: [u8; 126] = [
    0x0f, 0x05, // syscall
    0x89, 0xc7, // mov edi, eax
    0xb8, 0x03, 0x00, 0x00, 0x00, // mov eax, 3
    0x0f, 0x05, // syscall
    0xb8, 0x0e, 0x00, 0x00, 0x00, // mov eax, 14
    0xbf, 0x02, 0x00, 0x00, 0x00, // mov edi, 2
    0x48, 0x89, 0xe6, // mov rsi, rsp
    0x31, 0xd2, // xor edx, edx
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, // mov r10d, 8
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xc4, 0x08, // add rsp, 8
    0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, // pop r15, r14, r13, r12
    0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, // pop r11, r10, r9, r8
    0x5f, 0x5e, 0x5d, 0x5b, 0x5a, 0x59, 0x58, // pop rdi, rsi, rbp, rbx, rdx, rcx, rax
    0x9d, // popfq
    0x5c, // pop rsp
    0xff, 0xa4, 0x24, 0x78, 0xff, 0xff, 0xff, // jmp [rsp - 136]
    0x0f, 0x05, // 70: syscall (BATCH_ENTRY)
    0x48, 0x85, 0xc0, // test rax, rax
    0x0f, 0x85, 0xba, 0xff, 0xff, 0xff, // jnz PARK (11 - 81)
    0xb8, 0x0d, 0x00, 0x00, 0x00, // 81: mov eax, 13
    0x89, 0xdf, // mov edi, ebx
    0x31, 0xf6, // xor esi, esi
    0x48, 0x89, 0xda, // mov rdx, rbx
    0x48, 0xc1, 0xe2, 0x05, // shl rdx, 5
    0x4c, 0x01, 0xe2, // add rdx, r12
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, // mov r10d, 8
    0x0f, 0x05, // syscall
    0xff, 0xc3, // inc ebx
    0x44, 0x39, 0xeb, // cmp ebx, r13d
    0x72, 0xde, // jb 81 (81 - 115)
    0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60
    0x31, 0xff, // xor edi, edi
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
];
/// Offset of the entry for a call whose result is a descriptor that is
/// closed again right after (by crest, or by the task itself).
pub const CLOSING_ENTRY: u64 = 0;
/// Offset where the closing entry's own call returns.
pub const CLOSING_RETURN: u64 = 2;
/// Offset of the entry for any call.
pub const PLAIN_ENTRY: u64 = 9;
/// Where every call returns and a task waits between calls.
pub const PARK: u64 = 11;
/// Offset of the batch entry: a `clone` whose new thread reads signal
/// dispositions (see the module documentation).
pub const BATCH_ENTRY: u64 = 70;
/// Offset where the batch entry's `clone` returns in the calling thread.
pub const BATCH_RETURN: u64 = 72;
/// Bytes of the kernel's `struct sigaction` the batch writes per signal.
pub const BATCH_STRIDE: u64 = 32;
/// The flags of the batch's `clone`: a thread of the task's own that the
/// call waits for.
pub const BATCH_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_VFORK) as u64;
/// How far below the task's own stack pointer its instruction pointer is
/// kept (the `jmp [rsp - 136]`).
pub const IP_SLOT: u64 = 136;
/// Bytes of a block: the mask, 15 registers, flags, stack pointer.
pub const BLOCK_LEN: u64 = 18 * 8;

/// A task's own state as the trampoline restores it: `bytes` go at
/// `start` (the stack pointer during calls), `ip` at `regs.rsp - IP_SLOT`.
pub struct Block {
    pub start: u64,
    pub bytes: Vec<u8>,
    pub ip: [u8; 8],
}

/// The block, ending at or below `top`, that returns a thread to `regs`
/// with `blocked` signals blocked.
pub fn block(top: u64, regs: &UserRegs, blocked: u64) -> Block {
    let start = (top - BLOCK_LEN) & !15;
    let words = [
        blocked,
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rcx,
        regs.rax,
        regs.eflags,
        regs.rsp,
    ];
    Block {
        start,
        bytes: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
        ip: regs.rip.to_ne_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(TRAMPOLINE[CLOSING_ENTRY as usize..][..2], [0x0f, 0x05]);
        assert_eq!(TRAMPOLINE[CLOSING_RETURN as usize], 0x89);
        assert_eq!(TRAMPOLINE[PLAIN_ENTRY as usize..][..2], [0x0f, 0x05]);
        assert_eq!(TRAMPOLINE[PARK as usize], 0xb8);
        let disp = i32::from_le_bytes(TRAMPOLINE[66..70].try_into().unwrap());
        assert_eq!(disp as i64, -(IP_SLOT as i64));
        assert_eq!(TRAMPOLINE[BATCH_ENTRY as usize..][..2], [0x0f, 0x05]);
        assert_eq!(TRAMPOLINE[BATCH_RETURN as usize..][..3], [0x48, 0x85, 0xc0]);
        // jnz PARK and the loop's jb land where they should.
        let jnz = i32::from_le_bytes(TRAMPOLINE[77..81].try_into().unwrap());
        assert_eq!(81 + jnz as i64, PARK as i64);
        assert_eq!(115 + TRAMPOLINE[114] as i8 as i64, 81);
        assert_eq!(TRAMPOLINE[81], 0xb8);
        let regs = UserRegs {
            rip: 0x1111,
            rsp: 0x2222,
            r15: 0x15,
            rax: 0xa,
            ..Default::default()
        };
        let b = block(0x10_0000, &regs, 0x55);
        assert_eq!(b.start % 16, 0);
        assert!(b.start + BLOCK_LEN <= 0x10_0000);
        let word = |i: usize| u64::from_ne_bytes(b.bytes[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (word(0), word(1), word(15), word(17)),
            (0x55, 0x15, 0xa, 0x2222)
        );
        assert_eq!(b.ip, 0x1111u64.to_ne_bytes());
    }
}
