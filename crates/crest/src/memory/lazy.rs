//! Lazy (post-copy) restore: the tree runs before its private anonymous
//! pages are in, and gets each page when it first touches it.
//!
//! While the image is read, the pages of every mapping that can be filled
//! on demand ([`eligible`]) go to a store instead of into the process.
//! Each process has created a userfaultfd while it was still crest's stub
//! (an injected syscall, taken over with pidfd_getfd, closed again in the
//! process); once the whole image is read and verified, those mappings
//! are registered for missing pages and a thread of crest's ([`serve`])
//! starts, before anything else of the tree is set up and well before it
//! runs.  It answers every fault with the page from the store
//! (UFFDIO_COPY) or, for a page the image does not hold, the zero page,
//! and in between pushes the rest of the store into the processes.  Once
//! every page is in, it closes the descriptors, which unregisters the
//! mappings, and the lazy phase is over.
//!
//! The layout may change meanwhile; the kernel reports it (and holds the
//! task that changes it until crest has read the report, refusing fills
//! with EAGAIN until then).  One thread reads the reports and fills, in
//! order, so the store always says what each address must hold:
//! - fork (`UFFD_EVENT_FORK`): the child's address space gets its own
//!   descriptor and a copy of the store as it is at the fork (a page still
//!   missing in the parent was never touched since the restore, so it is
//!   the image's page in the child too);
//! - mremap (`UFFD_EVENT_REMAP`): the pages of the moved range move in the
//!   store;
//! - munmap and madvise(DONTNEED/FREE/REMOVE) (`UFFD_EVENT_UNMAP`,
//!   `UFFD_EVENT_REMOVE`): the range's pages leave the store (they read
//!   zero, or are a new mapping's, which crest does not touch).
//!
//! A restored process must never run with a wrong page: if the store
//! cannot be read or a fill fails, every process of the tree (and its
//! descendants) is killed with SIGKILL, and the phase's error says why.
//! The descriptors stay open until then, so nothing reads a zero page in
//! place of a lost one.  If crest itself dies, a watchdog process
//! (`crest_sys::watchdog`) that holds copies of the descriptors kills the
//! restored processes, and those forked during the phase: each fork's
//! new userfaultfd goes to the watchdog as the event is read, and a pidfd
//! of the new process once it shows in its parent's children.  Between
//! the two (the fork returning, and one turn of crest's loop) a crest
//! dying would leave that one process unkilled.

use crate::error::{Error, Result};
use crate::model::{Backing, Vma};
use crate::task::freeze::Inject;
use crest_sys::uffd::{self, Event, Fill, Msg, Userfaultfd};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The events a lazy restore must see (see the module notes).
const FEATURES: u64 = uffd::feature::EVENT_FORK
    | uffd::feature::EVENT_REMAP
    | uffd::feature::EVENT_REMOVE
    | uffd::feature::EVENT_UNMAP;
/// Pages per background fill.
const PUSH_PAGES: usize = 256;
/// Pages filled per fault (the faulting one and those after it).
const FAULT_PAGES: usize = 16;

/// Whether the pages of mapping `v` may come on demand: private anonymous
/// memory of ordinary pages, not inherited copy-on-write from another
/// process, not locked (mlock populates it at once), without guard
/// regions.  Everything else is written in before the tree runs.
pub fn eligible(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous)
        && !v.shared
        && v.pages > 0
        && v.huge_page.is_none()
        && v.cow.is_none()
        && !v.flags.locked
        && !v.flags.droppable
        && v.guards.is_empty()
}

/// What the lazy phase did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Pages filled because a task touched them.
    pub fault_pages: u64,
    /// Faults answered with the zero page (no page in the image).
    pub zero_faults: u64,
    /// Pages pushed in the background.
    pub pushed_pages: u64,
    /// Pages still held when the program unmapped or discarded them
    /// (munmap, madvise DONTNEED/FREE/REMOVE): never filled.
    pub dropped_pages: u64,
    /// Forks seen during the phase.
    pub forks: u64,
    /// From the start of the restore until every page was in.
    pub all_pages_ms: f64,
    /// From the tree's release (the server's start) until then.
    pub lazy_ms: f64,
}

/// The pages of one address space: address → place in the store.
type Index = BTreeMap<u64, u64>;

/// Pages kept in crest's memory, in segments (appending never moves
/// what is there); a page's place is its offset in the concatenation.
#[derive(Default)]
pub struct Store {
    segs: Vec<Vec<u8>>,
}

