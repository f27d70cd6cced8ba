//! `pipes`: a shell-pipeline-like tree with pipes holding data across the
//! checkpoint. crest does not support pipes yet: the harness expects the
//! dump to be refused (and the tree to keep running undisturbed); once
//! pipes are supported the same scenario must PASS after a restore.
//!
//! The root forks P1 and P2 and keeps four pipes at fixed fd numbers:
//!
//! | pipe | fds (r, w) | holders | state at the checkpoint |
//! | --- | --- | --- | --- |
//! | `a` P1→P2 | 20, 21 | P1 writes, P2 reads | 1000 bytes in flight |
//! | `b` P2→P1 | 22, 23 | P2 writes, P1 reads | 333 bytes in flight |
//! | `full` | 24, 25 (w O_NONBLOCK) | root and P1 write, P2 reads | 64 KiB: full, a write gets EAGAIN |
//! | `big` | 26 (r O_NONBLOCK), 27 | both ends in all three | F_SETPIPE_SZ 1 MiB, 200 KiB in flight |
//!
//! After go every process first checks, without consuming anything, its fd
//! set, the flags of each end, F_GETPIPE_SZ, FIONREAD (bytes in flight) and
//! that the full pipe still refuses a non-blocking write; the root checks in
//! `/proc/<pid>/fd` that every holder's ends lead to the same pipe and the
//! four pipes are distinct. Then the readers read exactly the bytes in
//! flight, in order, and more data flows both ways (5000 bytes P1→P2, 7000
//! P2→P1, 4 KiB into the drained full pipe). Last, EOF semantics: a reader
//! sees EOF once the only writer closed `a` or `b`; `big` gives EAGAIN while
//! any writer remains and EOF after the last one closed; writing to `full`
//! after its only reader closed fails with EPIPE. P1 exits 10, P2 11.

use std::path::Path;

use crate::checks::Checks;
use crate::family::{
    die_with_parent, judge, kids_alive, member_wait_go, reap, root_alive, spawn, wait_path,
    STEP_TIMEOUT_NS,
};
use crate::proto::Proto;
use crate::util::{err_str, errno, list_fds, pat, readlink};

const A_R: i32 = 20;
const A_W: i32 = 21;
const B_R: i32 = 22;
const B_W: i32 = 23;
const FULL_R: i32 = 24;
const FULL_W: i32 = 25;
const BIG_R: i32 = 26;
const BIG_W: i32 = 27;
const A_LEN: usize = 1000;
const B_LEN: usize = 333;
const BIG_SIZE: i32 = 1 << 20;
const BIG_LEN: usize = 200 * 1024;
const A2_LEN: usize = 5000;
const B2_LEN: usize = 7000;
const FULL2_LEN: usize = 4096;
const CHUNK: usize = 4096;
const POLL_MS: i32 = 10_000;
const GO_POLL_NS: u64 = 2_000_000;

const SEED_A: u64 = 0xA0;
const SEED_A2: u64 = 0xA2;
const SEED_B: u64 = 0xB0;
const SEED_B2: u64 = 0xB2;
const SEED_FULL: u64 = 0xF0;
const SEED_FULL2: u64 = 0xF2;
const SEED_BIG: u64 = 0xB16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Root,
    P1,
    P2,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::P1 => "P1",
            Who::P2 => "P2",
        }
    }

    /// The pipe ends this process keeps.
    fn fds(self) -> &'static [i32] {
        match self {
            Who::Root => &[FULL_W, BIG_R, BIG_W],
            Who::P1 => &[A_W, B_R, FULL_W, BIG_R, BIG_W],
            Who::P2 => &[A_R, B_W, FULL_R, BIG_R, BIG_W],
        }
    }
}

/// Every pipe end: (name, fd, expected F_GETFL & (O_ACCMODE|O_NONBLOCK)).
const ENDS: [(&str, i32, i32); 8] = [
    ("a read end", A_R, libc::O_RDONLY),
    ("a write end", A_W, libc::O_WRONLY),
    ("b read end", B_R, libc::O_RDONLY),
    ("b write end", B_W, libc::O_WRONLY),
    ("full read end", FULL_R, libc::O_RDONLY),
    ("full write end", FULL_W, libc::O_WRONLY | libc::O_NONBLOCK),
    ("big read end", BIG_R, libc::O_RDONLY | libc::O_NONBLOCK),
    ("big write end", BIG_W, libc::O_WRONLY),
];

