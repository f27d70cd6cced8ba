//! `pidns [nested] [inside]`: a small container — a tree whose root is PID 1 of
//! its own PID namespace, with its own UTS and IPC namespaces.
//!
//! ```text
//! launcher        started by the harness: clones C, writes `ready` with
//!                 C's pid (as the harness sees it) and exits
//! C  (pid 1)      new PID, UTS and IPC namespaces; session leader; host
//!                 name "crest-pidns", domain "crest-dom"; a semaphore set
//!                 [3, 7, 42] and a message queue with two messages; one
//!                 extra thread
//! ├── A           exits 10; with `nested`: clones AN in a PID namespace
//! │   └── AN      of its own (pid 1 there), exits 30
//! └── B           exits 11; sends C an unhandled SIGUSR1 after go (an
//!     └── B1      init ignores it), exits 21
//! ```
//!
//! (A, B, B1, AN and C's thread get small PIDs of C's namespace, in an
//! order that depends on scheduling: each records its own.)
//!
//! After go every member checks its PID and parent PID as it sees them,
//! the host and domain names; C checks its thread's id, the semaphore
//! values, the queue's messages and both objects' ids, reaps its children
//! and judges their verdicts (`child-<label>`), and checks it survived
//! the SIGUSR1.  With `inside` there is no launcher: the program is
//! started as C by `unshare --pid --fork --mount-proc --uts --ipc`, and C
//! also checks that /proc shows its namespace (`/proc/self` is 1).

use crate::checks::Checks;
use crate::family::{judge, member_wait_go, reap, spawn_labeled, STEP_TIMEOUT_NS};
use crate::proto::Proto;
use crate::util::{err_str, errno, gettid};

const HOST: &[u8] = b"crest-pidns";
const DOMAIN: &[u8] = b"crest-dom";
const SEMS: [u16; 3] = [3, 7, 42];
const MSGS: [(i64, &[u8]); 2] = [(5, b"hello"), (9, b"world, again")];
const MSG_KEY: i32 = 0x00c1_2e57;
const POLL_NS: u64 = 2_000_000;

fn names() -> (Vec<u8>, Vec<u8>) {
    let mut h = [0u8; 65];
    let mut d = [0u8; 65];
    // SAFETY: valid buffers of the given length.
    unsafe {
        libc::gethostname(h.as_mut_ptr().cast(), h.len());
        libc::getdomainname(d.as_mut_ptr().cast(), d.len());
    }
    let cut = |b: &[u8]| b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())].to_vec();
    (cut(&h), cut(&d))
}

/// The PID and parent PID of the calling process, as it sees them.
fn ids() -> (i32, i32) {
    // SAFETY: plain getters.
    unsafe { (libc::getpid(), libc::getppid()) }
}

fn check_common(c: &mut Checks, who: &str, pid: i32, ppid: i32) {
    // SAFETY: plain getters.
    let (me, parent) = unsafe { (libc::getpid(), libc::getppid()) };
    c.eq(&format!("{who}: getpid()"), pid, me);
    c.eq(&format!("{who}: getppid()"), ppid, parent);
    let (h, d) = names();
    c.eq(
        &format!("{who}: hostname"),
        String::from_utf8_lossy(HOST).into_owned(),
        String::from_utf8_lossy(&h).into_owned(),
    );
    c.eq(
        &format!("{who}: domainname"),
        String::from_utf8_lossy(DOMAIN).into_owned(),
        String::from_utf8_lossy(&d).into_owned(),
    );
}

fn wait_go(m: &Proto, c: &mut Checks, who: &str) {
    let out = member_wait_go(m, 1, POLL_NS);
    out.report(c, who);
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let nested = args.iter().any(|a| a == "nested");
    if args.iter().any(|a| a == "inside") {
        // Already PID 1 of namespaces someone else made (`unshare
        // --pid --fork --mount-proc --uts --ipc`), with a /proc of ours
        // (or, with "shared-proc", the /proc of the namespace above).
        let own_proc = !args.iter().any(|a| a == "shared-proc");
        return init(p, nested, own_proc);
    }
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    crate::family::hand_over(p, flags, || init(p, nested, false))
}

