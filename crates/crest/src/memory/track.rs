//! Write tracking between crest runs, so that an incremental dump does
//! not read the pages that did not change since its parent.
//!
//! Arming (`dump --track`, with the tree frozen, before any page is
//! read).  Each process creates a userfaultfd (an injected call, taken
//! over with pidfd_getfd, the process's copy closed: see
//! `dump::precopy`), negotiated for asynchronous write-protect with the
//! munmap, mremap and madvise(DONTNEED/FREE) events.  Every private
//! anonymous mapping with pages is registered, and its present and
//! swapped pages are write-protected (PAGEMAP_SCAN): from then on the
//! kernel clears a page's protection bit when it is written, without
//! stopping the process.  The descriptors go to a small process of
//! crest's, the tracker (`crest __track ROOT`, its own session, no
//! terminal, cwd /), which takes them with pidfd_getfd from the dump and
//! listens on the abstract UNIX socket `@crest-track-ROOT`.  It reads the
//! events as they come (a process that unmaps a registered range waits
//! until its event is read), recording each range unmapped, moved or
//! discarded as *tainted*, and it watches every process with a pidfd: a
//! process that exits (or whose PID was reused since) is *dead*; the
//! tracker leaves when the root dies.  Once the image is saved, the dump
//! tells the tracker the image's tail digest, its *epoch*; a tracker that
//! never got one (the dump failed or was killed) leaves after
//! [`UNARMED_LIFETIME`].
//!
//! Using it (`dump --parent PREV`, tree frozen, before collecting).  The
//! dump connects to `@crest-track-ROOT` and asks for the state; the pages
//! a process's tracker vouches for are those that, in the process's
//! *current* address space, PAGEMAP_SCAN reports present or swapped,
//! write-protect-capable and not written, inside a registered range and
//! outside every tainted one.  Then the tracker is told to quit: it
//! closes the descriptors, which unregisters the ranges and clears the
//! bits, before it answers.  A page the tracker vouches for and whose
//! digest PREV holds is kept from PREV without being read (its digest is
//! copied); every other page is read and compared by digest as without a
//! tracker.
//!
//! Fallback.  Nothing is vouched for when there is no tracker (never
//! armed, killed, exited), when its epoch is not PREV's tail digest (PREV
//! is not the last tracked dump, or the tracked dump did not finish), for
//! a process it does not know (forked since: its mappings were not
//! inherited registered, the kernel drops them without the fork event)
//! or knows as dead, for any mapping that is not private anonymous (a
//! file's pages can change through the file), and for any page outside
//! the registered, untainted ranges.  A process that exec'd has a new
//! address space in which no page carries the bit, so PAGEMAP_SCAN
//! reports every page written.  A mapping still registered with
//! userfaultfd after the tracker quit is the program's own, and the dump
//! refuses it as before.
//!
//! Limits: memory the kernel writes through pages pinned before the arming
//! (an io_uring fixed buffer, RDMA) would not clear the bit; crest refuses
//! io_uring and devices.

use crate::error::{Error, Result};
use crate::memory;
use crate::model::{Backing, Checkpoint, Vma};
use crate::task::freeze::FrozenTree;
use crest_sys::proc::{page_category, Pagemap, ScanQuery};
use crest_sys::uffd::{self, Event, Userfaultfd};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// A tracker that got no epoch within this long leaves.
pub const UNARMED_LIFETIME: Duration = Duration::from_secs(600);
/// How long a conversation with the tracker may stall.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Test-only sabotage: the tracker's vouching for the largest range
/// includes written pages (negative selftest).
const SABOTAGE_ENV: &str = "CREST_TEST_TRACK_LIE";

fn socket_addr(root: i32) -> Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("crest-track-{root}").as_bytes())
        .map_err(|e| Error::msg(format!("tracker socket name for pid {root}: {e}")))
}

/// A connection to the tracker of a tree.
pub struct Tracker {
    r: BufReader<UnixStream>,
    w: UnixStream,
    root: i32,
}

