//! `maps COUNT`: COUNT one-page anonymous mappings, each holding a page of
//! data. Neighbours alternate between read-write and read-only, so the
//! kernel keeps them as COUNT separate mappings; the workload checks that
//! before it says ready and again (with every byte) after the restore.
//! A PROT_NONE page on each side keeps the first and last page from merging
//! with whatever the kernel put next to the region.

use crest_bench::{page_size, pattern};

use crate::proto::Proto;
use crate::region::Region;

const SEED: u64 = 0x6d61_7073;

fn prot_of(i: usize) -> i32 {
    if i.is_multiple_of(2) {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

fn perms_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "rw-p"
    } else {
        "r--p"
    }
}

/// The test pages: `count` pages after the leading guard page.
fn pages(region: &Region, count: usize) -> &[u64] {
    region.words_at(page_size(), count * page_size() / 8)
}

/// Checks that /proc/self/maps shows exactly one mapping per test page,
/// with alternating permissions.
fn check_layout(region: &Region, count: usize) -> Result<(), String> {
    let ps = page_size();
    let lo = region.addr() + ps;
    let hi = lo + count * ps;
    let text =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let mut seen = 0usize;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if b <= lo || a >= hi {
            continue;
        }
        if a < lo || b > hi {
            return Err(format!("mapping {line:?} reaches outside the test region"));
        }
        let i = (a - lo) / ps;
        if b - a != ps {
            return Err(format!("mapping {line:?} (page {i}) is not one page"));
        }
        if perms != perms_of(i) {
            return Err(format!(
                "mapping {line:?} (page {i}) has {perms}, expected {}",
                perms_of(i)
            ));
        }
        seen += 1;
    }
    if seen != count {
        return Err(format!(
            "{seen} mappings in the test region, expected {count}"
        ));
    }
    Ok(())
}

fn verify(region: &Region, count: usize) -> Result<(), String> {
    check_layout(region, count)?;
    let pw = page_size() / 8;
    for (i, page) in pages(region, count).chunks(pw).enumerate() {
        if let Some(m) = pattern::check(page, SEED, (i * pw) as u64) {
            return Err(format!(
                "page {i} at {:#x}: {} words differ (first word {}: expected {:#x}, found {:#x})",
                region.addr() + (i + 1) * page_size(),
                m.count,
                m.first,
                m.expected,
                m.found
            ));
        }
    }
    Ok(())
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let count: usize = match args.first().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => p.finish(Err("usage: maps COUNT".into())),
    };
    let ps = page_size();
    let mut region = match Region::new((count + 2) * ps, libc::PROT_READ | libc::PROT_WRITE) {
        Ok(r) => r,
        Err(e) => p.finish(Err(format!("mmap: {e}"))),
    };
    let pw = ps / 8;
    pattern::fill(&mut region.words_mut()[pw..pw * (count + 1)], SEED, 0);
    for (off, what) in [(0, "leading"), ((count + 1) * ps, "trailing")] {
        if let Err(e) = region.protect(off, ps, libc::PROT_NONE) {
            p.finish(Err(format!("mprotect of the {what} guard page: {e}")));
        }
    }
    for i in (1..count).step_by(2) {
        if let Err(e) = region.protect((i + 1) * ps, ps, prot_of(i)) {
            p.finish(Err(format!("mprotect of page {i}: {e}")));
        }
    }
    if let Err(e) = check_layout(&region, count) {
        p.finish(Err(format!("setup: {e}")));
    }
    let bytes = (count * ps) as u64;
    p.info(bytes, bytes);
    p.ready();
    if let Err(e) = p.wait_go() {
        p.finish(Err(e));
    }
    p.finish(verify(&region, count))
}
