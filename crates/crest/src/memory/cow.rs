//! Pages shared copy-on-write between processes of the tree.
//!
//! After a fork, parent and child map the same physical pages until one
//! of them writes.  Saved process by process, each would come back with
//! copies of its own: a parent with 64 MiB and ten children would need
//! eleven times the memory.
//!
//! **Dump** finds the sharing: a private anonymous mapping with the same
//! bounds in several processes (fork keeps addresses) whose pages have
//! the same page frame in /proc/PID/pagemap (which shows frames to a
//! reader with CAP_SYS_ADMIN; without it nothing is found shared).  Each
//! such range becomes an [`ObjectKind::Cow`] object; the shared pages
//! (for each address, the frame most processes share) are saved once, in
//! the page chunks of address space [`COW_SPACE`], written before every
//! other chunk, and left out of the processes' own pages.  A process that
//! maps the range but lacks a page others share records it in `cow_drop`.
//! Mappings with MADV_DONTFORK, MADV_WIPEONFORK, MAP_DROPPABLE or
//! MAP_GROWSDOWN are never shared this way (a fork would not give the
//! child their pages), nor is anything when memory is pre-copied
//! (`--leave-running` without `--no-pre-copy`).
//!
//! **Restore** recreates it the way the kernel made it: before the stubs
//! are forked, crest maps each range at its address in itself and fills
//! it with the shared pages; every stub, forked from crest and then from
//! its parent, inherits it copy-on-write.  A process keeps the inherited
//! mapping instead of emptying it, drops the pages it lacks
//! (MADV_DONTNEED) and gets only its own pages written, which breaks the
//! sharing of exactly those pages, as its own writes once did.  crest
//! unmaps its copy once the stubs exist.  Where a range's address is
//! taken in crest, the range is filled from a copy elsewhere into each
//! process instead: correct, but not shared.

use crate::error::{Error, Result};
use crate::memory::{page_size, PagePlan};
use crate::model::{Backing, Checkpoint, CowRange, Object, ObjectKind, Vma, COW_SPACE};
use crate::task::freeze::{Call, Inject};
use crest_sys::proc::{Pagemap, PagemapEntry};
use std::collections::{BTreeSet, HashMap};

/// A mapping's (start, end).
type Bounds = (u64, u64);
/// (process index, mapping index).
type Member = (usize, usize);
/// Writes runs of (address, bytes) into a process.
type WritePages<'a> = dyn Fn(&[(u64, &[u8])]) -> Result<()> + 'a;

/// Pages per run of a page plan (one chunk).
const RUN_PAGES: u64 = 512;

/// The shared pages to write, read from one process each.
pub struct CowWrites {
    /// (process index, its page plan with only the shared pages).
    pub sources: Vec<(usize, PagePlan)>,
}

fn eligible(v: &Vma) -> bool {
    eligible_kind(v)
        && !v.shared
        && !v.flags.dontfork
        && !v.flags.wipeonfork
        && !v.flags.droppable
        && !v.flags.growsdown
        && v.pages > 0
}

/// The planned pages of a mapping, as page addresses.
fn planned(runs: &[(u64, u64)]) -> BTreeSet<u64> {
    let ps = page_size();
    runs.iter()
        .flat_map(|&(a, n)| (0..n).map(move |i| a + i * ps))
        .collect()
}

/// Runs (of at most one chunk) over a set of page addresses.
fn runs_of(pages: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let ps = page_size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in pages {
        match out.last_mut() {
            Some(r) if r.0 + r.1 * ps == a && r.1 < RUN_PAGES => r.1 += 1,
            _ => out.push((a, 1)),
        }
    }
    out
}

/// Ranges (start, end) over a set of page addresses.
fn ranges_of(pages: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let ps = page_size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in pages {
        match out.last_mut() {
            Some(r) if r.1 == a => r.1 += ps,
            _ => out.push((a, a + ps)),
        }
    }
    out
}

