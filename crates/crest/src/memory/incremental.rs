//! Incremental checkpoints: an image that holds only the pages changed
//! since a parent image, and takes the others from it.
//!
//! Dump.  A dump that may become a parent (`--digests`, and every
//! `--parent` dump) records, per mapping, a digest (XXH3-128) of each
//! non-zero page it saves ([`PageDigests`]).  A `--parent PREV` dump
//! reads PREV's model (not its pages) and, while the tree is frozen,
//! reads and digests every page it would save: a page whose digest
//! equals PREV's digest at the same address is *kept* (recorded in the
//! mapping's `kept` ranges, not written); the others are written as in a
//! full dump.  The comparison is by content at an address, so whatever
//! happened in between (writes by the process or the kernel, mmap,
//! munmap, mremap, madvise, fork, exec, a reboot of the machine) a page
//! whose content differs from PREV's is written.  The image names PREV
//! by the digest in PREV's tail and by its path relative to the new
//! image's directory (the PARENT record).
//!
//! Restore.  Once the image's own pages are in, each level of the chain
//! is read in turn (the parent, its parent, ...): its tail digest must be
//! the one named, and of its page chunks only the pages still wanted are
//! written (the kept ranges of the child, narrowed at each level to the
//! ones the level itself kept).  A wanted page that a level neither holds
//! nor keeps fails the restore.

use crate::error::{Context, Error, Result};
use crate::memory::{self, PagePlan};
use crate::model::{Checkpoint, PageDigests, ParentRef, Process, Vma};
use crest_image::{kind, PageChunk, Reader, Tail, RECORD_HEADER_LEN};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of one page digest.
pub const DIGEST_LEN: usize = 16;
/// Pages read per process_vm_readv while digesting.
const CHUNK_PAGES: u64 = 512;
/// At most this many bytes of digests per process (they go into its MM
/// and MAPPINGS records): pages beyond are saved without a digest, and a
/// later incremental dump saves them again.
const MAX_DIGEST_BYTES: usize = 32 << 20;
/// Test-only sabotage: an incremental dump takes every changed page of
/// the process's largest mapping for unchanged (negative selftests; every
/// page, since the process may rewrite a few of them again before it
/// checks them).
const SABOTAGE_ENV: &str = "CREST_TEST_INCR_KEEP_CHANGED";

/// The digest of one page.
pub fn page_digest(page: &[u8]) -> [u8; DIGEST_LEN] {
    twox_hash::XxHash3_128::oneshot(page).to_le_bytes()
}

/// The parent image of a dump, as far as the dump needs it.
pub struct Parent {
    /// Its model (no pages).
    pub ckpt: Checkpoint,
    /// What the new image records of it.
    pub reference: ParentRef,
}

/// Reads the model and the tail digest of the image at `path` (its pages
/// are not read); `recorded` is the path the new image records.
pub fn load_parent(path: &Path, recorded: String) -> Result<Parent> {
    let what = || format!("parent image {}", path.display());
    let mut f = std::fs::File::open(path).context(|| format!("opening the {}", what()))?;
    let digest = tail_digest(&mut f).context(what)?;
    f.seek(SeekFrom::Start(0)).context(what)?;
    let ckpt = read_model(std::io::BufReader::new(f)).context(what)?;
    if !ckpt
        .processes
        .iter()
        .any(|p| p.mm.vmas.iter().any(|v| v.digests.is_some()))
    {
        return Err(Error::msg(format!(
            "{} holds no page digests: only images dumped with --digests (or --parent) can be parents",
            what()
        )));
    }
    Ok(Parent {
        ckpt,
        reference: ParentRef {
            path: recorded,
            digest,
        },
    })
}