impl Tracker {
    /// The tracker of the tree rooted at `root`, if one listens.
    pub fn find(root: i32) -> Option<Tracker> {
        let s = UnixStream::connect_addr(&socket_addr(root).ok()?).ok()?;
        Tracker::over(s, root).ok()
    }

    fn over(s: UnixStream, root: i32) -> Result<Tracker> {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Tracker {
            w: s.try_clone()?,
            r: BufReader::new(s),
            root,
        })
    }

    /// Sends `line`; returns the reply lines up to "end".
    fn ask(&mut self, line: &str) -> Result<Vec<String>> {
        let what = || format!("the write tracker of pid {}", self.root);
        writeln!(self.w, "{line}").map_err(|e| Error::msg(format!("{}: {e}", what())))?;
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            let n = self
                .r
                .read_line(&mut l)
                .map_err(|e| Error::msg(format!("{}: {e}", what())))?;
            if n == 0 {
                return Err(Error::msg(format!("{} hung up", what())));
            }
            let l = l.trim_end().to_string();
            if l == "end" {
                return Ok(out);
            }
            if let Some(e) = l.strip_prefix("error ") {
                return Err(Error::msg(format!("{}: {e}", what())));
            }
            out.push(l);
        }
    }

    /// What the tracker knows, every event so far read.
    fn state(&mut self) -> Result<State> {
        let mut st = State::default();
        for l in self.ask("state")? {
            let w: Vec<&str> = l.split(' ').collect();
            let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            match w[0] {
                "epoch" => st.epoch = w.get(1).and_then(|s| s.parse().ok()),
                "proc" => {
                    st.procs.insert(
                        num(1) as i32,
                        ProcState {
                            alive: w.get(2) == Some(&"alive"),
                            ..Default::default()
                        },
                    );
                }
                "reg" | "taint" => {
                    let p = st.procs.entry(num(1) as i32).or_default();
                    let r = (num(2), num(3));
                    if w[0] == "reg" {
                        p.registered.push(r)
                    } else {
                        p.tainted.push(r)
                    }
                }
                _ => {}
            }
        }
        Ok(st)
    }

    /// Records that the tracking armed for this tracker starts at the
    /// image whose tail digest is `digest`.
    pub fn set_epoch(&mut self, digest: u64) -> Result<()> {
        self.ask(&format!("epoch {digest}")).map(drop)
    }

    /// Ends the tracking: returns once the tracker closed its
    /// descriptors (the ranges are unregistered, the bits cleared).
    pub fn quit(mut self) -> Result<()> {
        self.ask("quit").map(drop)
    }
}

#[derive(Debug, Default)]
struct State {
    epoch: Option<u64>,
    procs: HashMap<i32, ProcState>,
}

#[derive(Debug, Default)]
struct ProcState {
    alive: bool,
    registered: Vec<(u64, u64)>,
    tainted: Vec<(u64, u64)>,
}

/// The pages a tracker vouches for, unchanged since the parent.
#[derive(Debug, Default)]
pub struct Vouched {
    /// pid → page ranges (start, end), sorted, disjoint.
    clean: HashMap<i32, Vec<(u64, u64)>>,
    /// Why nothing (or not everything) was vouched for, for the report.
    pub note: Option<String>,
    /// Test sabotage: written pages vouched for.
    pub lied_pages: u64,
}

impl Vouched {
    fn none(why: impl Into<String>) -> Vouched {
        Vouched {
            note: Some(why.into()),
            ..Default::default()
        }
    }

