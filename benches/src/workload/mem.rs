//! `mem N [half-zero|text]`: N MiB of touched anonymous memory. By default
//! it is incompressible (the pattern); with `half-zero` every other page is
//! written with zeros instead (so it is resident but carries nothing); with
//! `text` every page holds text-like bytes (words from a small dictionary),
//! which compress well. Every byte is regenerated and compared after the
//! restore.
//!
//! `thp`: random pages in memory advised MADV_HUGEPAGE before it is
//! written (transparent huge pages, when the machine has them on).
//!
//! `steps`: random pages; while it waits for go, each time `<dir>/step`
//! appears it rewrites one page in 20 (5 %; step `k` the pages `i` with
//! `i % 20 == k`, up to 20 steps) with generation 1, removes `step` and
//! writes `<dir>/stepped` (for incremental dumps between steps).
//!
//! `busy`: random pages, and while it waits for go the process keeps
//! rewriting a hot set (the first sixteenth of its pages) in order, page
//! after page, 64 pages (256 KiB) every 2 ms poll (about 128 MiB/s): each
//! rewrite of page `i` holds generation `g` of its pattern. A checkpoint
//! (pre-copy or not) must capture the pages as they were at one instant:
//! after the restore, pages before the writer's position hold generation
//! `g + 1` and the rest `g`, exactly; a page copied before it was last
//! rewritten shows up as an older generation.

use crest_bench::{page_size, pattern, MIB};

use crate::proto::Proto;
use crate::region::Region;

/// What the pages hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fill {
    /// The incompressible pattern on every page.
    Random,
    /// The pattern on even pages, zeros on odd pages.
    HalfZero,
    /// Text-like bytes on every page.
    Text,
}

/// A `steps` workload rewrites one page in this many per step.
const STEPS: usize = 20;

/// Pages rewritten per poll for go by a `busy` workload.
const BUSY_PAGES_PER_POLL: usize = 64;

/// A region filled with `Fill`.
pub struct Filled {
    pub region: Region,
    seed: u64,
    fill: Fill,
    text: pattern::Text,
}

impl Filled {
    pub fn new(bytes: usize, seed: u64, fill: Fill) -> Result<Filled, String> {
        Self::new_advised(bytes, seed, fill, false)
    }

