//! Building the address space on the destination while the source tree
//! still runs, so that the frozen phase of a pre-copied migration carries
//! only the last dirty pages and the small state.
//!
//! **Source**: with the first round, each process's private anonymous
//! mappings are sent (LAYOUT), and every spooled stretch names its pid and
//! address (PRE_AT instead of PRE).
//!
//! **Destination**: crest maps each such mapping at its own address in
//! itself (private anonymous, `MAP_FIXED_NOREPLACE`; a range taken in
//! crest is simply not pre-built) and copies every stretch there as it
//! arrives, noting for each page the spool offset of the bytes it holds.
//! Nothing else is trusted: once the tree is frozen and the final windows
//! (which spool bytes make each page) are known, every page of a final
//! mapping that lies inside a range pre-built for the same pid is checked
//! against them: a page whose noted offset is not the window's is copied
//! again from the spool, a page the windows leave out (zero) but that
//! holds data is dropped.  Those mappings then become copy-on-write
//! ranges of the restore (see [`crate::memory::cow`]): the stubs, forked
//! from crest, inherit them with their pages, and their page chunks are
//! left out of the image.  Any mapping that does not lie inside a
//! pre-built range of its process (created, moved or grown since the
//! first round, another process's, flags a fork cannot keep) is restored
//! as before, from the image.
//!
//! For the tests, `CREST_PREBUILD_SABOTAGE` makes crest keep only the
//! first copy of every page it is sent: `=stale` notes the offsets of
//! those copies (the check must find every newer page and copy it from
//! the spool), `=lie` notes the offsets of the newer ones it dropped (the
//! check is fooled, and stale pages reach the restored tree: the
//! workloads must notice).

use crate::dump::precopy::Window;
use crate::error::{Error, Result};
use crate::memory::page_size;
use crate::model::{Backing, Checkpoint, CowRange, Object, ObjectKind, Vma};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Huge page size of the collapse (x86-64 PMD).
const HUGE: u64 = 2 << 20;
/// madvise(MADV_COLLAPSE): make a block one transparent huge page now,
/// without flagging the mapping VM_HUGEPAGE (a fork then copies one
/// entry per 2 MiB, not 512, and so does crest's unmapping).
const MADV_COLLAPSE: i32 = 25;

/// No spool bytes are in the page.
const NONE: u64 = u64::MAX;
/// Larger mappings are not pre-built (the page table of offsets would be
/// large; they are restored from the image).
const MAX_RANGE: u64 = 64 << 30;
/// At most this much address space reserved in all.
const MAX_TOTAL: u64 = 256 << 30;
/// Highest user address on x86-64 with 4-level page tables.
const USER_END: u64 = 0x7fff_ffff_f000;
/// Protection of crest's copy (as for copy-on-write ranges: nothing
/// mapped next to it in a stub merges with it).
const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

/// Whether a mapping can be pre-built: private anonymous memory a fork
/// passes on unchanged, with flags the restore can set afterwards.
pub fn eligible(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous)
        && !v.shared
        && !v.flags.dontfork
        && !v.flags.wipeonfork
        && !v.flags.droppable
        && !v.flags.growsdown
        && !v.flags.noreserve
        && v.huge_page.is_none()
        && v.aio.is_none()
        && v.cow.is_none()
        && v.end > v.start
        && v.end - v.start <= MAX_RANGE
}

/// LAYOUT: `pid i32, n u32`, then `n` times `start u64, end u64`.
pub fn encode_layout(pid: i32, vmas: &[Vma]) -> Vec<u8> {
    let ok: Vec<&Vma> = vmas.iter().filter(|v| eligible(v)).collect();
    let mut b = Vec::with_capacity(8 + 16 * ok.len());
    b.extend_from_slice(&pid.to_le_bytes());
    b.extend_from_slice(&(ok.len() as u32).to_le_bytes());
    for v in ok {
        b.extend_from_slice(&v.start.to_le_bytes());
        b.extend_from_slice(&v.end.to_le_bytes());
    }
    b
}

/// PRE_AT header: `spool offset u64, pid i32, addr u64`, then the bytes.
pub const AT_HEAD: usize = 20;

pub fn encode_at_head(off: u64, pid: i32, addr: u64) -> [u8; AT_HEAD] {
    let mut h = [0u8; AT_HEAD];
    h[..8].copy_from_slice(&off.to_le_bytes());
    h[8..12].copy_from_slice(&pid.to_le_bytes());
    h[12..].copy_from_slice(&addr.to_le_bytes());
    h
}

pub fn decode_at_head(b: &[u8]) -> Result<(u64, i32, u64)> {
    if b.len() < AT_HEAD {
        return Err(Error::msg("malformed PRE_AT message"));
    }
    Ok((
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        i32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
    ))
}

