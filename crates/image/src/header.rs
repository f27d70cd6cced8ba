//! The image header (payload of the HEADER record).

use crate::error::{Error, Result};

/// Longest string field of a [`Header`], in bytes of UTF-8.
pub const MAX_STRING_LEN: usize = 4096;
/// Smallest page size an image may declare.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// Largest page size an image may declare.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// What an image says about the system and program that produced it.
///
/// This crate only carries these fields; deciding whether an image can be
/// restored on this machine (architecture, CPU features, XSAVE layout...) is
/// up to the caller.
///
/// Encoding (the HEADER payload), little-endian, in this order: each string
/// as `len: u32` followed by `len` bytes of UTF-8 (at most
/// [`MAX_STRING_LEN`]); `producer`, `arch`, `page_size: u32`, `uts_sysname`,
/// `uts_nodename`, `uts_release`, `uts_version`, `uts_machine`, `cpu_vendor`,
/// `xsave_features: u64`, `xsave_size: u32`, `created_unix_secs: u64`.
/// Nothing may follow the last field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The program that wrote the image, e.g. `"crest 0.1.0"`.
    pub producer: String,
    /// Architecture, e.g. `"x86_64"`.
    pub arch: String,
    /// Page size of the dumped system: a power of two in
    /// [`MIN_PAGE_SIZE`]`..=`[`MAX_PAGE_SIZE`]. PAGES chunks are in units of it.
    pub page_size: u32,
    /// `uname` sysname, e.g. `"Linux"`.
    pub uts_sysname: String,
    /// `uname` nodename (host name).
    pub uts_nodename: String,
    /// `uname` release, e.g. `"6.8.0-45-generic"`.
    pub uts_release: String,
    /// `uname` version (build string).
    pub uts_version: String,
    /// `uname` machine, e.g. `"x86_64"`.
    pub uts_machine: String,
    /// CPU vendor string, e.g. `"GenuineIntel"`.
    pub cpu_vendor: String,
    /// XSAVE feature mask (XCR0) of the dumping CPU.
    pub xsave_features: u64,
    /// Size in bytes of the XSAVE area of the dumping CPU.
    pub xsave_size: u32,
    /// When the image was created, seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

impl Default for Header {
    /// Empty strings, zero numbers, and a page size of 4096 (so the default
    /// header is valid).
    fn default() -> Self {
        Header {
            producer: String::new(),
            arch: String::new(),
            page_size: MIN_PAGE_SIZE,
            uts_sysname: String::new(),
            uts_nodename: String::new(),
            uts_release: String::new(),
            uts_version: String::new(),
            uts_machine: String::new(),
            cpu_vendor: String::new(),
            xsave_features: 0,
            xsave_size: 0,
            created_unix_secs: 0,
        }
    }
}

/// Whether `page_size` is acceptable in an image.
pub(crate) fn page_size_ok(page_size: u32) -> bool {
    page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size)
}

impl Header {
    /// Field names and values of the string fields, in encoding order
    /// (except that `page_size` sits between `arch` and `uts_sysname`).
    fn strings(&self) -> [(&'static str, &str); 8] {
        [
            ("producer", &self.producer),
            ("arch", &self.arch),
            ("uts_sysname", &self.uts_sysname),
            ("uts_nodename", &self.uts_nodename),
            ("uts_release", &self.uts_release),
            ("uts_version", &self.uts_version),
            ("uts_machine", &self.uts_machine),
            ("cpu_vendor", &self.cpu_vendor),
        ]
    }

    /// Checks that the header can be written: string lengths and page size.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in self.strings() {
            if value.len() > MAX_STRING_LEN {
                return Err(Error::BadHeader(format!(
                    "field `{name}` is {} bytes long, the limit is {MAX_STRING_LEN}",
                    value.len()
                )));
            }
        }
        if !page_size_ok(self.page_size) {
            return Err(bad_page_size(self.page_size));
        }
        Ok(())
    }

    /// Encodes the header as a HEADER record payload (after validating it).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let strings: usize = self.strings().iter().map(|(_, s)| 4 + s.len()).sum();
        let mut out = Vec::with_capacity(strings + 4 + 8 + 4 + 8);
        let put_str = |out: &mut Vec<u8>, s: &str| {
            // Length fits: validate() bounded it by MAX_STRING_LEN.
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        put_str(&mut out, &self.producer);
        put_str(&mut out, &self.arch);
        out.extend_from_slice(&self.page_size.to_le_bytes());
        put_str(&mut out, &self.uts_sysname);
        put_str(&mut out, &self.uts_nodename);
        put_str(&mut out, &self.uts_release);
        put_str(&mut out, &self.uts_version);
        put_str(&mut out, &self.uts_machine);
        put_str(&mut out, &self.cpu_vendor);
        out.extend_from_slice(&self.xsave_features.to_le_bytes());
        out.extend_from_slice(&self.xsave_size.to_le_bytes());
        out.extend_from_slice(&self.created_unix_secs.to_le_bytes());
        Ok(out)
    }

    /// Decodes a HEADER record payload. Any malformed input gives
    /// [`Error::BadHeader`]; nothing larger than [`MAX_STRING_LEN`] is
    /// allocated per field.
    pub fn decode(payload: &[u8]) -> Result<Header> {
        let mut c = Cursor {
            buf: payload,
            pos: 0,
        };
        let producer = c.string("producer")?;
        let arch = c.string("arch")?;
        let page_size = c.u32("page_size")?;
        if !page_size_ok(page_size) {
            return Err(bad_page_size(page_size));
        }
        let header = Header {
            producer,
            arch,
            page_size,
            uts_sysname: c.string("uts_sysname")?,
            uts_nodename: c.string("uts_nodename")?,
            uts_release: c.string("uts_release")?,
            uts_version: c.string("uts_version")?,
            uts_machine: c.string("uts_machine")?,
            cpu_vendor: c.string("cpu_vendor")?,
            xsave_features: c.u64("xsave_features")?,
            xsave_size: c.u32("xsave_size")?,
            created_unix_secs: c.u64("created_unix_secs")?,
        };
        if c.pos != payload.len() {
            return Err(Error::BadHeader(format!(
                "{} unexpected bytes after the last field",
                payload.len() - c.pos
            )));
        }
        Ok(header)
    }
}