/// The digest in the tail of the image file `f` (the last record), read
/// without reading the rest.
fn tail_digest(f: &mut std::fs::File) -> Result<u64> {
    let len = (RECORD_HEADER_LEN + Tail::LEN) as u64;
    let size = f.seek(SeekFrom::End(0))?;
    if size < len {
        return Err(Error::Invalid(format!(
            "{size} bytes: too short to be an image"
        )));
    }
    f.seek(SeekFrom::End(-(len as i64)))?;
    let mut b = vec![0u8; len as usize];
    f.read_exact(&mut b)?;
    let k = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
    let tail = Tail::decode(&b[RECORD_HEADER_LEN..]).filter(|_| k == kind::TAIL);
    tail.map(|t| t.digest).ok_or_else(|| {
        Error::Invalid("it does not end with a tail record (truncated or not an image)".into())
    })
}

/// The model records at the start of an image, up to its first other
/// record.
fn read_model<R: Read>(r: R) -> Result<Checkpoint> {
    let mut reader = Reader::new(r)?;
    crate::codec::check_header(reader.header())?;
    let mut model = crate::codec::ModelReader::new(reader.format_version());
    while let Some(rec) = reader.next_record()? {
        if !model.is_model(rec.kind) {
            break;
        }
        model.feed(&rec)?;
    }
    model.take()
}

/// The digests of one process of a parent image, by address.
pub struct ParentDigests<'a> {
    /// (start, pages, digests) per run, in address order.
    runs: Vec<(u64, u64, &'a [u8])>,
}

impl<'a> ParentDigests<'a> {
    /// The digests of process `pid` of the parent (none if it has no such
    /// process).
    pub fn of(parent: &'a Checkpoint, pid: i32) -> ParentDigests<'a> {
        let mut runs = Vec::new();
        if let Some(p) = parent.processes.iter().find(|p| p.pid == pid) {
            for d in p.mm.vmas.iter().filter_map(|v| v.digests.as_ref()) {
                let mut off = 0usize;
                for &(a, n) in &d.runs {
                    let end = off + n as usize * DIGEST_LEN;
                    if let Some(h) = d.hashes.get(off..end) {
                        runs.push((a, n, h));
                    }
                    off = end;
                }
            }
        }
        runs.sort_unstable_by_key(|r| r.0);
        ParentDigests { runs }
    }

    /// The digest of the page at `addr`, if the parent has one.
    fn at(&self, addr: u64, ps: u64) -> Option<&'a [u8]> {
        let i = self.runs.partition_point(|r| r.0 <= addr).checked_sub(1)?;
        let (a, n, h) = self.runs[i];
        let k = ((addr - a) / ps) as usize;
        (k < n as usize).then(|| &h[k * DIGEST_LEN..(k + 1) * DIGEST_LEN])
    }
}

/// What [`digest_pages`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestStats {
    /// Pages unchanged since the parent (not written).
    pub kept_pages: u64,
    /// Non-zero pages to write.
    pub changed_pages: u64,
    /// Zero pages (neither written nor kept).
    pub zero_pages: u64,
    /// Kept pages not even read: the write tracker vouched for them.
    pub vouched_pages: u64,
}