/// A range crest mapped for a process of the source.
struct Range {
    pid: i32,
    start: u64,
    end: u64,
    /// Per page, the spool offset of the bytes it holds (or [`NONE`]).
    at: Vec<u64>,
    /// Parts handed to the restore (its copy-on-write ranges own them).
    handed: Vec<(u64, u64)>,
    /// Pages written at least once, per 2 MiB block from `start` rounded
    /// down.
    filled: Vec<u16>,
}

/// The ranges being built while the source runs.
#[derive(Default)]
pub struct Prebuild {
    ranges: Vec<Range>,
    reserved: u64,
    /// Bytes copied into the ranges.
    pub placed: u64,
    sabotage: Sabotage,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Sabotage {
    #[default]
    No,
    Stale,
    Lie,
}

/// What the destination built, given to the restore
/// ([`crate::RestoreOptions::prebuilt`]).
#[derive(Clone, Default)]
pub struct Prebuilt(Arc<Mutex<Built>>);

impl std::fmt::Debug for Prebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prebuilt")
    }
}

#[derive(Default)]
struct Built {
    pre: Prebuild,
    /// (address space, start, end) of the final mappings that are built.
    mappings: Vec<(u32, u64, u64)>,
    /// Pages checked, copied again and dropped by [`Prebuild::finish`].
    pub stats: FinishStats,
}

/// What [`Prebuild::finish`] found.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FinishStats {
    pub mappings: u64,
    pub pages_kept: u64,
    pub pages_rewritten: u64,
    pub pages_dropped: u64,
    pub finish_ms: f64,
}

impl Prebuild {
    pub fn new() -> Prebuild {
        let sabotage = match std::env::var("CREST_PREBUILD_SABOTAGE").as_deref() {
            Ok("stale") => Sabotage::Stale,
            Ok("lie") => Sabotage::Lie,
            _ => Sabotage::No,
        };
        Prebuild {
            ranges: Vec::new(),
            reserved: 0,
            placed: 0,
            sabotage,
        }
    }

    /// A LAYOUT message: maps each range in crest where it is free.
    pub fn layout(&mut self, b: &[u8]) -> Result<()> {
        let bad = || Error::msg("malformed LAYOUT message");
        if b.len() < 8 {
            return Err(bad());
        }
        let pid = i32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let n = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")) as usize;
        if b.len() != 8 + 16 * n {
            return Err(bad());
        }
        let ps = page_size();
        for i in 0..n {
            let o = 8 + 16 * i;
            let start = u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
            let end = u64::from_le_bytes(b[o + 8..o + 16].try_into().expect("8 bytes"));
            if !start.is_multiple_of(ps)
                || !end.is_multiple_of(ps)
                || start >= end
                || end > USER_END
            {
                return Err(Error::msg(format!(
                    "LAYOUT: impossible range {start:#x}-{end:#x} of pid {pid}"
                )));
            }
            if end - start > MAX_RANGE
                || self.reserved + (end - start) > MAX_TOTAL
                || self.ranges.iter().any(|r| r.start < end && start < r.end)
            {
                // Too large, or another process's range (a fork): from the
                // image.
                continue;
            }
            // Next to another range: marked MADV_DONTDUMP for the time
            // being so the two stay apart in crest (as copy-on-write
            // ranges are; the restore clears it).
            let apart = self.ranges.iter().any(|r| r.end == start || r.start == end);
            if map_at(start, end - start, apart).is_err() {
                continue;
            }
            self.reserved += end - start;
            self.ranges.push(Range {
                pid,
                start,
                end,
                at: vec![NONE; ((end - start) / ps) as usize],
                handed: Vec::new(),
                filled: vec![0; ((end - (start & !(HUGE - 1))).div_ceil(HUGE)) as usize],
            });
        }
        Ok(())
    }

    /// A stretch of `pid`'s pages read at `addr`, at spool offset `off`.
    pub fn place(&mut self, pid: i32, addr: u64, off: u64, data: &[u8]) {
        let ps = page_size();
        let end = addr.saturating_add(data.len() as u64);
        let Some(r) = self
            .ranges
            .iter_mut()
            .find(|r| r.pid == pid && r.start <= addr && end <= r.end)
        else {
            return;
        };
        if !addr.is_multiple_of(ps) || !(data.len() as u64).is_multiple_of(ps) {
            return;
        }
        let first = ((addr - r.start) / ps) as usize;
        for (k, slot) in r.at[first..first + data.len() / ps as usize]
            .iter_mut()
            .enumerate()
        {
            let at = off + k as u64 * ps;
            if self.sabotage != Sabotage::No && *slot != NONE {
                // Sabotage: the newer copy is not written in.
                if self.sabotage == Sabotage::Lie {
                    *slot = at;
                }
                continue;
            }
            let page = addr + k as u64 * ps;
            let mut collapse = None;
            if *slot == NONE {
                // Once a whole 2 MiB block inside the range is written:
                // one huge page (failing is harmless: it stays small).
                let block = page & !(HUGE - 1);
                let n = &mut r.filled[((block - (r.start & !(HUGE - 1))) / HUGE) as usize];
                *n += 1;
                if u64::from(*n) == HUGE / ps && block >= r.start && block + HUGE <= r.end {
                    collapse = Some(block);
                }
            }
            let b = &data[k * ps as usize..(k + 1) * ps as usize];
            // SAFETY: the page lies inside crest's own private mapping of
            // the range, which nothing else references.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), page as *mut u8, b.len()) };
            *slot = at;
            if let Some(block) = collapse {
                // SAFETY: madvise of a block of crest's own mapping (its
                // contents are kept).
                unsafe { libc::madvise(block as *mut libc::c_void, HUGE as usize, MADV_COLLAPSE) };
            }
        }
        self.placed += data.len() as u64;
    }