    /// The clean ranges of process `pid` (empty: read every page).
    pub fn of(&self, pid: i32) -> &[(u64, u64)] {
        self.clean.get(&pid).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// With the tree rooted at `root` frozen: asks its tracker (if any) which
/// pages did not change since the image whose tail digest is `parent`,
/// then ends that tracker.  Every doubt is a page not vouched for.
pub fn vouch(tree: &FrozenTree, root: i32, parent: u64) -> Result<Vouched> {
    let Some(mut t) = Tracker::find(root) else {
        return Ok(Vouched::none(
            "no write tracker: every page was compared by digest",
        ));
    };
    let st = t.state();
    let v = match st {
        Ok(st) if st.epoch == Some(parent) => scan_clean(tree, &st),
        Ok(st) => Ok(Vouched::none(match st.epoch {
            Some(e) => format!("the write tracker counts from image {e:#018x}, not the parent: every page was compared by digest"),
            None => "the write tracker's dump did not finish: every page was compared by digest".into(),
        })),
        Err(e) => Ok(Vouched::none(format!("{e}: every page was compared by digest"))),
    };
    // Whatever was found, the tracking ends here; a later --track dump
    // arms anew.
    t.quit()?;
    v
}

/// Ends the tracker of `root`, if any (a dump that does not use it).
pub fn end(root: i32) -> Result<()> {
    match Tracker::find(root) {
        Some(t) => t.quit(),
        None => Ok(()),
    }
}

fn scan_clean(tree: &FrozenTree, st: &State) -> Result<Vouched> {
    let sabotage = std::env::var_os(SABOTAGE_ENV).is_some();
    let mut out = Vouched::default();
    let mut untracked = Vec::new();
    for (pid, _) in &tree.procs {
        let Some(p) = st.procs.get(pid).filter(|p| p.alive) else {
            untracked.push(*pid);
            continue;
        };
        let pm = Pagemap::open(*pid)?;
        let clean_q = ScanQuery {
            required: page_category::WPALLOWED,
            excluded: page_category::WRITTEN | page_category::GUARD,
            any: page_category::PRESENT | page_category::SWAPPED,
            report: 0,
        };
        let lie_q = ScanQuery {
            excluded: page_category::GUARD,
            ..clean_q
        };
        let victim = p
            .registered
            .iter()
            .copied()
            .max_by_key(|r| r.1 - r.0)
            .filter(|_| sabotage);
        let mut clean = Vec::new();
        let mut buf = Vec::new();
        for &(s, e) in &p.registered {
            buf.clear();
            pm.scan(s, e, clean_q, false, &mut buf)?;
            if victim == Some((s, e)) {
                let honest: u64 = buf.iter().map(|r| r.1 - r.0).sum();
                buf.clear();
                pm.scan(s, e, lie_q, false, &mut buf)?;
                let all: u64 = buf.iter().map(|r| r.1 - r.0).sum();
                out.lied_pages += (all - honest) / memory::page_size();
            }
            clean.extend(buf.iter().map(|r| (r.0, r.1)));
        }
        clean.sort_unstable();
        let mut taint = p.tainted.clone();
        taint.sort_unstable();
        out.clean.insert(*pid, subtract(&clean, &taint));
    }
    if !untracked.is_empty() {
        out.note = Some(format!(
            "pids {untracked:?} were not tracked (forked since, or exited and reused): their pages were compared by digest"
        ));
    }
    if out.lied_pages > 0 {
        eprintln!(
            "crest: test sabotage: the tracker vouched for {} written pages",
            out.lied_pages
        );
    }
    Ok(out)
}

/// The parts of `a` (sorted, disjoint) outside every range of `b`
/// (sorted by start, may overlap).
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s0, e) in a {
        let mut s = s0;
        for &(bs, be) in b.iter().filter(|r| r.1 > s0 && r.0 < e) {
            if bs > s {
                out.push((s, bs.min(e)));
            }
            s = s.max(be);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Whether the pages of `v` can be vouched for by write tracking.
pub fn trackable(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous) && !v.shared && v.huge_page.is_none() && v.aio.is_none()
}

/// A tracker armed by this dump, waiting for its epoch.
pub struct Armed(Tracker);

impl Armed {
    /// The image is saved: tracking counts from it.
    pub fn commit(mut self, digest: u64) -> Result<()> {
        self.0.set_epoch(digest)
    }
}

/// With the tree frozen and collected as `ckpt`, before any page is read:
/// arms write tracking of every trackable mapping and hands it to a new
/// tracker.  The inner error says why tracking is not possible (the dump
/// goes on without).
pub fn arm(tree: &FrozenTree, ckpt: &Checkpoint) -> Result<std::result::Result<Armed, String>> {
    let root = tree.procs.first().map(|p| p.0).unwrap_or(0);
    if let Some(t) = Tracker::find(root) {
        // Left by a dump that did not use it: it cannot count from this
        // image.
        t.quit()?;
    }
    let mut fds = Vec::new();
    for (pid, tids) in &tree.procs {
        match crate::dump::precopy::take_userfaultfd(*pid, tids)? {
            Ok(u) => fds.push(u),
            Err(why) => return Ok(Err(why)),
        }
    }
    let features = uffd::feature::WP_ASYNC
        | uffd::feature::EVENT_REMAP
        | uffd::feature::EVENT_REMOVE
        | uffd::feature::EVENT_UNMAP;
    let to_protect = ScanQuery {
        required: page_category::WRITTEN,
        excluded: page_category::GUARD,
        any: page_category::PRESENT | page_category::SWAPPED,
        report: 0,
    };
    let mut regs: Vec<(i32, u64, u64)> = Vec::new();
    for u in &fds {
        if let Err(e) = u.api(features) {
            return Ok(Err(e.to_string()));
        }
        let Some(p) = ckpt.processes.iter().find(|p| p.pid == u.pid()) else {
            continue;
        };
        let pm = Pagemap::open(u.pid())?;
        let mut scratch = Vec::new();
        for v in p.mm.vmas.iter().filter(|v| trackable(v) && v.pages > 0) {
            if u.register_wp(v.start, v.end).is_err() {
                continue;
            }
            scratch.clear();
            pm.scan(v.start, v.end, to_protect, true, &mut scratch)?;
            regs.push((u.pid(), v.start, v.end));
        }
    }
    // The tracker takes the descriptors from this process.
    let exe = std::env::current_exe()
        .map_err(|e| Error::msg(format!("finding the crest binary for the tracker: {e}")))?;
    let mut child = std::process::Command::new(exe)
        .args(["__track", &root.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|e| Error::msg(format!("starting the write tracker: {e}")))?;
    let t0 = Instant::now();
    let mut t = loop {
        if let Some(t) = Tracker::find(root) {
            break t;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Ok(Err(format!("the write tracker exited at once ({st})")));
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Err("the write tracker did not start listening".into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let me = std::process::id();
    for u in &fds {
        t.ask(&format!("take {me} {} {}", u.pid(), u.as_raw_fd()))?;
    }
    for (pid, s, e) in regs {
        t.ask(&format!("reg {pid} {s} {e}"))?;
    }
    t.ask("ready")?;
    // Our copies close here: the tracker's keep the tracking.
    drop(fds);
    Ok(Ok(Armed(t)))
}

/// One tracked process, in the tracker.
struct Watched {
    pid: i32,
    uffd: Userfaultfd,
    pidfd: std::os::fd::OwnedFd,
    alive: bool,
    registered: Vec<(u64, u64)>,
    tainted: Vec<(u64, u64)>,
}

/// The tracker process (`crest __track ROOT`): serves until the root
/// exits, it is told to quit, or it gets no epoch in time.
pub fn serve(root: i32) -> Result<()> {
    let listener = UnixListener::bind_addr(&socket_addr(root)?)
        .map_err(|e| Error::msg(format!("binding the tracker socket of pid {root}: {e}")))?;
    listener.set_nonblocking(true)?;
    let mut procs: Vec<Watched> = Vec::new();
    let mut epoch: Option<u64> = None;
    let started = Instant::now();
    let mut events = Vec::new();
    loop {
        if epoch.is_none() && started.elapsed() > UNARMED_LIFETIME {
            return Ok(());
        }
        {
            use rustix::event::{poll, PollFd, PollFlags};
            let mut pfds: Vec<PollFd> = Vec::with_capacity(1 + 2 * procs.len());
            pfds.push(PollFd::new(&listener, PollFlags::IN));
            for p in &procs {
                pfds.push(PollFd::new(&p.uffd, PollFlags::IN));
                if p.alive {
                    pfds.push(PollFd::new(&p.pidfd, PollFlags::IN));
                }
            }
            let ts = rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            let _ = poll(&mut pfds, Some(&ts));
        }
        drain(&mut procs, &mut events)?;
        if procs.first().is_some_and(|p| !p.alive) {
            // The root is gone: nothing left worth tracking.
            return Ok(());
        }
        match listener.accept() {
            Ok((s, _)) => {
                let mut c = Tracker::over(s, root)?;
                match converse(&mut c, &mut procs, &mut epoch, &mut events) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(_) => {} // that client is gone; the next may come
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads every queued event and every exit.
fn drain(procs: &mut [Watched], events: &mut Vec<Event>) -> Result<()> {
    for p in procs.iter_mut() {
        events.clear();
        p.uffd.read_events(events)?;
        for e in events.drain(..) {
            match e {
                Event::Remap { from, to, len } => {
                    p.tainted.push((from, from + len));
                    p.tainted.push((to, to + len));
                }
                Event::Remove { start, end } | Event::Unmap { start, end } => {
                    p.tainted.push((start, end))
                }
            }
        }
        if p.alive {
            use rustix::event::{poll, PollFd, PollFlags};
            let mut f = [PollFd::new(&p.pidfd, PollFlags::IN)];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if poll(&mut f, Some(&zero)).unwrap_or(0) > 0 {
                p.alive = false;
            }
        }
    }
    Ok(())
}

/// Serves one client; true when told to quit.
fn converse(
    c: &mut Tracker,
    procs: &mut Vec<Watched>,
    epoch: &mut Option<u64>,
    events: &mut Vec<Event>,
) -> Result<bool> {
    loop {
        let mut l = String::new();
        if c.r.read_line(&mut l)? == 0 {
            return Ok(false);
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
        let mut reply = String::new();
        match w.first().copied() {
            Some("take") => {
                let (Some(from), Some(pid), Some(fd)) = (num(1), num(2), num(3)) else {
                    writeln!(c.w, "error bad take")?;
                    continue;
                };
                let r = crest_sys::pidfd::open(from as i32)
                    .and_then(|p| crest_sys::pidfd::getfd(&p, from as i32, fd as i32))
                    .and_then(|u| Ok((u, crest_sys::pidfd::open(pid as i32)?)));
                match r {
                    Ok((u, pidfd)) => procs.push(Watched {
                        pid: pid as i32,
                        uffd: Userfaultfd::new(u, pid as i32),
                        pidfd,
                        alive: true,
                        registered: Vec::new(),
                        tainted: Vec::new(),
                    }),
                    Err(e) => {
                        writeln!(c.w, "error {e}")?;
                        continue;
                    }
                }
            }
            Some("reg") => {
                if let (Some(pid), Some(s), Some(e)) = (num(1), num(2), num(3)) {
                    if let Some(p) = procs.iter_mut().find(|p| p.pid == pid as i32) {
                        p.registered.push((s, e));
                    }
                }
            }
            Some("ready") => {}
            Some("state") => {
                drain(procs, events)?;
                match epoch {
                    Some(e) => reply.push_str(&format!("epoch {e}\n")),
                    None => reply.push_str("epoch none\n"),
                }
                for p in procs.iter() {
                    let a = if p.alive { "alive" } else { "dead" };
                    reply.push_str(&format!("proc {} {a}\n", p.pid));
                    for (s, e) in &p.registered {
                        reply.push_str(&format!("reg {} {s} {e}\n", p.pid));
                    }
                    for (s, e) in &p.tainted {
                        reply.push_str(&format!("taint {} {s} {e}\n", p.pid));
                    }
                }
            }
            Some("epoch") => *epoch = num(1),
            Some("quit") => {
                // Closing the descriptors unregisters every range and
                // clears the bits before close returns.
                procs.clear();
                writeln!(c.w, "end")?;
                return Ok(true);
            }
            _ => {
                writeln!(c.w, "error unknown request {:?}", l.trim())?;
                continue;
            }
        }
        writeln!(c.w, "{reply}end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtraction() {
        let a = [(0, 100), (200, 300)];
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(
            subtract(&a, &[(10, 20), (15, 30), (250, 400)]),
            vec![(0, 10), (30, 100), (200, 250)]
        );
        assert_eq!(subtract(&a, &[(0, 300)]), Vec::<(u64, u64)>::new());
    }
}
