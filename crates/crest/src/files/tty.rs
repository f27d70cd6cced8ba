//! Pseudo-terminals: Unix98 pty pairs whose master and slave are both
//! held inside the tree, and the controlling terminal of a session.
//!
//! Dump reads each pair's state through a copy of a descriptor taken with
//! pidfd_getfd (termios, window size, packet mode, lock, exclusive mode,
//! session and foreground process group — the last two through the
//! master, where the kernel answers whoever asks).  The pair's state lives
//! in the master's [`OpenTarget::PtyMaster`]; slaves name it by the pair's
//! number.  Bytes in flight cannot be read without consuming them, so a
//! pair with unread input or output is refused.
//!
//! Restore opens a new pair in crest with the same number (see
//! [`open_numbered`]), sets it up, and hands master and slave
//! descriptions to the stubs like any other file.  A container whose
//! mount namespace is recorded whole has a devpts instance of its own:
//! its pairs are read there at the dump and made again in the restored
//! instance (paths through the tree, `crate::ns::mnt::host_path`), whose
//! numbers start free.  A session leader's stub
//! makes the slave its controlling terminal before forking its children
//! (they inherit it; see [`plan_ctty`]); once every process group exists,
//! [`restore_foreground`] gives the terminal its foreground group back.
//!
//! /dev/tty held open names the terminal that was its opener's controlling
//! terminal at the open (TIOCGDEV on it says which).  When that is the
//! slave of a pair of the tree, restore opens /dev/tty again from a
//! short-lived helper whose controlling terminal the new slave is, before
//! any stub exists (`crest_sys::tty::open_alias`): the description is
//! /dev/tty's (its path, its device 5:0) on the pair's slave, and reads,
//! writes and job-control ioctls through it act on that terminal again
//! (TIOCGPGRP answers a process whose controlling terminal it is).  /dev/tty
//! naming any other terminal is refused (see `crate::files::console`).

use crate::error::{steal, Context, Error, Refusal, Result};
use crate::model::{Checkpoint, ObjectKind, OpenFile, OpenTarget, Process, Pty, Termios};
use crate::ns::mnt::host_path;
use crate::task::freeze::Inject;
use crate::Obstacle;
use crest_sys::proc::FdInfo;
use crest_sys::tty::{Query, Setting};
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// /dev/ptmx (and /dev/pts/ptmx): 5:2.
const PTMX: (u32, u32) = (5, 2);
/// /dev/tty: 5:0.
const TTY_ALIAS: (u32, u32) = (5, 0);
/// Unix98 pty slaves: majors 136..=143 (the number runs on into the minor).
const SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
/// The number of control characters in `struct termios2`.
const NCCS2: usize = 19;
/// The line discipline restore recreates.
const N_TTY: i32 = 0;

/// The pairs met while collecting a tree's descriptors.
#[derive(Default)]
pub struct PtyIndex {
    pairs: BTreeMap<u32, Seen>,
}

/// One pair met during collection.
#[derive(Default)]
struct Seen {
    /// (pid, fd) of the master.
    master: Option<(i32, i32)>,
    session: i32,
    foreground: i32,
    /// (pid, fd) of every slave description.
    slaves: Vec<(i32, i32)>,
    /// (pid, fd) of every /dev/tty description naming the slave.
    aliases: Vec<(i32, i32)>,
    /// The devpts instance (st_dev) and device number of the slave.
    slave_dev: Option<u64>,
    slave_rdev: u64,
}

/// The state of pty descriptor `fd` of `pid`, or why it cannot be
/// checkpointed; `None` when the descriptor is not a pty (the caller
/// then refuses it as any other device).
pub fn collect(
    pid: i32,
    fd: i32,
    link: &str,
    md: &Metadata,
    info: &FdInfo,
    index: &mut PtyIndex,
) -> Option<Refusal<OpenTarget>> {
    if !md.file_type().is_char_device() {
        return None;
    }
    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    if (maj, min) == PTMX {
        Some(collect_master(pid, fd, link, info, index))
    } else if SLAVE_MAJORS.contains(&maj) {
        Some(collect_slave(pid, fd, link, md, index))
    } else if (maj, min) == TTY_ALIAS {
        collect_alias(pid, fd, index)
    } else {
        None
    }
}

