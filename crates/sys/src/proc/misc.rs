//! Small single-value files: `comm`, `cmdline`, `personality`, and the
//! `cwd`, `root` and `exe` links.

use super::{num, pid_path, read_bytes, read_text, readlink_text, snippet, task_path};
use crate::{Error, Result};

/// The command name from `/proc/PID/comm`, without the final newline.
/// (Unlike `status`, the name here is not escaped.)
pub fn read_comm(pid: i32) -> Result<String> {
    comm(&pid_path(pid, "comm"))
}

/// The name of one thread, from `/proc/PID/task/TID/comm`.
pub fn read_task_comm(pid: i32, tid: i32) -> Result<String> {
    comm(&task_path(pid, tid, "comm"))
}

fn comm(path: &str) -> Result<String> {
    let mut s = read_text(path)?;
    if s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// The raw command line from `/proc/PID/cmdline`: NUL-separated arguments
/// (normally NUL-terminated; empty for kernel threads and zombies).
pub fn read_cmdline(pid: i32) -> Result<Vec<u8>> {
    read_bytes(&pid_path(pid, "cmdline"))
}

/// Parses the text of `/proc/PID/personality` (hex, e.g. `00400000`).
pub fn parse_personality(text: &str) -> Result<u32> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    num(t, 16, "personality")
        .map_err(|_| Error::parse("personality", format!("bad value '{}'", snippet(t))))
}

/// The execution domain from `/proc/PID/personality`.
pub fn read_personality(pid: i32) -> Result<u32> {
    let path = pid_path(pid, "personality");
    let text = read_text(&path)?;
    parse_personality(&text).map_err(|e| super::relabel(e, &path))
}

/// The target of the link `/proc/PID/NAME`, for `cwd`, `root` and `exe`
/// (a path, possibly ending in ` (deleted)`).  Not valid UTF-8 is an error.
pub fn read_link(pid: i32, name: &str) -> Result<String> {
    readlink_text(&pid_path(pid, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personality_text() {
        assert_eq!(parse_personality("00000000\n").unwrap(), 0);
        assert_eq!(parse_personality("00400000\n").unwrap(), 0x0040_0000);
        assert_eq!(parse_personality("ffffffff").unwrap(), u32::MAX);
        for bad in ["", "\n", "x", "100000000", "00 00", "-1", "0\n\n"] {
            let err = parse_personality(bad).unwrap_err().to_string();
            assert!(err.starts_with("personality: bad value"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn self_files() {
        let pid = std::process::id() as i32;
        let comm = read_comm(pid).unwrap();
        assert!(!comm.is_empty() && !comm.ends_with('\n'));
        let thread_comm = read_task_comm(pid, pid).unwrap();
        assert_eq!(thread_comm, comm);
        let cmdline = read_cmdline(pid).unwrap();
        let exe_arg = cmdline.split(|&b| b == 0).next().unwrap();
        assert!(!exe_arg.is_empty());
        assert_eq!(*cmdline.last().unwrap(), 0);
        assert_eq!(read_personality(pid).unwrap() & 0xff, 0); // PER_LINUX
        let exe = read_link(pid, "exe").unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap().to_str().unwrap());
        let cwd = read_link(pid, "cwd").unwrap();
        assert_eq!(cwd, std::env::current_dir().unwrap().to_str().unwrap());
        assert_eq!(read_link(pid, "root").unwrap(), "/");
        let err = read_link(pid, "nonexistent").unwrap_err().to_string();
        assert!(err.contains(&format!("/proc/{pid}/nonexistent")), "{err}");
        assert!(read_comm(-1).is_err());
    }
}