/// Bytes per store segment (a whole number of pages).
const SEG: usize = 64 << 20;

impl Store {
    /// Appends whole pages; returns the place of the first.
    fn append(&mut self, mut data: &[u8]) -> u64 {
        let at = match self.segs.last() {
            Some(s) if s.len() < SEG => (self.segs.len() as u64 - 1) * SEG as u64 + s.len() as u64,
            _ => self.segs.len() as u64 * SEG as u64,
        };
        while !data.is_empty() {
            if self.segs.last().is_none_or(|s| s.len() == SEG) {
                self.segs.push(Vec::with_capacity(SEG));
            }
            let seg = self.segs.last_mut().expect("pushed above");
            let n = data.len().min(SEG - seg.len());
            seg.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        at
    }

    /// Copies out `buf.len()` bytes from place `off`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = off + done as u64;
            let (k, o) = ((at / SEG as u64) as usize, (at % SEG as u64) as usize);
            let seg = self
                .segs
                .get(k)
                .filter(|s| o < s.len())
                .ok_or_else(|| Error::msg(format!("lazy page store: no page at {at}")))?;
            let n = (buf.len() - done).min(seg.len() - o);
            buf[done..done + n].copy_from_slice(&seg[o..o + n]);
            done += n;
        }
        Ok(())
    }
}

/// Where the pages held back come from: crest's memory (a restore from
/// an image), or the source of a post-copy migration
/// (`crate::migrate::postcopy_dest`).  A place is a byte offset; the
/// pages of a run of places are consecutive.
pub trait PageSource: Send {
    /// How many of the `n` pages from place `off` on are here already (a
    /// read of them does not wait).  An error if the source failed.
    fn ready(&mut self, off: u64, n: usize) -> Result<usize>;
    /// Copies out `buf.len()` bytes from place `off`, waiting for them if
    /// need be; an error if they cannot come.
    fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<()>;
    /// Every page is in (said once, at the end of the phase).
    fn done(&mut self) -> Result<()> {
        Ok(())
    }
}

impl PageSource for Store {
    fn ready(&mut self, _off: u64, n: usize) -> Result<usize> {
        Ok(n)
    }
    fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<()> {
        Store::read(self, off, buf)
    }
}

/// The pages held back while the image is read, and the descriptors.
pub struct Pending {
    store: Store,
    len: u64,
    spaces: Vec<Option<(Userfaultfd, Index)>>,
    t0: Instant,
    /// Pages that come from elsewhere instead of `store`.
    remote: Option<Box<dyn PageSource>>,
}

impl Pending {
    /// For a tree of `n` processes, the restore having started at `t0`.
    pub fn new(n: usize, t0: Instant) -> Result<Pending> {
        Ok(Pending {
            store: Store::default(),
            len: 0,
            spaces: (0..n).map(|_| None).collect(),
            t0,
            remote: None,
        })
    }