/// /dev/tty on a pty slave: the pair's number; `None` for /dev/tty naming
/// another terminal (refused by `crate::files::console`).
fn collect_alias(pid: i32, fd: i32, index: &mut PtyIndex) -> Option<Refusal<OpenTarget>> {
    let f = steal(pid, fd).ok()?;
    let real = crest_sys::tty::real_device(f.as_fd()).ok()?;
    let (maj, min) = (libc::major(real), libc::minor(real));
    if !SLAVE_MAJORS.contains(&maj) {
        return None;
    }
    let n = ((maj - SLAVE_MAJORS.start()) << 20) | min;
    index.pairs.entry(n).or_default().aliases.push((pid, fd));
    Some(Ok(OpenTarget::TtyAlias { index: n }))
}

/// Bytes just written to the other side may still wait in the tty's
/// flip buffer, invisible to FIONREAD until a kernel worker moves them to
/// the line discipline (so a check could say "no data" and the dump then
/// see some): a poll for input flushes that work first.
fn settle(f: &OwnedFd) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let _ = poll(&mut [PollFd::new(f, PollFlags::IN)], Some(&zero));
}

/// An ioctl that reads one int.
fn get_int(f: &OwnedFd, q: Query) -> std::result::Result<i32, String> {
    crest_sys::tty::query(f.as_fd(), q).map_err(|e| e.to_string())
}

fn collect_master(
    pid: i32,
    fd: i32,
    link: &str,
    info: &FdInfo,
    index: &mut PtyIndex,
) -> Refusal<OpenTarget> {
    if link != "/dev/ptmx" && link != "/dev/pts/ptmx" {
        return Err(format!(
            "pty master opened as {link}: only /dev/ptmx and /dev/pts/ptmx are supported"
        ));
    }
    let mut f = None;
    let n = match info.get("tty-index").map(|s| s.trim().parse::<u32>()) {
        Some(Ok(n)) => n,
        _ => get_int(f.insert(steal(pid, fd)?), Query::PtyNumber)? as u32,
    };
    let seen = index.pairs.entry(n).or_default();
    if let Some((p, d)) = seen.master {
        return Err(format!(
            "{link}: pty {n} has a second master description (pid {p} fd {d})"
        ));
    }
    seen.master = Some((pid, fd));
    let what = format!("{link} (master of /dev/pts/{n})");
    let f = match f {
        Some(f) => f,
        None => steal(pid, fd)?,
    };
    // Asked through the master, the kernel tells anyone; ENOTTY: the
    // slave is nobody's controlling terminal.  Recorded before any
    // refusal, so that the session's controlling terminal is known to be
    // this pair (and not reported as one outside the tree).
    let session = get_int(&f, Query::Session).unwrap_or(0);
    let foreground = if session > 0 {
        get_int(&f, Query::ForegroundGroup)?
    } else {
        0
    };
    seen.session = session;
    seen.foreground = foreground;
    let ldisc = get_int(&f, Query::LineDiscipline)?;
    if ldisc != N_TTY {
        return Err(format!(
            "{what}: line discipline {ldisc} is not supported (only N_TTY)"
        ));
    }
    settle(&f);
    let inq = get_int(&f, Query::InputQueued)?;
    let outq = get_int(&f, Query::OutputQueued)?;
    if outq > 0 {
        return Err(format!(
            "{what}: {outq} bytes queued for output; not supported yet"
        ));
    }
    let packet = get_int(&f, Query::PacketMode)? != 0;
    let unread = if inq > 0 {
        crate::files::ttydata::copy(&f, inq as usize, packet).map_err(|e| {
            format!("{what}: {inq} bytes written on the slave side are not read yet: {e}")
        })?
    } else {
        Vec::new()
    };
    let input = crate::files::ttydata::copy_input(&f)
        .map_err(|e| format!("{what}: bytes written on the master side are not read yet: {e}"))?;
    let t = crest_sys::tty::get_termios2(f.as_fd()).map_err(|e| format!("{what}: {e}"))?;
    let winsize = crest_sys::tty::get_winsize(f.as_fd()).map_err(|e| format!("{what}: {e}"))?;
    let locked = get_int(&f, Query::Locked)? != 0;
    let exclusive = get_int(&f, Query::Exclusive)? != 0;
    Ok(OpenTarget::PtyMaster(Pty {
        index: n,
        ptmx: link.to_string(),
        termios: termios_of(&t),
        winsize,
        packet,
        locked,
        exclusive,
        session,
        foreground,
        unread,
        input,
        slave_owner: std::fs::metadata(&*host_path(&format!("/dev/pts/{n}")))
            .ok()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777)),
    }))
}