fn init(p: &Proto, nested: bool, own_proc: bool) -> Checks {
    let mut c = Checks::new();
    // SAFETY: plain syscalls on valid buffers.
    unsafe {
        libc::setsid();
        if libc::sethostname(HOST.as_ptr().cast(), HOST.len()) != 0
            || libc::setdomainname(DOMAIN.as_ptr().cast(), DOMAIN.len()) != 0
        {
            p.bail_errno("sethostname");
        }
    }
    // SAFETY: System V calls with valid arguments and buffers.
    let (semid, msqid) = unsafe {
        let semid = libc::semget(libc::IPC_PRIVATE, SEMS.len() as i32, 0o600);
        if semid < 0 || libc::semctl(semid, 0, libc::SETALL, SEMS.as_ptr()) != 0 {
            p.bail_errno("semget/SETALL");
        }
        let msqid = libc::msgget(MSG_KEY, libc::IPC_CREAT | 0o640);
        if msqid < 0 {
            p.bail_errno("msgget");
        }
        for (t, text) in MSGS {
            let mut m = t.to_ne_bytes().to_vec();
            m.extend_from_slice(text);
            if libc::msgsnd(msqid, m.as_ptr().cast(), text.len(), 0) != 0 {
                p.bail_errno("msgsnd");
            }
        }
        (semid, msqid)
    };
    let a = spawn_labeled(p, 2, 0, 10, |m| {
        let mut c = Checks::new();
        let (me, _) = ids();
        let an = if nested {
            spawn_labeled(m, 1001, libc::CLONE_NEWPID, 30, |m| {
                let mut c = Checks::new();
                c.eq("AN: pid before", (1, 0), ids());
                wait_go(m, &mut c, "AN");
                check_common(&mut c, "AN", 1, 0);
                c
            })
        } else {
            0
        };
        wait_go(m, &mut c, "A");
        check_common(&mut c, "A", me, 1);
        if nested {
            c.ensure(an > 1 && an < 10, || {
                format!("A: AN's pid as A sees it: {an}")
            });
            judge(&mut c, m.dir(), "AN", 1001, reap(an, STEP_TIMEOUT_NS), 30);
        }
        c
    });
    let b = spawn_labeled(p, 3, 0, 11, |m| {
        let mut c = Checks::new();
        let (me, _) = ids();
        let b1 = spawn_labeled(m, 4, 0, 21, |m| {
            let mut c = Checks::new();
            let (me, parent) = ids();
            wait_go(m, &mut c, "B1");
            check_common(&mut c, "B1", me, parent);
            c.ensure(parent > 1 && parent < 10, || format!("B1: parent {parent}"));
            c
        });
        wait_go(m, &mut c, "B");
        check_common(&mut c, "B", me, 1);
        c.ensure(b1 > 2 && b1 < 10, || format!("B: B1's pid {b1}"));
        // SAFETY: plain kill.
        let r = unsafe { libc::kill(1, libc::SIGUSR1) };
        c.eq("B: kill(1, SIGUSR1)", 0, r);
        judge(&mut c, m.dir(), "B1", 4, reap(b1, STEP_TIMEOUT_NS), 21);
        c
    });
    c.ensure(a > 1 && a < 10 && b > 1 && b < 10 && a != b, || {
        format!("C: its children's pids {a}, {b}")
    });
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let th = std::thread::spawn(move || {
        let before = gettid();
        let _ = tx.send(before);
        let _ = go_rx.recv();
        (before, gettid())
    });
    let thread_tid = rx.recv().unwrap_or(0);
    p.write_aux("inner-ready", "1\n");
    let out = p.wait_go();
    out.report(&mut c, "C");
    let _ = go_tx.send(());
    match th.join() {
        Ok((before, after)) => {
            c.eq("C: thread id before", thread_tid, before);
            c.eq("C: thread id after", before, after);
            c.ensure(before > 1 && before < 10, || {
                format!("C: its thread's id {before} is not a small id of its namespace")
            });
        }
        Err(_) => c.fail("C: the thread panicked"),
    }
    check_common(&mut c, "C", 1, 0);
    if own_proc {
        // /proc is the namespace's: it names us 1, and lists our members.
        let me = std::fs::read_link("/proc/self").map(|l| l.to_string_lossy().into_owned());
        c.eq(
            "C: /proc/self",
            Ok("1".to_string()),
            me.map_err(|e| e.to_string()),
        );
        let comm = std::fs::read_to_string(format!("/proc/{a}/comm")).unwrap_or_default();
        c.eq("C: /proc/A/comm", "crest-workload\n".to_string(), comm);
    }
    let mut vals = [0u16; 3];
    // SAFETY: GETALL into a buffer of nsems shorts.
    let r = unsafe { libc::semctl(semid, 0, libc::GETALL, vals.as_mut_ptr()) };
    if r != 0 {
        c.fail(format!("C: semctl({semid}, GETALL): {}", err_str(errno())));
    }
    c.eq("C: semaphore values", SEMS, vals);
    // SAFETY: plain lookup.
    let again = unsafe { libc::msgget(MSG_KEY, 0) };
    c.eq("C: message queue id by key", msqid, again);
    for (t, text) in MSGS {
        let mut buf = [0u8; 8 + 64];
        // SAFETY: msgrcv writes at most 8 + 64 bytes.
        let n = unsafe { libc::msgrcv(msqid, buf.as_mut_ptr().cast(), 64, 0, libc::IPC_NOWAIT) };
        if n < 0 {
            c.fail(format!("C: msgrcv: {}", err_str(errno())));
            break;
        }
        let got_t = i64::from_ne_bytes(buf[0..8].try_into().unwrap());
        c.eq("C: message type", t, got_t);
        c.eq(
            "C: message text",
            text.to_vec(),
            buf[8..8 + n as usize].to_vec(),
        );
    }
    judge(&mut c, p.dir(), "A", 2, reap(a, STEP_TIMEOUT_NS), 10);
    judge(&mut c, p.dir(), "B", 3, reap(b, STEP_TIMEOUT_NS), 11);
    c
}
