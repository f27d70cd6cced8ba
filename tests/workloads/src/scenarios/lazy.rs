//! `lazy [MiB] [fork] [spin]`: memory for a lazy (post-copy) restore, checked
//! while its pages are still arriving.
//!
//! - Region A (MiB MiB, default 64): every word is `pat(SEED_A, i)`.
//! - Region B (64 pages, patterned): after go it is dropped with
//!   MADV_DONTNEED and must read zero (a page the lazy phase still held
//!   must not come back).
//! - Region C (32 pages, patterned): after go it is moved with mremap to a
//!   reserved place and must hold its pattern there (the pages still held
//!   move with it), the old place unmapped.
//! - Region D (64 pages): only the even pages were written; the odd ones
//!   must read zero.
//!
//! With `fork`, the process forks first thing after go (while most pages
//! are still missing); the child checks all of A and D and reports in
//! `child-PID`, the parent checks everything and the child's verdict.
//! With `spin`, after ready it does not wait for go but keeps re-reading
//! A (so a restored copy faults at once) until go appears.
//! `info` holds `a=ADDR` (hex) so a selftest can change a word.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{errno, mmap_anon, pat, PAGE};

const SEED_A: u64 = 0x1A2;
const SEED_B: u64 = 0x1B2;
const SEED_C: u64 = 0x1C2;
const SEED_D: u64 = 0x1D2;
const B_PAGES: usize = 64;
const C_PAGES: usize = 32;
const D_PAGES: usize = 64;
const W: usize = PAGE / 8;

fn words<'a>(p: *mut u8, len: usize) -> &'a mut [u64] {
    // SAFETY: `p` is a private mapping of at least `len` bytes this
    // process made and keeps for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) }
}

/// Words of `w` that differ from `expect(i)`: count and first index.
fn bad(w: &[u64], expect: impl Fn(usize) -> u64) -> (usize, Option<usize>) {
    let mut n = 0;
    let mut first = None;
    for (i, &v) in w.iter().enumerate() {
        if v != expect(i) {
            n += 1;
            first.get_or_insert(i);
        }
    }
    (n, first)
}

fn check(c: &mut Checks, what: &str, r: (usize, Option<usize>)) {
    c.ensure(r.0 == 0, || {
        format!("{what}: {} words wrong, first at word {:?}", r.0, r.1)
    });
}

fn d_expect(i: usize) -> u64 {
    if (i / W).is_multiple_of(2) {
        pat(SEED_D, i)
    } else {
        0
    }
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let mib: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(64)
        .clamp(1, 4096);
    let fork = args.iter().any(|a| a == "fork");
    let spin = args.iter().any(|a| a == "spin");
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let a_len = mib << 20;
    let map = |len| mmap_anon(len, rw, 0).unwrap_or_else(|e| p.bail(&format!("mmap: {e}")));
    let a = map(a_len);
    let b = map(B_PAGES * PAGE);
    let c = map(C_PAGES * PAGE);
    let d = map(D_PAGES * PAGE);
    // Where C moves to: reserved now, so the address is known.
    let c_to = mmap_anon(C_PAGES * PAGE, libc::PROT_NONE, 0)
        .unwrap_or_else(|e| p.bail(&format!("mmap: {e}")));
    for (i, w) in words(a, a_len).iter_mut().enumerate() {
        *w = pat(SEED_A, i);
    }
    for (i, w) in words(b, B_PAGES * PAGE).iter_mut().enumerate() {
        *w = pat(SEED_B, i);
    }
    for (i, w) in words(c, C_PAGES * PAGE).iter_mut().enumerate() {
        *w = pat(SEED_C, i);
    }
    for (i, w) in words(d, D_PAGES * PAGE).iter_mut().enumerate() {
        if (i / W).is_multiple_of(2) {
            *w = pat(SEED_D, i);
        }
    }
    let base = Baseline::record();
    p.write_aux("info", &format!("a={:x}\n", a as usize));
    p.write_ready();
    let mut spins = 0u64;
    if spin {
        let aw = words(a, a_len);
        let mut k = 0usize;
        while !p.go_exists() {
            // One word per page, walking A: a restored copy faults here.
            std::hint::black_box(aw[(k * W) % aw.len()]);
            k += 1;
            spins += 1;
        }
    } else {
        let wait = p.wait_go();
        let mut c0 = Checks::new();
        wait.report(&mut c0, "go-wait");
        if !c0.passed() {
            p.finish(&c0);
        }
    }
    let _ = spins;
    let mut ck = Checks::new();
    let mut child = 0;
    if fork {
        // SAFETY: fork in a single-threaded process; the child only reads
        // memory and writes its verdict.
        child = unsafe { libc::fork() };
        if child < 0 {
            p.bail(&format!("fork: errno {}", errno()));
        }
        if child == 0 {
            // SAFETY: getpid has no preconditions.
            let me = unsafe { libc::getpid() };
            let m = p.for_member(me);
            m.install_member_panic_hook();
            let mut cc = Checks::new();
            check(
                &mut cc,
                "child: region A",
                bad(words(a, a_len), |i| pat(SEED_A, i)),
            );
            check(
                &mut cc,
                "child: region D",
                bad(words(d, D_PAGES * PAGE), d_expect),
            );
            m.finish(&cc);
        }
    }
    // B: dropped pages read zero.
    // SAFETY: madvise on the mapping made above.
    let r = unsafe { libc::madvise(b.cast(), B_PAGES * PAGE, libc::MADV_DONTNEED) };
    ck.ensure(r == 0, || format!("madvise(DONTNEED) B: errno {}", errno()));
    check(
        &mut ck,
        "region B after MADV_DONTNEED",
        bad(words(b, B_PAGES * PAGE), |_| 0),
    );
    // C: moved pages keep their content.
    // SAFETY: moves the mapping made above over the reserved range.
    let moved = unsafe {
        libc::mremap(
            c.cast(),
            C_PAGES * PAGE,
            C_PAGES * PAGE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            c_to.cast::<libc::c_void>(),
        )
    };
    if moved == libc::MAP_FAILED {
        ck.fail(format!("mremap C: errno {}", errno()));
    } else {
        check(
            &mut ck,
            "region C after mremap",
            bad(words(moved.cast(), C_PAGES * PAGE), |i| pat(SEED_C, i)),
        );
    }
    check(
        &mut ck,
        "region A",
        bad(words(a, a_len), |i| pat(SEED_A, i)),
    );
    check(&mut ck, "region D", bad(words(d, D_PAGES * PAGE), d_expect));
    if fork {
        let mut st = 0;
        // SAFETY: waits for the child forked above.
        let r = unsafe { libc::waitpid(child, &mut st, 0) };
        ck.ensure(
            r == child && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            || {
                let v = std::fs::read_to_string(p.dir().join(format!("child-{child}")))
                    .unwrap_or_default();
                format!("the forked child failed (status {st:#x}): {v}")
            },
        );
    }
    base.verify(p, &mut ck);
    ck
}