fn collect_slave(
    pid: i32,
    fd: i32,
    link: &str,
    md: &Metadata,
    index: &mut PtyIndex,
) -> Refusal<OpenTarget> {
    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    let n = ((maj - SLAVE_MAJORS.start()) << 20) | min;
    if link != format!("/dev/pts/{n}") {
        return Err(format!(
            "pty slave {link} ({maj}:{min}): only slaves under /dev/pts are supported"
        ));
    }
    let seen = index.pairs.entry(n).or_default();
    seen.slaves.push((pid, fd));
    match seen.slave_dev {
        Some(d) if d != md.dev() => {
            return Err(format!(
                "{link}: ptys of several devpts instances are not supported"
            ))
        }
        _ => seen.slave_dev = Some(md.dev()),
    }
    seen.slave_rdev = md.rdev();
    let f = steal(pid, fd)?;
    let ldisc = get_int(&f, Query::LineDiscipline)?;
    if ldisc != N_TTY {
        return Err(format!(
            "{link}: line discipline {ldisc} is not supported (only N_TTY)"
        ));
    }
    settle(&f);
    let inq = get_int(&f, Query::InputQueued)?;
    let outq = get_int(&f, Query::OutputQueued)?;
    if outq > 0 {
        return Err(format!(
            "{link}: {outq} bytes queued for output; not supported yet"
        ));
    }
    if inq > 0 {
        // Saved with the pair by its master (see `ttydata::copy_input`),
        // unless the slave is in canonical mode.
        let canonical =
            crest_sys::tty::get_termios2(f.as_fd()).map_or(true, |t| t.c_lflag & libc::ICANON != 0);
        if canonical {
            return Err(format!(
                "{link}: {inq} bytes written on the master side are not read yet, and the \
                 slave is in canonical mode: typed-ahead lines cannot be rebuilt (not supported)"
            ));
        }
    }
    let exclusive = get_int(&f, Query::Exclusive)? != 0;
    Ok(OpenTarget::PtySlave {
        index: n,
        exclusive,
    })
}