/// With the tree frozen: reads every planned page of process `pid`,
/// records its digest in its mapping, and, given the parent's digests,
/// moves the pages that did not change from the plan into the mappings'
/// `kept` ranges.  Zero pages leave the plan (they are dropped anyway).
/// The pages in `clean` (sorted ranges a write tracker vouches for, see
/// `memory::track`) of trackable mappings whose digest the parent holds
/// are kept without being read.
pub fn digest_pages(
    pid: i32,
    vmas: &mut [Vma],
    plan: &mut PagePlan,
    parent: Option<&ParentDigests>,
    clean: &[(u64, u64)],
) -> Result<DigestStats> {
    let ps = memory::page_size();
    let procmem = crest_sys::mem::ProcMem::open(pid, false)?;
    let is_clean = |a: u64| {
        let i = clean.partition_point(|r| r.1 <= a);
        matches!(clean.get(i), Some(&(s, _)) if s <= a)
    };
    // One job per stretch of a run holding at most CHUNK_PAGES pages to
    // read (packed into its buffer) and any number vouched for, which are
    // not read.
    let mut jobs: Vec<Job> = Vec::new();
    for (i, (v, runs)) in vmas.iter().zip(&plan.runs).enumerate() {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        let trackable = !clean.is_empty() && crate::memory::track::trackable(v);
        for &(a, n) in runs {
            let mut job = Job::new(i, a, readable);
            for k in 0..n {
                let pa = a + k * ps;
                let vouched =
                    trackable && is_clean(pa) && parent.and_then(|p| p.at(pa, ps)).is_some();
                if !vouched && job.to_read == CHUNK_PAGES {
                    jobs.push(std::mem::replace(&mut job, Job::new(i, pa, readable)));
                }
                job.push(vouched);
            }
            if job.pages > 0 {
                jobs.push(job);
            }
        }
    }
    // The sabotage target: the largest mapping with pages.
    let sabotage = std::env::var_os(SABOTAGE_ENV).is_some() && parent.is_some();
    let victim = vmas
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| v.pages)
        .map(|(i, _)| i);
    let mut sabotaged = 0u64;
    let mut new_runs: Vec<Vec<(u64, u64)>> = vec![Vec::new(); vmas.len()];
    let mut digests: Vec<PageDigests> = vec![PageDigests::default(); vmas.len()];
    let mut kept: Vec<Vec<(u64, u64)>> = vec![Vec::new(); vmas.len()];
    let mut budget = MAX_DIGEST_BYTES;
    let mut stats = DigestStats::default();
    let procmem = &procmem;
    crate::dump::pipeline::run(
        &jobs,
        (CHUNK_PAGES * ps) as usize,
        |job, mut buf| {
            // This thread reads; the other one digests (both cores busy).
            let mut at = 0usize;
            for &(addr, n, vouched) in &job.segs {
                if vouched {
                    continue;
                }
                let part = &mut buf[at..at + (n * ps) as usize];
                if job.readable {
                    crest_sys::mem::read(pid, addr, part)?;
                } else {
                    procmem.read(addr, part)?;
                }
                at += part.len();
            }
            Ok(buf)
        },
        |job, buf| {
            let i = job.vma;
            let mut pages = buf.chunks_exact(ps as usize);
            for (a, vouched) in job.pages_of(ps) {
                if vouched {
                    let p = parent.expect("vouched pages have a parent digest");
                    let sum = p.at(a, ps).expect("checked when planned");
                    if budget >= DIGEST_LEN {
                        budget -= DIGEST_LEN;
                        push_run(&mut digests[i].runs, a, ps, u64::MAX);
                        digests[i].hashes.extend_from_slice(sum);
                    }
                    push_run(&mut kept[i], a, ps, u64::MAX);
                    stats.kept_pages += 1;
                    stats.vouched_pages += 1;
                    continue;
                }
                let page = pages.next().expect("one buffer page per page read");
                if memory::is_zero(page) {
                    stats.zero_pages += 1;
                    continue;
                }
                let sum = &page_digest(page);
                if budget >= DIGEST_LEN {
                    budget -= DIGEST_LEN;
                    push_run(&mut digests[i].runs, a, ps, u64::MAX);
                    digests[i].hashes.extend_from_slice(sum);
                }
                let before = parent.and_then(|p| p.at(a, ps));
                let mut same = before == Some(&sum[..]);
                if !same && before.is_some() && sabotage && Some(i) == victim {
                    // Sabotage (tests only): old pages come back.
                    sabotaged += 1;
                    same = true;
                }
                if same {
                    stats.kept_pages += 1;
                    push_run(&mut kept[i], a, ps, u64::MAX);
                } else {
                    stats.changed_pages += 1;
                    push_run(&mut new_runs[i], a, ps, CHUNK_PAGES);
                }
            }
            Ok(buf)
        },
    )?;
    for ((v, d), k) in vmas.iter_mut().zip(digests).zip(kept) {
        v.digests = (!d.runs.is_empty()).then_some(d);
        // (start, pages) runs to (start, end) ranges.
        v.kept = k.into_iter().map(|(a, n)| (a, a + n * ps)).collect();
    }
    plan.runs = new_runs;
    if sabotaged > 0 {
        eprintln!("crest: test sabotage: {sabotaged} changed pages kept from the parent");
    }
    Ok(stats)
}

