//! Pre-copy: copying a process's memory while it still runs, so that a
//! `--leave-running` dump stops it only for the pages written meanwhile.
//!
//! 1. The tree is frozen for a moment while each process creates a
//!    userfaultfd (an injected syscall; crest takes the descriptor over
//!    with pidfd_getfd and closes the process's copy), then runs again.
//! 2. Every private mapping that holds pages to save is registered for
//!    asynchronous write-protect tracking and its pages are
//!    write-protected (PAGEMAP_SCAN): from then on the kernel notes each
//!    page written, without ever stopping the process.  The same
//!    userfaultfd reports munmap, mremap and madvise(DONTNEED/FREE), whose
//!    ranges are forgotten.
//! 3. The pages to save (planned exactly as the final dump plans them) are
//!    copied into a spool file (an unlinked temporary file).  Then the
//!    pages written meanwhile are listed and protected again in one
//!    PAGEMAP_SCAN and copied once more (a second, shorter round).
//! 4. The tree is frozen for the dump.  PAGEMAP_SCAN lists the pages
//!    written since the second round.
//! 5. While still frozen, the pages the final plan needs that were not
//!    copied, or were written or remapped since, are read into the spool.
//! 6. The tree runs again, closing the userfaultfds ends the tracking, and
//!    the pages go from the spool into the image.
//!
//! If tracking cannot be set up (an older kernel, a process that uses
//! userfaultfd itself, ...), the dump simply copies everything while frozen.

use crate::error::{Context, Result};
use crate::memory::{self, PagePlan};
use crate::model::{Checkpoint, Vma};
use crate::objects::ObjectTable;
use crate::task::freeze::{FrozenTree, Session};
use crest_image::{SealedPages, Writer};
use crest_sys::proc::{self, page_category, Pagemap, ScanQuery};
use crest_sys::uffd::{self, Event, Userfaultfd};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Pages read per process_vm_readv.
const CHUNK_PAGES: u64 = 512;
/// At most this many rounds after the first.
const MAX_ROUNDS: u32 = 6;
/// A round that had fewer pages to copy is the last.
const MIN_ROUND_PAGES: u64 = 256;