/// Finds the pages the processes of `ckpt` share copy-on-write, moves
/// them out of the processes' page plans into [`ObjectKind::Cow`] objects
/// and returns where to read them.  `plans[i]` is process i's plan.
pub fn plan(ckpt: &mut Checkpoint, plans: &mut [PagePlan]) -> Result<CowWrites> {
    let ps = page_size();
    // Mappings with the same bounds in several processes.
    let mut same: HashMap<Bounds, Vec<Member>> = HashMap::new();
    for (pi, p) in ckpt.processes.iter().enumerate() {
        for (vi, v) in p.mm.vmas.iter().enumerate() {
            if eligible(v) {
                same.entry((v.start, v.end)).or_default().push((pi, vi));
            }
        }
    }
    // The members must map the same thing (the same file at the same
    // offset, or anonymous memory).
    let same_thing = |m: &[(usize, usize)]| {
        let v0 = &ckpt.processes[m[0].0].mm.vmas[m[0].1];
        m.iter().all(|&(pi, vi)| {
            let v = &ckpt.processes[pi].mm.vmas[vi];
            v.backing == v0.backing && v.offset == v0.offset
        })
    };
    let mut ranges: Vec<(Bounds, Vec<Member>)> = same
        .into_iter()
        .filter(|(_, m)| m.len() > 1 && same_thing(m))
        .collect();
    // Ranges must not overlap (a shared page chunk is known by its
    // address): of overlapping candidates the one most processes map wins.
    ranges.sort_by_key(|((s, e), m)| (std::cmp::Reverse(m.len()), *s, *e));
    let mut taken: Vec<(u64, u64)> = Vec::new();
    ranges.retain(|&((s, e), _)| {
        let free = !taken.iter().any(|&(ts, te)| ts < e && s < te);
        if free {
            taken.push((s, e));
        }
        free
    });
    ranges.sort();
    let mut sources: HashMap<usize, Vec<Vec<(u64, u64)>>> = HashMap::new();
    let mut pagemaps: HashMap<usize, Pagemap> = HashMap::new();
    for ((start, end), members) in ranges {
        let n = ((end - start) / ps) as usize;
        // Each member's planned pages and their frames (0: unknown).
        let mut pages: Vec<BTreeSet<u64>> = Vec::new();
        let mut frames: Vec<Vec<u64>> = Vec::new();
        for &(pi, vi) in &members {
            let pid = ckpt.processes[pi].pid;
            let pm = match pagemaps.entry(pi) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Pagemap::open(pid)?),
            };
            let mut entries = vec![PagemapEntry(0); n];
            pm.read(start, &mut entries)?;
            let mine = planned(&plans[pi].runs[vi]);
            frames.push(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let present = mine.contains(&(start + i as u64 * ps));
                        if present && e.present() {
                            e.pfn()
                        } else {
                            0
                        }
                    })
                    .collect(),
            );
            pages.push(mine);
        }
        // Per page: the frame most members share (at least two).
        let mut shared: BTreeSet<u64> = BTreeSet::new();
        let mut from: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); members.len()];
        let mut drop: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); members.len()];
        for i in 0..n {
            let mut count: HashMap<u64, usize> = HashMap::new();
            for f in frames.iter().map(|f| f[i]).filter(|&f| f != 0) {
                *count.entry(f).or_default() += 1;
            }
            let Some((&frame, _)) = count
                .iter()
                .filter(|(_, &c)| c > 1)
                .max_by_key(|(&f, &c)| (c, std::cmp::Reverse(f)))
            else {
                continue;
            };
            let addr = start + i as u64 * ps;
            shared.insert(addr);
            let mut src = None;
            for (k, f) in frames.iter().enumerate() {
                if f[i] == frame {
                    pages[k].remove(&addr);
                    src.get_or_insert(k);
                } else if !pages[k].contains(&addr) {
                    drop[k].insert(addr);
                }
            }
            from[src.expect("two members share it")].insert(addr);
        }
        if shared.is_empty() {
            continue;
        }
        let v0 = &ckpt.processes[members[0].0].mm.vmas[members[0].1];
        let file = match v0.backing {
            Backing::File(f) => Some((f, v0.offset)),
            _ => None,
        };
        let id = ckpt.objects.len() as u32;
        ckpt.objects.push(Object {
            id,
            kind: ObjectKind::Cow(CowRange {
                start,
                end,
                pages: shared.len() as u64,
                file,
            }),
        });
        for (k, &(pi, vi)) in members.iter().enumerate() {
            let v = &mut ckpt.processes[pi].mm.vmas[vi];
            v.cow = Some(id);
            v.cow_drop = ranges_of(&drop[k]);
            v.pages = pages[k].len() as u64;
            plans[pi].runs[vi] = runs_of(&pages[k]);
            if !from[k].is_empty() {
                let nvmas = ckpt.processes[pi].mm.vmas.len();
                let src = sources.entry(pi).or_insert_with(|| vec![Vec::new(); nvmas]);
                src[vi] = runs_of(&from[k]);
            }
        }
    }
    let mut sources: Vec<(usize, PagePlan)> = sources
        .into_iter()
        .map(|(pi, runs)| (pi, PagePlan { runs }))
        .collect();
    sources.sort_by_key(|s| s.0);
    Ok(CowWrites { sources })
}