fn bad_page_size(page_size: u32) -> Error {
    Error::BadHeader(format!(
        "page size {page_size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"
    ))
}

/// Bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(Error::BadHeader(format!(
                "payload ends inside field `{field}` (needs {n} bytes, {} left)",
                rest.len()
            )));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u32(field)?;
        if len as usize > MAX_STRING_LEN {
            return Err(Error::BadHeader(format!(
                "field `{field}` claims {len} bytes, the limit is {MAX_STRING_LEN}"
            )));
        }
        let bytes = self.take(len as usize, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(Error::BadHeader(format!(
                "field `{field}` is not valid UTF-8 ({e})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            producer: "crest 0.1.0".into(),
            arch: "x86_64".into(),
            page_size: 4096,
            uts_sysname: "Linux".into(),
            uts_nodename: "host-ü".into(),
            uts_release: "6.8.0".into(),
            uts_version: "#1 SMP".into(),
            uts_machine: "x86_64".into(),
            cpu_vendor: "GenuineIntel".into(),
            xsave_features: 0x2e7,
            xsave_size: 2696,
            created_unix_secs: 1_700_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode().unwrap();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        let d = Header::default();
        assert_eq!(Header::decode(&d.encode().unwrap()).unwrap(), d);
    }

    #[test]
    fn max_length_strings_round_trip() {
        let mut h = sample();
        h.uts_version = "v".repeat(MAX_STRING_LEN);
        h.producer = "é".repeat(MAX_STRING_LEN / 2);
        let bytes = h.encode().unwrap();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            match Header::decode(&bytes[..cut]) {
                Err(Error::BadHeader(msg)) => assert!(msg.contains("ends inside"), "{msg}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        let err = Header::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("after the last field"), "{err}");
    }

    #[test]
    fn too_long_string_is_refused_both_ways() {
        let mut h = sample();
        h.uts_release = "r".repeat(MAX_STRING_LEN + 1);
        let err = h.encode().unwrap_err();
        assert!(err.to_string().contains("uts_release"), "{err}");

        // A hand-made payload whose first string claims a huge length.
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 16]);
        let err = Header::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("producer"), "{err}");
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut h = sample();
        h.arch = "abcd".into();
        let mut bytes = h.encode().unwrap();
        // producer string: 4 + 11 bytes, then arch length (4) then "abcd".
        let at = 4 + h.producer.len() + 4;
        assert_eq!(&bytes[at..at + 4], b"abcd");
        bytes[at + 1] = 0xFF;
        let err = Header::decode(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("`arch` is not valid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn bad_page_sizes_are_refused() {
        for ps in [0, 1, 2048, 4095, 4097, 12288, 131072, u32::MAX] {
            let mut h = sample();
            h.page_size = ps;
            assert!(matches!(h.validate(), Err(Error::BadHeader(_))), "{ps}");
            assert!(h.encode().is_err());
            // Patch the encoded page size of a valid header.
            let mut bytes = sample().encode().unwrap();
            let at = 4 + sample().producer.len() + 4 + sample().arch.len();
            bytes[at..at + 4].copy_from_slice(&ps.to_le_bytes());
            let err = Header::decode(&bytes).unwrap_err();
            assert!(err.to_string().contains("page size"), "{err}");
        }
        for ps in [4096, 8192, 16384, 32768, 65536] {
            let mut h = sample();
            h.page_size = ps;
            assert_eq!(Header::decode(&h.encode().unwrap()).unwrap(), h);
        }
    }
}
