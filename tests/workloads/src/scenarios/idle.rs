//! `idle`: no special state; waits for go and passes (plumbing tests).

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    base.verify(p, &mut c);
    c
}
