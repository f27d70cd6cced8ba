//! Parsers for the `/proc` files crest reads when it checkpoints a process.
//!
//! Each file has a pure `parse_*` function over its text (or bytes), which
//! never panics and returns [`Error::Parse`] naming the
//! file and, where it helps, the line.  Thin `read_*` helpers read
//! `/proc/PID/...` and call the parser; their errors name the real path
//! (e.g. `/proc/1234/smaps: line 17: bad address range 'zz-1000'`).  When a
//! pure parser is called directly, errors name the file generically
//! (`smaps: line 17: ...`).
//!
//! Text that is not valid UTF-8 is rejected with an error rather than
//! silently altered, because crest must later reopen exactly these paths.

mod auxv;
mod fdinfo;
mod maps;
mod misc;
mod mountinfo;
mod pagemap;
mod stat;
mod status;
mod tasks;

pub use auxv::{parse_auxv, read_auxv};
pub use fdinfo::{fd_link, list_fds, parse_fdinfo, read_fdinfo, FdInfo};
pub use maps::{parse_maps, parse_smaps, read_maps, read_smaps, MapEntry, VmFlags};
pub use misc::{
    parse_personality, read_cmdline, read_comm, read_link, read_personality, read_task_comm,
};
pub use mountinfo::{parse_mountinfo, read_mountinfo, MountInfo};
pub use pagemap::{page_category, Pagemap, PagemapEntry, ScanQuery};
pub use stat::{parse_stat, read_stat, read_task_stat, Stat};
pub use status::{parse_status, read_status, read_task_status, Status};
pub use tasks::{list_tasks, parse_ns_link, process_children, read_ns, task_children};

use crate::{Error, Result};

/// `/proc/PID/NAME`.
fn pid_path(pid: i32, name: &str) -> String {
    format!("/proc/{pid}/{name}")
}

/// `/proc/PID/task/TID/NAME`.
fn task_path(pid: i32, tid: i32, name: &str) -> String {
    format!("/proc/{pid}/task/{tid}/{name}")
}

/// Reads a whole file, with the path in the error.
///
/// /proc files report size 0, so `std::fs::read` (a `statx` for the size,
/// then reads growing from 32 bytes) takes ten calls for a 1.4 KiB
/// `status`: starting with a page of room, a small file takes two reads
/// (and, read through `Take`, no `statx` and `lseek` for a size hint
/// that would say 0).  A dump reads several such files per thread.
pub fn read_bytes(path: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(u64::MAX).read_to_end(&mut buf))
        .map_err(|e| Error::io(format!("reading {path}"), e))?;
    Ok(buf)
}

/// Reads a whole file that must be UTF-8 text.
fn read_text(path: &str) -> Result<String> {
    let bytes = read_bytes(path)?;
    into_text(path, bytes)
}

/// Converts file contents to a `String`, naming the line of the first
/// invalid byte if they are not UTF-8.
fn into_text(path: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::parse(path, format!("line {line}: text is not valid UTF-8"))
    })
}

/// Replaces the generic file name of a parse error with the real path.
fn relabel(err: Error, path: &str) -> Error {
    match err {
        Error::Parse { msg, .. } => Error::parse(path, msg),
        other => other,
    }
}

/// Reads `path` as text and parses it with `parse`, naming `path` in errors.
fn read_parsed<T>(path: &str, parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let text = read_text(path)?;
    parse(&text).map_err(|e| relabel(e, path))
}

/// [`read_parsed`] for files that embed a task name (`stat`, `status`):
/// a name need not be UTF-8, so invalid bytes are replaced instead of
/// failing (the exact name comes from `comm`).
fn read_parsed_lossy<T>(path: &str, parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8_lossy(&bytes);
    parse(&text).map_err(|e| relabel(e, path))
}

