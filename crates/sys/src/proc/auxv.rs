//! `/proc/PID/auxv`.

use super::{pid_path, read_bytes, relabel};
use crate::{Error, Result};

/// Parses the auxiliary vector: native-endian `(type, value)` u64 pairs up
/// to and including the `AT_NULL` (type 0) pair, which is kept as the last
/// element.  Bytes after `AT_NULL` are ignored.  Empty input (kernel
/// threads, zombies) gives an empty vector; otherwise a length that is not
/// a multiple of 16 or a missing `AT_NULL` is an error.
pub fn parse_auxv(data: &[u8]) -> Result<Vec<(u64, u64)>> {
    if !data.chunks_exact(16).remainder().is_empty() {
        return Err(Error::parse(
            "auxv",
            format!("length {} is not a multiple of 16", data.len()),
        ));
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w)
    };
    let mut out = Vec::new();
    for pair in data.chunks_exact(16) {
        let (key, value) = (word(&pair[..8]), word(&pair[8..]));
        out.push((key, value));
        if key == 0 {
            return Ok(out);
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    Err(Error::parse(
        "auxv",
        format!("no AT_NULL entry in {} pairs", out.len()),
    ))
}

/// Reads and parses `/proc/PID/auxv`.
pub fn read_auxv(pid: i32) -> Result<Vec<(u64, u64)>> {
    let path = pid_path(pid, "auxv");
    let data = read_bytes(&path)?;
    parse_auxv(&data).map_err(|e| relabel(e, &path))
}

#[cfg(test)]
mod tests {
    use super::super::fixture_bytes;
    use super::*;

    fn get(v: &[(u64, u64)], key: u64) -> Option<u64> {
        v.iter().find(|p| p.0 == key).map(|p| p.1)
    }

    #[test]
    fn fixture() {
        let v = parse_auxv(&fixture_bytes("auxv_cap.bin")).unwrap();
        assert_eq!(v.len(), 23);
        assert_eq!(v[0], (libc::AT_SYSINFO_EHDR, 0x7fe4d441a000));
        assert_eq!(get(&v, libc::AT_PAGESZ), Some(4096));
        assert_eq!(get(&v, libc::AT_PHDR), Some(0x5567ff63a040));
        assert_eq!(*v.last().unwrap(), (libc::AT_NULL, 0));
    }

    #[test]
    fn stops_at_null_and_checks_length() {
        let mut data = Vec::new();
        for w in [6u64, 4096, 0, 0, 99, 99] {
            data.extend_from_slice(&w.to_ne_bytes());
        }
        data.extend_from_slice(&[0u8; 8]);
        // 56 bytes: not a multiple of 16.
        let err = parse_auxv(&data).unwrap_err().to_string();
        assert_eq!(err, "auxv: length 56 is not a multiple of 16");
        data.extend_from_slice(&[0u8; 8]);
        assert_eq!(parse_auxv(&data).unwrap(), [(6, 4096), (0, 0)]);
        assert!(parse_auxv(&[]).unwrap().is_empty());
        let err = parse_auxv(&data[..16]).unwrap_err().to_string();
        assert!(err.contains("no AT_NULL"), "{err}");
        assert!(parse_auxv(&[1u8; 7]).is_err());
    }

    #[test]
    fn read_self() {
        let v = read_auxv(std::process::id() as i32).unwrap();
        assert_eq!(*v.last().unwrap(), (libc::AT_NULL, 0));
        assert!(get(&v, libc::AT_PAGESZ).is_some());
        assert!(read_auxv(-2)
            .unwrap_err()
            .to_string()
            .contains("/proc/-2/auxv"));
    }
}
