//! io_uring instances: refused, with what the ring holds and why.
//!
//! A faithful restore of a ring needs four things the kernel (6.18) does
//! not offer, found by reading `io_uring/` and checked on this machine:
//!
//! - **Its setup flags.**  `IORING_SETUP_*` (SQPOLL aside, which fdinfo
//!   shows as `SqThread`) are in no fdinfo line, no `/proc` file and no
//!   `io_uring_register` query (`IORING_REGISTER_QUERY` reports what the
//!   kernel supports, not what a ring uses).  DEFER_TASKRUN,
//!   SINGLE_ISSUER, COOP_TASKRUN, IOPOLL, NO_SQARRAY, SUBMIT_ALL change
//!   what the program sees; guessing them is a wrong restore.
//! - **Its counters.**  The kernel keeps its own copies of the SQ head and
//!   CQ tail (fdinfo `CachedSqHead`, `CachedCqTail`).  A new ring starts
//!   them at 0, and only a submitted request or a posted completion moves
//!   them, by one; `IORING_REGISTER_RESIZE_RINGS` copies the visible
//!   head and tail but not these, and is limited to DEFER_TASKRUN rings.
//!   The program's own copies (liburing's `sqe_tail`, `khead`…) must match
//!   them, so a restored ring would need up to 2^32 replayed requests.
//! - **Its requests in flight.**  fdinfo lists armed polls (`PollList`)
//!   and overflowed completions, but not timeouts, linked chains, requests
//!   waiting in io-wq workers or on buffers; "no request in flight" cannot
//!   be proved, and a silently dropped timeout is a wrong restore.
//! - **Its registered files.**  fdinfo names them (`UserFiles`), but no
//!   interface hands the files to another process, short of submitting
//!   `IORING_OP_FIXED_FD_INSTALL` into the program's own ring (which moves
//!   its counters).
//!
//! So `check` and `dump` refuse an io_uring descriptor, and the ring
//! mappings with it, naming what the ring holds, with the tree left
//! running.

use crest_sys::proc::FdInfo;

/// Why descriptor `info` (an `anon_inode:[io_uring]`) cannot be
/// checkpointed, with what its ring holds.
pub fn refusal(info: &FdInfo) -> String {
    let num = |k: &str| info.get(k).and_then(|v| v.trim().parse::<u64>().ok());
    let mask = |k: &str| {
        info.get(k)
            .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
            .map(|m| m + 1)
    };
    let mut held = Vec::new();
    if let (Some(sq), Some(cq)) = (mask("SqMask"), mask("CqMask")) {
        held.push(format!("{sq} SQ / {cq} CQ entries"));
    }
    if let Some(n) = num("SqHead") {
        held.push(format!("{n} requests taken"));
    }
    if let (Some(h), Some(t)) = (num("CqHead"), num("CqTail")) {
        held.push(format!(
            "{} completions unread",
            t.wrapping_sub(h) & 0xffff_ffff
        ));
    }
    if let Some(t) = info.get("SqThread").filter(|t| t.trim() != "-1") {
        held.push(format!("SQPOLL thread {}", t.trim()));
    }
    for (k, what) in [
        ("UserFiles", "registered files"),
        ("UserBufs", "registered buffers"),
    ] {
        if let Some(n) = num(k).filter(|n| *n > 0) {
            held.push(format!("{n} {what}"));
        }
    }
    let held = if held.is_empty() {
        String::new()
    } else {
        format!(" ({})", held.join(", "))
    };
    format!(
        "io_uring instance{held} cannot be checkpointed: the kernel exposes neither a \
         ring's setup flags nor its requests in flight, and gives a new ring no way to \
         start at the old SQ head and CQ tail"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_what_the_ring_holds() {
        let info = crest_sys::proc::parse_fdinfo(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t12702\nSqMask:\t0x7\nSqHead:\t3\n\
             SqTail:\t3\nCachedSqHead:\t3\nCqMask:\t0xf\nCqHead:\t1\nCqTail:\t3\n\
             CachedCqTail:\t3\nSqThread:\t-1\nUserFiles:\t2\nUserBufs:\t0\n",
        )
        .unwrap();
        let r = refusal(&info);
        assert!(
            r.starts_with(
                "io_uring instance (8 SQ / 16 CQ entries, 3 requests taken, \
                 2 completions unread, 2 registered files) cannot be checkpointed"
            ),
            "{r}"
        );
    }
}
