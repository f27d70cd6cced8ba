//! `tree [sibling-pgrp]`: a process tree of 8 processes held across the
//! checkpoint.
//!
//! ```text
//! root            child subreaper; exits 0/1 (the protocol)
//! ├── A           process group leader (setpgid(0,0)), exits 10
//! │   └── A1      in A's group, exits 20
//! ├── B           session leader (setsid), exits 11
//! │   └── B1      in B's session, leader of its own group, exits 21
//! └── C           exits 12 without reaping C2
//!     ├── C1      exits 22
//!     └── C2      exits 23 once reparented to the root (the subreaper);
//!                 with `sibling-pgrp` it is in A's process group (like a
//!                 shell pipeline whose group leader is a sibling)
//! ```
//!
//! Every process checks its own pid, ppid, pgid, sid, parent-death signal
//! and fds, a private region it filled after fork (contents differ per
//! process), and a region the root filled before forking in which each
//! process overwrote its own page before forking its children (so each
//! process sees the pages of its ancestors and the root's originals for the
//! rest). The root also cross-checks every member in `/proc/<pid>/stat`.
//! Once every member has checked itself after go (`checked-<role>`), the
//! root creates `release`; each parent reaps its children and
//! checks their exit codes, C exits leaving C2, which must be reparented to
//! the root. Members report in `<dir>/child-<pid>`; the root copies every
//! failure into its result. Nothing is a zombie before the checkpoint.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family::{
    die_with_parent, exists, judge, kids_alive, member_wait_go, proc_stat, reap, root_alive,
    status_str, try_reap, verdict, wait_path, Ids, POLL_NS, STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{count_bad, err_str, errno, fill, mmap_anon, pat, sleep_ns, PAGE};

const PR_GET_PDEATHSIG: i32 = 2;
const PR_SET_CHILD_SUBREAPER: i32 = 36;
const PR_GET_CHILD_SUBREAPER: i32 = 37;
const GO_POLL_NS: u64 = 2_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Root,
    A,
    A1,
    B,
    B1,
    C,
    C1,
    C2,
}

const ROLES: [Role; 8] = [
    Role::Root,
    Role::A,
    Role::A1,
    Role::B,
    Role::B1,
    Role::C,
    Role::C1,
    Role::C2,
];

impl Role {
    fn idx(self) -> usize {
        ROLES.iter().position(|&r| r == self).unwrap_or(0)
    }

    fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::A => "A",
            Role::A1 => "A1",
            Role::B => "B",
            Role::B1 => "B1",
            Role::C => "C",
            Role::C1 => "C1",
            Role::C2 => "C2",
        }
    }

    /// The exit code of a member that passed.
    fn code(self) -> i32 {
        match self {
            Role::Root => 0,
            Role::A => 10,
            Role::B => 11,
            Role::C => 12,
            Role::A1 => 20,
            Role::B1 => 21,
            Role::C1 => 22,
            Role::C2 => 23,
        }
    }

    /// The processes whose page of the shared-before-fork region this one
    /// sees rewritten: itself and its ancestors.
    fn lineage(self) -> &'static [Role] {
        match self {
            Role::Root => &[Role::Root],
            Role::A => &[Role::Root, Role::A],
            Role::A1 => &[Role::Root, Role::A, Role::A1],
            Role::B => &[Role::Root, Role::B],
            Role::B1 => &[Role::Root, Role::B, Role::B1],
            Role::C => &[Role::Root, Role::C],
            Role::C1 => &[Role::Root, Role::C, Role::C1],
            Role::C2 => &[Role::Root, Role::C, Role::C2],
        }
    }
}

const COW_SEED: u64 = 0xC0_0000;
const OWN_SEED: u64 = 0xC1_0000;

/// State every process of the tree records and verifies about itself.
struct Me {
    role: Role,
    want: Ids,
    pdeathsig: u64,
    cow: *mut u8,
    private: *mut u8,
    private_len: usize,
    private_seed: u64,
    base: Baseline,
}