/// Checks the copy-on-write references of process `pid`'s mappings.
pub fn validate(ckpt: &Checkpoint, pid: i32, v: &Vma) -> Result<()> {
    let Some(id) = v.cow else {
        return Ok(());
    };
    match ckpt.object(id) {
        Some(ObjectKind::Cow(r))
            if r.start == v.start
                && r.end == v.end
                && eligible_kind(v)
                && match v.backing {
                    Backing::File(f) => r.file == Some((f, v.offset)),
                    _ => r.file.is_none(),
                } => {}
        _ => {
            return Err(Error::Invalid(format!(
                "pid {pid}: mapping {:#x}-{:#x}: object {id} is not its copy-on-write range",
                v.start, v.end
            )))
        }
    }
    let ps = page_size();
    for &(s, e) in &v.cow_drop {
        if s % ps != 0 || e % ps != 0 || s >= e || s < v.start || e > v.end {
            return Err(Error::Invalid(format!(
                "pid {pid}: mapping {:#x}-{:#x}: dropped range {s:#x}-{e:#x} is not inside it",
                v.start, v.end
            )));
        }
    }
    Ok(())
}

fn eligible_kind(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous | Backing::File(_))
        && !v.shared
        && !v.flags.dontfork
        && !v.flags.growsdown
        // Huge pages are restored per process (crest does not hold them).
        && v.huge_page.is_none()
}

/// One range being restored, held in crest.
struct Region {
    start: u64,
    end: u64,
    /// Where crest holds it: `start` itself when mapped at its address
    /// (the stubs inherit it), else elsewhere (copied into each process).
    local: u64,
    /// Pages written into it (page index set).
    filled: BTreeSet<u64>,
    mapped: bool,
    file: Option<(u32, u64)>,
    /// Marked MADV_DONTDUMP in crest (apart from a neighbour).
    dontdump: bool,
}

/// The copy-on-write ranges of an image while it is restored.
#[derive(Default)]
pub struct Regions {
    by_object: HashMap<u32, Region>,
}

