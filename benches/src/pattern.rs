//! The memory pattern the workloads fill and later verify.
//!
//! Word `i` of a region with seed `s` is `splitmix64(s + i·φ)`: random
//! looking (incompressible), cheap to compute, and recomputable from its
//! position alone, so a workload verifies its memory after a restore by
//! regenerating it — an exact comparison, stronger than a checksum.

/// The splitmix64 finaliser.
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value of word `index` of the stream with `seed`.
#[inline(always)]
pub fn word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// Fills `words` with the stream `seed` starting at word `first`.
pub fn fill(words: &mut [u64], seed: u64, first: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = word(seed, first + i as u64);
    }
}

/// A difference found by [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Index (in `words`) of the first differing word.
    pub first: usize,
    pub expected: u64,
    pub found: u64,
    /// How many words differ in all.
    pub count: usize,
}

/// Compares `words` with the stream `seed` starting at word `first`.
pub fn check(words: &[u64], seed: u64, first: u64) -> Option<Mismatch> {
    let mut bad: Option<Mismatch> = None;
    for (i, &w) in words.iter().enumerate() {
        let e = word(seed, first + i as u64);
        if w != e {
            match &mut bad {
                Some(m) => m.count += 1,
                None => {
                    bad = Some(Mismatch {
                        first: i,
                        expected: e,
                        found: w,
                        count: 1,
                    })
                }
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_round_trips() {
        let mut v = vec![0u64; 1024];
        fill(&mut v, 7, 100);
        assert_eq!(check(&v, 7, 100), None);
        assert!(v.iter().all(|&w| w != 0));
        v[10] ^= 1;
        v[20] = 0;
        let m = check(&v, 7, 100).unwrap();
        assert_eq!((m.first, m.count), (10, 2));
        assert!(check(&v, 8, 100).is_some());
    }

    #[test]
    fn streams_differ_by_seed_and_offset() {
        assert_ne!(word(1, 0), word(2, 0));
        assert_ne!(word(1, 0), word(1, 1));
    }
}
