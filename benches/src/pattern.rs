//! The memory pattern the workloads fill and later verify.
//!
//! Word `i` of a region with seed `s` is `splitmix64(s + i·φ)`: random
//! looking (incompressible), cheap to compute, and recomputable from its
//! position alone, so a workload verifies its memory after a restore by
//! regenerating it — an exact comparison, stronger than a checksum.
//!
//! [`Text`] is the compressible counterpart: a page of words from a small
//! dictionary, chosen by the same stream, so it too is regenerated exactly.

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

/// The dictionary of [`text`]: 64 common English words.
const WORDS: [&[u8]; 64] = [
    b"the", b"of", b"and", b"to", b"in", b"is", b"that", b"it", b"was", b"for", b"on", b"are",
    b"as", b"with", b"his", b"they", b"at", b"be", b"this", b"from", b"have", b"or", b"by", b"one",
    b"had", b"not", b"but", b"what", b"all", b"were", b"when", b"we", b"there", b"can", b"an",
    b"your", b"which", b"their", b"said", b"if", b"do", b"will", b"each", b"about", b"how", b"up",
    b"out", b"them", b"then", b"she", b"many", b"some", b"so", b"these", b"would", b"other",
    b"into", b"has", b"more", b"her", b"two", b"like", b"him", b"see",
];

/// Fills `out` with words of [`WORDS`] separated by spaces, with a comma or
/// a full stop and newline now and then, chosen by the stream `stream`
/// (the last word is cut off at the end).
fn words_into(out: &mut [u8], stream: u64) {
    let mut pos = 0usize;
    let mut j = 0u64;
    while pos < out.len() {
        let r = word(stream, j);
        j += 1;
        let sep: &[u8] = match (r >> 8) & 15 {
            0 => b".\n",
            1 => b", ",
            _ => b" ",
        };
        for &b in WORDS[(r & 63) as usize].iter().chain(sep) {
            if pos == out.len() {
                break;
            }
            out[pos] = b;
            pos += 1;
        }
    }
}

/// Text-like, compressible page contents: 64 KiB of words from [`WORDS`]
/// (about 1.5 bits of entropy a byte), of which each page takes 256-byte
/// runs at offsets chosen by the stream of its seed and number. Different
/// on every page, exactly reproducible, and generated at memory speed.
pub struct Text {
    pool: Vec<u8>,
}

impl Default for Text {
    fn default() -> Text {
        Text::new()
    }
}

impl Text {
    const POOL: usize = 64 << 10;
    const RUN: usize = 256;

    pub fn new() -> Text {
        let mut pool = vec![0u8; Text::POOL];
        words_into(&mut pool, 0x7465_7874);
        Text { pool }
    }

    /// Fills `out` with page `page` of the text of `seed`.
    pub fn page(&self, out: &mut [u8], seed: u64, page: u64) {
        let stream = seed ^ mix(page.wrapping_add(0x7061_6765));
        let span = (Text::POOL - Text::RUN + 1) as u64;
        for (j, run) in out.chunks_mut(Text::RUN).enumerate() {
            let off = (word(stream, j as u64) % span) as usize;
            run.copy_from_slice(&self.pool[off..off + run.len()]);
        }
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
    fn text_is_reproducible_and_differs_by_page() {
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        let t = Text::new();
        t.page(&mut a, 5, 3);
        Text::new().page(&mut b, 5, 3);
        t.page(&mut c, 5, 4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a
            .iter()
            .all(|&x| x.is_ascii_lowercase() || b" ,.\n".contains(&x)));
        assert!(a.iter().filter(|&&x| x == b' ').count() > 400);
    }

    #[test]
    fn streams_differ_by_seed_and_offset() {
        assert_ne!(word(1, 0), word(2, 0));
        assert_ne!(word(1, 0), word(1, 1));
    }
}
