//! `shared-fd`: one open file description shared by three processes.
//!
//! The root opens `<dir>/shared` (O_RDWR) as fd 10, writes a 4 KiB header,
//! dups it to fd 11 (FD_CLOEXEC, a per-descriptor flag), and forks X and Y,
//! which inherit both. X clears FD_CLOEXEC on its fd 11 and also holds fd 77
//! on `<dir>/xonly`, a file only it has open. Y opens `shared` a second time
//! as fd 12: its own description, with an offset of its own.
//!
//! The three then take turns on the shared description, coordinated by
//! marker files: at its turn a process first checks the offset
//! (`lseek(fd, 0, SEEK_CUR)`) and the status flags are what the previous
//! turns left, then writes, reads, seeks or toggles O_APPEND (a status flag
//! of the description, so it is shared too). Six turns run before ready and
//! nine after go, so after a restore the offset and flags must still be one
//! shared value. Every process keeps a model of the file, so each read is
//! compared byte by byte, and the root compares the whole file at the end.
//! Y checks fd 12's offset never moves with the others, X checks fd 77, and
//! the root checks with kcmp(KCMP_FILE) which descriptors share a
//! description. X exits 10 and Y 11 after the root's `release`.

use std::path::Path;

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family::{
    die_with_parent, judge, kids_alive, member_wait_go, reap, root_alive, spawn, wait_path,
    STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{cpath, err_str, errno, pread_full, show, splitmix64, write_all};

const SHARED_FD: i32 = 10;
const DUP_FD: i32 = 11;
const Y_OWN_FD: i32 = 12;
const X_ONLY_FD: i32 = 77;
const HEADER_LEN: usize = 4096;
const START_OFFSET: i64 = 100;
const Y_OWN_OFFSET: i64 = 30;
const X_ONLY_LEN: usize = 333;
const X_ONLY_OFFSET: i64 = 77;
const KCMP_FILE: i32 = 0;
const GO_POLL_NS: u64 = 2_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Root,
    X,
    Y,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::X => "X",
            Who::Y => "Y",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write(usize),
    Read(usize),
    Seek(i64),
    Append(bool),
}

const PRE: &[(Who, Op)] = &[
    (Who::X, Op::Write(10)),
    (Who::Root, Op::Write(5)),
    (Who::Y, Op::Seek(7)),
    (Who::X, Op::Read(4)),
    (Who::Root, Op::Seek(-50)),
    (Who::Y, Op::Write(3)),
];

const POST: &[(Who, Op)] = &[
    (Who::X, Op::Write(10)),
    (Who::Root, Op::Read(7)),
    (Who::Y, Op::Write(3)),
    (Who::X, Op::Append(true)),
    (Who::Root, Op::Write(6)),
    (Who::Y, Op::Append(false)),
    (Who::X, Op::Seek(-100)),
    (Who::Root, Op::Write(4)),
    (Who::Y, Op::Read(8)),
];

fn header_byte(i: usize) -> u8 {
    (splitmix64(0x5EAD + (i / 8) as u64) >> ((i % 8) * 8)) as u8
}

fn op_bytes(phase: u64, k: usize, n: usize) -> Vec<u8> {
    (0..n)
        .map(|j| (splitmix64(phase * 1000 + k as u64) >> ((j % 8) * 8)) as u8 ^ j as u8)
        .collect()
}

/// What every process believes the shared description looks like.
struct Model {
    content: Vec<u8>,
    offset: i64,
    append: bool,
}

impl Model {
    fn new() -> Self {
        Self {
            content: (0..HEADER_LEN).map(header_byte).collect(),
            offset: START_OFFSET,
            append: false,
        }
    }