impl Regions {
    /// Maps every range of the image in crest, at its own address where
    /// that is free here.
    pub fn prepare(ckpt: &Checkpoint) -> Result<Regions> {
        let mut r = Regions::default();
        let mut all: Vec<(u64, u64)> = ckpt
            .objects
            .iter()
            .filter_map(|o| match &o.kind {
                ObjectKind::Cow(c) => Some((c.start, c.end)),
                _ => None,
            })
            .collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(Error::Invalid(format!(
                "copy-on-write ranges {:#x}-{:#x} and {:#x}-{:#x} overlap",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
        for o in &ckpt.objects {
            let ObjectKind::Cow(c) = &o.kind else {
                continue;
            };
            let len = c
                .end
                .checked_sub(c.start)
                .filter(|&l| l > 0 && l % page_size() == 0);
            let Some(len) = len else {
                return Err(Error::Invalid(format!(
                    "copy-on-write range {:#x}-{:#x} is empty or not page-aligned",
                    c.start, c.end
                )));
            };
            let noreserve = ckpt
                .processes
                .iter()
                .flat_map(|p| &p.mm.vmas)
                .any(|v| v.cow == Some(o.id) && v.flags.noreserve);
            // Next to another range of the same kind it would merge with
            // that one in crest: one of the two is marked MADV_DONTDUMP
            // for the time being (`memory::finish_vmas` clears it).
            let neighbour = r.by_object.values().find(|x| {
                x.local == x.start
                    && (x.end == c.start || x.start == c.end)
                    && x.file.map(|f| f.0) == c.file.map(|f| f.0)
            });
            let dontdump = neighbour.is_some_and(|x| !x.dontdump);
            let file = match c.file {
                Some((f, off)) => match ckpt.object(f) {
                    Some(ObjectKind::File(fid)) => {
                        Some((crate::files::open_checked(fid, false)?, off))
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "copy-on-write range {:#x}: object {f} is not a file",
                            c.start
                        )))
                    }
                },
                None => None,
            };
            // Marked before it gets its final protection, so that it never
            // has a neighbour's flags.
            let first = if dontdump {
                libc::PROT_READ
            } else {
                CROSS_PROT
            };
            let at_target = map_at(c.start, len, noreserve, file.as_ref(), first).and_then(|a| {
                if !dontdump {
                    return Ok(a);
                }
                let p = a as *mut libc::c_void;
                // SAFETY: madvise and mprotect of crest's own mapping made
                // just above, which nothing uses yet.
                let ok = unsafe {
                    libc::madvise(p, len as usize, libc::MADV_DONTDUMP) == 0
                        && libc::mprotect(p, len as usize, CROSS_PROT) == 0
                };
                if !ok {
                    // SAFETY: as above.
                    unsafe { libc::munmap(p, len as usize) };
                    return Err(Error::msg("cannot mark it"));
                }
                Ok(a)
            });
            let local = match at_target {
                Ok(a) => a,
                Err(_) => map_anon(None, len, noreserve, libc::PROT_READ | libc::PROT_WRITE)?,
            };
            r.by_object.insert(
                o.id,
                Region {
                    start: c.start,
                    end: c.end,
                    local,
                    filled: BTreeSet::new(),
                    mapped: true,
                    file: c.file,
                    dontdump: dontdump && local == c.start,
                },
            );
        }
        Ok(r)
    }

    pub fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }

    /// Takes over crest's mapping of `start..end`, already at its address
    /// and filled, as the range of object `id` (a migration's pre-built
    /// memory, see `crate::migrate::prebuild`).
    pub fn adopt(&mut self, id: u32, start: u64, end: u64) {
        self.by_object.insert(
            id,
            Region {
                start,
                end,
                local: start,
                filled: BTreeSet::new(),
                mapped: true,
                file: None,
                dontdump: false,
            },
        );
    }

    /// Writes a run of shared pages (a [`COW_SPACE`] chunk's) into its range.
    pub fn fill(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        let end = addr + data.len() as u64;
        let Some(r) = self
            .by_object
            .values_mut()
            .find(|r| r.mapped && r.start <= addr && end <= r.end)
        else {
            return Err(Error::Invalid(format!(
                "shared page chunk {addr:#x}-{end:#x} lies outside every copy-on-write range"
            )));
        };
        // SAFETY: [local + off, + len) lies inside crest's own private
        // mapping of the range, which nothing else references.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (r.local + (addr - r.start)) as *mut u8,
                data.len(),
            )
        };
        let ps = page_size();
        r.filled.extend((addr..end).step_by(ps as usize));
        Ok(())
    }

    /// Whether the stubs inherit mapping `v` (its range is at its address
    /// in crest).
    pub fn inherited(&self, v: &Vma) -> bool {
        v.cow
            .and_then(|id| self.by_object.get(&id))
            .is_some_and(|r| r.mapped && r.local == r.start)
    }

    /// The ranges the stubs inherit: kept (not unmapped) in a process
    /// that maps them, unmapped in the others with the rest of crest.
    pub fn kept_by(&self, vmas: &[Vma]) -> Vec<(u64, u64)> {
        vmas.iter()
            .filter(|v| self.inherited(v))
            .map(|v| (v.start, v.end))
            .collect()
    }

    /// Once the process's mappings exist: drops the shared pages it lacks
    /// (queued), or, where the range was not inherited, writes the shared
    /// pages into it.
    pub fn apply(&self, t: &impl Inject, write: &WritePages, vmas: &[Vma]) -> Result<()> {
        let ps = page_size();
        for v in vmas {
            let Some(r) = v.cow.and_then(|id| self.by_object.get(&id)) else {
                continue;
            };
            if self.inherited(v) {
                for &(s, e) in &v.cow_drop {
                    t.queue(Call::new(
                        libc::SYS_madvise,
                        &[s, e - s, libc::MADV_DONTNEED as u64],
                        format!("dropping pages {s:#x}-{e:#x} it does not share"),
                    ))?;
                }
                continue;
            }
            let dropped = |a: u64| v.cow_drop.iter().any(|&(s, e)| s <= a && a < e);
            let pages: Vec<u64> = r.filled.iter().copied().filter(|&a| !dropped(a)).collect();
            for part in pages.chunks(512) {
                let runs: Vec<(u64, &[u8])> = part
                    .iter()
                    .map(|&a| {
                        // SAFETY: a filled page of crest's copy of the range.
                        let s = unsafe {
                            std::slice::from_raw_parts(
                                (r.local + (a - r.start)) as *const u8,
                                ps as usize,
                            )
                        };
                        (a, s)
                    })
                    .collect();
                write(&runs)?;
            }
        }
        Ok(())
    }

    /// Unmaps crest's copies (the stubs hold theirs).
    pub fn release(&mut self) {
        for r in self.by_object.values_mut() {
            if r.mapped {
                // SAFETY: crest's own mapping of the range, no longer used.
                unsafe { libc::munmap(r.local as *mut libc::c_void, (r.end - r.start) as usize) };
                r.mapped = false;
            }
        }
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        self.release();
    }
}