/// Refuses pairs with a side outside the tree, and sessions whose
/// controlling terminal cannot be given back.  `tree` holds the tree's
/// pids.
pub fn check_pairs(index: &PtyIndex, tree: &[i32], obstacles: &mut Vec<Obstacle>) {
    let stats: HashMap<i32, crest_sys::proc::Stat> = tree
        .iter()
        .filter_map(|&p| crest_sys::proc::read_stat(p).ok().map(|s| (p, s)))
        .collect();
    // The tree's /dev/pts: the container's own instance when its mount
    // namespace is recorded whole (restored as a new instance, where
    // its pairs are made again), else crest's.
    let devpts = std::fs::metadata(&*host_path("/dev/pts"))
        .map(|m| m.dev())
        .ok();
    let mut push = |pid: i32, object: String, reason: String| {
        obstacles.push(Obstacle {
            pid,
            object,
            reason,
        })
    };
    for (&n, s) in &index.pairs {
        let Some((mpid, mfd)) = s.master else {
            for &(pid, fd) in &s.slaves {
                push(
                    pid,
                    format!("fd {fd}"),
                    format!(
                        "/dev/pts/{n}: its master is held outside the tree (a terminal \
                         emulator, sshd, or the caller's own terminal); a pseudo-terminal \
                         is supported only when both sides are in the tree"
                    ),
                );
            }
            for &(pid, fd) in &s.aliases {
                push(
                    pid,
                    format!("fd {fd}"),
                    format!(
                        "/dev/tty (naming /dev/pts/{n}): the pseudo-terminal's master is held \
                         outside the tree (a terminal emulator, sshd, or the caller's own \
                         terminal); /dev/tty is supported only on a pseudo-terminal whose \
                         both sides are in the tree"
                    ),
                );
            }
            continue;
        };
        let mobj = format!("fd {mfd}");
        if s.slaves.is_empty() {
            push(
                mpid,
                mobj,
                format!(
                    "pty master of /dev/pts/{n}: no process of the tree holds its slave; \
                     a pseudo-terminal is supported only when both sides are in the tree"
                ),
            );
            continue;
        }
        if s.slave_dev.is_some() && s.slave_dev != devpts {
            push(
                mpid,
                mobj.clone(),
                format!("/dev/pts/{n} is on another devpts instance than /dev/pts"),
            );
        }
        if s.session <= 0 {
            continue;
        }
        let sid = s.session;
        let in_session = |pid: &i32| stats.get(pid).is_some_and(|st| st.session == sid);
        if !tree.contains(&sid) || !in_session(&sid) {
            push(
                mpid,
                mobj,
                format!(
                    "/dev/pts/{n} is the controlling terminal of session {sid}, whose \
                     leader is not in the tree"
                ),
            );
            continue;
        }
        if s.foreground > 0 && s.foreground != sid {
            let fg = s.foreground;
            if !stats.values().any(|st| st.session == sid && st.pgrp == fg) {
                push(
                    mpid,
                    mobj.clone(),
                    format!(
                        "the foreground process group {fg} of /dev/pts/{n} has no \
                         process in the tree"
                    ),
                );
            }
            let holder = s
                .slaves
                .iter()
                .chain(s.master.iter())
                .any(|(p, _)| in_session(p));
            if !holder {
                push(
                    mpid,
                    mobj,
                    format!(
                        "no process of session {sid} holds a descriptor on its controlling \
                         terminal /dev/pts/{n}, needed to give back its foreground group"
                    ),
                );
            }
        }
    }
    // Controlling terminals: a session recreated by the restore gets back
    // only a terminal that is one of the pairs above.
    for (&pid, st) in &stats {
        if !tree.contains(&st.session) {
            continue; // the session is the restorer's: its terminal stays
        }
        let ctty = index
            .pairs
            .iter()
            .find(|(_, s)| s.master.is_some() && s.session == st.session && st.session > 0);
        match (st.tty_nr as u32 as u64, ctty) {
            (0, None) => {}
            (0, Some((n, _))) => push(
                pid,
                "controlling terminal".into(),
                format!(
                    "the process has none, while its session {} has /dev/pts/{n} \
                     (not supported)",
                    st.session
                ),
            ),
            (dev, Some((_, s))) if dev == s.slave_rdev => {}
            (dev, _) => push(
                pid,
                "controlling terminal".into(),
                format!(
                    "its controlling terminal (device {}:{}) is not a pseudo-terminal held \
                     in the tree; not supported",
                    libc::major(dev),
                    libc::minor(dev)
                ),
            ),
        }
    }
}

/// The pairs made during a restore, by their number at the dump.
#[derive(Default)]
pub struct Ptys {
    masters: HashMap<u32, OwnedFd>,
    /// Pairs whose master description was handed out.
    given: std::collections::HashSet<u32>,
}

/// The image's form of a terminal's settings (TCGETS2).
pub(crate) fn termios_of(t: &libc::termios2) -> Termios {
    Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    }
}