/// A stretch of one planned run for [`digest_pages`].
struct Job {
    vma: usize,
    readable: bool,
    /// (start, pages, vouched for), contiguous, in order.
    segs: Vec<(u64, u64, bool)>,
    pages: u64,
    to_read: u64,
    start: u64,
}

impl Job {
    fn new(vma: usize, start: u64, readable: bool) -> Job {
        Job {
            vma,
            readable,
            segs: Vec::new(),
            pages: 0,
            to_read: 0,
            start,
        }
    }

    /// Appends the next page.
    fn push(&mut self, vouched: bool) {
        let ps = memory::page_size();
        let a = self.start + self.pages * ps;
        match self.segs.last_mut() {
            Some(s) if s.2 == vouched => s.1 += 1,
            _ => self.segs.push((a, 1, vouched)),
        }
        self.pages += 1;
        self.to_read += u64::from(!vouched);
    }

    /// Each page: (address, vouched for).
    fn pages_of(&self, ps: u64) -> impl Iterator<Item = (u64, bool)> + '_ {
        self.segs
            .iter()
            .flat_map(move |&(a, n, v)| (0..n).map(move |k| (a + k * ps, v)))
    }
}

/// Appends page `a` to `runs` of (start, pages), growing the last run up
/// to `max` pages.
fn push_run(runs: &mut Vec<(u64, u64)>, a: u64, ps: u64, max: u64) {
    match runs.last_mut() {
        Some(r) if r.0 + r.1 * ps == a && r.1 < max => r.1 += 1,
        _ => runs.push((a, 1)),
    }
}

/// The kept ranges of every process of `ckpt`: pid → ranges (start, end)
/// in address order, one per mapping at most (never across two).
fn kept_of(ckpt: &Checkpoint) -> HashMap<i32, Vec<(u64, u64)>> {
    ckpt.processes
        .iter()
        .map(|p| {
            (
                p.pid,
                p.mm.vmas.iter().flat_map(|v| v.kept.clone()).collect(),
            )
        })
        .collect()
}

/// Whether `p` takes any page from a parent.
fn takes_from_parent(p: &Process) -> bool {
    p.mm.vmas.iter().any(|v| !v.kept.is_empty())
}

/// What restore needs to fill the kept pages of an incremental image.
#[derive(Debug, Clone)]
pub struct Chain {
    parent: ParentRef,
    want: HashMap<i32, Vec<(u64, u64)>>,
}

impl Chain {
    /// The chain of `ckpt`, if it is incremental.
    pub fn of(ckpt: &Checkpoint) -> Result<Option<Chain>> {
        let Some(parent) = ckpt.parent.clone() else {
            if ckpt.processes.iter().any(takes_from_parent) {
                return Err(Error::Invalid(
                    "mappings take pages from a parent, but the image names none".into(),
                ));
            }
            return Ok(None);
        };
        let ps = memory::page_size();
        for p in &ckpt.processes {
            for v in &p.mm.vmas {
                let mut last = v.start;
                for &(s, e) in &v.kept {
                    if s < last || e <= s || e > v.end || s % ps != 0 || e % ps != 0 {
                        return Err(Error::Invalid(format!(
                            "pid {}: kept range {s:#x}-{e:#x} is not inside mapping {:#x}-{:#x} in order",
                            p.pid, v.start, v.end
                        )));
                    }
                    if !memory::takes_pages(v) || v.pages == 0 {
                        return Err(Error::Invalid(format!(
                            "pid {}: mapping {:#x}-{:#x} keeps pages but holds none",
                            p.pid, v.start, v.end
                        )));
                    }
                    last = e;
                }
            }
        }
        Ok(Some(Chain {
            parent,
            want: kept_of(ckpt),
        }))
    }
}