/// A private mapping in crest at `at` exactly: of `file` (descriptor,
/// offset) or anonymous.
fn map_at(
    at: u64,
    len: u64,
    noreserve: bool,
    file: Option<&(std::os::fd::OwnedFd, u64)>,
    prot: i32,
) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let Some((fd, off)) = file else {
        return map_anon(Some(at), len, noreserve, prot);
    };
    let flags = libc::MAP_PRIVATE
        | libc::MAP_FIXED_NOREPLACE
        | if noreserve { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: a new private file mapping; MAP_FIXED_NOREPLACE never
    // replaces one of crest's.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            prot,
            flags,
            fd.as_raw_fd(),
            *off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(crest_sys::Error::last_os(format!("mapping {len} bytes of a file")).into());
    }
    if p as u64 != at {
        // SAFETY: the mapping just made, at the wrong place.
        unsafe { libc::munmap(p, len as usize) };
        return Err(Error::msg(format!("{at:#x} is taken in crest")));
    }
    Ok(at)
}

/// The protection of crest's copy of a range, which the stubs keep until
/// the very end (`memory::finish_vmas`): executable, so that no mapping
/// created next to it in a stub has the same flags and merges with it.
/// (Once its final protection is set, a mapping inherited through fork
/// no longer merges with neighbours that were not: the kernel does not
/// merge anonymous memory of different ancestries.)
const CROSS_PROT: i32 = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

/// A private anonymous mapping in crest, at `at` exactly or anywhere.
fn map_anon(at: Option<u64>, len: u64, noreserve: bool, prot: i32) -> Result<u64> {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | if noreserve { libc::MAP_NORESERVE } else { 0 }
        | at.map_or(0, |_| libc::MAP_FIXED_NOREPLACE);
    // SAFETY: a new anonymous mapping; with MAP_FIXED_NOREPLACE it never
    // replaces one of crest's.
    let p = unsafe {
        libc::mmap(
            at.unwrap_or(0) as *mut libc::c_void,
            len as usize,
            prot,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(
            crest_sys::Error::last_os(format!("mapping {len} bytes of shared pages")).into(),
        );
    }
    if let Some(a) = at {
        if p as u64 != a {
            // SAFETY: the mapping just made, at the wrong place.
            unsafe { libc::munmap(p, len as usize) };
            return Err(Error::msg(format!("{a:#x} is taken in crest")));
        }
    }
    Ok(p as u64)
}

/// Whether a page chunk belongs to the shared pages.
pub fn is_cow_space(space: u32) -> bool {
    space == COW_SPACE
}
