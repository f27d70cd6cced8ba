//! `cgroupns`: a process at the root of its own cgroup namespace (started
//! by `unshare --cgroup --fork` from inside cgroups the test made): every
//! line of /proc/self/cgroup must read "/" before and after go, and the
//! text must not change (a restore that loses the namespace shows the
//! full paths; one that puts the process elsewhere shows a subpath).

use crate::checks::Checks;
use crate::proto::{Proto, GO_TIMEOUT_NS};
use crate::util::sleep_ns;

const POLL_NS: u64 = 20_000_000;

fn view() -> String {
    std::fs::read_to_string("/proc/self/cgroup").unwrap_or_else(|e| format!("unreadable: {e}"))
}

fn all_root(c: &mut Checks, when: &str, text: &str) {
    for l in text.lines() {
        let path = l.splitn(3, ':').nth(2).unwrap_or("?");
        c.ensure(path == "/", || {
            format!("{when}: /proc/self/cgroup line {l:?} is not at the namespace root")
        });
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let mut c = Checks::new();
    // A session of its own: the wrapper's cannot be recreated.
    // SAFETY: plain syscall.
    unsafe { libc::setsid() };
    let first = view();
    all_root(&mut c, "at start", &first);
    p.write_ready();
    let mut waited = 0;
    while !p.go_exists() {
        if waited >= GO_TIMEOUT_NS {
            c.fail("timeout waiting for go");
            return c;
        }
        sleep_ns(POLL_NS);
        waited += POLL_NS;
    }
    let now = view();
    all_root(&mut c, "after go", &now);
    c.eq("/proc/self/cgroup", first, now);
    c
}