/// Byte `k` of data stream `seed`.
fn byte(seed: u64, k: usize) -> u8 {
    (pat(seed, k / 8) >> ((k % 8) * 8)) as u8
}

fn stream(seed: u64, from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|k| byte(seed, k)).collect()
}

fn write_stream(fd: i32, seed: u64, len: usize) -> Result<(), String> {
    let data = stream(seed, 0, len);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        // SAFETY: the source range lies inside `data`.
        let r = unsafe { libc::write(fd, data[done..].as_ptr().cast(), n) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(format!("write fd {fd} after {done} bytes: {}", err_str(e)));
        }
        done += r as usize;
    }
    Ok(())
}

/// Reads exactly `len` bytes (waiting at most POLL_MS for each piece).
fn read_exact(fd: i32, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if r == 0 {
            return Err(format!(
                "fd {fd}: no data within {} s after {done} of {len} bytes",
                POLL_MS / 1000
            ));
        }
        // SAFETY: the destination range lies inside `buf`.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), len - done) };
        if n == 0 {
            return Err(format!("fd {fd}: EOF after {done} of {len} bytes"));
        }
        if n < 0 {
            let e = errno();
            if e == libc::EINTR || e == libc::EAGAIN {
                continue;
            }
            return Err(format!("fd {fd}: read after {done} bytes: {}", err_str(e)));
        }
        done += n as usize;
    }
    Ok(buf)
}

/// Reads `len` bytes from `fd` and compares them with stream `seed`.
fn expect_stream(c: &mut Checks, w: &str, what: &str, fd: i32, seed: u64, len: usize) {
    match read_exact(fd, len) {
        Ok(got) => {
            let want = stream(seed, 0, len);
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            c.ensure(first.is_none(), || {
                format!("{w}: {what}: {len} bytes read, first difference at byte {first:?}")
            });
        }
        Err(e) => c.fail(format!("{w}: {what}: {e}")),
    }
}

/// One `read` of up to 64 bytes: Ok(bytes read) or Err(errno).
fn read_once(fd: i32) -> Result<usize, i32> {
    let mut b = [0u8; 64];
    // SAFETY: reads into a local buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

fn fionread(fd: i32) -> Result<i32, i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 {
        Ok(n)
    } else {
        Err(errno())
    }
}

fn pipe_size(fd: i32) -> i32 {
    // SAFETY: fcntl query.
    unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }
}

fn close(fd: i32) {
    // SAFETY: closes one of our own descriptors.
    unsafe { libc::close(fd) };
}

/// Non-consuming checks of the pipe ends `who` holds.
fn check_ends(c: &mut Checks, who: Who, fds_before: &[i32]) {
    let w = who.name();
    c.eq(&format!("{w}: open fds"), fds_before, &list_fds()[..]);
    for &(name, fd, flags) in &ENDS {
        if !who.fds().contains(&fd) {
            continue;
        }
        // SAFETY: fcntl query.
        let got = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        c.ensure(got >= 0 && got & (libc::O_ACCMODE | libc::O_NONBLOCK) == flags, || {
            format!("{w}: F_GETFL(fd {fd}, {name}) & (O_ACCMODE|O_NONBLOCK): expected {flags:#o}, got {:#o}", got & (libc::O_ACCMODE | libc::O_NONBLOCK))
        });
        let link = readlink(&format!("/proc/self/fd/{fd}")).unwrap_or_default();
        c.ensure(link.starts_with("pipe:["), || {
            format!("{w}: fd {fd} ({name}) links to {link:?}, expected a pipe")
        });
    }
    let mut want_inflight = vec![(BIG_R, BIG_LEN)];
    match who {
        Who::P1 => want_inflight.push((B_R, B_LEN)),
        Who::P2 => want_inflight.extend([(A_R, A_LEN), (FULL_R, 64 * 1024)]),
        Who::Root => {}
    }
    for (fd, n) in want_inflight {
        c.eq(
            &format!("{w}: FIONREAD(fd {fd}) (bytes in flight)"),
            Ok(n as i32),
            fionread(fd),
        );
    }
    c.eq(
        &format!("{w}: F_GETPIPE_SZ(big)"),
        BIG_SIZE,
        pipe_size(BIG_W),
    );
    if who != Who::P2 {
        c.eq(
            &format!("{w}: F_GETPIPE_SZ(full)"),
            64 * 1024,
            pipe_size(FULL_W),
        );
        let x = 0u8;
        // SAFETY: writes one local byte to a non-blocking pipe end.
        let r = unsafe { libc::write(FULL_W, (&x as *const u8).cast(), 1) };
        let e = errno();
        c.ensure(r == -1 && e == libc::EAGAIN, || {
            format!(
                "{w}: non-blocking write of 1 byte to the full pipe: expected EAGAIN, got {r} ({})",
                err_str(e)
            )
        });
    }
    // The big pipe's read end is non-blocking and shared: nothing may
    // be consumed here, so only its flags and FIONREAD are checked.
}