fn set_fl(fd: &OwnedFd, flags: u32, what: &str) -> Result<()> {
    rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::from_bits_retain(flags))
        .map_err(std::io::Error::from)
        .context(|| format!("setting the flags of {what}"))
}

fn set_lock(m: &OwnedFd, locked: bool, n: u32) -> Result<()> {
    crest_sys::tty::set(m.as_fd(), Setting::Locked(locked))
        .context(|| format!("locking ({locked}) the new pty for pty {n}"))
}

/// Checks what restore relies on in a pair's state.
fn validate(p: &Pty) -> Result<()> {
    if p.ptmx != "/dev/ptmx" && p.ptmx != "/dev/pts/ptmx" {
        return Err(Error::Invalid(format!(
            "pty {}: multiplexer {:?} is neither /dev/ptmx nor /dev/pts/ptmx",
            p.index, p.ptmx
        )));
    }
    if p.termios.cc.len() != NCCS2 {
        return Err(Error::Invalid(format!(
            "pty {}: {} control characters (expected {NCCS2})",
            p.index,
            p.termios.cc.len()
        )));
    }
    Ok(())
}

impl Ptys {
    /// The new pair standing for pair `p` of the image, made and set up
    /// the first time.
    fn pair(&mut self, p: &Pty) -> Result<&OwnedFd> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.masters.entry(p.index) {
            validate(p)?;
            let n = p.index;
            let m = open_numbered(&host_path(&p.ptmx), n)?;
            set_lock(&m, false, n)?;
            let t = &p.termios;
            // A template whose every field is set below (the kernel's
            // current settings of the new pair).
            let mut k = crest_sys::tty::get_termios2(m.as_fd())
                .context(|| format!("reading the line settings of the new pty {n}"))?;
            k.c_iflag = t.iflag;
            k.c_oflag = t.oflag;
            k.c_cflag = t.cflag;
            k.c_lflag = t.lflag;
            k.c_line = t.line;
            k.c_cc.copy_from_slice(&t.cc);
            k.c_ispeed = t.ispeed;
            k.c_ospeed = t.ospeed;
            // Through the master it sets the slave's (the pair's) settings.
            crest_sys::tty::set_termios2(m.as_fd(), &k)
                .context(|| format!("setting the line settings of pty {n}"))?;
            crate::files::ttydata::refill(&m, &p.unread)
                .context(|| format!("pty {n}: refilling the bytes the master had not read"))?;
            crate::files::ttydata::refill_input(&m, &p.input)
                .context(|| format!("pty {n}: refilling the input the slave had not read"))?;
            crest_sys::tty::set_winsize(m.as_fd(), p.winsize)
                .context(|| format!("setting the window size of pty {n}"))?;
            // Packet mode last: setting the line settings must not leave a
            // status packet for the master to read.
            crest_sys::tty::set(m.as_fd(), Setting::PacketMode(p.packet))
                .context(|| format!("setting packet mode on pty {n}"))?;
            if p.exclusive {
                crest_sys::tty::set(m.as_fd(), Setting::Exclusive)
                    .context(|| format!("making the master of pty {n} exclusive"))?;
            }
            if let Some((uid, gid, mode)) = p.slave_owner {
                let node = host_path(&format!("/dev/pts/{n}")).into_owned();
                std::os::unix::fs::chown(&node, Some(uid), Some(gid))
                    .context(|| format!("giving {node} its owner back"))?;
                std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .context(|| format!("giving {node} its mode back"))?;
            }
            if p.locked {
                set_lock(&m, true, n)?;
            }
            e.insert(m);
        }
        Ok(&self.masters[&p.index])
    }
}

