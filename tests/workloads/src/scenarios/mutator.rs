//! `mutator [MiB] [no-churn]`: a process that never stops changing its
//! memory, for checkpoints taken while it runs (pre-copy). Everything it
//! holds is a function of its iteration count, so whatever instant a
//! snapshot shows, the restored process can check that every page belongs
//! to that instant.
//!
//! - Region A (MiB MiB, default 64): page `p` holds `a_word(p, g, ..)`,
//!   where `g` is the generation in the table `gens` (one u64 per page, in
//!   ordinary heap memory). Setup writes generation 0 everywhere.
//! - The churn area: a reserved range holding `SLOTS` slots of
//!   `SLOT_PAGES` pages at fixed addresses, then one reserved temporary
//!   slot. The table `slot_state` holds per slot 0 (all zero) or the
//!   generation of its pattern.
//!
//! After ready it loops without waiting. Iteration `i` (from 0) rewrites
//! one whole hot page of A (every `HOT_SPACING`th page is hot; page
//! `HOT_SPACING * (i * stride mod hot pages)`) with generation `i + 1` and
//! records it; every `COLD_EVERY`th iteration also rewrites page
//! `i / COLD_EVERY * stride mod pages` of all of A. So while a copy of A
//! takes a few hundred ms, every hot page and some of the others change,
//! finely interleaved with pages that do not. Every `CHURN_EVERY`th
//! iteration also runs churn operation `k = i / CHURN_EVERY`, cycling
//! through: munmap a slot and mmap a fresh one at the same address with a
//! new pattern; MADV_DONTNEED a slot (it reads zero); swap two slots with
//! mremap through the temporary slot; MADV_FREE a slot and rewrite it with
//! a new pattern. With `no-churn` the slots are left alone.
//!
//! The process may be frozen anywhere, also in the middle of a page or of
//! an mremap, since it only looks at go at the top of an iteration (every
//! `GO_EVERY`th), when the restored process has finished the operation it
//! was in. After go it checks that the tables equal a replay of the
//! iterations done, that every page of A holds its generation, and that
//! every slot holds its recorded state. The loop allocates nothing.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{clock_ns, err_str, errno, mmap_anon, pat, words, PAGE};

const DEFAULT_MIB: usize = 64;
const MAX_MIB: usize = 4096;
const WORDS: usize = PAGE / 8;
/// Candidate strides between consecutive pages written (the first one
/// coprime with the page count is used, so every page gets written).
const STRIDES: [usize; 3] = [7919, 7927, 7933];
/// Every HOT_SPACING-th page of A is hot: one is written each iteration.
const HOT_SPACING: usize = 4;
/// Every COLD_EVERY-th iteration also writes a page of all of A.
const COLD_EVERY: u64 = 64;
const GO_EVERY: u64 = 64;
const CHURN_EVERY: u64 = 32;
const SLOTS: usize = 8;
const SLOT_PAGES: usize = 16;
const SLOT_LEN: usize = SLOT_PAGES * PAGE;
const MIN_ITERATIONS: u64 = 1000;
/// Gives up after this much CPU time without go (frozen time is not
/// counted; a restored process starts counting again).
const CPU_BUDGET_NS: i128 = 120_000_000_000;
/// At most this many individual failures are listed per kind.
const MAX_LISTED: usize = 16;

/// High bits of the first word of every page of A / of a slot.
const A_TAG: u64 = 0xA5A << 52;
const SLOT_TAG: u64 = 0x5107 << 48;
/// Generations of the slots' initial patterns (churn ones are k + 1).
const SLOT_INIT_GEN: u64 = 1 << 32;

const OP_REPLACE: u64 = 0;
const OP_DONTNEED: u64 = 1;
const OP_SWAP: u64 = 2;
const OP_FREE_REWRITE: u64 = 3;
const OPS: u64 = 4;

/// The first word of page `page` of A at generation `gen`: says which page
/// and generation it belongs to (see `describe_a`).
fn a_header(page: usize, gen: u64) -> u64 {
    A_TAG | ((page as u64) << 32) | (gen & 0xFFFF_FFFF)
}

