//! Deterministic mutation fuzzing of the reader: random damage to a valid
//! image must never panic and never read back successfully.

use crate::common::*;

/// SplitMix64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// `(start, end)` of every record of `image`, HEADER and TAIL included.
fn record_spans(image: &[u8]) -> Vec<(usize, usize)> {
    let mut r = crest_image::Reader::new(image).unwrap();
    let mut starts = vec![16usize];
    while let Some(rec) = r.next_record().unwrap() {
        starts.push(rec.offset as usize);
    }
    starts.push(r.tail().unwrap().bytes as usize);
    starts.push(image.len());
    // Skipped optional records are not returned: spans may cover several
    // records, which is fine for mutation purposes.
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

fn mutate(rng: &mut Rng, m: &mut Vec<u8>, spans: &[(usize, usize)], log: &mut Vec<String>) {
    let len = m.len();
    let pos = rng.below(len.max(1));
    let span = spans[rng.below(spans.len())];
    let (s, e) = (span.0.min(len), span.1.min(len));
    match rng.below(12) {
        0 => {
            let bit = rng.below(8);
            if len > 0 {
                m[pos] ^= 1 << bit;
            }
            log.push(format!("flip bit {bit} of byte {pos}"));
        }
        1 => {
            let v = rng.byte();
            if len > 0 {
                m[pos] = v;
            }
            log.push(format!("set byte {pos} to {v:#x}"));
        }
        2 => {
            let n = 1 + rng.below(16);
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            m.splice(at..at, bytes);
            log.push(format!("insert {n} random bytes at {at}"));
        }
        3 => {
            let n = 1 + rng.below(16);
            let end = (pos + n).min(len);
            m.drain(pos.min(len)..end);
            log.push(format!("delete {pos}..{end}"));
        }
        4 => {
            m.truncate(pos);
            log.push(format!("truncate at {pos}"));
        }
        5 => {
            m.drain(s..e);
            log.push(format!("drop span {s}..{e}"));
        }
        6 => {
            let copy = m[s..e].to_vec();
            m.splice(e..e, copy);
            log.push(format!("duplicate span {s}..{e}"));
        }
        7 => {
            // Swap this span with the next one.
            if let Some(next) = spans.iter().find(|sp| sp.0 == span.1) {
                let ne = next.1.min(len);
                if e <= ne {
                    let a = m[s..e].to_vec();
                    let b = m[e..ne].to_vec();
                    let mut both = b;
                    both.extend_from_slice(&a);
                    m.splice(s..ne, both);
                    log.push(format!("swap spans {s}..{e} and {e}..{ne}"));
                }
            }
        }
        8 => {
            let at = (rng.below(len + 1) / 8) * 8;
            m.splice(at..at, [0u8; 8]);
            log.push(format!("insert 8 zero bytes at {at}"));
        }
        9 => {
            let n = 1 + rng.below(32);
            for _ in 0..n {
                let b = rng.byte();
                m.push(b);
            }
            log.push(format!("append {n} random bytes"));
        }
        10 => {
            let at = (pos / 8) * 8;
            let end = (at + 8).min(len);
            m[at..end].fill(0);
            log.push(format!("zero word at {at}"));
        }
        _ => {
            // Copy a span over another place of the same stream.
            let n = e - s;
            let at = rng.below(len.saturating_sub(n) + 1);
            let copy = m[s..e].to_vec();
            m[at..at + n].copy_from_slice(&copy);
            log.push(format!("overwrite {at}..{} with span {s}..{e}", at + n));
        }
    }
}

/// A short name for the check that refused an image.
fn category(e: &crest_image::Error) -> &'static str {
    use crest_image::Error;
    match e {
        Error::BadMagic => "BadMagic",
        Error::UnsupportedVersion { .. } => "UnsupportedVersion",
        Error::Truncated { .. } => "Truncated",
        Error::Corrupt { what, .. } => {
            for (needle, name) in [
                ("record header checksum", "header checksum"),
                ("payload checksum", "payload checksum"),
                ("padding", "padding"),
                ("reserved", "reserved"),
                ("records before it", "tail: records"),
                ("starts at byte", "tail: start"),
                ("digest", "tail: digest"),
                ("follows the tail", "after tail"),
                ("HEADER", "header placement"),
            ] {
                if what.contains(needle) {
                    return name;
                }
            }
            "other corruption"
        }
        _ => "other",
    }
}