/// A new pair numbered `n` (/dev/pts/N keeps its name: programs such as
/// tmux address their panes by it).  The kernel gives each new pair the
/// lowest free number: open pairs until number `n` comes, then close the
/// others.  A number above `n` means `n` is taken here.
fn open_numbered(ptmx: &str, n: u32) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mut others = Vec::new();
    loop {
        let m = rustix::fs::open(
            ptmx,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .context(|| format!("opening {ptmx} for pty {n}"))?;
        let got = crest_sys::tty::query(m.as_fd(), Query::PtyNumber)
            .context(|| format!("the number of a new pty while making pty {n}"))?;
        match (got as u32).cmp(&n) {
            std::cmp::Ordering::Equal => return Ok(m),
            std::cmp::Ordering::Greater => {
                return Err(Error::Incompatible(format!(
                    "/dev/pts/{n} is in use here; the restored pseudo-terminal needs that number"
                )))
            }
            std::cmp::Ordering::Less => others.push(m),
        }
    }
}

/// The pair `index` of the image: found among the objects (ids are dense).
fn find_pty(index: u32, objects: &dyn Fn(u32) -> Option<ObjectKind>) -> Option<Pty> {
    (0..).map_while(objects).find_map(|o| match o {
        ObjectKind::Open(OpenFile {
            target: OpenTarget::PtyMaster(p),
            ..
        }) if p.index == index => Some(p),
        _ => None,
    })
}

/// Opens the pty description `o` (a master, a slave or /dev/tty naming a
/// slave) in crest.
pub fn open(
    o: &OpenFile,
    ptys: &mut Ptys,
    objects: &dyn Fn(u32) -> Option<ObjectKind>,
) -> Result<OwnedFd> {
    match &o.target {
        OpenTarget::PtyMaster(p) => {
            if !ptys.given.insert(p.index) {
                return Err(Error::Invalid(format!(
                    "pty {} has two master descriptions",
                    p.index
                )));
            }
            let m = ptys.pair(p)?;
            let fd = m
                .try_clone()
                .context(|| format!("dup of pty master {}", p.index))?;
            set_fl(&fd, o.flags, "a pty master")?;
            Ok(fd)
        }
        &OpenTarget::PtySlave { index, exclusive } => {
            let p = find_pty(index, objects).ok_or_else(|| {
                Error::Invalid(format!(
                    "pty slave of pty {index}, whose master is not in the image"
                ))
            })?;
            let m = ptys.pair(&p)?;
            if p.locked {
                set_lock(m, false, index)?;
            }
            let peer = crest_sys::tty::open_slave(m.as_fd(), o.flags as i32 & libc::O_ACCMODE)
                .context(|| format!("opening the slave of the new pty for pty {index}"));
            if p.locked {
                set_lock(m, true, index)?;
            }
            let fd = peer?;
            if exclusive {
                crest_sys::tty::set(fd.as_fd(), Setting::Exclusive)
                    .context(|| format!("making the slave of pty {index} exclusive"))?;
            }
            set_fl(&fd, o.flags, "a pty slave")?;
            Ok(fd)
        }
        &OpenTarget::TtyAlias { index } => {
            let p = find_pty(index, objects).ok_or_else(|| {
                Error::Invalid(format!(
                    "/dev/tty naming the slave of pty {index}, whose master is not in the image"
                ))
            })?;
            let m = ptys.pair(&p)?;
            if p.locked {
                set_lock(m, false, index)?;
            }
            let fd = crest_sys::tty::open_alias(m.as_fd(), o.flags as i32).map_err(|e| {
                Error::msg(format!(
                    "reopening /dev/tty on the new slave of pty {index}: {e}"
                ))
            });
            if p.locked {
                set_lock(m, true, index)?;
            }
            let fd = fd?;
            set_fl(&fd, o.flags, "/dev/tty")?;
            Ok(fd)
        }
        t => Err(Error::Invalid(format!("{t:?} is not a pty"))),
    }
}

/// The pairs of the image that are some session's controlling terminal.
fn ctty_pairs(ckpt: &Checkpoint) -> impl Iterator<Item = &Pty> {
    ckpt.objects.iter().filter_map(|o| match &o.kind {
        ObjectKind::Open(OpenFile {
            target: OpenTarget::PtyMaster(p),
            ..
        }) if p.session > 0 => Some(p),
        _ => None,
    })
}