fn a_seed(page: usize, gen: u64) -> u64 {
    0xA000_0000_0000_0000 ^ ((page as u64) << 36) ^ gen
}

/// Word `w` of page `page` of A at generation `gen`.
fn a_word(page: usize, gen: u64, w: usize) -> u64 {
    if w == 0 {
        a_header(page, gen)
    } else {
        pat(a_seed(page, gen), w)
    }
}

/// Decodes a first word of a page of A.
fn describe_a(word: u64) -> String {
    if word & (0xFFF << 52) == A_TAG {
        format!(
            "{word:#018x} (= page {}, generation {})",
            (word >> 32) & 0xF_FFFF,
            word & 0xFFFF_FFFF
        )
    } else {
        format!("{word:#018x} (not a page header)")
    }
}

/// Word `w` (of the whole slot) of a slot pattern of generation `gen`; the
/// first word of each page names the generation and the page.
fn slot_word(gen: u64, w: usize) -> u64 {
    let (page, word) = (w / WORDS, w % WORDS);
    if word == 0 {
        SLOT_TAG | (gen << 8) | page as u64
    } else {
        pat(0x5107_0000_0000_0000 ^ gen, w)
    }
}

fn describe_slot(word: u64) -> String {
    if word == 0 {
        "0 (zero)".into()
    } else if word & (0xFFFF << 48) == SLOT_TAG {
        format!(
            "{word:#018x} (= generation {}, page {})",
            (word & !(0xFFFF << 48)) >> 8,
            word & 0xFF
        )
    } else {
        format!("{word:#018x} (not a slot page header)")
    }
}

fn describe_state(s: u64) -> String {
    if s == 0 {
        "zero".into()
    } else {
        format!("pattern of generation {s}")
    }
}

/// Everything the loop touches, allocated before ready.
struct Mut {
    a: *mut u8,
    pages: usize,
    /// Hot pages: those whose index is a multiple of HOT_SPACING.
    hot_pages: usize,
    stride: usize,
    gens: Vec<u64>,
    /// Reservation: SLOTS slots then the temporary slot.
    area: *mut u8,
    slot_state: Vec<u64>,
}

impl Mut {
    fn slot(&self, s: usize) -> *mut u8 {
        // SAFETY: s <= SLOTS, inside the reservation.
        unsafe { self.area.add(s * SLOT_LEN) }
    }

    fn temp(&self) -> *mut u8 {
        self.slot(SLOTS)
    }
}

/// Writes page `page` of A at generation `gen`.
///
/// # Safety
/// `a` must be the live region A with more than `page` pages.
unsafe fn write_a(a: *mut u8, page: usize, gen: u64) {
    // SAFETY: the page lies inside A; no Rust reference aliases A.
    let ws = unsafe { words(a.add(page * PAGE), PAGE) };
    for (i, w) in ws.iter_mut().enumerate() {
        *w = a_word(page, gen, i);
    }
}

/// Fills a slot with the pattern of `gen`.
///
/// # Safety
/// `slot` must be a live, writable slot mapping.
unsafe fn fill_slot(slot: *mut u8, gen: u64) {
    // SAFETY: forwarded contract.
    let ws = unsafe { words(slot, SLOT_LEN) };
    for (i, w) in ws.iter_mut().enumerate() {
        *w = slot_word(gen, i);
    }
}

fn map_fixed(addr: *mut u8, len: usize, prot: i32) -> Result<(), i32> {
    // SAFETY: `addr` lies in the reservation this scenario owns; no Rust
    // reference points into it.
    let r = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        Err(errno())
    } else if r.cast() != addr {
        Err(libc::EFAULT)
    } else {
        Ok(())
    }
}

fn mremap_fixed(from: *mut u8, to: *mut u8) -> Result<(), i32> {
    // SAFETY: both ranges lie in the reservation this scenario owns.
    let r = unsafe {
        libc::mremap(
            from.cast(),
            SLOT_LEN,
            SLOT_LEN,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to.cast::<libc::c_void>(),
        )
    };
    if r == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(())
    }
}

