//! `timens <min-seconds>`: a process in a time namespace whose
//! CLOCK_MONOTONIC and CLOCK_BOOTTIME are offset (started by `unshare
//! --time --monotonic S --boottime S --fork`): until go it reads both
//! clocks every 20 ms and keeps the largest step between two readings.
//! After go: both clocks must still be at least `min-seconds` (still in
//! the namespace, its offsets kept), and no step may have gone back or
//! been longer than 1.5 s (the restored clocks go on from where they
//! were, not from the host's clock, however long the image waited).

use crate::checks::Checks;
use crate::proto::{Proto, GO_TIMEOUT_NS};
use crate::util::{clock_ns, sleep_ns};

const STEP_NS: u64 = 20_000_000;
const MAX_GAP_NS: i64 = 1_500_000_000;

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mut c = Checks::new();
    // A session of its own: the wrapper's cannot be recreated.
    // SAFETY: plain syscall.
    unsafe { libc::setsid() };
    let min: i64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0) * 1_000_000_000;
    let read = || {
        (
            clock_ns(libc::CLOCK_MONOTONIC) as i64,
            clock_ns(libc::CLOCK_BOOTTIME) as i64,
        )
    };
    let (m0, b0) = read();
    c.ensure(m0 >= min && b0 >= min, || {
        format!("clocks {m0} / {b0} ns below {min}: not in the time namespace")
    });
    p.write_ready();
    let (mut pm, mut pb) = (m0, b0);
    let (mut gap_m, mut gap_b) = (0i64, 0i64);
    let mut waited = 0u64;
    while !p.go_exists() {
        if waited >= GO_TIMEOUT_NS {
            c.fail("timeout waiting for go");
            return c;
        }
        sleep_ns(STEP_NS);
        waited += STEP_NS;
        let (m, b) = read();
        c.ensure(m >= pm && b >= pb, || {
            format!("a clock went back: monotonic {pm} -> {m}, boottime {pb} -> {b}")
        });
        gap_m = gap_m.max(m - pm);
        gap_b = gap_b.max(b - pb);
        (pm, pb) = (m, b);
    }
    let (m, b) = read();
    c.ensure(m >= min && b >= min, || {
        format!("after go: clocks {m} / {b} ns below {min}: the offsets are lost")
    });
    c.ensure(gap_m < MAX_GAP_NS, || {
        format!("CLOCK_MONOTONIC jumped by {gap_m} ns between two readings 20 ms apart")
    });
    c.ensure(gap_b < MAX_GAP_NS, || {
        format!("CLOCK_BOOTTIME jumped by {gap_b} ns between two readings 20 ms apart")
    });
    c
}