    /// With the tree frozen: checks every pre-built page of the final
    /// mappings of `ckpt` against `windows` (fixing what differs from
    /// `spool`), and returns the windows still to be written into the
    /// image and what the restore takes over.
    pub fn finish(
        mut self,
        ckpt: &Checkpoint,
        windows: Vec<Window>,
        spool: &std::fs::File,
    ) -> Result<(Vec<Window>, Prebuilt)> {
        let t0 = std::time::Instant::now();
        let ps = page_size();
        let mut stats = FinishStats::default();
        let mut mappings = Vec::new();
        // (space, start, end) → the range holding it.
        let mut built: Vec<(u32, u64, u64, usize)> = Vec::new();
        for (i, p) in ckpt.processes.iter().enumerate() {
            for v in p.mm.vmas.iter().filter(|v| eligible(v)) {
                if let Some(ri) = self
                    .ranges
                    .iter()
                    .position(|r| r.pid == p.pid && r.start <= v.start && v.end <= r.end)
                {
                    built.push((i as u32, v.start, v.end, ri));
                }
            }
        }
        built.sort();
        let inside = |w: &Window| {
            let end = w.addr + w.pages * ps;
            built
                .binary_search_by(|&(s, a, e, _)| {
                    use std::cmp::Ordering::*;
                    if s != w.space {
                        s.cmp(&w.space)
                    } else if e <= w.addr {
                        Less
                    } else if a >= end {
                        Greater
                    } else {
                        Equal
                    }
                })
                .ok()
                .filter(|&k| built[k].1 <= w.addr && end <= built[k].2)
        };
        // Which pages of each built mapping the windows hold.
        let mut covered: Vec<Vec<bool>> = built
            .iter()
            .map(|&(_, s, e, _)| vec![false; ((e - s) / ps) as usize])
            .collect();
        let mut rest = Vec::with_capacity(windows.len());
        let mut page = vec![0u8; ps as usize];
        for w in windows {
            let Some(k) = inside(&w) else {
                rest.push(w);
                continue;
            };
            let (_, vs, _, ri) = built[k];
            let r = &mut self.ranges[ri];
            for &(a, n, off) in &w.pieces {
                for j in 0..n {
                    let addr = a + j * ps;
                    let want = off + j * ps;
                    covered[k][((addr - vs) / ps) as usize] = true;
                    let slot = &mut r.at[((addr - r.start) / ps) as usize];
                    if *slot == want {
                        stats.pages_kept += 1;
                        continue;
                    }
                    stats.pages_rewritten += 1;
                    spool.read_exact_at(&mut page, want).map_err(|e| {
                        Error::msg(format!("reading the page spool at {want}: {e}"))
                    })?;
                    // SAFETY: one page inside crest's own mapping of the
                    // range, which nothing else references.
                    unsafe {
                        std::ptr::copy_nonoverlapping(page.as_ptr(), addr as *mut u8, ps as usize)
                    };
                    *slot = want;
                }
            }
        }
        // Pages holding data the final image leaves out (zero now).
        for (k, &(space, vs, ve, ri)) in built.iter().enumerate() {
            let r = &mut self.ranges[ri];
            let mut run: Option<u64> = None;
            let mut drops = Vec::new();
            for (j, &c) in covered[k].iter().enumerate() {
                let addr = vs + j as u64 * ps;
                let slot = &mut r.at[((addr - r.start) / ps) as usize];
                let stale = !c && *slot != NONE;
                if stale {
                    *slot = NONE;
                    stats.pages_dropped += 1;
                    run.get_or_insert(addr);
                } else if let Some(s) = run.take() {
                    drops.push((s, addr));
                }
            }
            if let Some(s) = run {
                drops.push((s, ve));
            }
            for (s, e) in drops {
                // SAFETY: madvise of crest's own private mapping.
                if unsafe {
                    libc::madvise(
                        s as *mut libc::c_void,
                        (e - s) as usize,
                        libc::MADV_DONTNEED,
                    )
                } != 0
                {
                    return Err(crest_sys::Error::last_os(format!(
                        "dropping pre-built pages {s:#x}-{e:#x}"
                    ))
                    .into());
                }
            }
            mappings.push((space, vs, ve));
        }
        stats.mappings = mappings.len() as u64;
        stats.finish_ms = t0.elapsed().as_secs_f64() * 1000.0;
        Ok((
            rest,
            Prebuilt(Arc::new(Mutex::new(Built {
                pre: self,
                mappings,
                stats,
            }))),
        ))
    }
}