/// Where to look for the parents of an image.
#[derive(Debug, Clone, Default)]
pub struct ParentLookup {
    /// The directory of the image being restored (recorded parent paths
    /// are relative to it); None when it came from a pipe.
    pub image_dir: Option<PathBuf>,
    /// `--parent-dir`: every parent of the chain is looked for here, by
    /// the file name it was recorded with.
    pub parent_dir: Option<PathBuf>,
}

impl ParentLookup {
    fn resolve(&self, recorded: &str, child_dir: Option<&Path>) -> Result<PathBuf> {
        let rec = Path::new(recorded);
        if let Some(d) = &self.parent_dir {
            let name = rec.file_name().ok_or_else(|| {
                Error::Invalid(format!(
                    "the recorded parent path {recorded:?} names no file"
                ))
            })?;
            return Ok(d.join(name));
        }
        if rec.is_absolute() {
            return Ok(rec.to_path_buf());
        }
        match child_dir {
            Some(d) => Ok(d.join(rec)),
            None => Err(Error::msg(format!(
                "the image (read from a pipe) takes pages from parent image {recorded}: give --parent-dir DIR"
            ))),
        }
    }
}

/// Writes pages into a restored process: (pid, address, bytes).
pub type WritePages<'a> = dyn FnMut(i32, u64, &[u8]) -> Result<()> + 'a;

/// Reads the chain of parents and writes the pages the image keeps with
/// `write(pid, addr, bytes)`.  Returns the pages written.
pub fn fill_from_parents(
    chain: &Chain,
    lookup: &ParentLookup,
    page_size: u32,
    write: &mut WritePages,
) -> Result<u64> {
    let ps = u64::from(page_size);
    let mut want = chain.want.clone();
    let mut parent = Some(chain.parent.clone());
    let mut child_dir = lookup.image_dir.clone();
    let mut child_name = String::from("the image");
    let mut total = 0u64;
    while let Some(pref) = parent.take() {
        let left: u64 = want.values().flatten().map(|r| (r.1 - r.0) / ps).sum();
        if left == 0 {
            break;
        }
        let path = lookup.resolve(&pref.path, child_dir.as_deref())?;
        let shown = path.display().to_string();
        let mut f = std::fs::File::open(&path).map_err(|e| {
            Error::msg(format!(
                "{child_name} takes {left} pages from parent image {shown} (recorded as {}), which cannot be opened: {e}; give --parent-dir DIR if it was moved",
                pref.path
            ))
        })?;
        let found = tail_digest(&mut f).context(|| format!("parent image {shown}"))?;
        if found != pref.digest {
            return Err(Error::Invalid(format!(
                "parent image {shown} is not the one {child_name} was dumped against (its digest is {found:#018x}, {:#018x} was recorded): it was replaced or modified",
                pref.digest
            )));
        }
        f.seek(SeekFrom::Start(0))?;
        let (written, ckpt) = fill_level(f, &want, ps, page_size, write)
            .context(|| format!("reading parent image {shown}"))?;
        total += written.values().sum::<u64>();
        // What this level did not hold itself must be in its own kept
        // ranges, and is taken from its parent.
        let kept = kept_of(&ckpt);
        let mut next = HashMap::new();
        for (pid, ranges) in &want {
            let holds = written.get(pid).copied().unwrap_or(0);
            let rest = intersect(ranges, kept.get(pid).map(Vec::as_slice).unwrap_or(&[]));
            let rest_pages: u64 = rest.iter().map(|r| (r.1 - r.0) / ps).sum();
            let wanted: u64 = ranges.iter().map(|r| (r.1 - r.0) / ps).sum();
            if holds + rest_pages != wanted {
                return Err(Error::Invalid(format!(
                    "parent image {shown} lacks pages of pid {pid} that {child_name} takes from it ({wanted} wanted, {holds} held, {rest_pages} kept from its own parent)"
                )));
            }
            if !rest.is_empty() {
                next.insert(*pid, rest);
            }
        }
        want = next;
        parent = ckpt.parent.clone();
        if !want.is_empty() && parent.is_none() {
            return Err(Error::Invalid(format!(
                "parent image {shown} keeps pages but names no parent"
            )));
        }
        child_dir = path.parent().map(Path::to_path_buf);
        child_name = format!("parent image {shown}");
    }
    Ok(total)
}

