//! `thp [MiB]`: anonymous memory backed by transparent huge pages.
//!
//! A 2 MiB-aligned private anonymous mapping of MiB MiB (default 64) with
//! MADV_HUGEPAGE, every word written with a pattern.  Needs THP
//! "madvise" or "always" in /sys/kernel/mm/transparent_hugepage/enabled
//! (read, not assumed).  Before ready it records the mapping's
//! AnonHugePages (at least half of it must be huge: else the kernel could
//! not give huge pages, and the test proves nothing).  After go: the
//! mapping is at the same address with the same VmFlags (`hg` included),
//! its AnonHugePages is at least 90 % of the recorded figure, and every
//! word holds its pattern.  `CREST_WL_DISTURB=split` (selftest) splits
//! the huge pages after go, as a restore that lost them would leave them,
//! so the check must fail.

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::pat;

const HUGE: usize = 2 << 20;
const SEED: u64 = 0x7468_7000;

/// The smaps block of the mapping starting at `addr`: (AnonHugePages in
/// kB, VmFlags line).
fn smaps_of(addr: usize) -> (u64, String) {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let (mut inside, mut huge, mut flags) = (false, 0, String::new());
    for l in s.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = l.starts_with(&head);
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(v) = l.strip_prefix("AnonHugePages:") {
            huge = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
        if l.starts_with("VmFlags:") {
            flags = l.to_string();
        }
    }
    (huge, flags)
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mut c = Checks::new();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let len = mib << 20;
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if enabled.contains("[never]") || enabled.is_empty() {
        c.fail(format!(
            "transparent huge pages are off here ({:?}): the scenario needs madvise or always",
            enabled.trim()
        ));
        return c;
    }
    // Over-allocate, then trim to a 2 MiB-aligned range.
    let raw = match crate::util::mmap_anon(len + HUGE, libc::PROT_READ | libc::PROT_WRITE, 0) {
        Ok(m) => m as usize,
        Err(e) => {
            c.fail(format!("mmap: errno {e}"));
            return c;
        }
    };
    let base = raw.next_multiple_of(HUGE);
    // SAFETY: unmapping the unaligned head and tail of our own mapping.
    unsafe {
        if base > raw {
            libc::munmap(raw as *mut libc::c_void, base - raw);
        }
        let tail = raw + len + HUGE - (base + len);
        if tail > 0 {
            libc::munmap((base + len) as *mut libc::c_void, tail);
        }
        libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    // SAFETY: the mapping made above, len bytes from base.
    let words = unsafe { std::slice::from_raw_parts_mut(base as *mut u64, len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pat(SEED, i);
    }
    let (before, flags_before) = smaps_of(base);
    eprintln!("thp: {mib} MiB at {base:#x}: AnonHugePages {before} kB before");
    if before * 1024 < len as u64 / 2 {
        c.fail(format!(
            "only {before} kB of {} kB became huge pages before the checkpoint (THP: {:?})",
            len >> 10,
            enabled.trim()
        ));
        return c;
    }
    p.write_ready();
    let w = p.wait_go();
    w.report(&mut c, "go-wait");
    if std::env::var("CREST_WL_DISTURB").as_deref() == Ok("split") {
        // As if the restore had lost the huge pages: a partial mprotect
        // splits each one into 4 KiB mappings, which stay split when the
        // protection is made whole again.
        for off in (0..len).step_by(HUGE) {
            // SAFETY: a range inside our mapping.
            unsafe {
                libc::mprotect((base + off) as *mut libc::c_void, 4096, libc::PROT_READ);
            }
        }
        // SAFETY: the whole mapping, as it was.
        unsafe {
            libc::mprotect(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
    }
    let (after, flags_after) = smaps_of(base);
    eprintln!("thp: AnonHugePages {after} kB after");
    c.eq("VmFlags of the THP mapping", flags_before, flags_after);
    let want = before.max((len as u64 >> 10) / 2);
    c.ensure(after * 10 >= want * 9, || {
        format!("AnonHugePages {after} kB after the restore, {before} kB before (less than 90 %)")
    });
    if let Some(i) = words
        .iter()
        .enumerate()
        .position(|(i, &w)| w != pat(SEED, i))
    {
        c.fail(format!(
            "word {i} (at {:#x}) is {:#x}, expected {:#x}",
            base + i * 8,
            words[i],
            pat(SEED, i)
        ));
    }
    c
}