#[test]
fn mutated_images_never_panic_and_never_pass() {
    let image = paged_image();
    let spans = record_spans(&image);
    let mut rng = Rng(0x0c0f_fee0_dead_beef);
    let mut noops = 0;
    let mut log = Vec::new();
    let mut kinds = std::collections::BTreeMap::new();
    for iter in 0..20_000 {
        let mut m = image.clone();
        log.clear();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut m, &spans, &mut log);
        }
        match read_all(&m) {
            Ok(_) if m == image => noops += 1,
            Ok(_) => panic!("iteration {iter}: mutated image read successfully: {log:?}"),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                *kinds.entry(category(&e)).or_insert(0u32) += 1;
            }
        }
    }
    // The mutations reach many different checks (record headers are
    // protected by their CRC, so chunk and kind checks are out of reach).
    eprintln!("errors: {kinds:?}, no-ops: {noops}");
    for expected in [
        "BadMagic",
        "UnsupportedVersion",
        "Truncated",
        "header checksum",
        "payload checksum",
        "tail: records",
        "tail: start",
        "tail: digest",
        "after tail",
    ] {
        assert!(
            kinds.contains_key(expected),
            "never hit {expected}: {kinds:?}"
        );
    }
    // Almost every mutation changes the image.
    assert!(noops < 1000, "{noops} no-op mutations");
}

/// The PAGES payloads of `image` as stored (compressed ones compressed),
/// with their record flags.
fn stored_page_payloads(image: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut r = crest_image::Reader::new(image).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if rec.kind == crest_image::kind::PAGES {
            let at = rec.offset as usize;
            let len = u64::from_le_bytes(image[at + 8..at + 16].try_into().unwrap()) as usize;
            out.push((rec.flags, image[at + 24..at + 24 + len].to_vec()));
        }
    }
    out
}

/// Hostile page chunks: damage to dense, sparse and compressed sparse PAGES
/// payloads, framed with correct checksums so that the chunk checks (not
/// the CRCs) see it. Never a panic; a chunk that passes is consistent.
#[test]
fn mutated_page_chunks_never_panic_and_stay_consistent() {
    use crest_image::kind;
    let payloads = stored_page_payloads(&paged_image());
    assert_eq!(payloads.len(), 4);
    assert!(payloads
        .iter()
        .any(|(f, _)| f & crest_image::FLAG_COMPRESSED != 0));
    let mut rng = Rng(0x5a5a_1234_abcd_0001);
    let (mut passed, mut refused) = (0u32, std::collections::BTreeMap::new());
    for _ in 0..20_000 {
        let (flags, base) = &payloads[rng.below(payloads.len())];
        let mut p = base.clone();
        for _ in 0..1 + rng.below(2) {
            // Mostly the chunk header and the bitmap, sometimes anywhere.
            let at = if rng.below(4) == 0 || p.len() <= 40 {
                rng.below(p.len().max(1))
            } else {
                rng.below(40)
            };
            match rng.below(5) {
                0 => p[at] ^= 1 << rng.below(8),
                1 => p[at] = rng.byte(),
                2 => {
                    let n = rng.below(p.len() - at + 1);
                    p.truncate(at.max(1) + n.min(8192));
                }
                3 => p.extend(std::iter::repeat_n(0, 8 * (1 + rng.below(600)))),
                _ => {
                    // A plausible but wrong window length or flags word.
                    let field = [4usize, 16][rng.below(2)];
                    let v = [0u64, 1, 2, 3, 63, 64, 65, 1 << 20, u64::MAX][rng.below(9)];
                    let w = if field == 4 { 4 } else { 8 };
                    if p.len() >= field + w {
                        p[field..field + w].copy_from_slice(&v.to_le_bytes()[..w]);
                    }
                }
            }
        }
        let mut raw = Raw::with_header(&sample_header());
        raw.record(kind::PAGES, *flags, &p).tail();
        let image = raw.take();
        let mut r = crest_image::Reader::new(&image[..]).unwrap();
        match r.next_record() {
            Ok(Some(rec)) => {
                let c = rec.page_chunk(4096).expect("the reader validated it");
                let runs: Vec<(u64, usize)> = c.runs().map(|(a, d)| (a, d.len())).collect();
                let carried: usize = runs.iter().map(|r| r.1).sum();
                assert_eq!(carried, c.data.len());
                assert_eq!(c.data.len() as u64, c.nr_pages * 4096);
                assert!(c.nr_pages >= 1 && c.nr_pages <= c.window_pages());
                assert_eq!(runs[0].0, c.addr);
                let last = runs.last().unwrap();
                assert_eq!(last.0 + last.1 as u64, c.end());
                assert!(runs.windows(2).all(|w| w[0].0 + (w[0].1 as u64) < w[1].0));
                passed += 1;
            }
            Ok(None) => panic!("a PAGES record vanished"),
            Err(e) => {
                let s = e.to_string();
                let what = [
                    "bitmap",
                    "first and the last",
                    "beyond",
                    "carries",
                    "flags",
                    "compressed",
                    "claims",
                    "aligned",
                    "no pages",
                    "shorter",
                ]
                .into_iter()
                .find(|n| s.contains(n))
                .unwrap_or("other");
                *refused.entry(what).or_insert(0u32) += 1;
            }
        }
    }
    eprintln!("passed: {passed}, refused: {refused:?}");
    for expected in [
        "bitmap",
        "first and the last",
        "beyond",
        "carries",
        "flags",
        "compressed",
    ] {
        assert!(
            refused.contains_key(expected),
            "never hit {expected}: {refused:?}"
        );
    }
    assert!(passed > 0);
}