    /// Has process `i` (the stub `t`, pid `pid` here) create a userfaultfd
    /// and takes it over, if any of its mappings can be filled lazily.
    /// A kernel that refuses one (no CAP_SYS_PTRACE over it, say) leaves
    /// the process's pages to be written in as usual (said on stderr).
    pub fn take(&mut self, i: usize, t: &impl Inject, pid: i32, vmas: &[Vma]) -> Result<()> {
        if !vmas.iter().any(eligible) {
            return Ok(());
        }
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        // A user-mode-only descriptor is no use: a fault of the kernel's
        // (a read() into a missing page) would fail with EFAULT.
        let fd = match t.call(libc::SYS_userfaultfd, &[flags], "creating a userfaultfd") {
            Ok(fd) => fd as i32,
            Err(e) if e.errno().is_some() => {
                eprintln!(
                    "crest: warning: pid {pid}: no userfaultfd ({e}): its memory is restored \
                     before it runs"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let taken = crest_sys::pidfd::copy_fd(pid, fd);
        t.call(libc::SYS_close, &[fd as u64], "closing its userfaultfd")?;
        let u = Userfaultfd::new(taken?, pid);
        match u.api(FEATURES) {
            Ok(()) => {}
            Err(e) => {
                eprintln!(
                    "crest: warning: pid {pid}: the userfaultfd lacks events a lazy restore \
                     needs ({e}): its memory is restored before it runs"
                );
                return Ok(());
            }
        }
        self.spaces[i] = Some((u, Index::new()));
        Ok(())
    }

    /// Pages held back so far.
    pub fn pages(&self) -> u64 {
        self.len / super::page_size()
    }

    /// Whether the pages of space `i` at `addr` wait in the store.
    pub fn wants(&self, i: usize, vmas: &[Vma], addr: u64) -> bool {
        if !matches!(self.spaces.get(i), Some(Some(_))) {
            return false;
        }
        let k = vmas.partition_point(|v| v.end <= addr);
        vmas.get(k).is_some_and(|v| v.start <= addr && eligible(v))
    }

    /// Keeps `data` (whole pages) for space `i` at `addr`.
    pub fn push(&mut self, i: usize, addr: u64, data: &[u8]) -> Result<()> {
        let ps = super::page_size();
        let Some(Some((_, index))) = self.spaces.get_mut(i) else {
            return Err(Error::msg(format!("lazy pages for unknown space {i}")));
        };
        let at = self.store.append(data);
        for k in 0..data.len() as u64 / ps {
            index.insert(addr + k * ps, at + k * ps);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Takes every page from `src` instead of the store (a post-copy
    /// migration): the pages are announced with [`Pending::hold`].
    pub fn set_source(&mut self, src: Box<dyn PageSource>) {
        self.remote = Some(src);
    }

    /// Announces `pages` pages of space `i` from `addr` on, at places
    /// `place`, `place + page size`, ... of the source set.
    pub fn hold(&mut self, i: usize, addr: u64, pages: u64, place: u64) -> Result<()> {
        let ps = super::page_size();
        let Some(Some((_, index))) = self.spaces.get_mut(i) else {
            return Err(Error::msg(format!("lazy pages for unknown space {i}")));
        };
        for k in 0..pages {
            index.insert(addr + k * ps, place + k * ps);
        }
        self.len += pages * ps;
        Ok(())
    }

    /// Registers the eligible mappings of every process (`procs`: its pid
    /// here and its mappings, in space order) for missing pages and starts
    /// the thread that fills them.  From here on the processes may touch
    /// their memory.
    pub fn start(self, procs: &[(i32, &[Vma])]) -> Result<Phase> {
        let mut spaces = Vec::new();
        let mut roots = Vec::new();
        for (slot, &(pid, vmas)) in self.spaces.into_iter().zip(procs) {
            roots.push((pid, crest_sys::pidfd::open(pid)?));
            let Some((u, index)) = slot else { continue };
            for v in vmas.iter().filter(|v| eligible(v)) {
                u.register_missing(v.start, v.end)?;
            }
            spaces.push(Space {
                uffd: u,
                index,
                pid,
                retry: Vec::new(),
            });
        }
        use std::os::fd::AsRawFd;
        let hold: Vec<i32> = spaces.iter().map(|s| s.uffd.as_raw_fd()).collect();
        let pidfds: Vec<i32> = roots.iter().map(|(_, f)| f.as_raw_fd()).collect();
        let watchdog = crest_sys::watchdog::Watchdog::spawn(&hold, &pidfds)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t0 = self.t0;
        let store: Box<dyn PageSource> = match self.remote {
            Some(r) => r,
            None => Box::new(self.store),
        };
        let handle = std::thread::Builder::new()
            .name("crest-lazy".into())
            .spawn(move || {
                let r = serve(spaces, store, roots, &s, t0, &watchdog);
                watchdog.dismiss();
                r
            })
            .map_err(|e| Error::msg(format!("starting the lazy page thread: {e}")))?;
        Ok(Phase {
            inner: Arc::new(Mutex::new(Some(handle))),
            stop,
        })
    }
}

/// The lazy phase under way (clones are handles on the same phase).
#[derive(Clone)]
pub struct Phase {
    inner: Arc<Mutex<Option<std::thread::JoinHandle<Result<Stats>>>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("lazy::Phase")
    }
}

impl Phase {
    /// Waits until every page is in (or the phase failed and the tree was
    /// killed).  A second call returns an error.
    pub fn wait(&self) -> Result<Stats> {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        match h {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::msg("the lazy page thread panicked"))),
            None => Err(Error::msg("the lazy phase was waited for already")),
        }
    }

    /// Stops the phase (the restore failed: its stubs are being killed);
    /// an error if the phase had failed already.
    pub fn abort(&self) -> Result<Stats> {
        self.stop.store(true, Ordering::Release);
        self.wait()
    }
}

/// One address space being filled.
struct Space {
    uffd: Userfaultfd,
    index: Index,
    /// The process it was restored as (for a forked child: its parent).
    pid: i32,
    /// Faults to answer again once the layout change under way is read.
    retry: Vec<u64>,
}

/// The test hook `CREST_FAULT_LAZY_AFTER=N`: reading the store fails
/// after N pages (a lost page source); with `CREST_FAULT_LAZY_STALL` set
/// it stops answering instead.
fn fail_after() -> Option<u64> {
    std::env::var("CREST_FAULT_LAZY_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The server: fills faults and pushes the store until it is empty.  On
/// any failure it kills the tree (`roots` and their descendants) first.
fn serve(
    mut spaces: Vec<Space>,
    store: Box<dyn PageSource>,
    roots: Vec<(i32, OwnedFd)>,
    stop: &AtomicBool,
    t0: Instant,
    watchdog: &crest_sys::watchdog::Watchdog,
) -> Result<Stats> {
    let t1 = Instant::now();
    let mut st = Stats::default();
    let mut src = Source {
        store,
        read: 0,
        fail_after: fail_after(),
    };
    let mut forked = Forked {
        watchdog,
        known: roots.iter().map(|(p, _)| *p).collect(),
        roots: roots.iter().map(|(p, _)| *p).collect(),
        unfound: 0,
        last: Instant::now(),
    };
    let mut r = run(&mut spaces, &mut src, stop, &mut st, &mut forked);
    if r.is_ok() && !stop.load(Ordering::Acquire) {
        r = src.store.done();
    }
    match r {
        Ok(()) => {
            st.all_pages_ms = t0.elapsed().as_secs_f64() * 1000.0;
            st.lazy_ms = t1.elapsed().as_secs_f64() * 1000.0;
            // Closing the descriptors unregisters every range: each page
            // the image held is in by now.
            drop(spaces);
            Ok(st)
        }
        Err(e) => {
            let killed = kill_tree(&roots, &spaces);
            drop(spaces);
            Err(Error::msg(format!(
                "lazy restore: {e}; the restored tree was killed ({killed} processes), since it \
                 cannot run without its memory"
            )))
        }
    }
}

/// Where pages come from.
struct Source {
    store: Box<dyn PageSource>,
    read: u64,
    fail_after: Option<u64>,
}

impl Source {
    fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<()> {
        let ps = super::page_size();
        self.read += buf.len() as u64 / ps;
        if self.fail_after.is_some_and(|n| self.read > n) {
            if std::env::var_os("CREST_FAULT_LAZY_STALL").is_some() {
                // A page source that stops answering (tests kill crest here).
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            return Err(Error::msg(
                "the page source failed (CREST_FAULT_LAZY_AFTER)".to_string(),
            ));
        }
        self.store.read(off, buf)
    }
}

/// Processes forked during the phase, handed to the watchdog: their
/// address space's userfaultfd at the fork, their pidfd once found.
struct Forked<'a> {
    watchdog: &'a crest_sys::watchdog::Watchdog,
    roots: Vec<i32>,
    known: std::collections::HashSet<i32>,
    /// Forks whose process has not been found yet.
    unfound: u64,
    last: Instant,
}

/// How long a forked process is looked for (it appears in its parent's
/// children once the fork returns, which waits for crest to read the
/// event).
const FIND_FORKED: Duration = Duration::from_secs(2);

impl Forked<'_> {
    fn fork(&mut self, uffd: &OwnedFd) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.watchdog.adopt(&[uffd.as_raw_fd()])?;
        self.unfound += 1;
        self.last = Instant::now();
        Ok(())
    }

    /// Hands a pidfd of every new descendant of the tree to the watchdog.
    fn find(&mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        if self.unfound == 0 {
            return Ok(());
        }
        let mut todo = self.roots.clone();
        let mut seen: std::collections::HashSet<i32> = todo.iter().copied().collect();
        while let Some(p) = todo.pop() {
            for c in children(p) {
                if !seen.insert(c) {
                    continue;
                }
                todo.push(c);
                if self.known.insert(c) {
                    if let Ok(fd) = crest_sys::pidfd::open(c) {
                        self.watchdog.adopt(&[fd.as_raw_fd()])?;
                    }
                    self.unfound = self.unfound.saturating_sub(1);
                }
            }
        }
        if self.last.elapsed() > FIND_FORKED {
            // Gone already (exited): nothing to kill.
            self.unfound = 0;
        }
        Ok(())
    }
}

fn run(
    spaces: &mut Vec<Space>,
    src: &mut Source,
    stop: &AtomicBool,
    st: &mut Stats,
    forked: &mut Forked<'_>,
) -> Result<()> {
    let ps = super::page_size();
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; PUSH_PAGES * ps as usize];
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut busy = false;
        let mut i = 0;
        while i < spaces.len() {
            msgs.clear();
            spaces[i].uffd.read_msgs(&mut msgs)?;
            for m in msgs.drain(..) {
                busy = true;
                match m {
                    Msg::Fault { addr, .. } => spaces[i].retry.push(addr),
                    Msg::Fork { fd } => {
                        st.forks += 1;
                        forked.fork(&fd)?;
                        let child = Space {
                            uffd: Userfaultfd::new(fd, spaces[i].pid),
                            index: spaces[i].index.clone(),
                            pid: spaces[i].pid,
                            retry: Vec::new(),
                        };
                        spaces.push(child);
                    }
                    Msg::Event(e) => {
                        st.dropped_pages += layout_changed(&mut spaces[i].index, e, ps)
                    }
                }
            }
            forked.find()?;
            let faults = std::mem::take(&mut spaces[i].retry);
            for addr in faults {
                fault(&mut spaces[i], addr, src, &mut buf, st)?;
            }
            i += 1;
        }
        // Address spaces that are gone (exited, exec'd) need nothing.
        let Some(k) = spaces.iter().position(|s| !s.index.is_empty()) else {
            if spaces.iter().all(|s| s.retry.is_empty()) {
                // A last look: a fault or fork queued meanwhile.
                if !busy {
                    return Ok(());
                }
            } else {
                let fds: Vec<&Userfaultfd> = spaces.iter().map(|s| &s.uffd).collect();
                uffd::wait_any(&fds, 1)?;
            }
            continue;
        };
        if !push(&mut spaces[k], src, &mut buf, st)? && !busy {
            // Waiting for a layout change to be reported.
            let fds: Vec<&Userfaultfd> = spaces.iter().map(|s| &s.uffd).collect();
            uffd::wait_any(&fds, 1)?;
        }
    }
}

/// Updates the store after a layout change; how many held pages it
/// dropped.
fn layout_changed(index: &mut Index, e: Event, ps: u64) -> u64 {
    let mut take = |start: u64, end: u64| -> Vec<(u64, u64)> {
        let keys: Vec<(u64, u64)> = index.range(start..end).map(|(&a, &o)| (a, o)).collect();
        for (a, _) in &keys {
            index.remove(a);
        }
        keys
    };
    match e {
        Event::Remove { start, end } | Event::Unmap { start, end } => take(start, end).len() as u64,
        Event::Remap { from, to, len } => {
            let moved = take(from, from + len);
            for (a, o) in moved {
                index.insert(a - from + to, o);
            }
            let _ = ps;
            0
        }
    }
}

/// Answers a fault at `addr`: the page and the next ones in the store, or
/// the zero page.
fn fault(s: &mut Space, addr: u64, src: &mut Source, buf: &mut [u8], st: &mut Stats) -> Result<()> {
    let ps = super::page_size();
    let run = contiguous(&s.index, addr, FAULT_PAGES, ps);
    if run.is_empty() {
        return match s.uffd.try_zeropage(addr, ps)? {
            Fill::Done(_) => {
                st.zero_faults += 1;
                Ok(())
            }
            Fill::Again(_) => {
                s.retry.push(addr);
                Ok(())
            }
            // Filled meanwhile, or no longer registered (unmapped): the
            // task retries its access once woken.
            Fill::Exists(_) | Fill::Unmapped(_) => {
                let _ = s.uffd.wake(addr, ps);
                Ok(())
            }
            Fill::Gone => Ok(()),
        };
    }
    let n = fill(s, &run, src, buf, ps)?;
    if n == 0 {
        s.retry.push(addr);
    }
    st.fault_pages += n;
    Ok(())
}

/// Pushes the next run of pages of `s`; false if the layout is changing.
fn push(s: &mut Space, src: &mut Source, buf: &mut [u8], st: &mut Stats) -> Result<bool> {
    let ps = super::page_size();
    let Some((&first, _)) = s.index.iter().next() else {
        return Ok(true);
    };
    let mut run = contiguous(&s.index, first, PUSH_PAGES, ps);
    let here = src.store.ready(run[0].1, run.len())?;
    if here == 0 {
        // Not arrived yet (a post-copy source sends them in order).
        return Ok(false);
    }
    run.truncate(here);
    let before = s.index.len();
    let n = fill(s, &run, src, buf, ps)?;
    st.pushed_pages += n;
    Ok(s.index.len() < before)
}

/// Pages of `index` from `addr` on at consecutive addresses and store
/// offsets, at most `max`: (address, store offset) of the first, count.
fn contiguous(index: &Index, addr: u64, max: usize, ps: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (&a, &o) in index.range(addr..) {
        match out.last() {
            None if a != addr => break,
            Some(&(la, lo)) if a != la + ps || o != lo + ps => break,
            _ => {}
        }
        out.push((a, o));
        if out.len() == max {
            break;
        }
    }
    out
}

/// Fills the pages of `run` from the store; those filled (or found there
/// already, or no longer mapped) leave the index.  Returns the pages that
/// left it.
fn fill(
    s: &mut Space,
    run: &[(u64, u64)],
    src: &mut Source,
    buf: &mut [u8],
    ps: u64,
) -> Result<u64> {
    let Some(&(addr, off)) = run.first() else {
        return Ok(0);
    };
    let len = run.len() * ps as usize;
    src.read(off, &mut buf[..len])
        .map_err(|e| Error::msg(format!("pid {}: page {addr:#x}: {e}", s.pid)))?;
    crate::fault::point("lazy: filling pages")?;
    let mut done = 0u64;
    while done < len as u64 {
        let at = addr + done;
        let r = s.uffd.try_copy(at, &buf[done as usize..len])?;
        match r {
            Fill::Done(n) => done += n,
            Fill::Again(n) => {
                done += n;
                break;
            }
            // A page there already (the task had it from a fork, or
            // crest filled it): keep it.
            Fill::Exists(n) => {
                done += n;
                let _ = s.uffd.wake(addr + done, ps);
                done += ps;
            }
            // Not registered there any more (a mapping gone without an
            // event to this descriptor, such as a MADV_DONTFORK one in a
            // forked child): nothing to fill.
            Fill::Unmapped(n) => {
                done += n;
                done += ps;
            }
            Fill::Gone => {
                s.index.clear();
                return Ok(run.len() as u64);
            }
        }
    }
    let pages = (done / ps) as usize;
    for &(a, _) in &run[..pages.min(run.len())] {
        s.index.remove(&a);
    }
    Ok(pages as u64)
}

/// Kills the tree: its processes, everything below them, and the address
/// spaces crest still serves.  Returns how many processes it signalled.
fn kill_tree(roots: &[(i32, OwnedFd)], _spaces: &[Space]) -> usize {
    let mut n = 0;
    let mut pids = Vec::new();
    for (pid, fd) in roots {
        pids.push(*pid);
        if crest_sys::pidfd::send_signal(fd, libc::SIGKILL).is_ok() {
            n += 1;
        }
    }
    // Children (also those forked during the lazy phase) are found from
    // their parents' /proc children lists, until no new one appears.
    let mut seen: std::collections::HashSet<i32> = pids.iter().copied().collect();
    let mut todo = pids;
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if seen.insert(c) {
                if crest_sys::process::kill(c, libc::SIGKILL).is_ok() {
                    n += 1;
                }
                todo.push(c);
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    n
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let p = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|w| w.parse::<i32>().ok()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_changes_move_and_drop_pages() {
        let ps = 4096;
        let mut ix: Index = (0..8).map(|i| (0x10000 + i * ps, i * ps)).collect();
        layout_changed(
            &mut ix,
            Event::Remove {
                start: 0x10000,
                end: 0x10000 + 2 * ps,
            },
            ps,
        );
        assert_eq!(ix.len(), 6);
        layout_changed(
            &mut ix,
            Event::Remap {
                from: 0x10000 + 6 * ps,
                to: 0x90000,
                len: 2 * ps,
            },
            ps,
        );
        assert_eq!(ix.get(&0x90000), Some(&(6 * ps)));
        assert_eq!(ix.get(&(0x90000 + ps)), Some(&(7 * ps)));
        assert!(!ix.contains_key(&(0x10000 + 6 * ps)));
        layout_changed(
            &mut ix,
            Event::Unmap {
                start: 0,
                end: 0x20000,
            },
            ps,
        );
        assert_eq!(ix.len(), 2);
        let run = contiguous(&ix, 0x90000, 16, ps);
        assert_eq!(run, vec![(0x90000, 6 * ps), (0x90000 + ps, 7 * ps)]);
        assert!(contiguous(&ix, 0x90000 + 2 * ps, 16, ps).is_empty());
    }
}