/// The pipe inode behind `/proc/<pid>/fd/<fd>`.
fn pipe_of(pid: i32, fd: i32) -> Option<String> {
    readlink(&format!("/proc/{pid}/fd/{fd}")).filter(|l| l.starts_with("pipe:["))
}

/// The root's view: every holder's ends of one pipe are the same pipe, and
/// the four pipes are distinct.
fn check_identity(c: &mut Checks, pids: &[(Who, i32)]) {
    let pipes: [(&str, [i32; 2]); 4] = [
        ("a", [A_R, A_W]),
        ("b", [B_R, B_W]),
        ("full", [FULL_R, FULL_W]),
        ("big", [BIG_R, BIG_W]),
    ];
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (name, ends) in pipes {
        let mut links = Vec::new();
        for &(who, pid) in pids {
            for fd in ends {
                if who.fds().contains(&fd) {
                    links.push((who, fd, pipe_of(pid, fd)));
                }
            }
        }
        let first = links.first().and_then(|l| l.2.clone());
        c.ensure(
            first.is_some() && links.iter().all(|l| l.2 == first),
            || {
                format!(
                    "pipe {name}: the ends held by {} do not all lead to one pipe: {links:?}",
                    links.len()
                )
            },
        );
        if let Some(f) = first {
            if let Some((other, _)) = seen.iter().find(|(_, l)| *l == f) {
                c.fail(format!("pipes {other} and {name} are the same pipe {f}"));
            }
            seen.push((name, f));
        }
    }
}