/// Shortens a piece of input for an error message, on a char boundary.
fn snippet(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Reads the entries of a /proc directory whose names are all numbers
/// (fd, task), sorted ascending.  Names that are not numbers are an error.
fn numeric_dir(path: &str) -> Result<Vec<i32>> {
    let rd = std::fs::read_dir(path).map_err(|e| Error::io(format!("listing {path}"), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(format!("listing {path}"), e))?;
        let name = ent.file_name();
        let n = name
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|&n| n >= 0)
            .ok_or_else(|| {
                Error::parse(
                    path,
                    format!("unexpected entry '{}'", name.to_string_lossy()),
                )
            })?;
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// `readlink` returning UTF-8 text.
fn readlink_text(path: &str) -> Result<String> {
    let target = std::fs::read_link(path).map_err(|e| Error::io(format!("readlink {path}"), e))?;
    target.into_os_string().into_string().map_err(|t| {
        Error::parse(
            path,
            format!(
                "link target is not valid UTF-8: '{}'",
                snippet(&t.to_string_lossy())
            ),
        )
    })
}

/// Parses a number in the given radix, with a message naming the field.
fn num<T: FromStrRadix>(s: &str, radix: u32, what: &str) -> std::result::Result<T, String> {
    // from_str_radix accepts a leading '+'; /proc never prints one.
    if s.starts_with('+') {
        return Err(format!("bad {what} '{}'", snippet(s)));
    }
    T::from_str_radix(s, radix).map_err(|_| format!("bad {what} '{}'", snippet(s)))
}

/// The integer types [`num`] parses.
trait FromStrRadix: Sized {
    fn from_str_radix(s: &str, radix: u32) -> std::result::Result<Self, std::num::ParseIntError>;
}

macro_rules! from_str_radix {
    ($($t:ty)*) => {$(
        impl FromStrRadix for $t {
            fn from_str_radix(
                s: &str,
                radix: u32,
            ) -> std::result::Result<Self, std::num::ParseIntError> {
                <$t>::from_str_radix(s, radix)
            }
        }
    )*};
}
from_str_radix!(u8 u32 u64 i32 i64);

#[cfg(test)]
fn fixture(name: &str) -> String {
    let path = format!("{}/src/proc/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/src/proc/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_cuts_on_char_boundary() {
        let s = "é".repeat(40);
        let out = snippet(&s);
        assert!(out.ends_with("..."));
        assert!(out.len() <= 67);
    }

    #[test]
    fn into_text_names_line() {
        let err = into_text("x", b"ok\nok\n\xff\n".to_vec()).unwrap_err();
        assert_eq!(err.to_string(), "x: line 3: text is not valid UTF-8");
    }

    #[test]
    fn num_rejects_plus_and_garbage() {
        assert!(num::<u64>("+1", 10, "n").is_err());
        assert!(num::<u64>("", 10, "n").is_err());
        assert!(num::<u64>("1x", 10, "n").is_err());
        assert_eq!(num::<u64>("ff", 16, "n"), Ok(255));
        assert_eq!(num::<i32>("-1", 10, "n"), Ok(-1));
    }

    /// Feeds mutated fixtures and random bytes to every parser: they may
    /// fail but must not panic.
    #[test]
    fn parsers_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let texts = [
            "maps_cap.txt",
            "smaps_cap.txt",
            "stat_cap.txt",
            "status_cap.txt",
            "fdinfo_epoll.txt",
            "fdinfo_timerfd.txt",
            "mountinfo_ns.txt",
        ];
        let alphabet = b" \t\n:-()[]\\/0123456789abcdefxzRkB\xc3\xa9";
        let run_all = |t: &str| {
            let _ = parse_maps(t);
            let _ = parse_smaps(t);
            let _ = parse_stat(t);
            let _ = parse_status(t);
            let _ = parse_fdinfo(t);
            let _ = parse_mountinfo(t);
            let _ = parse_ns_link(t);
            let _ = parse_personality(t);
            let _ = parse_auxv(t.as_bytes());
        };
        for name in texts {
            let base = fixture(name).into_bytes();
            for _ in 0..300 {
                let mut b = base.clone();
                for _ in 0..1 + rand(8) {
                    let at = rand(b.len() + 1);
                    match rand(4) {
                        0 if at < b.len() => {
                            b.remove(at);
                        }
                        1 => b.insert(at, alphabet[rand(alphabet.len())]),
                        2 if at < b.len() => b[at] = alphabet[rand(alphabet.len())],
                        _ => b.truncate(at),
                    }
                }
                run_all(&String::from_utf8_lossy(&b));
            }
        }
        for _ in 0..2000 {
            let len = rand(64);
            let b: Vec<u8> = (0..len).map(|_| alphabet[rand(alphabet.len())]).collect();
            run_all(&String::from_utf8_lossy(&b));
        }
    }
}
