//! `mem N [half-zero]`: N MiB of touched, incompressible anonymous memory;
//! with `half-zero` every other page is written with zeros instead (so it
//! is resident but carries nothing).

use crest_bench::{page_size, pattern, MIB};

use crate::proto::Proto;
use crate::region::Region;

/// A region filled with the pattern, optionally with every odd page zero.
pub struct Filled {
    pub region: Region,
    seed: u64,
    half_zero: bool,
}

impl Filled {
    pub fn new(bytes: usize, seed: u64, half_zero: bool) -> Result<Filled, String> {
        let mut region = Region::new(bytes, libc::PROT_READ | libc::PROT_WRITE)
            .map_err(|e| format!("mmap of {bytes} bytes: {e}"))?;
        let pw = page_size() / 8;
        for (i, page) in region.words_mut().chunks_mut(pw).enumerate() {
            if half_zero && i % 2 == 1 {
                page.fill(0);
            } else {
                pattern::fill(page, seed, (i * pw) as u64);
            }
        }
        Ok(Filled {
            region,
            seed,
            half_zero,
        })
    }

    /// Bytes of pages that carry data (not zero).
    pub fn nonzero_bytes(&self) -> u64 {
        let pages = self.region.len() / page_size();
        let data = if self.half_zero {
            pages.div_ceil(2)
        } else {
            pages
        };
        (data * page_size()) as u64
    }

    /// Compares every word with what was written.
    pub fn verify(&self) -> Result<(), String> {
        let pw = page_size() / 8;
        let mut bad_pages = 0usize;
        let mut first: Option<String> = None;
        for (i, page) in self.region.words().chunks(pw).enumerate() {
            let what = if self.half_zero && i % 2 == 1 {
                page.iter().position(|&w| w != 0).map(|j| (j, 0, page[j]))
            } else {
                pattern::check(page, self.seed, (i * pw) as u64)
                    .map(|m| (m.first, m.expected, m.found))
            };
            if let Some((j, e, f)) = what {
                bad_pages += 1;
                if first.is_none() {
                    let addr = self.region.addr() + i * page_size() + j * 8;
                    first = Some(format!(
                        "first at {addr:#x} (page {i}): expected {e:#018x}, found {f:#018x}"
                    ));
                }
            }
        }
        match first {
            None => Ok(()),
            Some(f) => Err(format!(
                "{bad_pages} of {} pages differ; {f}",
                self.region.len() / page_size()
            )),
        }
    }
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let mib: u64 = match args.first().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => p.finish(Err("usage: mem MIB [half-zero]".into())),
    };
    let half_zero = match args.get(1).map(String::as_str) {
        None => false,
        Some("half-zero") => true,
        Some(other) => p.finish(Err(format!("unknown mem option {other:?}"))),
    };
    let bytes = (mib * MIB) as usize;
    let mem = match Filled::new(bytes, 0x6372_6573_7400 ^ mib, half_zero) {
        Ok(m) => m,
        Err(e) => p.finish(Err(e)),
    };
    p.info(bytes as u64, mem.nonzero_bytes());
    p.ready();
    if let Err(e) = p.wait_go() {
        p.finish(Err(e));
    }
    p.finish(mem.verify())
}