fn madvise(addr: *mut u8, advice: i32) -> Result<(), i32> {
    // SAFETY: a slot of the reservation this scenario owns.
    if unsafe { libc::madvise(addr.cast(), SLOT_LEN, advice) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The slot(s) churn operation `k` works on.
fn op_slots(k: u64) -> (u64, usize, usize) {
    let op = k % OPS;
    let s = ((k / OPS) % SLOTS as u64) as usize;
    let t = (s + 1 + ((k / (OPS * SLOTS as u64)) % (SLOTS as u64 - 1)) as usize) % SLOTS;
    (op, s, t)
}

/// Applies churn operation `k` to a slot-state table (the model).
fn model_op(state: &mut [u64], k: u64) {
    let (op, s, t) = op_slots(k);
    match op {
        OP_REPLACE | OP_FREE_REWRITE => state[s] = k + 1,
        OP_DONTNEED => state[s] = 0,
        _ => state.swap(s, t),
    }
}

/// Runs churn operation `k` on the real slots and records it. No
/// allocation unless a syscall fails.
fn churn(p: &Proto, m: &mut Mut, k: u64) {
    let (op, s, t) = op_slots(k);
    let slot = m.slot(s);
    let fail = |what: &str, e: i32| -> ! {
        p.bail(&format!("churn op {k} ({what}, slot {s}): {}", err_str(e)))
    };
    match op {
        OP_REPLACE => {
            // SAFETY: the slot is ours; nothing references it.
            if unsafe { libc::munmap(slot.cast(), SLOT_LEN) } != 0 {
                fail("munmap", errno());
            }
            if let Err(e) = map_fixed(slot, SLOT_LEN, libc::PROT_READ | libc::PROT_WRITE) {
                fail("mmap MAP_FIXED", e);
            }
            // SAFETY: freshly mapped slot.
            unsafe { fill_slot(slot, k + 1) };
            m.slot_state[s] = k + 1;
        }
        OP_DONTNEED => {
            if let Err(e) = madvise(slot, libc::MADV_DONTNEED) {
                fail("MADV_DONTNEED", e);
            }
            m.slot_state[s] = 0;
        }
        OP_SWAP => {
            let (other, temp) = (m.slot(t), m.temp());
            if let Err(e) = mremap_fixed(slot, temp) {
                fail("mremap to the temporary slot", e);
            }
            if let Err(e) = mremap_fixed(other, slot) {
                fail("mremap of the other slot", e);
            }
            if let Err(e) = mremap_fixed(temp, other) {
                fail("mremap from the temporary slot", e);
            }
            // Keep the temporary slot reserved.
            if let Err(e) = map_fixed(temp, SLOT_LEN, libc::PROT_NONE) {
                fail("re-reserving the temporary slot", e);
            }
            m.slot_state.swap(s, t);
        }
        _ => {
            if let Err(e) = madvise(slot, libc::MADV_FREE) {
                fail("MADV_FREE", e);
            }
            // SAFETY: the slot is mapped read-write.
            unsafe { fill_slot(slot, k + 1) };
            m.slot_state[s] = k + 1;
        }
    }
}

fn setup(p: &Proto, mib: usize) -> Mut {
    let pages = mib * (1 << 20) / PAGE;
    let stride = STRIDES
        .iter()
        .copied()
        .find(|&s| pages / s * s != pages)
        .expect("three primes cannot all divide the page count");
    let hot_pages = pages.div_ceil(HOT_SPACING);
    let a = mmap_anon(pages * PAGE, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| p.bail(&format!("setup: mmap A ({mib} MiB): {}", err_str(e))));
    for page in 0..pages {
        // SAFETY: A has `pages` pages.
        unsafe { write_a(a, page, 0) };
    }
    let gens = vec![0u64; pages];
    let area = mmap_anon((SLOTS + 1) * SLOT_LEN, libc::PROT_NONE, libc::MAP_NORESERVE)
        .unwrap_or_else(|e| p.bail(&format!("setup: reserving the churn area: {}", err_str(e))));
    let mut m = Mut {
        a,
        pages,
        hot_pages,
        stride,
        gens,
        area,
        slot_state: vec![0; SLOTS],
    };
    for s in 0..SLOTS {
        let slot = m.slot(s);
        if let Err(e) = map_fixed(slot, SLOT_LEN, libc::PROT_READ | libc::PROT_WRITE) {
            p.bail(&format!("setup: mapping slot {s}: {}", err_str(e)));
        }
        // SAFETY: freshly mapped slot.
        unsafe { fill_slot(slot, SLOT_INIT_GEN + s as u64) };
        m.slot_state[s] = SLOT_INIT_GEN + s as u64;
    }
    m
}

fn info(m: &Mut, extra: &str) -> String {
    format!(
        "a={:#x}\npages={}\nhot_spacing={HOT_SPACING}\ncold_every={COLD_EVERY}\nstride={}\ngens={:#x}\nslots={:#x}\nslot_len={SLOT_LEN}\nslot_count={SLOTS}\nslot_state={:#x}\n{extra}",
        m.a as usize,
        m.pages,
        m.stride,
        m.gens.as_ptr() as usize,
        m.area as usize,
        m.slot_state.as_ptr() as usize,
    )
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mib = match args.first() {
        None => DEFAULT_MIB,
        Some(s) => match s.parse::<usize>() {
            Ok(v) if (1..=MAX_MIB).contains(&v) => v,
            _ => p.bail(&format!("setup: bad MiB argument {s:?} (1..={MAX_MIB})")),
        },
    };
    let churning = match args.get(1).map(String::as_str) {
        None => true,
        Some("no-churn") => false,
        Some(s) => p.bail(&format!("setup: bad argument {s:?} (expected no-churn)")),
    };
    let mut m = setup(p, mib);
    let base = Baseline::record();
    p.write_aux("info", &info(&m, ""));
    let cpu0 = clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    p.write_ready();

    // The loop: no allocation, and consistent at the top of each iteration.
    let mut i: u64 = 0;
    let (mut hot, mut cold) = (0usize, 0usize);
    loop {
        let phase = i % GO_EVERY;
        if phase == 0 {
            if p.go_exists() {
                break;
            }
            if clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0 > CPU_BUDGET_NS {
                p.bail("timeout waiting for go (120 s of CPU time)");
            }
        }
        let page = hot * HOT_SPACING;
        // SAFETY: page < pages.
        unsafe { write_a(m.a, page, i + 1) };
        m.gens[page] = i + 1;
        hot = (hot + m.stride) % m.hot_pages;
        if i % COLD_EVERY == COLD_EVERY - 1 {
            // SAFETY: cold < pages.
            unsafe { write_a(m.a, cold, i + 1) };
            m.gens[cold] = i + 1;
            cold = (cold + m.stride) % m.pages;
        }
        if churning && i % CHURN_EVERY == CHURN_EVERY - 1 {
            churn(p, &mut m, i / CHURN_EVERY);
        }
        i += 1;
    }

    let mut c = Checks::new();
    base.verify(p, &mut c);
    let ops = if churning { i / CHURN_EVERY } else { 0 };
    p.write_aux(
        "info",
        &info(&m, &format!("iterations={i}\nchurn_ops={ops}\n")),
    );
    c.ensure(i >= MIN_ITERATIONS, || {
        format!("only {i} iterations before go (expected at least {MIN_ITERATIONS}: the process must keep working)")
    });
    verify_a(&m, i, &mut c);
    verify_slots(&m, ops, &mut c);
    c
}

/// Lists up to MAX_LISTED failures, then how many there were in all.
struct Listed<'a> {
    c: &'a mut Checks,
    what: &'static str,
    count: usize,
    of: usize,
}

impl Listed<'_> {
    fn fail(&mut self, msg: impl FnOnce() -> String) {
        if self.count < MAX_LISTED {
            self.c.fail(msg());
        }
        self.count += 1;
    }

    fn done(self) {
        if self.count > MAX_LISTED {
            self.c.fail(format!(
                "{}: {} of {} differ in all ({MAX_LISTED} listed above)",
                self.what, self.count, self.of
            ));
        }
    }
}