    fn apply(&mut self, op: Op, data: &[u8]) {
        match op {
            Op::Write(n) => {
                if self.append {
                    self.offset = self.content.len() as i64;
                }
                let at = self.offset as usize;
                if self.content.len() < at + n {
                    self.content.resize(at + n, 0);
                }
                self.content[at..at + n].copy_from_slice(data);
                self.offset += n as i64;
            }
            Op::Read(n) => {
                let at = (self.offset as usize).min(self.content.len());
                self.offset += (self.content.len() - at).min(n) as i64;
            }
            Op::Seek(d) => self.offset += d,
            Op::Append(a) => self.append = a,
        }
    }

    fn flags(&self) -> i32 {
        libc::O_RDWR | if self.append { libc::O_APPEND } else { 0 }
    }
}

fn offset(fd: i32) -> i64 {
    // SAFETY: lseek on an fd number; a bad fd yields -1.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn getfl(fd: i32) -> i32 {
    // SAFETY: fcntl query.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if f < 0 {
        f
    } else {
        f & (libc::O_ACCMODE | libc::O_APPEND)
    }
}

fn getfd(fd: i32) -> i32 {
    // SAFETY: fcntl query.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
}

/// Checks the shared description is where the model says.
fn check_state(c: &mut Checks, who: Who, m: &Model, when: &str) {
    let w = who.name();
    c.eq(
        &format!("{w}: lseek(fd {SHARED_FD}, 0, SEEK_CUR) {when}"),
        m.offset,
        offset(SHARED_FD),
    );
    c.eq(
        &format!("{w}: F_GETFL(fd {SHARED_FD}) & (O_ACCMODE|O_APPEND) {when}"),
        m.flags(),
        getfl(SHARED_FD),
    );
    if who == Who::Root {
        c.eq(
            &format!("{w}: lseek(fd {DUP_FD} = dup of {SHARED_FD}, 0, SEEK_CUR) {when}"),
            m.offset,
            offset(DUP_FD),
        );
    }
    if who == Who::Y {
        c.eq(
            &format!("{w}: lseek(fd {Y_OWN_FD}, its own description) {when} (must not follow the shared one)"),
            Y_OWN_OFFSET,
            offset(Y_OWN_FD),
        );
    }
}

/// Performs `op` on the shared description, checking what a read returns.
fn perform(c: &mut Checks, who: Who, m: &Model, op: Op, data: &[u8], tag: &str) {
    let w = who.name();
    match op {
        Op::Write(_) => {
            if let Err(e) = write_all(SHARED_FD, data) {
                c.fail(format!("{w}: {tag}: write: {}", err_str(e)));
            }
        }
        Op::Read(n) => {
            let mut buf = vec![0u8; n];
            // SAFETY: reads into a buffer of n bytes.
            let r = unsafe { libc::read(SHARED_FD, buf.as_mut_ptr().cast(), n) };
            let at = (m.offset as usize).min(m.content.len());
            let want = &m.content[at..(at + n).min(m.content.len())];
            c.ensure(r >= 0 && &buf[..r as usize] == want, || {
                format!(
                    "{w}: {tag}: read({n}) at offset {}: expected {}, got {r} bytes {}",
                    m.offset,
                    show(want),
                    show(&buf[..r.max(0) as usize])
                )
            });
        }
        Op::Seek(d) => {
            // SAFETY: lseek on our fd.
            let r = unsafe { libc::lseek(SHARED_FD, d, libc::SEEK_CUR) };
            c.eq(
                &format!("{w}: {tag}: lseek({d}, SEEK_CUR)"),
                m.offset + d,
                r,
            );
        }
        Op::Append(a) => {
            let fl = libc::O_RDWR | if a { libc::O_APPEND } else { 0 };
            // SAFETY: fcntl on our fd.
            let r = unsafe { libc::fcntl(SHARED_FD, libc::F_SETFL, fl) };
            c.ensure(r == 0, || {
                format!("{w}: {tag}: F_SETFL: {}", err_str(errno()))
            });
        }
    }
}

