//! `/proc/PID/fdinfo/FD`, `/proc/PID/fd`.

use super::{num, numeric_dir, pid_path, read_parsed, readlink_text, snippet};
use crate::{Error, Result};

/// The contents of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// File position.
    pub pos: u64,
    /// `O_*` open flags (octal in the file), including `O_CLOEXEC` if set
    /// on the descriptor.
    pub flags: u32,
    /// Mount id (0 if the line is missing, as on old kernels).
    pub mnt_id: u64,
    /// Inode number (0 if the line is missing, as on old kernels).
    pub ino: u64,
    /// Every other line, in order, split at its first `:` with both sides
    /// trimmed; keys may repeat.  Examples: `("eventfd-count", "5")`,
    /// `("tfd", "6 events: 19 data: 1234  pos:0 ino:40e sdev:10")`,
    /// `("inotify wd", "2 ino:13 sdev:fe00000 mask:2 ...")`,
    /// `("sigmask", "0000000000004200")`, `("clockid", "1")`,
    /// `("it_value", "(99, 897446773)")`, `("lock", "1: POSIX ...")`.
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The value of the first `extra` line with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The values of all `extra` lines with this key, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `/proc/PID/fdinfo/FD` text.  `pos` and `flags` must be present.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo> {
    let mut info = FdInfo::default();
    let (mut have_pos, mut have_flags) = (false, false);
    for (i, line) in text.lines().enumerate() {
        let fail = |msg: String| Error::parse("fdinfo", format!("line {}: {msg}", i + 1));
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| fail(format!("no ':' in '{}'", snippet(line))))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "pos" => {
                info.pos = num(value, 10, key).map_err(fail)?;
                have_pos = true;
            }
            "flags" => {
                info.flags = num(value, 8, key).map_err(fail)?;
                have_flags = true;
            }
            "mnt_id" => info.mnt_id = num(value, 10, key).map_err(fail)?,
            "ino" => info.ino = num(value, 10, key).map_err(fail)?,
            _ => info.extra.push((key.to_string(), value.to_string())),
        }
    }
    if !have_pos {
        return Err(Error::parse("fdinfo", "missing pos line"));
    }
    if !have_flags {
        return Err(Error::parse("fdinfo", "missing flags line"));
    }
    Ok(info)
}

/// Reads and parses `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    read_parsed(&pid_path(pid, &format!("fdinfo/{fd}")), parse_fdinfo)
}

/// The open file descriptors of a process, sorted, from `/proc/PID/fd`.
pub fn list_fds(pid: i32) -> Result<Vec<i32>> {
    numeric_dir(&pid_path(pid, "fd"))
}

/// The target of `/proc/PID/fd/FD` (a path, possibly ending in
/// ` (deleted)`, or a pseudo name like `pipe:[6619]`,
/// `anon_inode:[eventfd]`, `socket:[1234]`).  Not valid UTF-8 is an error.
pub fn fd_link(pid: i32, fd: i32) -> Result<String> {
    readlink_text(&pid_path(pid, &format!("fd/{fd}")))
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    fn fx(name: &str) -> FdInfo {
        parse_fdinfo(&fixture(&format!("fdinfo_{name}.txt"))).unwrap()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fixtures() {
        let r = fx("regular");
        assert_eq!((r.pos, r.flags, r.mnt_id, r.ino), (10, 0o102000, 27, 737));
        assert!(r.extra.is_empty());
        assert_eq!(r.flags as i32 & libc::O_APPEND, libc::O_APPEND);

        let f = fx("file");
        assert_eq!(f.flags, 0o100002);
        assert_eq!(fx("memfd").mnt_id, 0);
        assert_eq!(fx("pipe_r").flags, 0o4000);
        assert_eq!(fx("pipe_w").flags, 0o4001);

        let e = fx("eventfd");
        assert_eq!(e.flags as i32 & libc::O_CLOEXEC, libc::O_CLOEXEC);
        assert_eq!(
            e.extra,
            pairs(&[
                ("eventfd-count", "5"),
                ("eventfd-id", "1"),
                ("eventfd-semaphore", "0")
            ])
        );
        assert_eq!(e.get("eventfd-count"), Some("5"));

        let t = fx("timerfd");
        assert_eq!(
            t.extra,
            pairs(&[
                ("clockid", "1"),
                ("ticks", "0"),
                ("settime flags", "00"),
                ("it_value", "(99, 897446773)"),
                ("it_interval", "(1, 0)"),
            ])
        );

        let i = fx("inotify");
        let wds: Vec<_> = i.get_all("inotify wd").collect();
        assert_eq!(wds.len(), 2);
        assert!(wds[0].starts_with("2 ino:13 sdev:fe00000 mask:2 "));

        let ep = fx("epoll");
        let tfds: Vec<_> = ep.get_all("tfd").collect();
        assert_eq!(
            tfds,
            [
                "6 events: 80000019 data:             1234  pos:0 ino:40e sdev:10",
                "7 events:       1c data:                7  pos:0 ino:40e sdev:10"
            ]
        );

        let s = fx("signalfd");
        assert_eq!(s.extra, pairs(&[("sigmask", "0000000000004200")]));
    }

    #[test]
    fn self_fds() {
        use std::os::fd::AsRawFd;
        let pid = std::process::id() as i32;
        let file = std::fs::File::open("/proc/self/comm").unwrap();
        let fd = file.as_raw_fd();
        let fds = list_fds(pid).unwrap();
        assert!(fds.contains(&fd) && fds.contains(&0));
        assert!(fds.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(fd_link(pid, fd).unwrap(), format!("/proc/{pid}/comm"));
        let info = read_fdinfo(pid, fd).unwrap();
        assert_eq!(info.pos, 0);
        assert_eq!(info.flags as i32 & libc::O_ACCMODE, libc::O_RDONLY);
        assert_ne!(info.ino, 0);
        let err = read_fdinfo(pid, -1).unwrap_err().to_string();
        assert!(err.contains(&format!("/proc/{pid}/fdinfo/-1")), "{err}");
        assert!(fd_link(pid, -1).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        let cases = [
            ("", "missing pos"),
            ("pos:\t0\n", "missing flags"),
            ("flags:\t02\n", "missing pos"),
            ("pos:\tx\nflags:\t02\n", "line 1: bad pos 'x'"),
            ("pos:\t0\nflags:\t08\n", "line 2: bad flags '08'"),
            ("pos:\t0\nflags:\t02\nmnt_id: -1\n", "bad mnt_id"),
            ("pos:\t0\nflags:\t02\nino:\n", "bad ino ''"),
            ("pos:\t0\nflags:\t02\nnocolon\n", "line 3: no ':'"),
            ("pos:\t0\nflags:\t040000000000\n", "bad flags"),
        ];
        for (text, want) in cases {
            let err = parse_fdinfo(text).unwrap_err().to_string();
            assert!(err.starts_with("fdinfo: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
