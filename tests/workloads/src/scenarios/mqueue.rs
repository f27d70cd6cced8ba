//! `mqueue [inside] [host] [notify] [unlinked] [nofds] [unowned]`: POSIX
//! message queues.
//!
//! Without `host`: the queues of a private IPC namespace — the process's
//! own (it unshares one first), or, with `inside`, the one it was started
//! in by `unshare --ipc --fork`.  Three queues:
//!
//! ```text
//! /crest-a      mode 0640, owner 1234:5678, 8 messages of up to 32 bytes;
//!               five messages of priorities 1, 7, 1, 3, 7 (equal
//!               priorities: their order must stay)
//!               fd 40 O_RDWR|O_NONBLOCK, fd 41 O_RDONLY, fd 42 = dup(41)
//! /crest-b      mode 0600, 3 x 16 bytes, messages (0, "x"), (2, "yy");
//!               held open by nobody
//! /crest-empty  mode 0620, 2 x 8 bytes, empty; fd 43 O_WRONLY|O_NONBLOCK
//! ```
//!
//! With `host`: one queue /crest-mq-host-PID in the IPC namespace the
//! process was started in (the machine's), two messages, fds 40 (O_RDWR)
//! and 41 (O_RDONLY|O_NONBLOCK); it is unlinked at the end.
//!
//! With `notify`: an mq_notify registration (SIGEV_SIGNAL, SIGUSR2) on the
//! first queue; after go it must still be there (another registration is
//! EBUSY, the queue file names this process) and no SIGUSR2 came.
//!
//! With `unlinked` (not `host`): /crest-empty is unlinked while fd 43
//! holds it (crest refuses that; the checks then fail by design).
//!
//! With `nofds` (not `host`): no descriptor is kept on any queue, and
//! /crest-a is root's (for a user namespace where only root is mapped);
//! with `unowned`, /crest-a is root's and the descriptors stay.
//!
//! After go every descriptor is checked (access mode, O_NONBLOCK, the
//! queue's attributes, owner and mode; fds 41 and 42 one description),
//! then every queue's messages are taken and compared, in order, with
//! their priorities; the queue held by nobody is opened by name.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{err_str, errno};
use std::sync::atomic::{AtomicU32, Ordering};

static USR2: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr2(_: i32) {
    USR2.fetch_add(1, Ordering::SeqCst);
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Attr {
    flags: i64,
    maxmsg: i64,
    msgsize: i64,
    curmsgs: i64,
    reserved: [i64; 4],
}

struct Queue {
    name: String,
    mode: u32,
    owner: Option<(u32, u32)>,
    maxmsg: i64,
    msgsize: i64,
    /// As sent.
    sent: Vec<(u32, &'static [u8])>,
}

fn kname(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name.trim_start_matches('/')).unwrap()
}

fn mq_open(name: &str, flags: i32, create: Option<(u32, i64, i64)>) -> Result<i32, i32> {
    let n = kname(name);
    let (mode, attr) = match create {
        Some((m, maxmsg, msgsize)) => (
            m,
            Attr {
                maxmsg,
                msgsize,
                ..Default::default()
            },
        ),
        None => (0, Attr::default()),
    };
    let flags = flags
        | if create.is_some() {
            libc::O_CREAT | libc::O_EXCL
        } else {
            0
        };
    // SAFETY: a NUL-terminated name and a valid attribute block.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            n.as_ptr(),
            flags,
            mode,
            if create.is_some() {
                &attr as *const Attr
            } else {
                std::ptr::null()
            },
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as i32)
    }
}

fn mq_unlink(name: &str) {
    let n = kname(name);
    // SAFETY: a NUL-terminated name.
    unsafe { libc::syscall(libc::SYS_mq_unlink, n.as_ptr()) };
}

fn getattr(fd: i32) -> Result<Attr, i32> {
    let mut a = Attr::default();
    // SAFETY: a valid out pointer, no new attributes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd,
            std::ptr::null::<Attr>(),
            &mut a as *mut Attr,
        )
    };
    if r != 0 {
        Err(errno())
    } else {
        Ok(a)
    }
}

fn send(fd: i32, text: &[u8], prio: u32) -> Result<(), i32> {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid buffer and timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedsend,
            fd,
            text.as_ptr(),
            text.len(),
            prio,
            &ts as *const libc::timespec,
        )
    };
    if r != 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Takes every message, without waiting.
fn drain(fd: i32, msgsize: i64) -> Result<Vec<(u32, Vec<u8>)>, i32> {
    let mut out = Vec::new();
    loop {
        let mut buf = vec![0u8; msgsize as usize];
        let mut prio = 0u32;
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a buffer of buf.len() bytes, valid out pointers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mq_timedreceive,
                fd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut prio as *mut u32,
                &ts as *const libc::timespec,
            )
        };
        if r < 0 {
            let e = errno();
            if e == libc::EAGAIN || e == libc::ETIMEDOUT {
                return Ok(out);
            }
            return Err(e);
        }
        buf.truncate(r as usize);
        out.push((prio, buf));
    }
}