fn pdeathsig() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: the kernel writes an int through arg2; 8 bytes are available.
    unsafe { libc::prctl(PR_GET_PDEATHSIG, &mut v as *mut u64, 0u64, 0u64, 0u64) };
    v
}

impl Me {
    /// Writes this process's page of the before-fork region and fills a
    /// private region of its own. Call before forking the children.
    fn setup(p: &Proto, role: Role, want: Ids, cow: *mut u8) -> Self {
        // SAFETY: `cow` holds one page per role; each process writes only
        // its own page of its own copy.
        unsafe {
            fill(
                cow.add(role.idx() * PAGE),
                PAGE,
                OWN_SEED + role.idx() as u64,
            )
        };
        let private_len = 64 * 1024 + role.idx() * PAGE;
        let private = mmap_anon(private_len, libc::PROT_READ | libc::PROT_WRITE, 0)
            .unwrap_or_else(|e| p.bail(&format!("setup: mmap: {}", err_str(e))));
        let private_seed = pat(0x7EE_0000 + role.idx() as u64, want.pid as usize);
        // SAFETY: fresh mapping of private_len bytes.
        unsafe { fill(private, private_len, private_seed) };
        Self {
            role,
            want,
            pdeathsig: pdeathsig(),
            cow,
            private,
            private_len,
            private_seed,
            base: Baseline::record(),
        }
    }

    /// The checks each process runs on itself after go (and before ready
    /// as a sanity check of the setup).
    fn check(&self, c: &mut Checks) {
        if self.role == Role::Root {
            Ids::now().check_root(c, &self.want);
        } else {
            Ids::now().check(c, &self.want);
        }
        c.eq("PR_GET_PDEATHSIG", self.pdeathsig, pdeathsig());
        for r in ROLES {
            let k = r.idx();
            let seed = if self.role.lineage().contains(&r) {
                OWN_SEED + k as u64
            } else {
                COW_SEED + k as u64
            };
            // SAFETY: page k of the region lies inside it.
            let (bad, first) = unsafe { count_bad(self.cow.add(k * PAGE), PAGE, seed) };
            c.ensure(bad == 0, || {
                format!(
                    "before-fork region page {k} ({}'s page): {bad} words differ from the {} pattern, first at byte {first:?}",
                    r.name(),
                    if seed >= OWN_SEED { "rewritten" } else { "original" }
                )
            });
        }
        // SAFETY: our mapping.
        let (bad, first) = unsafe { count_bad(self.private, self.private_len, self.private_seed) };
        c.ensure(bad == 0, || {
            format!(
                "private region ({} bytes, filled after fork): {bad} words differ, first at byte {first:?}",
                self.private_len
            )
        });
    }
}

/// Everything the members need to know, copied into every fork.
#[derive(Clone, Copy)]
struct Tree {
    root: i32,
    root_pgid: i32,
    root_sid: i32,
    sibling_pgrp: bool,
    cow: *mut u8,
}

fn me() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// `ok` callback: our child `pid` must not have ended.
fn child_alive(pid: i32, who: &'static str, root: i32) -> impl FnMut() -> Result<(), String> {
    move || {
        if !exists(root) {
            // SAFETY: _exit has no preconditions; the harness gave up.
            unsafe { libc::_exit(1) }
        }
        match try_reap(pid) {
            None => Ok(()),
            Some(st) => Err(format!("{who} (pid {pid}) ended early: {}", status_str(st))),
        }
    }
}