    /// [`Filled::new`], the memory advised MADV_HUGEPAGE first if `huge`.
    pub fn new_advised(bytes: usize, seed: u64, fill: Fill, huge: bool) -> Result<Filled, String> {
        let mut region = Region::new(bytes, libc::PROT_READ | libc::PROT_WRITE)
            .map_err(|e| format!("mmap of {bytes} bytes: {e}"))?;
        if huge {
            // SAFETY: advice on the whole of our own fresh mapping.
            let r = unsafe {
                libc::madvise(
                    region.addr() as *mut libc::c_void,
                    bytes,
                    libc::MADV_HUGEPAGE,
                )
            };
            if r != 0 {
                return Err(format!(
                    "madvise(MADV_HUGEPAGE): {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let ps = page_size();
        let pw = ps / 8;
        let text = pattern::Text::new();
        match fill {
            Fill::Random | Fill::HalfZero => {
                for (i, page) in region.words_mut().chunks_mut(pw).enumerate() {
                    if fill == Fill::HalfZero && i % 2 == 1 {
                        page.fill(0);
                    } else {
                        pattern::fill(page, seed, (i * pw) as u64);
                    }
                }
            }
            Fill::Text => {
                for (i, page) in region.bytes_mut().chunks_mut(ps).enumerate() {
                    text.page(page, seed, i as u64);
                }
            }
        }
        Ok(Filled {
            region,
            seed,
            fill,
            text,
        })
    }

    /// Bytes of pages that carry data (not zero).
    pub fn nonzero_bytes(&self) -> u64 {
        let pages = self.region.len() / page_size();
        let data = if self.fill == Fill::HalfZero {
            pages.div_ceil(2)
        } else {
            pages
        };
        (data * page_size()) as u64
    }

    /// The pattern seed of generation `generation` of a page (generation
    /// 0 is the first fill: `mix(0) == 0`).
    fn seed_of(&self, generation: u64) -> u64 {
        self.seed ^ pattern::mix(generation)
    }

    /// Rewrites random page `i` with generation `generation` of its pattern.
    fn rewrite(&mut self, i: usize, generation: u64) {
        let pw = page_size() / 8;
        let seed = self.seed_of(generation);
        let words = &mut self.region.words_mut()[i * pw..(i + 1) * pw];
        pattern::fill(words, seed, (i * pw) as u64);
    }

    /// Where page `i` (of generation `generation`) first differs from what
    /// was written, if it does: (byte offset in the page, expected 8
    /// bytes, found 8 bytes).
    fn check_page(
        &self,
        i: usize,
        generation: u64,
        scratch: &mut [u8],
    ) -> Option<(usize, u64, u64)> {
        let ps = page_size();
        let pw = ps / 8;
        let words = self.region.words_at(i * ps, pw);
        match self.fill {
            Fill::HalfZero if i % 2 == 1 => words
                .iter()
                .position(|&w| w != 0)
                .map(|j| (j * 8, 0, words[j])),
            Fill::Random | Fill::HalfZero => {
                pattern::check(words, self.seed_of(generation), (i * pw) as u64)
                    .map(|m| (m.first * 8, m.expected, m.found))
            }
            Fill::Text => {
                self.text.page(scratch, self.seed, i as u64);
                let page = &self.region.bytes()[i * ps..(i + 1) * ps];
                let j = page.iter().zip(scratch.iter()).position(|(a, b)| a != b)?;
                let at = j - j % 8;
                let w = |b: &[u8]| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
                Some((j, w(scratch), w(page)))
            }
        }
    }

    /// Compares every byte with what was written.
    pub fn verify(&self) -> Result<(), String> {
        self.verify_generations(|_| 0)
    }

    /// Compares every byte with what was written, page `i` being of
    /// generation `generation_of(i)`.
    fn verify_generations(&self, generation_of: impl Fn(usize) -> u64) -> Result<(), String> {
        let ps = page_size();
        let pages = self.region.len() / ps;
        let mut scratch = vec![0u8; ps];
        let mut bad_pages = 0usize;
        let mut first: Option<String> = None;
        for i in 0..pages {
            let g = generation_of(i);
            if let Some((j, e, f)) = self.check_page(i, g, &mut scratch) {
                bad_pages += 1;
                if first.is_none() {
                    let addr = self.region.addr() + i * ps + j;
                    first = Some(format!(
                        "first at {addr:#x} (page {i}, generation {g}): expected {e:#018x}, \
                         found {f:#018x}"
                    ));
                }
            }
        }
        match first {
            None => Ok(()),
            Some(f) => Err(format!("{bad_pages} of {pages} pages differ; {f}")),
        }
    }
}

/// The writer of a `busy` workload: where it is in its hot set.
struct Writer {
    /// Pages 0..hot are rewritten.
    hot: usize,
    /// Pages before `next` hold generation `generation + 1`, the other hot
    /// pages `generation`.
    generation: u64,
    next: usize,
}

impl Writer {
    fn step(&mut self, mem: &mut Filled) {
        for _ in 0..BUSY_PAGES_PER_POLL {
            mem.rewrite(self.next, self.generation + 1);
            self.next += 1;
            if self.next == self.hot {
                self.next = 0;
                self.generation += 1;
            }
        }
    }

    fn generation_of(&self, i: usize) -> u64 {
        match i {
            i if i >= self.hot => 0,
            i if i < self.next => self.generation + 1,
            _ => self.generation,
        }
    }
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let mib: u64 = match args.first().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => p.finish(Err("usage: mem MIB [half-zero|text|busy]".into())),
    };
    let opt = args.get(1).map(String::as_str);
    let (fill, busy) = match opt {
        None | Some("thp") | Some("steps") => (Fill::Random, false),
        Some("half-zero") => (Fill::HalfZero, false),
        Some("text") => (Fill::Text, false),
        Some("busy") => (Fill::Random, true),
        Some(other) => p.finish(Err(format!("unknown mem option {other:?}"))),
    };
    let bytes = (mib * MIB) as usize;
    let mut mem = match Filled::new_advised(bytes, 0x6372_6573_7400 ^ mib, fill, opt == Some("thp"))
    {
        Ok(m) => m,
        Err(e) => p.finish(Err(e)),
    };
    p.info(bytes as u64, mem.nonzero_bytes());
    p.ready();
    if opt == Some("steps") {
        let step = p.dir().join("step");
        let mut done = 0usize;
        let pages = bytes / page_size();
        let r = p.wait_go_doing(|| {
            if done < STEPS && step.exists() {
                for i in (done..pages).step_by(STEPS) {
                    mem.rewrite(i, 1);
                }
                done += 1;
                let _ = std::fs::remove_file(&step);
                let _ =
                    crest_bench::write_atomic(p.dir(), "stepped", format!("{done}\n").as_bytes());
            }
        });
        if let Err(e) = r {
            p.finish(Err(e));
        }
        p.finish(mem.verify_generations(|i| u64::from(i % STEPS < done)))
    }
    if !busy {
        if let Err(e) = p.wait_go() {
            p.finish(Err(e));
        }
        p.finish(mem.verify())
    }
    let mut w = Writer {
        hot: (bytes / page_size() / 16).max(1),
        generation: 0,
        next: 0,
    };
    if let Err(e) = p.wait_go_doing(|| w.step(&mut mem)) {
        p.finish(Err(e));
    }
    p.finish(mem.verify_generations(|i| w.generation_of(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_generations_verify_and_catch_a_stale_page() {
        let mut mem = Filled::new(MIB as usize, 9, Fill::Random).unwrap();
        let mut w = Writer {
            hot: 16,
            generation: 0,
            next: 0,
        };
        w.step(&mut mem);
        w.step(&mut mem);
        // 128 rewrites of 16 hot pages: generation 8, back at page 0.
        assert_eq!((w.generation, w.next), (8, 0));
        mem.rewrite(0, 9);
        w.next = 1;
        mem.verify_generations(|i| w.generation_of(i)).unwrap();
        // A hot page as an earlier copy would have left it.
        mem.rewrite(5, 7);
        let e = mem.verify_generations(|i| w.generation_of(i)).unwrap_err();
        assert!(
            e.starts_with("1 of 256 pages differ") && e.contains("page 5"),
            "{e}"
        );
    }

    #[test]
    fn text_and_half_zero_verify() {
        for fill in [Fill::Text, Fill::HalfZero] {
            let mut mem = Filled::new(64 << 10, 3, fill).unwrap();
            mem.verify().unwrap();
            mem.region.bytes_mut()[5 * page_size() + 17] ^= 1;
            assert!(mem.verify().unwrap_err().contains("page 5"));
        }
    }
}