/// Runs the turns of `ops` (marker files `<prefix>-<k>`) as `who`.
/// `ok` is polled while waiting. Returns after the last turn is done.
fn ring(
    c: &mut Checks,
    p: &Proto,
    who: Who,
    m: &mut Model,
    phase: u64,
    ops: &[(Who, Op)],
    ok: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let prefix = if phase == 0 { "pre" } else { "post" };
    for (k, &(actor, op)) in ops.iter().enumerate() {
        let data = op_bytes(phase, k, if let Op::Write(n) = op { n } else { 0 });
        if actor == who {
            if k > 0 {
                wait_path(
                    &p.dir().join(format!("{prefix}-{k}")),
                    STEP_TIMEOUT_NS,
                    &mut *ok,
                )?;
            }
            let tag = format!("{prefix} turn {k} ({op:?})");
            check_state(c, who, m, &format!("before {tag}"));
            perform(c, who, m, op, &data, &tag);
            m.apply(op, &data);
            check_state(c, who, m, &format!("after {tag}"));
            p.write_aux(&format!("{prefix}-{}", k + 1), "");
        } else {
            m.apply(op, &data);
        }
    }
    wait_path(
        &p.dir().join(format!("{prefix}-{}", ops.len())),
        STEP_TIMEOUT_NS,
        &mut *ok,
    )?;
    check_state(c, who, m, &format!("after all {prefix} turns"));
    Ok(())
}

fn open_at(p: &Proto, path: &Path, flags: i32, at: i32) {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(cpath(path).as_ptr(), flags, 0o644) };
    if fd < 0 {
        p.bail_errno(&format!("open {}", path.display()));
    }
    // SAFETY: our fd; dup2 to a free number.
    if unsafe { libc::dup2(fd, at) } != at {
        p.bail_errno("dup2");
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}

/// fd flags and the X-only file's state, checked by X.
fn check_x_only(c: &mut Checks) {
    c.eq("X: F_GETFD(fd 11) (cleared in X only)", 0, getfd(DUP_FD));
    c.eq(
        &format!("X: lseek(fd {X_ONLY_FD}, 0, SEEK_CUR)"),
        X_ONLY_OFFSET,
        offset(X_ONLY_FD),
    );
    c.eq(
        &format!("X: F_GETFL(fd {X_ONLY_FD})"),
        libc::O_RDWR,
        getfl(X_ONLY_FD),
    );
    let mut buf = vec![0u8; X_ONLY_LEN + 1];
    let want = op_bytes(7, 0, X_ONLY_LEN);
    match pread_full(X_ONLY_FD, &mut buf, 0) {
        Ok(n) => c.ensure(buf[..n] == want[..], || {
            format!(
                "X: content of fd {X_ONLY_FD} ({n} bytes): expected {}",
                show(&want)
            )
        }),
        Err(e) => c.fail(format!("X: pread fd {X_ONLY_FD}: {}", err_str(e))),
    }
}

fn kcmp(pid1: i32, pid2: i32, fd1: i32, fd2: i32) -> i64 {
    // SAFETY: kcmp only compares kernel objects.
    unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) }
}