/// mq_receive's order: highest priority first, oldest first among equals.
fn receive_order(sent: &[(u32, &[u8])]) -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<(usize, u32, Vec<u8>)> = sent
        .iter()
        .enumerate()
        .map(|(i, (p, t))| (i, *p, t.to_vec()))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().map(|(_, p, t)| (p, t)).collect()
}

fn notify(fd: i32) -> Result<(), i32> {
    // SAFETY: sigevent is plain data; zeroed is valid.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = libc::SIGUSR2;
    ev.sigev_value = libc::sigval {
        sival_ptr: 77usize as *mut libc::c_void,
    };
    // SAFETY: a valid sigevent.
    if unsafe { libc::syscall(libc::SYS_mq_notify, fd, &ev as *const libc::sigevent) } != 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// (fd, queue index, O_ACCMODE | O_NONBLOCK it was opened with).
type Held = (i32, usize, i32);

fn place(p: &Proto, fd: i32, at: i32) {
    // SAFETY: plain descriptor calls.
    unsafe {
        if libc::dup2(fd, at) != at {
            p.bail_errno("dup2");
        }
        libc::close(fd);
    }
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let host = args.iter().any(|a| a == "host");
    let inside = args.iter().any(|a| a == "inside");
    let with_notify = args.iter().any(|a| a == "notify");
    let unlinked = args.iter().any(|a| a == "unlinked");
    let nofds = args.iter().any(|a| a == "nofds");
    let unowned = nofds || args.iter().any(|a| a == "unowned");
    // SAFETY: plain calls.
    let me = unsafe { libc::getpid() };
    if inside {
        // Started by `unshare --fork`, in its session: a session of our
        // own, as a container init has.
        // SAFETY: plain call.
        unsafe { libc::setsid() };
    }
    if !host && !inside {
        // SAFETY: a plain syscall on this single-threaded process.
        if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
            p.bail_errno("unshare(CLONE_NEWIPC)");
        }
    }
    let queues: Vec<Queue> = if host {
        vec![Queue {
            name: format!("/crest-mq-host-{me}"),
            mode: 0o600,
            owner: None,
            maxmsg: 4,
            msgsize: 24,
            sent: vec![(2, b"host one"), (9, b"host two")],
        }]
    } else {
        vec![
            Queue {
                name: "/crest-a".into(),
                mode: 0o640,
                owner: (!unowned).then_some((1234, 5678)),
                maxmsg: 8,
                msgsize: 32,
                sent: vec![
                    (1, b"low, first"),
                    (7, b"high, first"),
                    (1, b"low, second"),
                    (3, b"middle"),
                    (7, b"high, second"),
                ],
            },
            Queue {
                name: "/crest-b".into(),
                mode: 0o600,
                owner: None,
                maxmsg: 3,
                msgsize: 16,
                sent: vec![(0, b"x"), (2, b"yy")],
            },
            Queue {
                name: "/crest-empty".into(),
                mode: 0o620,
                owner: None,
                maxmsg: 2,
                msgsize: 8,
                sent: vec![],
            },
        ]
    };
    // SAFETY: plain umask call: the modes are exact.
    unsafe { libc::umask(0) };
    let mut held: Vec<Held> = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        mq_unlink(&q.name);
        let fd = mq_open(&q.name, libc::O_RDWR, Some((q.mode, q.maxmsg, q.msgsize)))
            .unwrap_or_else(|e| p.bail(&format!("mq_open {}: {}", q.name, err_str(e))));
        for (prio, text) in &q.sent {
            if let Err(e) = send(fd, text, *prio) {
                p.bail(&format!("mq_send {}: {}", q.name, err_str(e)));
            }
        }
        if let Some((u, g)) = q.owner {
            // SAFETY: plain fchown.
            if unsafe { libc::fchown(fd, u, g) } != 0 {
                p.bail_errno("fchown of a queue");
            }
        }
        // SAFETY: plain close.
        unsafe { libc::close(fd) };
        let opens: &[(i32, i32)] = match (host, i) {
            _ if nofds => &[],
            (true, _) => &[(libc::O_RDWR, 40), (libc::O_RDONLY | libc::O_NONBLOCK, 41)],
            (false, 0) => &[(libc::O_RDWR | libc::O_NONBLOCK, 40), (libc::O_RDONLY, 41)],
            (false, 2) => &[(libc::O_WRONLY | libc::O_NONBLOCK, 43)],
            _ => &[],
        };
        for &(flags, at) in opens {
            let fd = mq_open(&q.name, flags, None)
                .unwrap_or_else(|e| p.bail(&format!("mq_open {}: {}", q.name, err_str(e))));
            place(p, fd, at);
            held.push((at, i, flags));
        }
    }
    if !host && !nofds {
        // SAFETY: plain dup2.
        if unsafe { libc::dup2(41, 42) } != 42 {
            p.bail_errno("dup2");
        }
        held.push((42, 0, libc::O_RDONLY));
        if unlinked {
            mq_unlink("/crest-empty");
        }
    }
    if with_notify {
        // SAFETY: a plain handler that only counts.
        unsafe { libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t) };
        if let Err(e) = notify(40) {
            p.bail(&format!("mq_notify: {}", err_str(e)));
        }
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    for &(fd, i, flags) in &held {
        let q = &queues[i];
        let what = format!("fd {fd} ({})", q.name);
        // SAFETY: plain fcntl.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        c.eq(
            &format!("{what}: access mode and O_NONBLOCK"),
            flags,
            fl & (libc::O_ACCMODE | libc::O_NONBLOCK),
        );
        match getattr(fd) {
            Ok(a) => {
                c.eq(
                    &format!("{what}: mq_flags"),
                    (flags & libc::O_NONBLOCK) as i64,
                    a.flags,
                );
                c.eq(
                    &format!("{what}: mq_maxmsg, mq_msgsize, mq_curmsgs"),
                    (q.maxmsg, q.msgsize, q.sent.len() as i64),
                    (a.maxmsg, a.msgsize, a.curmsgs),
                );
            }
            Err(e) => c.fail(format!("{what}: mq_getattr: {}", err_str(e))),
        }
        match crate::util::fstat(fd) {
            Ok(st) => {
                let owner = q.owner.unwrap_or((0, 0));
                c.eq(
                    &format!("{what}: mode and owner"),
                    (q.mode, owner.0, owner.1),
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid),
                );
            }
            Err(e) => c.fail(format!("{what}: fstat: {}", err_str(e))),
        }
    }
    if !host && !nofds {
        // SAFETY: plain kcmp on our own descriptors.
        let same = unsafe {
            libc::syscall(libc::SYS_kcmp, me, me, 0 /* KCMP_FILE */, 41, 42)
        };
        c.eq("fds 41 and 42: one open file description", 0, same);
        // SAFETY: as above.
        let other = unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 40, 41) };
        c.ensure(other != 0, || {
            "fds 40 and 41: two open file descriptions".into()
        });
    }
    if with_notify {
        c.eq(
            "SIGUSR2 from the mq_notify registration",
            0,
            USR2.load(Ordering::SeqCst),
        );
        c.eq(
            "a second mq_notify registration (the first must still be there)",
            Err(libc::EBUSY),
            notify(41),
        );
        let text = std::fs::read_to_string("/proc/self/fd/40").unwrap_or_default();
        c.ensure(text.contains(&format!("NOTIFY_PID:{me}")), || {
            format!("the queue file names this process as registered: {text:?}")
        });
    }
    // Messages: taken through a descriptor, or by name for /crest-b.
    for (i, q) in queues.iter().enumerate() {
        let opened = mq_open(&q.name, libc::O_RDONLY | libc::O_NONBLOCK, None);
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) => {
                c.fail(format!("mq_open {} by name: {}", q.name, err_str(e)));
                continue;
            }
        };
        if i == 1 {
            match crate::util::fstat(fd) {
                Ok(st) => c.eq(
                    &format!("{}: mode and owner", q.name),
                    (q.mode, 0, 0),
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid),
                ),
                Err(e) => c.fail(format!("{}: fstat: {}", q.name, err_str(e))),
            }
            match getattr(fd) {
                Ok(a) => c.eq(
                    &format!("{}: mq_maxmsg, mq_msgsize", q.name),
                    (q.maxmsg, q.msgsize),
                    (a.maxmsg, a.msgsize),
                ),
                Err(e) => c.fail(format!("{}: mq_getattr: {}", q.name, err_str(e))),
            }
        }
        match drain(fd, q.msgsize) {
            Ok(got) => c.eq(
                &format!("{}: messages (priority, text) in receive order", q.name),
                receive_order(&q.sent)
                    .into_iter()
                    .map(|(p, t)| (p, String::from_utf8_lossy(&t).into_owned()))
                    .collect::<Vec<_>>(),
                got.into_iter()
                    .map(|(p, t)| (p, String::from_utf8_lossy(&t).into_owned()))
                    .collect(),
            ),
            Err(e) => c.fail(format!("{}: mq_receive: {}", q.name, err_str(e))),
        }
        // SAFETY: plain close.
        unsafe { libc::close(fd) };
    }
    base.verify(p, &mut c);
    if host {
        for q in &queues {
            mq_unlink(&q.name);
        }
    }
    c
}