/// Writes the pages of one parent image that are in `want`; returns the
/// pages written per pid and the image's model.  The whole stream is
/// read, so its tail (digest included) is verified.
fn fill_level<R: Read>(
    r: R,
    want: &HashMap<i32, Vec<(u64, u64)>>,
    ps: u64,
    page_size: u32,
    write: &mut WritePages,
) -> Result<(HashMap<i32, u64>, Checkpoint)> {
    let mut reader = Reader::new(std::io::BufReader::with_capacity(1 << 20, r))?;
    crate::codec::check_header(reader.header())?;
    if reader.page_size() != page_size {
        return Err(Error::Invalid(format!(
            "its page size is {}, the image's {page_size}",
            reader.page_size()
        )));
    }
    let mut model = crate::codec::ModelReader::new(reader.format_version());
    let mut ckpt: Option<Checkpoint> = None;
    let mut written: HashMap<i32, u64> = HashMap::new();
    while let Some(rec) = reader.next_record()? {
        if ckpt.is_none() {
            if model.is_model(rec.kind) {
                model.feed(&rec)?;
                continue;
            }
            ckpt = Some(model.take()?);
        }
        if rec.kind != kind::PAGES {
            continue;
        }
        let c = rec.page_chunk(page_size)?;
        if memory::cow::is_cow_space(c.space) {
            continue;
        }
        let model = ckpt.as_ref().expect("taken above");
        let Some(p) = model.processes.get(c.space as usize) else {
            return Err(Error::Invalid(format!(
                "page chunk at byte {} for unknown address space {}",
                rec.offset, c.space
            )));
        };
        let Some(ranges) = want.get(&p.pid) else {
            continue;
        };
        for (addr, data) in c.runs() {
            let end = addr + data.len() as u64;
            let i = ranges.partition_point(|r| r.1 <= addr);
            for &(s, e) in ranges[i..].iter().take_while(|r| r.0 < end) {
                let (s, e) = (s.max(addr), e.min(end));
                write(p.pid, s, &data[(s - addr) as usize..(e - addr) as usize])?;
                *written.entry(p.pid).or_default() += (e - s) / ps;
            }
        }
    }
    let ckpt = match ckpt {
        Some(c) => c,
        None => model.take()?,
    };
    Ok((written, ckpt))
}

/// The parts of `a` (sorted, disjoint) inside `b` (sorted, disjoint).
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Builds the chunk `write` gets for a restore: pages of process `space`.
pub fn chunk<'a>(space: u32, addr: u64, data: &'a [u8], page_size: u32) -> Result<PageChunk<'a>> {
    Ok(PageChunk::new(space, addr, data, page_size)?)
}

/// `path` relative to directory `dir` (both made absolute first), for
/// the PARENT record; absolute when they share only the root.
pub fn relative_to(path: &Path, dir: &Path) -> Result<String> {
    let abs = |p: &Path| -> Result<PathBuf> {
        std::fs::canonicalize(p).context(|| format!("resolving {}", p.display()))
    };
    let (p, d) = (abs(path)?, abs(dir)?);
    let pc: Vec<_> = p.components().collect();
    let dc: Vec<_> = d.components().collect();
    let common = pc.iter().zip(&dc).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return Ok(p.display().to_string());
    }
    let mut out = PathBuf::new();
    for _ in common..dc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    Ok(out.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (45, 60)];
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25), (45, 50)]);
        assert!(intersect(&a, &[]).is_empty());
    }

    #[test]
    fn relative_paths() {
        let d = std::env::temp_dir().join(format!("crest-rel-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/p.img"), b"x").unwrap();
        assert_eq!(
            relative_to(&d.join("a/p.img"), &d.join("a")).unwrap(),
            "p.img"
        );
        assert_eq!(
            relative_to(&d.join("a/p.img"), &d.join("a/b")).unwrap(),
            "../p.img"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