/// Which descriptors share a description, as the kernel sees it.
fn check_kcmp(c: &mut Checks, root: i32, x: i32, y: i32) {
    let r = kcmp(root, root, SHARED_FD, SHARED_FD);
    if r < 0 && errno() == libc::ENOSYS {
        return;
    }
    for (what, a, fa, b, fb, same) in [
        (
            "root fd 10 vs root fd 11",
            root,
            SHARED_FD,
            root,
            DUP_FD,
            true,
        ),
        ("root fd 10 vs X fd 10", root, SHARED_FD, x, SHARED_FD, true),
        ("root fd 10 vs Y fd 10", root, SHARED_FD, y, SHARED_FD, true),
        ("X fd 11 vs Y fd 10", x, DUP_FD, y, SHARED_FD, true),
        (
            "Y fd 10 vs Y fd 12 (opened again)",
            y,
            SHARED_FD,
            y,
            Y_OWN_FD,
            false,
        ),
        (
            "root fd 10 vs X fd 77",
            root,
            SHARED_FD,
            x,
            X_ONLY_FD,
            false,
        ),
    ] {
        let r = kcmp(a, b, fa, fb);
        let e = errno();
        c.ensure(r >= 0 && (r == 0) == same, || {
            format!(
                "kcmp(KCMP_FILE) {what}: expected {}, got {r}{}",
                if same {
                    "the same description (0)"
                } else {
                    "different descriptions (non-0)"
                },
                if r < 0 {
                    format!(" ({})", err_str(e))
                } else {
                    String::new()
                }
            )
        });
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let dir = p.dir().to_path_buf();
    let shared = dir.join("shared");
    open_at(
        p,
        &shared,
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        SHARED_FD,
    );
    let header: Vec<u8> = (0..HEADER_LEN).map(header_byte).collect();
    if write_all(SHARED_FD, &header).is_err() {
        p.bail_errno("write header");
    }
    // SAFETY: our fds.
    unsafe {
        if libc::lseek(SHARED_FD, START_OFFSET, libc::SEEK_SET) != START_OFFSET {
            p.bail_errno("lseek");
        }
        if libc::dup2(SHARED_FD, DUP_FD) != DUP_FD
            || libc::fcntl(DUP_FD, libc::F_SETFD, libc::FD_CLOEXEC) != 0
        {
            p.bail_errno("dup2/F_SETFD");
        }
    }
    // SAFETY: getpid has no preconditions.
    let root = unsafe { libc::getpid() };
    let member_ok = root_alive(root);

    let body = move |who: Who, m: &Proto| -> Checks {
        die_with_parent(root);
        let mut ok = member_ok;
        let mut model = Model::new();
        let mut c = Checks::new();
        match who {
            Who::X => {
                // SAFETY: our fd.
                if unsafe { libc::fcntl(DUP_FD, libc::F_SETFD, 0) } != 0 {
                    m.bail_errno("F_SETFD");
                }
                let xonly = m.dir().join("xonly");
                open_at(
                    m,
                    &xonly,
                    libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                    X_ONLY_FD,
                );
                if write_all(X_ONLY_FD, &op_bytes(7, 0, X_ONLY_LEN)).is_err()
                    // SAFETY: our fd.
                    || unsafe { libc::lseek(X_ONLY_FD, X_ONLY_OFFSET, libc::SEEK_SET) } != X_ONLY_OFFSET
                {
                    m.bail_errno("write/lseek xonly");
                }
            }
            _ => {
                open_at(m, &m.dir().join("shared"), libc::O_RDONLY, Y_OWN_FD);
                let mut buf = [0u8; Y_OWN_OFFSET as usize];
                // SAFETY: reads into a local buffer.
                let n = unsafe { libc::read(Y_OWN_FD, buf.as_mut_ptr().cast(), buf.len()) };
                if n != Y_OWN_OFFSET as isize || buf[..] != model.content[..buf.len()] {
                    m.bail("setup: Y: reading 30 bytes through its own description");
                }
            }
        }
        if let Err(e) = ring(&mut c, m, who, &mut model, 0, PRE, &mut ok) {
            m.bail(&format!("setup: {e}"));
        }
        if !c.passed() {
            m.bail(&format!("setup: {}", c.failures().join("; ")));
        }
        let base = Baseline::record();
        m.write_aux(&format!("pre-done-{}", who.name()), "");
        let wait = member_wait_go(m, root, GO_POLL_NS);
        wait.report(&mut c, &format!("{}: go-wait", who.name()));
        c.eq(
            &format!("{}: getppid()", who.name()),
            root,
            // SAFETY: no preconditions.
            unsafe { libc::getppid() },
        );
        if let Err(e) = ring(&mut c, m, who, &mut model, 1, POST, &mut ok) {
            c.fail(format!("{}: {e}", who.name()));
        }
        if who == Who::X {
            check_x_only(&mut c);
        } else {
            c.eq(
                "Y: F_GETFD(fd 11) (inherited)",
                libc::FD_CLOEXEC,
                getfd(DUP_FD),
            );
            c.eq("Y: F_GETFL(fd 12)", libc::O_RDONLY, getfl(Y_OWN_FD));
            // Reading through its own description continues at 30.
            let mut buf = [0u8; 10];
            // SAFETY: reads into a local buffer.
            let n = unsafe { libc::read(Y_OWN_FD, buf.as_mut_ptr().cast(), buf.len()) };
            let want = &model.content[30..40];
            c.ensure(n == 10 && buf[..] == want[..], || {
                format!(
                    "Y: read(fd 12, 10) from its own offset 30: expected {}, got {n} bytes {}",
                    show(want),
                    show(&buf[..n.max(0) as usize])
                )
            });
            c.eq("Y: lseek(fd 12) after reading", 40, offset(Y_OWN_FD));
            c.eq(
                "Y: lseek(fd 10) after reading fd 12 (must not move)",
                model.offset,
                offset(SHARED_FD),
            );
        }
        base.verify_member(&mut c);
        m.write_aux(&format!("post-done-{}", who.name()), "");
        if let Err(e) = wait_path(&m.dir().join("release"), STEP_TIMEOUT_NS, &mut ok) {
            c.fail(format!("{}: waiting for release: {e}", who.name()));
        }
        c
    };
    let x = spawn(p, 10, move |m| body(Who::X, m));
    let y = spawn(p, 11, move |m| body(Who::Y, m));

    let kids = [(Who::X, x), (Who::Y, y)];
    let names = [("X", x), ("Y", y)];
    let mut root_ok = kids_alive(&dir, &names);
    let mut model = Model::new();
    let mut pre = Checks::new();
    if let Err(e) = ring(&mut pre, p, Who::Root, &mut model, 0, PRE, &mut root_ok) {
        p.bail(&format!("setup: {e}"));
    }
    for w in ["X", "Y"] {
        if let Err(e) = wait_path(
            &dir.join(format!("pre-done-{w}")),
            STEP_TIMEOUT_NS,
            &mut root_ok,
        ) {
            p.bail(&format!("setup: {e}"));
        }
    }
    check_kcmp(&mut pre, root, x, y);
    p.write_aux("info", &format!("root={root}\nX={x}\nY={y}\n"));
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "root: go-wait");
    c.eq("root: F_GETFD(fd 11)", libc::FD_CLOEXEC, getfd(DUP_FD));
    c.eq("root: F_GETFD(fd 10)", 0, getfd(SHARED_FD));
    if let Err(e) = ring(&mut c, p, Who::Root, &mut model, 1, POST, &mut root_ok) {
        c.fail(format!("root: {e}"));
    }
    for w in ["X", "Y"] {
        if let Err(e) = wait_path(
            &dir.join(format!("post-done-{w}")),
            STEP_TIMEOUT_NS,
            &mut root_ok,
        ) {
            c.fail(format!("root: {e}"));
        }
    }
    check_kcmp(&mut c, root, x, y);
    p.write_aux("release", "");
    for (w, k) in kids {
        let st = reap(k, STEP_TIMEOUT_NS);
        judge(
            &mut c,
            &dir,
            w.name(),
            k,
            st,
            if w == Who::X { 10 } else { 11 },
        );
    }
    // The whole file, as every turn left it.
    let mut buf = vec![0u8; model.content.len() + 16];
    match pread_full(DUP_FD, &mut buf, 0) {
        Ok(n) => {
            let got = &buf[..n];
            if got != &model.content[..] {
                let first = got
                    .iter()
                    .zip(&model.content)
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(model.content.len()));
                c.fail(format!(
                    "content of {}: {n} bytes, expected {}; first difference at byte {first}",
                    shared.display(),
                    model.content.len()
                ));
            }
        }
        Err(e) => c.fail(format!("pread {}: {}", shared.display(), err_str(e))),
    }
    check_state(&mut c, Who::Root, &model, "at the end");
    base.verify(p, &mut c);
    c
}