fn verify_a(m: &Mut, iterations: u64, c: &mut Checks) {
    // Replay: iteration j wrote generation j + 1 into hot page
    // HOT_SPACING * (j * stride mod hot_pages) and, every COLD_EVERY-th,
    // into page (j / COLD_EVERY * stride) mod pages.
    let mut model = vec![0u64; m.pages];
    let (mut hot, mut cold) = (0usize, 0usize);
    for j in 0..iterations {
        model[hot * HOT_SPACING] = j + 1;
        hot = (hot + m.stride) % m.hot_pages;
        if j % COLD_EVERY == COLD_EVERY - 1 {
            model[cold] = j + 1;
            cold = (cold + m.stride) % m.pages;
        }
    }
    let mut l = Listed {
        c,
        what: "generation table of A vs a replay of the iterations",
        count: 0,
        of: m.pages,
    };
    for (pg, (&want, &got)) in model.iter().zip(&m.gens).enumerate() {
        if want != got {
            l.fail(|| {
                format!("generation table of A, page {pg}: expected {want} (replay of {iterations} iterations), got {got}")
            });
        }
    }
    l.done();

    let mut l = Listed {
        c,
        what: "pages of A",
        count: 0,
        of: m.pages,
    };
    for (pg, &gen) in m.gens.iter().enumerate() {
        // SAFETY: A is mapped read-write with `pages` pages; the loop no
        // longer writes it.
        let ws = unsafe { std::slice::from_raw_parts(m.a.add(pg * PAGE).cast::<u64>(), WORDS) };
        if let Some(w) = (0..WORDS).find(|&w| ws[w] != a_word(pg, gen, w)) {
            l.fail(|| {
                format!(
                    "page {pg} of A (at {:#x}): expected generation {gen}, first word {}; got first word {}{}",
                    m.a as usize + pg * PAGE,
                    describe_a(a_header(pg, gen)),
                    describe_a(ws[0]),
                    if w == 0 {
                        String::new()
                    } else {
                        format!(" and word {w} differs: expected {:#018x}, got {:#018x}", a_word(pg, gen, w), ws[w])
                    }
                )
            });
        }
    }
    l.done();
}