fn setup_pipes(p: &Proto) {
    for (r, w, name) in [
        (A_R, A_W, "a"),
        (B_R, B_W, "b"),
        (FULL_R, FULL_W, "full"),
        (BIG_R, BIG_W, "big"),
    ] {
        let mut fds = [0; 2];
        // SAFETY: valid out-array; dup2 onto the fixed (free) numbers.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                p.bail_errno(&format!("pipe {name}"));
            }
            if libc::dup2(fds[0], r) != r || libc::dup2(fds[1], w) != w {
                p.bail_errno("dup2");
            }
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
    // SAFETY: fcntl on our fds.
    unsafe {
        if libc::fcntl(FULL_W, libc::F_SETFL, libc::O_NONBLOCK) != 0
            || libc::fcntl(BIG_R, libc::F_SETFL, libc::O_NONBLOCK) != 0
        {
            p.bail_errno("F_SETFL O_NONBLOCK");
        }
        if libc::fcntl(BIG_W, libc::F_SETPIPE_SZ, BIG_SIZE) < BIG_SIZE {
            p.bail_errno("F_SETPIPE_SZ 1 MiB");
        }
        // A write to a pipe without readers must fail with EPIPE, not kill.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Fills `full` in 4 KiB writes until EAGAIN; returns the bytes written.
fn fill_full(p: &Proto) -> usize {
    let data = stream(SEED_FULL, 0, 64 * 1024);
    let mut done = 0;
    loop {
        let n = (data.len() - done).min(CHUNK);
        if n == 0 {
            // The pipe must be full now: one more byte gets EAGAIN.
            let x = 0u8;
            // SAFETY: writes one local byte.
            let r = unsafe { libc::write(FULL_W, (&x as *const u8).cast(), 1) };
            if r != -1 || errno() != libc::EAGAIN {
                p.bail(&format!(
                    "setup: 64 KiB did not fill the pipe (write returned {r})"
                ));
            }
            return done;
        }
        // SAFETY: the source range lies inside `data`.
        let r = unsafe { libc::write(FULL_W, data[done..].as_ptr().cast(), n) };
        if r < 0 {
            p.bail(&format!(
                "setup: filling the pipe: {} after {done} bytes",
                err_str(errno())
            ));
        }
        done += r as usize;
    }
}

fn wait_marker(
    c: &mut Checks,
    dir: &Path,
    w: &str,
    name: &str,
    ok: &mut dyn FnMut() -> Result<(), String>,
) -> bool {
    match wait_path(&dir.join(name), STEP_TIMEOUT_NS, ok) {
        Ok(()) => true,
        Err(e) => {
            c.fail(format!("{w}: {e}"));
            false
        }
    }
}

fn member(who: Who, m: &Proto, root: i32) -> Checks {
    die_with_parent(root);
    let w = who.name();
    let dir = m.dir().to_path_buf();
    let mut ok = root_alive(root);
    for &(_, fd, _) in &ENDS {
        if !who.fds().contains(&fd) {
            close(fd);
        }
    }
    let setup = match who {
        Who::P1 => write_stream(A_W, SEED_A, A_LEN).and(write_stream(BIG_W, SEED_BIG, BIG_LEN)),
        _ => write_stream(B_W, SEED_B, B_LEN),
    };
    if let Err(e) = setup {
        m.bail(&format!("setup: {e}"));
    }
    let fds = list_fds();
    m.write_aux(&format!("setup-{w}"), "");
    let wait = member_wait_go(m, root, GO_POLL_NS);
    let mut c = Checks::new();
    wait.report(&mut c, &format!("{w}: go-wait"));
    check_ends(&mut c, who, &fds);
    m.write_aux(&format!("p1-{w}"), "");
    if !wait_marker(&mut c, &dir, w, "phase2", &mut ok) {
        return c;
    }
    match who {
        Who::P1 => {
            expect_stream(&mut c, w, "b: the 333 bytes in flight", B_R, SEED_B, B_LEN);
            c.eq("P1: FIONREAD(b) after reading", Ok(0), fionread(B_R));
            m.write_aux("read-b", "");
            // More data only once P2 has checked it read all in flight.
            if wait_marker(&mut c, &dir, w, "read-a", &mut ok) {
                if let Err(e) = write_stream(A_W, SEED_A2, A2_LEN) {
                    c.fail(format!("P1: a: {e}"));
                }
            }
            close(A_W);
            expect_stream(&mut c, w, "b: 7000 more bytes", B_R, SEED_B2, B2_LEN);
            c.eq(
                "P1: read(b) after P2 closed the only write end (EOF)",
                Ok(0),
                read_once(B_R),
            );
            close(BIG_W);
            close(BIG_R);
            m.write_aux("closed-big-P1", "");
        }
        Who::P2 => {
            expect_stream(&mut c, w, "a: the 1000 bytes in flight", A_R, SEED_A, A_LEN);
            c.eq("P2: FIONREAD(a) after reading", Ok(0), fionread(A_R));
            m.write_aux("read-a", "");
            expect_stream(
                &mut c,
                w,
                "full: the 64 KiB in flight",
                FULL_R,
                SEED_FULL,
                64 * 1024,
            );
            c.eq("P2: FIONREAD(full) after draining", Ok(0), fionread(FULL_R));
            m.write_aux("drained-full", "");
            if wait_marker(&mut c, &dir, w, "read-b", &mut ok) {
                if let Err(e) = write_stream(B_W, SEED_B2, B2_LEN) {
                    c.fail(format!("P2: b: {e}"));
                }
            }
            close(B_W);
            expect_stream(&mut c, w, "a: 5000 more bytes", A_R, SEED_A2, A2_LEN);
            c.eq(
                "P2: read(a) after P1 closed the only write end (EOF)",
                Ok(0),
                read_once(A_R),
            );
            expect_stream(
                &mut c,
                w,
                "full: 4 KiB written after draining",
                FULL_R,
                SEED_FULL2,
                FULL2_LEN,
            );
            close(FULL_R);
            m.write_aux("closed-full-r", "");
            close(BIG_W);
            close(BIG_R);
            m.write_aux("closed-big-P2", "");
        }
        Who::Root => {}
    }
    c
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    setup_pipes(p);
    // SAFETY: getpid has no preconditions.
    let root = unsafe { libc::getpid() };
    let p1 = spawn(p, 10, move |m| member(Who::P1, m, root));
    let p2 = spawn(p, 11, move |m| member(Who::P2, m, root));
    for &(_, fd, _) in &ENDS {
        if !Who::Root.fds().contains(&fd) {
            close(fd);
        }
    }
    let kids = [(Who::P1, p1), (Who::P2, p2)];
    let dir = p.dir().to_path_buf();
    let names = [("P1", p1), ("P2", p2)];
    let mut ok = kids_alive(&dir, &names);
    // After go a member may finish while the root still waits for the
    // other: each wait only watches the member that makes the marker.
    let only = [[("P1", p1)], [("P2", p2)]];
    let by = |w: &str| kids_alive(&dir, &only[usize::from(w == "P2")]);
    let filled = fill_full(p);
    if filled != 64 * 1024 || pipe_size(FULL_W) != 64 * 1024 {
        p.bail(&format!(
            "setup: the default pipe took {filled} bytes, F_GETPIPE_SZ {} (expected 64 KiB)",
            pipe_size(FULL_W)
        ));
    }
    for w in ["P1", "P2"] {
        if let Err(e) = wait_path(&dir.join(format!("setup-{w}")), STEP_TIMEOUT_NS, &mut ok) {
            p.bail(&format!("setup: {e}"));
        }
    }
    let pids = [(Who::Root, root), (Who::P1, p1), (Who::P2, p2)];
    p.write_aux("info", &format!("root={root}\nP1={p1}\nP2={p2}\n"));
    let fds = list_fds();
    let mut pre = Checks::new();
    check_ends(&mut pre, Who::Root, &fds);
    check_identity(&mut pre, &pids);
    if !pre.passed() {
        p.bail(&format!("setup: {}", pre.failures().join("; ")));
    }
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "root: go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("root: getpid() vs ready", p.ready_pid(), unsafe {
        libc::getpid()
    });
    check_ends(&mut c, Who::Root, &fds);
    let mut ready = true;
    for w in ["P1", "P2"] {
        ready &= wait_marker(&mut c, &dir, "root", &format!("p1-{w}"), &mut by(w));
    }
    if ready {
        check_identity(&mut c, &pids);
        p.write_aux("phase2", "");
        // The 200 KiB in flight, then EAGAIN: the read end is non-blocking
        // and writers remain.
        let mut got = Vec::with_capacity(BIG_LEN);
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            // SAFETY: reads into `buf`.
            let n = unsafe { libc::read(BIG_R, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break if n == 0 { 0 } else { errno() };
            }
            got.extend_from_slice(&buf[..n as usize]);
        };
        c.ensure(got.len() == BIG_LEN && got == stream(SEED_BIG, 0, BIG_LEN), || {
            let first = got.iter().enumerate().position(|(k, &b)| b != byte(SEED_BIG, k));
            format!("root: big: read {} bytes (expected {BIG_LEN}), first difference at byte {first:?}", got.len())
        });
        c.ensure(end == libc::EAGAIN, || {
            format!(
                "root: big: after the data, read gave {} (expected EAGAIN: writers remain)",
                if end == 0 { "EOF".into() } else { err_str(end) }
            )
        });
        // The full pipe, drained by P2, takes 4 KiB again.
        if wait_marker(&mut c, &dir, "root", "drained-full", &mut by("P2")) {
            if let Err(e) = write_stream(FULL_W, SEED_FULL2, FULL2_LEN) {
                c.fail(format!("root: full after draining: {e}"));
            }
        }
        // EPIPE once its only reader closed.
        if wait_marker(&mut c, &dir, "root", "closed-full-r", &mut by("P2")) {
            let x = 0u8;
            // SAFETY: writes one local byte; SIGPIPE is ignored.
            let r = unsafe { libc::write(FULL_W, (&x as *const u8).cast(), 1) };
            let e = errno();
            c.ensure(r == -1 && e == libc::EPIPE, || {
                format!("root: write to full after its only reader closed: expected EPIPE, got {r} ({})", err_str(e))
            });
        }
        // EOF on big only after the last writer closed.
        let mut closed = true;
        for w in ["P1", "P2"] {
            closed &= wait_marker(&mut c, &dir, "root", &format!("closed-big-{w}"), &mut by(w));
        }
        if closed {
            c.eq(
                "root: read(big) with only the root's write end left",
                Err(libc::EAGAIN),
                read_once(BIG_R),
            );
            close(BIG_W);
            c.eq(
                "root: read(big) after the last writer closed (EOF)",
                Ok(0),
                read_once(BIG_R),
            );
        }
    }
    for (w, k) in kids {
        let st = reap(k, STEP_TIMEOUT_NS);
        judge(
            &mut c,
            &dir,
            w.name(),
            k,
            st,
            if w == Who::P1 { 10 } else { 11 },
        );
    }
    c
}