impl Prebuilt {
    pub fn stats(&self) -> FinishStats {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// In the restore, once the model is read: the built mappings become
    /// copy-on-write ranges (objects of `ckpt`) held by the returned
    /// regions, which own crest's copy of them from here on.
    pub fn attach(&self, ckpt: &mut Checkpoint) -> Result<crate::memory::cow::Regions> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut regions = crate::memory::cow::Regions::default();
        let list = std::mem::take(&mut b.mappings);
        for (space, start, end) in list {
            let p = ckpt.processes.get_mut(space as usize).ok_or_else(|| {
                Error::Invalid(format!(
                    "pre-built mapping for unknown address space {space}"
                ))
            })?;
            let pid = p.pid;
            let Some(v) =
                p.mm.vmas
                    .iter_mut()
                    .find(|v| v.start == start && v.end == end && eligible(v))
            else {
                return Err(Error::Invalid(format!(
                    "pid {pid}: pre-built mapping {start:#x}-{end:#x} is not in the image"
                )));
            };
            let id = ckpt.objects.len() as u32;
            v.cow = Some(id);
            v.cow_drop.clear();
            let pages = v.pages;
            ckpt.objects.push(Object {
                id,
                kind: ObjectKind::Cow(CowRange {
                    start,
                    end,
                    pages,
                    file: None,
                }),
            });
            regions.adopt(id, start, end);
            if let Some(r) = b
                .pre
                .ranges
                .iter_mut()
                .find(|r| r.pid == pid && r.start <= start && end <= r.end)
            {
                r.handed.push((start, end));
            }
        }
        Ok(regions)
    }
}

impl Drop for Prebuild {
    fn drop(&mut self) {
        for r in &mut self.ranges {
            r.handed.sort();
            let mut at = r.start;
            let mut parts = Vec::new();
            for &(s, e) in &r.handed {
                if s > at {
                    parts.push((at, s));
                }
                at = at.max(e);
            }
            if at < r.end {
                parts.push((at, r.end));
            }
            for (s, e) in parts {
                // SAFETY: crest's own mapping of the range, minus the parts
                // the restore took over (it unmaps those).
                unsafe { libc::munmap(s as *mut libc::c_void, (e - s) as usize) };
            }
        }
    }
}

/// Maps `len` bytes of private anonymous memory in crest at `at` exactly
/// (`apart`: marked MADV_DONTDUMP before it can merge with a neighbour).
fn map_at(at: u64, len: u64, apart: bool) -> Result<()> {
    let first = if apart { libc::PROT_READ } else { PROT };
    // SAFETY: a new anonymous mapping; MAP_FIXED_NOREPLACE never replaces
    // one of crest's.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            first,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(crest_sys::Error::last_os(format!("mapping {at:#x} in crest")).into());
    }
    if p as u64 != at {
        // SAFETY: the mapping just made, at the wrong place.
        unsafe { libc::munmap(p, len as usize) };
        return Err(Error::msg(format!("{at:#x} is taken in crest")));
    }
    if apart {
        // SAFETY: madvise and mprotect of the mapping made just above.
        let ok = unsafe {
            libc::madvise(p, len as usize, libc::MADV_DONTDUMP) == 0
                && libc::mprotect(p, len as usize, PROT) == 0
        };
        if !ok {
            // SAFETY: as above.
            unsafe { libc::munmap(p, len as usize) };
            return Err(Error::msg("cannot mark it"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = encode_at_head(77, 1234, 0x7f00_0000_1000);
        assert_eq!(decode_at_head(&h).unwrap(), (77, 1234, 0x7f00_0000_1000));
        assert!(decode_at_head(&h[..19]).is_err());
        let mut p = Prebuild::default();
        assert!(p.layout(&[1, 0, 0, 0, 1, 0, 0, 0]).is_err());
        // A range past user space is refused.
        let mut b = 5i32.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0x8000_0000_0000u64.to_le_bytes());
        b.extend_from_slice(&0x8000_0001_0000u64.to_le_bytes());
        assert!(p.layout(&b).is_err());
    }
}