fn verify_slots(m: &Mut, ops: u64, c: &mut Checks) {
    let mut model: Vec<u64> = (0..SLOTS as u64).map(|s| SLOT_INIT_GEN + s).collect();
    for k in 0..ops {
        model_op(&mut model, k);
    }
    for (s, (&want, &got)) in model.iter().zip(&m.slot_state).enumerate() {
        c.ensure(want == got, || {
            format!(
                "slot state table, slot {s}: expected {} (replay of {ops} churn operations), got {}",
                describe_state(want),
                describe_state(got)
            )
        });
    }
    // Every slot and the temporary slot must be mapped (mincore: ENOMEM
    // for a hole), the slots readable.
    let mut vec = [0u8; SLOT_PAGES];
    for s in 0..=SLOTS {
        // SAFETY: `vec` has one byte per page of the range.
        let r = unsafe { libc::mincore(m.slot(s).cast(), SLOT_LEN, vec.as_mut_ptr()) };
        if r != 0 {
            let what = if s == SLOTS {
                "temporary slot".to_string()
            } else {
                format!("slot {s}")
            };
            c.fail(format!(
                "{what} at {:#x}: not mapped (mincore: {})",
                m.slot(s) as usize,
                err_str(errno())
            ));
            if s < SLOTS {
                return;
            }
        }
    }
    for s in 0..SLOTS {
        let state = m.slot_state[s];
        // SAFETY: checked mapped above; read-write slots; the loop no
        // longer runs.
        let ws = unsafe { std::slice::from_raw_parts(m.slot(s).cast::<u64>(), SLOT_LEN / 8) };
        let want = |w: usize| if state == 0 { 0 } else { slot_word(state, w) };
        if let Some(w) = (0..ws.len()).find(|&w| ws[w] != want(w)) {
            let pg = w / WORDS;
            let head = pg * WORDS;
            c.fail(format!(
                "slot {s} (at {:#x}, {}): page {pg}: expected first word {}, got {}; first differing word {w}: expected {:#018x}, got {:#018x}",
                m.slot(s) as usize,
                describe_state(state),
                describe_slot(want(head)),
                describe_slot(ws[head]),
                want(w),
                ws[w]
            ));
        }
    }
}
