//! `sleep`: the go-wait is a 3 s `clock_nanosleep(CLOCK_MONOTONIC)` repeated
//! until go exists. A checkpoint lands inside the sleep; every sleep must
//! return 0 (not EINTR) and must not end early.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::{Proto, GO_TIMEOUT_NS};
use crate::util::{clock_ns, err_str, sleep_ns};

const SLEEP_NS: u64 = 3_000_000_000;

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let base = Baseline::record();
    let mut c = Checks::new();
    p.write_ready();
    let mut slept = 0u64;
    let mut n = 0u32;
    while !p.go_exists() {
        if slept >= GO_TIMEOUT_NS {
            c.fail("timeout waiting for go");
            return c;
        }
        n += 1;
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = sleep_ns(SLEEP_NS);
        let t1 = clock_ns(libc::CLOCK_MONOTONIC);
        slept += SLEEP_NS;
        if r != 0 {
            c.fail(format!(
                "clock_nanosleep #{n} (3 s): expected 0, got {r} ({})",
                err_str(r)
            ));
        }
        // A monotonic clock that went backwards (restore on another boot)
        // makes the elapsed time meaningless; otherwise a sleep that
        // returned 0 must have lasted the full 3 s.
        if r == 0 && t1 >= t0 && ((t1 - t0) as u64) < SLEEP_NS {
            c.fail(format!(
                "clock_nanosleep #{n} returned 0 after only {} ns of CLOCK_MONOTONIC (requested {SLEEP_NS})",
                t1 - t0
            ));
        }
    }
    base.verify(p, &mut c);
    c
}
