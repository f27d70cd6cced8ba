//! The stream digest stored in the tail.

/// The 64-bit digest chained over the record headers of a stream.
///
/// It is **FNV-1a 64** over the concatenation of the 24-byte headers of every
/// record before the tail, in stream order (HEADER record included, TAIL
/// excluded; skipped optional records included):
///
/// ```text
/// h = 0xcbf2_9ce4_8422_2325
/// for each byte b:  h = (h XOR b) * 0x0000_0100_0000_01b3   (mod 2^64)
/// ```
///
/// Each record header contains its payload's CRC32C and its own CRC, so the
/// digest covers every byte of every record, and it depends on their order:
/// a record dropped, added, replaced or moved changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamDigest {
    state: u64,
}

impl StreamDigest {
    /// Initial value (the FNV-1a 64 offset basis).
    pub const INITIAL: u64 = 0xcbf2_9ce4_8422_2325;
    /// The FNV-1a 64 prime.
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A digest over nothing yet.
    pub fn new() -> Self {
        StreamDigest {
            state: Self::INITIAL,
        }
    }

    /// Mixes `bytes` in.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.state;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.state = h;
    }

    /// The digest of everything mixed in so far.
    pub fn value(&self) -> u64 {
        self.state
    }
}

impl Default for StreamDigest {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        let d = StreamDigest::new();
        assert_eq!(d.value(), 0xcbf2_9ce4_8422_2325);
        let mut d = StreamDigest::new();
        d.update(b"a");
        assert_eq!(d.value(), 0xaf63_dc4c_8601_ec8c);
        let mut d = StreamDigest::new();
        d.update(b"foo");
        assert_eq!(d.value(), 0xdcb2_7518_fed9_d577);
    }

    #[test]
    fn chaining_equals_concatenation() {
        let mut a = StreamDigest::new();
        a.update(b"hello ");
        a.update(b"world");
        let mut b = StreamDigest::new();
        b.update(b"hello world");
        assert_eq!(a, b);
    }
}