/// Whether object `id` is a description of pair `index` (either side).
fn on_pair(ckpt: &Checkpoint, id: u32, index: u32) -> bool {
    matches!(
        ckpt.object(id),
        Some(ObjectKind::Open(OpenFile { target: OpenTarget::PtySlave { index: n, .. }, .. })) if *n == index
    ) || matches!(
        ckpt.object(id),
        Some(ObjectKind::Open(OpenFile { target: OpenTarget::PtyMaster(p), .. })) if p.index == index
    )
}

/// For each session leader whose session had a pair as controlling
/// terminal: a descriptor crest holds on that pair's new slave, which the
/// stub makes its controlling terminal before forking its children (so
/// they inherit it, as they had).  `opened` maps objects to crest's
/// descriptors; `procs` are the stubs' plans in the image's order.
pub fn plan_ctty(
    ckpt: &Checkpoint,
    opened: &HashMap<u32, RawFd>,
    procs: &mut [crate::restore::stub::ProcPlan],
) -> Result<()> {
    for p in ctty_pairs(ckpt) {
        let Some(i) = ckpt
            .processes
            .iter()
            .position(|q| q.pid == p.session && q.sid == q.pid)
        else {
            return Err(Error::Invalid(format!(
                "pty {} is the controlling terminal of session {}, whose leader is not in the image",
                p.index, p.session
            )));
        };
        let slave = opened.iter().find_map(|(&id, &fd)| {
            matches!(
                ckpt.object(id),
                Some(ObjectKind::Open(OpenFile { target: OpenTarget::PtySlave { index, .. }, .. })) if *index == p.index
            )
            .then_some(fd)
        });
        let Some(fd) = slave else {
            return Err(Error::Invalid(format!(
                "pid {}: its controlling terminal, pty {}, has no slave description in the image",
                p.session, p.index
            )));
        };
        if let Some(pp) = procs.get_mut(i) {
            pp.ctty = Some(fd);
        }
    }
    Ok(())
}

/// Gives each controlling terminal its foreground process group back,
/// from a process of its session that holds a descriptor on it (the
/// leader if it does).  Runs for every process once all process groups
/// exist; acts in the one chosen for each terminal.
pub fn restore_foreground(t: &impl Inject, ckpt: &Checkpoint, p: &Process) -> Result<()> {
    for pty in ctty_pairs(ckpt) {
        let (sid, fg) = (pty.session, pty.foreground);
        // After TIOCSCTTY the leader's group (numbered as the session) is
        // in the foreground.
        if p.sid != sid || fg <= 0 || fg == sid {
            continue;
        }
        let holder = |q: &Process| {
            q.fds
                .iter()
                .find(|f| on_pair(ckpt, f.file, pty.index))
                .map(|f| f.fd)
        };
        let leader = ckpt.processes.iter().filter(|q| q.pid == sid);
        let members = ckpt
            .processes
            .iter()
            .filter(|q| q.sid == sid && q.pid != sid);
        let Some((who, fd)) = leader
            .chain(members)
            .find_map(|q| holder(q).map(|fd| (q.pid, fd)))
        else {
            return Err(Error::Invalid(format!(
                "no process of session {sid} holds a descriptor on its terminal (pty {})",
                pty.index
            )));
        };
        if who != p.pid {
            continue;
        }
        // The group as the process names it (in its PID namespace).
        let own = crate::ns::pid::View::new(&ckpt.processes).of(p, fg);
        t.write_scratch(0, &own.to_ne_bytes())?;
        t.call(
            libc::SYS_ioctl,
            &[fd as u64, libc::TIOCSPGRP, t.scratch()],
            &format!("fd {fd}: making process group {fg} the foreground group of its terminal"),
        )
        .context(|| {
            format!(
                "pid {}: restoring the foreground group of pty {}",
                p.pid, pty.index
            )
        })?;
    }
    Ok(())
}