/// The part every member shares after its setup: write `setup-<role>`,
/// wait for go, verify itself, wait for `release`.
fn member_run(m: &Proto, t: &Tree, s: &Me) -> Checks {
    let mut pre = Checks::new();
    s.check(&mut pre);
    if !pre.passed() {
        m.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    m.write_aux(&format!("setup-{}", s.role.name()), &format!("{}\n", me()));
    let wait = member_wait_go(m, t.root, GO_POLL_NS);
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    s.check(&mut c);
    s.base.verify_member(&mut c);
    // The root releases the tree only once every member has checked
    // itself: C exits on release, and C2 must see C as its parent here.
    m.write_aux(&format!("checked-{}", s.role.name()), "");
    if let Err(e) = wait_path(
        &m.dir().join("release"),
        STEP_TIMEOUT_NS,
        root_alive(t.root),
    ) {
        c.fail(format!("waiting for release: {e}"));
    }
    c
}

/// Reaps our child `pid` (role `r`) after release and checks its exit code.
fn reap_child(c: &mut Checks, r: Role, pid: i32) {
    match reap(pid, STEP_TIMEOUT_NS) {
        Ok(st) => c.ensure(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == r.code(),
            || {
                format!(
                    "child {} (pid {pid}): expected exit {}, got {}",
                    r.name(),
                    r.code(),
                    status_str(st)
                )
            },
        ),
        Err(e) => c.fail(format!("child {} (pid {pid}): {e}", r.name())),
    }
}

/// Forks a leaf member (no children of its own).
fn spawn_leaf(p: &Proto, t: Tree, r: Role, parent: i32, pgid: i32, sid: i32, pdeath: bool) -> i32 {
    crate::family::spawn(p, r.code(), move |m| {
        if pdeath {
            die_with_parent(parent);
        }
        let pid = me();
        let pgid = match r {
            Role::B1 => {
                // SAFETY: setpgid on ourselves.
                if unsafe { libc::setpgid(0, 0) } != 0 {
                    m.bail_errno("setpgid(0, 0) in B1");
                }
                pid
            }
            Role::C2 if t.sibling_pgrp => {
                // SAFETY: setpgid on ourselves, into a group of our session.
                if unsafe { libc::setpgid(0, pgid) } != 0 {
                    m.bail_errno("setpgid(0, A) in C2");
                }
                pgid
            }
            Role::C2 => t.root_pgid,
            _ => pgid,
        };
        let want = Ids {
            pid,
            ppid: parent,
            pgid,
            sid,
        };
        let s = Me::setup(m, r, want, t.cow);
        let mut c = member_run(m, &t, &s);
        if r == Role::C2 {
            // C exits after release without reaping us: we must be
            // reparented to the root, the child subreaper.
            let mut slept = 0;
            // SAFETY: getppid has no preconditions.
            while unsafe { libc::getppid() } == parent && slept < STEP_TIMEOUT_NS {
                sleep_ns(POLL_NS);
                slept += POLL_NS;
            }
            // SAFETY: as above.
            let now = unsafe { libc::getppid() };
            c.ensure(now == t.root, || {
                format!(
                    "after C exited: getppid() expected {} (the root, a child subreaper), got {now}",
                    t.root
                )
            });
            c.eq("getpgid(0) after reparenting", want.pgid, {
                // SAFETY: no preconditions.
                unsafe { libc::getpgid(0) }
            });
        }
        c
    })
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let sibling_pgrp = match args.first().map(String::as_str) {
        None => false,
        Some("sibling-pgrp") => true,
        Some(other) => p.bail(&format!(
            "setup: tree takes no argument or 'sibling-pgrp', got {other:?}"
        )),
    };
    // SAFETY: integer-only prctl.
    if unsafe { libc::prctl(PR_SET_CHILD_SUBREAPER, 1u64, 0u64, 0u64, 0u64) } != 0 {
        p.bail_errno("PR_SET_CHILD_SUBREAPER");
    }
    let cow_len = ROLES.len() * PAGE;
    let cow = mmap_anon(cow_len, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| p.bail(&format!("setup: mmap: {}", err_str(e))));
    for r in ROLES {
        // SAFETY: page r of the fresh region.
        unsafe { fill(cow.add(r.idx() * PAGE), PAGE, COW_SEED + r.idx() as u64) };
    }
    let root = me();
    let start = Ids::now();
    let t = Tree {
        root,
        root_pgid: start.pgid,
        root_sid: start.sid,
        sibling_pgrp,
        cow,
    };
    let root_me = Me::setup(p, Role::Root, start, cow);

    // A: group leader, with A1 in its group.
    let a = crate::family::spawn(p, Role::A.code(), move |m| {
        die_with_parent(root);
        let pid = me();
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, 0) } != 0 && errno() != libc::EACCES {
            m.bail_errno("setpgid(0, 0) in A");
        }
        let want = Ids {
            pid,
            ppid: root,
            pgid: pid,
            sid: t.root_sid,
        };
        let s = Me::setup(m, Role::A, want, cow);
        let a1 = spawn_leaf(m, t, Role::A1, pid, pid, t.root_sid, true);
        if let Err(e) = wait_path(
            &m.dir().join("setup-A1"),
            STEP_TIMEOUT_NS,
            child_alive(a1, "A1", root),
        ) {
            m.bail(&format!("setup: {e}"));
        }
        let mut c = member_run(m, &t, &s);
        reap_child(&mut c, Role::A1, a1);
        c
    });
    // Race-free: the group exists whichever of parent and child runs first.
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(a, a) };

    // B: session leader, with B1 in its session (in a group of its own).
    let b = crate::family::spawn(p, Role::B.code(), move |m| {
        die_with_parent(root);
        // SAFETY: setsid on ourselves (not a group leader after fork).
        if unsafe { libc::setsid() } < 0 {
            m.bail_errno("setsid in B");
        }
        let pid = me();
        let want = Ids {
            pid,
            ppid: root,
            pgid: pid,
            sid: pid,
        };
        let s = Me::setup(m, Role::B, want, cow);
        let b1 = spawn_leaf(m, t, Role::B1, pid, 0, pid, true);
        if let Err(e) = wait_path(
            &m.dir().join("setup-B1"),
            STEP_TIMEOUT_NS,
            child_alive(b1, "B1", root),
        ) {
            m.bail(&format!("setup: {e}"));
        }
        let mut c = member_run(m, &t, &s);
        reap_child(&mut c, Role::B1, b1);
        c
    });

    // C: two children; exits leaving C2 to the subreaper.
    let c_pid = crate::family::spawn(p, Role::C.code(), move |m| {
        die_with_parent(root);
        let pid = me();
        let want = Ids {
            pid,
            ppid: root,
            pgid: t.root_pgid,
            sid: t.root_sid,
        };
        let s = Me::setup(m, Role::C, want, cow);
        let c1 = spawn_leaf(m, t, Role::C1, pid, t.root_pgid, t.root_sid, true);
        let c2 = spawn_leaf(m, t, Role::C2, pid, a, t.root_sid, false);
        for (f, k, who) in [("setup-C1", c1, "C1"), ("setup-C2", c2, "C2")] {
            if let Err(e) = wait_path(&m.dir().join(f), STEP_TIMEOUT_NS, child_alive(k, who, root))
            {
                m.bail(&format!("setup: {e}"));
            }
        }
        let mut c = member_run(m, &t, &s);
        reap_child(&mut c, Role::C1, c1);
        c.ensure(try_reap(c2).is_none(), || {
            format!("C2 (pid {c2}) ended before C exited")
        });
        c
    });

    let kids = [(Role::A, a), (Role::B, b), (Role::C, c_pid)];
    let names = [("A", a), ("B", b), ("C", c_pid)];
    let dir = p.dir().to_path_buf();
    let mut pids = vec![
        (Role::Root, root),
        (Role::A, a),
        (Role::B, b),
        (Role::C, c_pid),
    ];
    for (role, file) in [
        (Role::A1, "setup-A1"),
        (Role::B1, "setup-B1"),
        (Role::C1, "setup-C1"),
        (Role::C2, "setup-C2"),
    ] {
        // Each parent writes its own setup file only after its children's.
        let parent_file = match role {
            Role::A1 => "setup-A",
            Role::B1 => "setup-B",
            _ => "setup-C",
        };
        let ok = kids_alive(&dir, &names);
        if let Err(e) = wait_path(&dir.join(parent_file), STEP_TIMEOUT_NS, ok) {
            p.bail(&format!("setup: {e}"));
        }
        match crate::family::read_int(&dir, file) {
            Some(pid) => pids.push((role, pid as i32)),
            None => p.bail(&format!("setup: unreadable {file}")),
        }
    }
    pids.sort_by_key(|(r, _)| r.idx());
    let pid_of = |r: Role| pids[r.idx()].1;
    // (role, ppid, pgid, sid) of every member as the root expects them.
    let expected: Vec<(Role, i32, i32, i32)> = vec![
        (Role::A, root, a, t.root_sid),
        (Role::A1, a, a, t.root_sid),
        (Role::B, root, b, b),
        (Role::B1, b, pid_of(Role::B1), b),
        (Role::C, root, t.root_pgid, t.root_sid),
        (Role::C1, c_pid, t.root_pgid, t.root_sid),
        (
            Role::C2,
            c_pid,
            if sibling_pgrp { a } else { t.root_pgid },
            t.root_sid,
        ),
    ];
    let cross_check = |c: &mut Checks| {
        for &(r, ppid, pgid, sid) in &expected {
            let pid = pid_of(r);
            match proc_stat(pid) {
                Some((state, pp, pg, s)) => {
                    c.ensure(
                        (pp, pg, s) == (ppid, pgid, sid) && !matches!(state, 'Z' | 'X' | 'T' | 't'),
                        || {
                            format!(
                                "/proc/{pid}/stat of {}: expected state S/R/D, ppid {ppid}, pgrp {pgid}, session {sid}; got {state}, {pp}, {pg}, {s}",
                                r.name()
                            )
                        },
                    );
                }
                None => c.fail(format!(
                    "/proc/{pid}/stat of {}: unreadable (process gone)",
                    r.name()
                )),
            }
        }
    };
    let mut pre = Checks::new();
    root_me.check(&mut pre);
    cross_check(&mut pre);
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    p.write_aux(
        "info",
        &pids
            .iter()
            .map(|(r, k)| format!("{}={k}\n", r.name()))
            .collect::<String>(),
    );
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    root_me.check(&mut c);
    let mut v: u64 = 0;
    // SAFETY: the kernel writes an int through arg2; 8 bytes are available.
    unsafe { libc::prctl(PR_GET_CHILD_SUBREAPER, &mut v as *mut u64, 0u64, 0u64, 0u64) };
    c.eq("PR_GET_CHILD_SUBREAPER", 1, v);
    cross_check(&mut c);
    for &(r, pid) in pids.iter().filter(|(r, _)| *r != Role::Root) {
        let f = dir.join(format!("checked-{}", r.name()));
        let alive = || match proc_stat(pid) {
            Some((state, ..)) if !matches!(state, 'Z' | 'X') => Ok(()),
            _ => Err(format!("{} (pid {pid}) ended", r.name())),
        };
        if let Err(e) = wait_path(&f, STEP_TIMEOUT_NS, alive) {
            c.fail(format!("waiting for {} to check itself: {e}", r.name()));
        }
    }
    p.write_aux("release", "");
    for (r, k) in kids {
        let st = reap(k, STEP_TIMEOUT_NS);
        judge(&mut c, &dir, r.name(), k, st, r.code());
    }
    // C2 is ours now (C exited without reaping it).
    let c2 = pid_of(Role::C2);
    let st = reap(c2, STEP_TIMEOUT_NS).map_err(|e| {
        if e.starts_with("waitpid") {
            format!("{e}: not reparented to the root (the child subreaper)")
        } else {
            e
        }
    });
    judge(&mut c, &dir, "C2", c2, st, Role::C2.code());
    // The other grandchildren were reaped (and judged) by their parents;
    // copy their own verdicts too.
    for r in [Role::A1, Role::B1, Role::C1] {
        let k = pid_of(r);
        match verdict(&dir, k) {
            Ok(lines) => {
                for l in lines {
                    c.fail(format!("{} (pid {k}): {l}", r.name()));
                }
            }
            Err(e) => c.fail(format!("{} (pid {k}): {e}", r.name())),
        }
    }
    let mut st = 0;
    // SAFETY: WNOHANG poll for any remaining child.
    let left = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
    c.ensure(left < 0 && errno() == libc::ECHILD, || {
        format!("children left after reaping the tree: waitpid(-1) = {left}")
    });
    base.verify(p, &mut c);
    c
}