/// Sees every stretch of page data as it is appended to the spool (a
/// migration sends them on at once), and the tracked mappings first.
pub type Tap = Box<dyn FnMut(Tapped<'_>) -> Result<()> + Send + Sync>;

/// What a [`Tap`] is given.
pub enum Tapped<'a> {
    /// Process `pid`'s tracked mappings, before any of its pages.
    Layout { pid: i32, vmas: &'a [Vma] },
    /// `data`, read at `addr` of `pid`, went to spool offset `off`.
    Pages {
        off: u64,
        pid: i32,
        addr: u64,
        data: &'a [u8],
    },
}

/// Pages already in the spool: `pages` pages from `addr`, either all zero
/// (`off` is None) or stored at spool offset `off`.
#[derive(Debug, Clone, Copy)]
struct Copied {
    addr: u64,
    pages: u64,
    off: Option<u64>,
}

/// One process whose writes are tracked.
struct Tracked {
    pid: i32,
    uffd: Arc<Userfaultfd>,
    /// The mappings registered for tracking, in address order.
    registered: Vec<(u64, u64)>,
    /// What the pre-copy saved, in address order.
    copied: Vec<Copied>,
    /// Ranges whose copy is known stale before the freeze.
    stale: Vec<(u64, u64)>,
}

/// A pre-copy under way, or why there is none.
pub type Attempt = std::result::Result<PreCopy, String>;

/// A running pre-copy.
pub struct PreCopy {
    procs: Vec<Tracked>,
    spool: Spool,
    events: EventReader,
    pub pages_copied: u64,
    /// Rounds after the first.
    pub rounds: u32,
}

/// Reads the tracking userfaultfds' events on a thread of its own for as
/// long as the processes may change their mappings: a process that
/// unmaps or remaps a tracked range waits until its event has been read.
/// Dropping it ends the tracking: the thread stops and the descriptors
/// close, which unregisters every range and clears the protection.
struct EventReader {
    fds: Vec<Arc<Userfaultfd>>,
    stop: Arc<AtomicBool>,
    /// (pid, event), in the order read.  Events are read with the lock
    /// held, so whoever holds it has seen all that were read.
    seen: Arc<Mutex<Vec<(i32, Event)>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl EventReader {
    fn start(fds: Vec<Arc<Userfaultfd>>) -> EventReader {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, se, f) = (stop.clone(), seen.clone(), fds.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            while !st.load(Ordering::Acquire) {
                uffd::wait_any(&f, 5)?;
                drain(&f, &se)?;
            }
            Ok(())
        });
        EventReader {
            fds,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Every event so far.  With the tree frozen, no new one can come.
    fn events(&self) -> Result<Vec<(i32, Event)>> {
        drain(&self.fds, &self.seen)?;
        Ok(self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reads the events queued on `fds` into `seen`.
fn drain(fds: &[Arc<Userfaultfd>], seen: &Mutex<Vec<(i32, Event)>>) -> Result<()> {
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut batch = Vec::new();
    for u in fds {
        u.read_events(&mut batch)?;
        s.extend(batch.drain(..).map(|e| (u.pid(), e)));
    }
    Ok(())
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Has process `pid` (frozen, threads `tids`) create a userfaultfd and
/// takes it over; the inner error says why the kernel refused one.  The
/// process's own descriptor is closed again whatever happens.
pub(crate) fn take_userfaultfd(
    pid: i32,
    tids: &[i32],
) -> Result<std::result::Result<Userfaultfd, String>> {
    let maps = proc::read_maps(pid)?;
    // The leader alone runs the calls; the other threads stay stopped.
    let session = Session::open(&tids[..1], &maps)?;
    let t = session.thread(0);
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    // The process's descriptor is taken over between the call and the
    // close that follows it in the trampoline: if crest dies at any point,
    // the process closes it itself.
    let mut taken = None;
    let mut create = |flags: u64| {
        t.call_closing(
            libc::SYS_userfaultfd,
            &[flags],
            "creating a userfaultfd",
            &mut |fd| taken = Some(crest_sys::pidfd::copy_fd(pid, fd)),
        )
    };
    // Without CAP_SYS_PTRACE in the process and with
    // vm.unprivileged_userfaultfd=0, only a user-mode-only descriptor is
    // allowed; asynchronous write tracking works with either.
    let fd = match create(flags) {
        Err(e) if e.errno().is_some() => create(flags | uffd::USER_MODE_ONLY),
        r => r,
    };
    match fd {
        Ok(_) => {}
        Err(e) if e.errno().is_some() => {
            session.close()?;
            return Ok(Err(format!("pid {pid}: {e}")));
        }
        Err(e) => return Err(e),
    }
    session.close()?;
    let taken = taken.ok_or_else(|| {
        crate::error::Error::msg(format!("pid {pid}: the userfaultfd was not taken over"))
    })?;
    Ok(Ok(Userfaultfd::new(taken?, pid)))
}

impl PreCopy {
    /// Starts tracking the tree rooted at `root` and copies its memory.
    /// The inner error is why tracking is not possible (the tree then runs
    /// on as before, untracked).
    pub fn run(root: i32, progress: &mut dyn FnMut(u64, u64)) -> Result<Attempt> {
        Self::run_tapped(root, progress, None)
    }

    /// [`run`](PreCopy::run), with every page spooled also given to `tap`.
    pub fn run_tapped(
        root: i32,
        progress: &mut dyn FnMut(u64, u64),
        tap: Option<Tap>,
    ) -> Result<Attempt> {
        let tree = FrozenTree::freeze(root)?;
        let mut fds = Vec::new();
        let mut failed = None;
        for (pid, tids) in &tree.procs {
            match take_userfaultfd(*pid, tids)? {
                Ok(u) => fds.push(Arc::new(u)),
                Err(why) => {
                    failed = Some(why);
                    break;
                }
            }
        }
        tree.release()?;
        if let Some(why) = failed {
            return Ok(Err(why));
        }
        let features = uffd::feature::WP_ASYNC
            | uffd::feature::EVENT_REMAP
            | uffd::feature::EVENT_REMOVE
            | uffd::feature::EVENT_UNMAP;
        for u in &fds {
            if let Err(e) = u.api(features) {
                return Ok(Err(e.to_string()));
            }
        }
        let spool = match Spool::new(tap) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut pc = PreCopy {
            procs: fds
                .iter()
                .map(|u| Tracked {
                    pid: u.pid(),
                    uffd: u.clone(),
                    registered: Vec::new(),
                    copied: Vec::new(),
                    stale: Vec::new(),
                })
                .collect(),
            spool,
            events: EventReader::start(fds),
            pages_copied: 0,
            rounds: 0,
        };
        // Protect first, then copy: every page is protected before it is
        // read, so any write that could tear the copy marks it written.
        let mut work = Vec::new();
        for t in &mut pc.procs {
            match protect(t) {
                Ok((vmas, plan)) => {
                    t.registered = vmas.iter().map(|v| (v.start, v.end)).collect();
                    if let Some(tap) = &mut pc.spool.tap {
                        tap(Tapped::Layout {
                            pid: t.pid,
                            vmas: &vmas,
                        })?;
                    }
                    work.push((vmas, plan));
                }
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
        let ps = memory::page_size();
        let total: u64 = work
            .iter()
            .flat_map(|(_, plan)| plan.runs.iter().flatten())
            .map(|r| r.1 * ps)
            .sum();
        let jobs: Vec<Run> = work
            .iter()
            .enumerate()
            .flat_map(|(i, (vmas, plan))| {
                vmas.iter()
                    .zip(&plan.runs)
                    .flat_map(move |(v, runs)| runs.iter().map(move |&(a, n)| (i, v, a, n)))
            })
            .collect();
        let pids: Vec<i32> = pc.procs.iter().map(|t| t.pid).collect();
        let mut done = 0;
        let PreCopy {
            procs,
            spool,
            pages_copied,
            rounds,
            ..
        } = &mut pc;
        // A run unmapped meanwhile is simply not pre-copied.
        copy_runs(&pids, &jobs, |&(i, _, a, n), data| {
            if let Some(data) = data {
                spool.store(pids[i], a, data, &mut procs[i].copied)?;
                *pages_copied += n;
            }
            done += n * ps;
            progress(done, total);
            Ok(())
        })?;
        // Shorter rounds while the tree still runs: the pages written
        // during the previous one are protected again and copied once
        // more, so that the freeze has only the last round's writes to
        // copy.  Rounds go on while the written set shrinks.
        let to_protect_again = ScanQuery {
            required: page_category::WRITTEN,
            excluded: page_category::GUARD,
            any: page_category::PRESENT | page_category::SWAPPED,
            report: 0,
        };
        let mut last = u64::MAX;
        for _ in 0..MAX_ROUNDS {
            let mut again: Vec<Run> = Vec::new();
            for (i, (vmas, _)) in work.iter().enumerate() {
                let pm = match Pagemap::open(pids[i]) {
                    Ok(pm) => pm,
                    // Exited while the tree ran: nothing more to copy.
                    Err(_) if gone(pids[i]) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut written = Vec::new();
                for v in vmas {
                    written.clear();
                    pm.scan(v.start, v.end, to_protect_again, true, &mut written)?;
                    for &(s, e, _) in &written {
                        let mut a = s;
                        while a < e {
                            let n = ((e - a) / ps).min(CHUNK_PAGES);
                            again.push((i, v, a, n));
                            a += n * ps;
                        }
                    }
                }
            }
            let written: u64 = again.iter().map(|r| r.3).sum();
            let mut recopied: Vec<Vec<Copied>> = vec![Vec::new(); procs.len()];
            copy_runs(&pids, &again, |&(i, _, a, n), data| {
                match data {
                    Some(data) => spool.store(pids[i], a, data, &mut recopied[i])?,
                    // Protected again but not copied: the first copy is
                    // stale whatever the freeze finds.
                    None => procs[i].stale.push((a, a + n * ps)),
                }
                Ok(())
            })?;
            for (t, newer) in procs.iter_mut().zip(recopied) {
                t.copied = overlay(&t.copied, newer);
            }
            *rounds += 1;
            // Done when the set is small, or stops shrinking by a fifth.
            if written < MIN_ROUND_PAGES || written.saturating_mul(5) > last.saturating_mul(4) {
                break;
            }
            last = written;
        }
        Ok(Ok(pc))
    }

    /// With the tree frozen: finds, per tracked process, the pages still
    /// good in the spool.  Tracking goes on until [`Prepared::end_tracking`].
    pub fn stop(self) -> Result<Prepared> {
        let PreCopy {
            procs,
            spool,
            events,
            pages_copied,
            ..
        } = self;
        let seen = events.events()?;
        let mut clean = Vec::with_capacity(procs.len());
        for t in procs {
            let mut stale: Vec<(u64, u64)> = t.stale.clone();
            let mut ours = t.registered.clone();
            for (pid, e) in &seen {
                if *pid != t.pid {
                    continue;
                }
                match *e {
                    Event::Remap { from, to, len } => {
                        let (f, d) = (from.saturating_add(len), to.saturating_add(len));
                        stale.push((from, f));
                        stale.push((to, d));
                        // The registration moves with the mapping.
                        ours = subtract(&ours, from, f);
                        ours = subtract(&ours, to, d);
                        ours.push((to, d));
                        ours = merge(ours);
                    }
                    Event::Remove { start, end } => stale.push((start, end)),
                    Event::Unmap { start, end } => {
                        stale.push((start, end));
                        ours = subtract(&ours, start, end);
                    }
                }
            }
            let pm = match Pagemap::open(t.pid) {
                Ok(pm) => pm,
                // Exited since the pre-copy began: it is not in the frozen
                // tree, and what was copied of it is never used.
                Err(_) if gone(t.pid) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut written = Vec::new();
            let was_written = ScanQuery {
                required: page_category::WRITTEN,
                ..Default::default()
            };
            for &(start, end) in &t.registered {
                pm.scan(start, end, was_written, false, &mut written)?;
            }
            stale.extend(written.into_iter().map(|(s, e, _)| (s, e)));
            clean.push(CleanPages {
                pid: t.pid,
                copied: t.copied,
                stale: merge(stale),
                ours,
            });
        }
        Ok(Prepared {
            clean,
            spool,
            tracking: Some(events),
            pages_copied,
            pages_reread: 0,
        })
    }
}

/// Whether process `pid` has exited (gone, or a zombie) since it was
/// tracked.
fn gone(pid: i32) -> bool {
    !crest_sys::process::exists(pid) || crate::task::freeze::is_zombie(pid)
}

/// `older` (sorted, disjoint) with every page that `newer` (sorted,
/// disjoint) holds taken from `newer` instead.
fn overlay(older: &[Copied], newer: Vec<Copied>) -> Vec<Copied> {
    let ps = memory::page_size();
    let covered = merge(
        newer
            .iter()
            .map(|c| (c.addr, c.addr + c.pages * ps))
            .collect(),
    );
    let mut out = newer;
    for c in older {
        let end = c.addr + c.pages * ps;
        let i = covered.partition_point(|r| r.1 <= c.addr);
        let mut left = vec![(c.addr, end)];
        for r in covered[i..].iter().take_while(|r| r.0 < end) {
            left = left
                .iter()
                .flat_map(|&(s, e)| subtract(&[(s, e)], r.0, r.1))
                .collect();
        }
        out.extend(left.into_iter().map(|(s, e)| Copied {
            addr: s,
            pages: (e - s) / ps,
            off: c.off.map(|o| o + (s - c.addr)),
        }));
    }
    out.sort_unstable_by_key(|c| c.addr);
    out
}

/// `r` (sorted, disjoint) without `start..end`.
fn subtract(r: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(r.len() + 1);
    for &(s, e) in r {
        if e <= start || end <= s {
            out.push((s, e));
            continue;
        }
        if s < start {
            out.push((s, start));
        }
        if end < e {
            out.push((end, e));
        }
    }
    out
}

/// Pages to copy from a running task: (index of its process, its
/// mapping, address, pages).
type Run<'a> = (usize, &'a Vma, u64, u64);

/// Copies each run out of its process (`pids[index]`) on a second thread
/// while `store` takes the previous one on this thread: the run's bytes,
/// or None if they could not be read (unmapped meanwhile).
fn copy_runs(
    pids: &[i32],
    runs: &[Run],
    mut store: impl FnMut(&Run, Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    let ps = memory::page_size();
    let len = |n: u64| (n * ps) as usize;
    crate::dump::pipeline::run(
        runs,
        len(CHUNK_PAGES),
        |&(i, v, a, n), mut buf| {
            let read = read_task(pids[i], v, a, &mut buf[..len(n)]).is_ok();
            Ok((buf, read))
        },
        |r, (buf, read)| {
            store(r, read.then(|| &buf[..len(r.3)]))?;
            Ok(buf)
        },
    )
}

/// Registers the mappings of `t` that hold pages to save and
/// write-protects them; returns the mappings and the plan to copy.
fn protect(t: &Tracked) -> Result<(Vec<Vma>, PagePlan)> {
    let pid = t.pid;
    let maps = proc::read_smaps(pid)?;
    let mut objects = ObjectTable::default();
    let mut obstacles = Vec::new();
    let mut data = Vec::new();
    let mut vmas = memory::collect_vmas(pid, &maps, &mut objects, &mut obstacles, &mut data)?;
    vmas.retain(memory::takes_pages);
    // Register before planning, so that a page dropped between the plan
    // and the protection is reported.
    let mut tracked = Vec::with_capacity(vmas.len());
    for v in vmas {
        if t.uffd.register_wp(v.start, v.end).is_ok() {
            tracked.push(v);
        }
    }
    let plan = memory::plan_pages(pid, &mut tracked)?;
    let pm = Pagemap::open(pid)?;
    // Only pages that exist and are not guard markers: protecting a hole
    // or a guard marker would leave a bit in its page-table entry after
    // the tracking ends.
    let to_protect = ScanQuery {
        required: page_category::WRITTEN,
        excluded: page_category::GUARD,
        any: page_category::PRESENT | page_category::SWAPPED,
        report: 0,
    };
    let mut scratch = Vec::new();
    for (v, runs) in tracked.iter().zip(&plan.runs) {
        if !runs.is_empty() {
            scratch.clear();
            pm.scan(v.start, v.end, to_protect, true, &mut scratch)?;
        }
    }
    Ok((tracked, plan))
}

/// Reads `buf.len()` bytes of mapping `v` of `pid` at `addr`.
fn read_task(pid: i32, v: &Vma, addr: u64, buf: &mut [u8]) -> Result<()> {
    if v.prot & libc::PROT_READ as u32 != 0 {
        crest_sys::mem::read(pid, addr, buf)?;
    } else {
        crest_sys::mem::ProcMem::open(pid, false)?.read(addr, buf)?;
    }
    Ok(())
}

/// Sorted, merged copy of `r`, widened to whole pages.
fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let ps = memory::page_size();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        let (s, e) = (s / ps * ps, e.div_ceil(ps).saturating_mul(ps));
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// What the pre-copy left usable for one process.
struct CleanPages {
    pid: i32,
    copied: Vec<Copied>,
    /// Ranges whose copy is stale (written, remapped, dropped), merged.
    stale: Vec<(u64, u64)>,
    /// Where crest's own registration is now (sorted, disjoint).
    ours: Vec<(u64, u64)>,
}

/// The spool and what in it is still good, once the tree is frozen.
pub struct Prepared {
    clean: Vec<CleanPages>,
    spool: Spool,
    tracking: Option<EventReader>,
    pub pages_copied: u64,
    /// Pages read again (or for the first time) while frozen.
    pub pages_reread: u64,
}

/// Non-zero pages to write, per process.
pub struct SpooledPages(Vec<Runs>);

impl SpooledPages {
    /// The page chunks to write, for a receiver that holds a copy of the
    /// spool (fed by the [`Tap`]).
    pub fn windows(&self) -> Vec<Window> {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(space, runs)| runs.windows(space as u32))
            .collect()
    }
}

impl Prepared {
    /// Clears, in `maps` of process `pid`, the write-tracking flag of the
    /// mappings crest itself registered, so that collecting them does not
    /// take them for the process's own use of userfaultfd.
    pub fn hide_tracking(&self, pid: i32, maps: &mut [proc::MapEntry]) {
        let Some(c) = self.clean.iter().find(|c| c.pid == pid) else {
            return;
        };
        for m in maps {
            let i = c.ours.partition_point(|r| r.1 <= m.start);
            let inside = matches!(c.ours.get(i), Some(&(s, e)) if s <= m.start && m.end <= e);
            if inside && m.vm_flags.contains(proc::VmFlags::UFFD_WP) {
                m.vm_flags.bits &= !proc::VmFlags::UFFD_WP;
            }
        }
    }

    /// Bytes in the spool (all that a [`Tap`] was given).
    pub fn spool_len(&self) -> u64 {
        self.spool.len
    }

    /// Ends the tracking (once the tree runs again: unregistering takes
    /// time in proportion to the memory).
    pub fn end_tracking(&mut self) {
        self.tracking = None;
    }

    /// With the tree still frozen: puts into the spool every page of the
    /// final plan that is not already there and clean, and returns where
    /// each page to write is.
    pub fn complete(&mut self, ckpt: &Checkpoint, plans: &[PagePlan]) -> Result<SpooledPages> {
        let ps = memory::page_size();
        let mut out = Vec::with_capacity(ckpt.processes.len());
        let mut buf = vec![0u8; (CHUNK_PAGES * ps) as usize];
        for (p, plan) in ckpt.processes.iter().zip(plans) {
            let clean = self.clean.iter().find(|c| c.pid == p.pid);
            let mut runs = Runs::default();
            let mut cursor = Cursor::default();
            for (v, vruns) in p.mm.vmas.iter().zip(&plan.runs) {
                // A chunk must not span two mappings.
                runs.barrier();
                for &(start, n) in vruns {
                    let end = start + n * ps;
                    let mut a = start;
                    while a < end {
                        let found = match clean {
                            Some(c) => cursor.lookup(c, a, end, ps),
                            None => Lookup::Dirty {
                                pages: (end - a) / ps,
                            },
                        };
                        let pages = match found {
                            Lookup::Clean { pages, off } => {
                                if let Some(off) = off {
                                    runs.push(a, pages, off);
                                }
                                pages
                            }
                            Lookup::Dirty { pages } => {
                                reread(&mut self.spool, p.pid, v, a, pages, &mut buf, &mut runs)?;
                                self.pages_reread += pages;
                                pages
                            }
                        };
                        a += pages * ps;
                    }
                }
            }
            out.push(runs);
        }
        Ok(SpooledPages(out))
    }

    /// With the tree running again: writes the spooled pages as page
    /// chunks, one window of up to a chunk of pages of one mapping at a
    /// time (sparse where that is smaller); returns the pages written.
    pub fn write_pages<W: Write>(
        &self,
        pages: &SpooledPages,
        compress: bool,
        out: &mut Writer<W>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let ps = memory::page_size();
        let image_ps = out.page_size();
        let total: u64 = pages.0.iter().flat_map(|r| &r.list).map(|r| r.1 * ps).sum();
        let windows: Vec<Window> = pages
            .0
            .iter()
            .enumerate()
            .flat_map(|(space, runs)| runs.windows(space as u32))
            .collect();
        let mut done = 0;
        crate::dump::pipeline::run(
            &windows,
            (CHUNK_PAGES * ps) as usize,
            |w, mut buf| {
                let len = (w.pages * ps) as usize;
                buf[..len].fill(0);
                for &(at, n, off) in &w.pieces {
                    let from = (at - w.addr) as usize;
                    self.spool
                        .read(off, &mut buf[from..from + (n * ps) as usize])?;
                }
                Ok(SealedPages::seal(w.space, w.addr, buf, len, image_ps)?)
            },
            |_, sealed| {
                out.write_sealed(&sealed, compress)?;
                done += sealed.pages() * ps;
                progress(done, total);
                crate::fault::point("dump: page chunk written")?;
                Ok(sealed.into_buffer())
            },
        )?;
        Ok(done / ps)
    }
}

/// Spooled pages of one window of memory: `pages` pages from `addr` of
/// address space `space`, of which `pieces` (address, pages, spool
/// offset) are in the spool and the rest are zero.
pub struct Window {
    pub space: u32,
    pub addr: u64,
    pub pages: u64,
    pub pieces: Vec<(u64, u64, u64)>,
}

/// Runs of spooled pages to write: (address, pages, spool offset), with
/// neighbours in memory and in the spool merged up to a chunk.
#[derive(Default)]
struct Runs {
    list: Vec<(u64, u64, u64)>,
    /// Entries before this one are closed to merging.
    floor: usize,
    /// Where each mapping's entries start in `list`.
    mappings: Vec<usize>,
}

impl Runs {
    fn push(&mut self, addr: u64, pages: u64, off: u64) {
        let ps = memory::page_size();
        if self.list.len() > self.floor {
            let l = self.list.last_mut().expect("not empty");
            if l.0 + l.1 * ps == addr && l.2 + l.1 * ps == off && l.1 + pages <= CHUNK_PAGES {
                l.1 += pages;
                return;
            }
        }
        self.list.push((addr, pages, off));
    }

    fn barrier(&mut self) {
        self.floor = self.list.len();
        self.mappings.push(self.floor);
    }

    /// The runs cut into windows of at most a chunk of pages, each inside
    /// one mapping.
    fn windows(&self, space: u32) -> Vec<Window> {
        let ps = memory::page_size();
        let mut out: Vec<Window> = Vec::new();
        let mut bounds = self.mappings.clone();
        bounds.push(self.list.len());
        for m in bounds.windows(2) {
            let mut open: Option<Window> = None;
            for &(addr, n, off) in &self.list[m[0]..m[1]] {
                let (mut a, mut n, mut off) = (addr, n, off);
                while n > 0 {
                    let fits = matches!(&open, Some(w) if a + ps <= w.addr + CHUNK_PAGES * ps);
                    if !fits {
                        out.extend(open.take());
                        open = Some(Window {
                            space,
                            addr: a,
                            pages: 0,
                            pieces: Vec::new(),
                        });
                    }
                    let w = open.as_mut().expect("opened above");
                    let room = (w.addr + CHUNK_PAGES * ps - a) / ps;
                    let take = n.min(room);
                    w.pieces.push((a, take, off));
                    w.pages = (a - w.addr) / ps + take;
                    a += take * ps;
                    off += take * ps;
                    n -= take;
                }
            }
            out.extend(open.take());
        }
        out
    }
}

/// Reads `n` pages at `a` of mapping `v` from the frozen task `pid`
/// into the spool, adding each non-zero stretch to `runs`.
fn reread(
    spool: &mut Spool,
    pid: i32,
    v: &Vma,
    a: u64,
    n: u64,
    buf: &mut [u8],
    runs: &mut Runs,
) -> Result<()> {
    let ps = memory::page_size();
    let data = &mut buf[..(n * ps) as usize];
    read_task(pid, v, a, data).context(|| format!("reading the memory of pid {pid}"))?;
    let mut stored = Vec::new();
    spool.store(pid, a, data, &mut stored)?;
    for c in stored {
        if let Some(off) = c.off {
            runs.push(c.addr, c.pages, off);
        }
    }
    Ok(())
}

enum Lookup {
    /// `pages` pages from the address are in the spool from `off` (None:
    /// all zero) and clean.
    Clean { pages: u64, off: Option<u64> },
    /// `pages` pages from the address must be read again.
    Dirty { pages: u64 },
}

/// Positions in a process's sorted `copied` and `stale` lists; lookups
/// must come in increasing address order.
#[derive(Default)]
struct Cursor {
    copied: usize,
    stale: usize,
}

impl Cursor {
    /// Classifies the pages from `a` (up to `end`) as one clean or dirty
    /// stretch.
    fn lookup(&mut self, c: &CleanPages, a: u64, end: u64, ps: u64) -> Lookup {
        let copied_end = |x: &Copied| x.addr + x.pages * ps;
        while self.copied < c.copied.len() && copied_end(&c.copied[self.copied]) <= a {
            self.copied += 1;
        }
        while self.stale < c.stale.len() && c.stale[self.stale].1 <= a {
            self.stale += 1;
        }
        let stale = c.stale.get(self.stale).copied();
        let copied = c.copied.get(self.copied).copied();
        let in_stale = matches!(stale, Some((s, _)) if s <= a);
        let in_copied = matches!(copied, Some(x) if x.addr <= a);
        if in_copied && !in_stale {
            let x = copied.expect("checked above");
            let mut stop = copied_end(&x).min(end);
            if let Some((s, _)) = stale {
                stop = stop.min(s.max(a + ps));
            }
            let pages = (stop - a) / ps;
            let off = x.off.map(|o| o + (a - x.addr));
            return Lookup::Clean { pages, off };
        }
        // Dirty up to the next clean page: the end of the stale range, or
        // the start of the next copied stretch.
        let mut stop = end;
        if in_stale {
            stop = stop.min(stale.expect("checked above").1);
        }
        if let Some(x) = copied {
            if x.addr > a {
                stop = stop.min(x.addr);
            }
        }
        Lookup::Dirty {
            pages: ((stop - a) / ps).max(1),
        }
    }
}

/// Page data kept in an unlinked temporary file.
struct Spool {
    file: std::fs::File,
    len: u64,
    tap: Option<Tap>,
}

impl Spool {
    fn new(tap: Option<Tap>) -> Result<Spool> {
        Ok(Spool {
            file: crate::files::spool_file()?,
            len: 0,
            tap,
        })
    }

    /// Appends the non-zero pages of `data` (read at `addr` of `pid`) and
    /// records every page, zero or not, in `copied`.
    fn store(&mut self, pid: i32, addr: u64, data: &[u8], copied: &mut Vec<Copied>) -> Result<()> {
        let ps = memory::page_size() as usize;
        let mut i = 0;
        while i < data.len() {
            let zero = memory::is_zero(&data[i..i + ps]);
            let mut j = i + ps;
            while j < data.len() && memory::is_zero(&data[j..j + ps]) == zero {
                j += ps;
            }
            let off = if zero {
                None
            } else {
                self.file
                    .write_all_at(&data[i..j], self.len)
                    .context(|| "writing the pre-copy spool".into())?;
                if let Some(tap) = &mut self.tap {
                    tap(Tapped::Pages {
                        off: self.len,
                        pid,
                        addr: addr + i as u64,
                        data: &data[i..j],
                    })?;
                }
                self.len += (j - i) as u64;
                Some(self.len - (j - i) as u64)
            };
            copied.push(Copied {
                addr: addr + i as u64,
                pages: ((j - i) / ps) as u64,
                off,
            });
            i = j;
        }
        Ok(())
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, off)
            .context(|| "reading the pre-copy spool".into())
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spool(fd {}, {} bytes)", self.file.as_raw_fd(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    /// Splits `start..end` the way `Prepared::complete` does.
    fn classify(c: &CleanPages, start: u64, end: u64) -> Vec<(u64, u64, Option<Option<u64>>)> {
        let mut cursor = Cursor::default();
        let mut out = Vec::new();
        let mut a = start;
        while a < end {
            let (n, what) = match cursor.lookup(c, a, end, P) {
                Lookup::Clean { pages, off } => (pages, Some(off)),
                Lookup::Dirty { pages } => (pages, None),
            };
            out.push((a, n, what));
            a += n * P;
        }
        out
    }

    #[test]
    fn clean_and_stale_stretches() {
        let c = CleanPages {
            pid: 1,
            copied: vec![
                Copied {
                    addr: 0x10000,
                    pages: 4,
                    off: Some(0),
                },
                Copied {
                    addr: 0x14000,
                    pages: 2,
                    off: None,
                },
                Copied {
                    addr: 0x20000,
                    pages: 4,
                    off: Some(4 * P),
                },
            ],
            stale: merge(vec![(0x11000, 0x12000), (0x21800, 0x22000)]),
            ours: Vec::new(),
        };
        assert_eq!(
            classify(&c, 0xe000, 0x24000),
            vec![
                // Never copied.
                (0xe000, 2, None),
                (0x10000, 1, Some(Some(0))),
                // Written.
                (0x11000, 1, None),
                (0x12000, 2, Some(Some(2 * P))),
                // Copied as zero.
                (0x14000, 2, Some(None)),
                (0x16000, 10, None),
                (0x20000, 1, Some(Some(4 * P))),
                // A stale range not page aligned covers the whole page.
                (0x21000, 1, None),
                (0x22000, 2, Some(Some(6 * P))),
            ]
        );
    }

    #[test]
    fn newer_copies_replace_older_ones_page_by_page() {
        let older = vec![
            Copied {
                addr: 0x10000,
                pages: 8,
                off: Some(0),
            },
            Copied {
                addr: 0x20000,
                pages: 2,
                off: None,
            },
        ];
        let newer = vec![
            Copied {
                addr: 0x12000,
                pages: 2,
                off: Some(100 * P),
            },
            Copied {
                addr: 0x21000,
                pages: 1,
                off: Some(200 * P),
            },
        ];
        let got: Vec<(u64, u64, Option<u64>)> = overlay(&older, newer)
            .iter()
            .map(|c| (c.addr, c.pages, c.off))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x10000, 2, Some(0)),
                (0x12000, 2, Some(100 * P)),
                (0x14000, 4, Some(4 * P)),
                (0x20000, 1, None),
                (0x21000, 1, Some(200 * P)),
            ]
        );
    }

    #[test]
    fn interval_arithmetic() {
        assert_eq!(
            merge(vec![(0x3000, 0x4000), (0x1000, 0x2800), (0x2000, 0x3000)]),
            vec![(0x1000, 0x4000)]
        );
        let r = vec![(0x1000, 0x5000), (0x8000, 0x9000)];
        assert_eq!(
            subtract(&r, 0x2000, 0x3000),
            vec![(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]
        );
        assert_eq!(subtract(&r, 0x0, 0x8800), vec![(0x8800, 0x9000)]);
    }

    #[test]
    fn runs_merge_within_a_mapping_only() {
        let mut r = Runs::default();
        r.push(0x1000, 2, 0);
        r.push(0x3000, 1, 2 * P);
        r.barrier();
        r.push(0x4000, 1, 3 * P);
        r.push(0x6000, 1, 4 * P);
        assert_eq!(
            r.list,
            vec![(0x1000, 3, 0), (0x4000, 1, 3 * P), (0x6000, 1, 4 * P)]
        );
    }

    #[test]
    fn windows_hold_a_chunk_within_a_mapping() {
        let c = CHUNK_PAGES;
        let mut r = Runs::default();
        r.barrier();
        r.push(0x10_0000, 2, 0);
        // Past the first window's end by one page: split.
        r.push(0x10_0000 + (c - 1) * P, 2, 2 * P);
        r.barrier();
        r.push(0x10_0000 + (c + 1) * P, 1, 4 * P);
        let w = r.windows(3);
        type Shape = (u32, u64, u64, Vec<(u64, u64, u64)>);
        let got: Vec<Shape> = w
            .into_iter()
            .map(|w| (w.space, w.addr, w.pages, w.pieces))
            .collect();
        let second = 0x10_0000 + c * P;
        assert_eq!(
            got,
            vec![
                (
                    3,
                    0x10_0000,
                    c,
                    vec![(0x10_0000, 2, 0), (0x10_0000 + (c - 1) * P, 1, 2 * P)]
                ),
                (3, second, 1, vec![(second, 1, 3 * P)]),
                // Another mapping starts a window of its own.
                (3, second + P, 1, vec![(second + P, 1, 4 * P)]),
            ]
        );
    }
}
