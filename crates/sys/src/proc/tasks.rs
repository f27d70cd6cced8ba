//! Threads, children and namespaces: `/proc/PID/task`,
//! `/proc/PID/task/TID/children`, `/proc/PID/ns`.

use super::{num, numeric_dir, pid_path, read_text, readlink_text, relabel, snippet, task_path};
use crate::{Error, Result};

/// The thread ids of a process, sorted, from `/proc/PID/task`.
pub fn list_tasks(pid: i32) -> Result<Vec<i32>> {
    numeric_dir(&pid_path(pid, "task"))
}

/// The children of one thread, from `/proc/PID/task/TID/children`, in the
/// kernel's order.  (Needs `CONFIG_PROC_CHILDREN`; children whose parent
/// thread has exited are listed under the thread that adopted them.)
pub fn task_children(pid: i32, tid: i32) -> Result<Vec<i32>> {
    let path = task_path(pid, tid, "children");
    let text = read_text(&path)?;
    parse_children(&text).map_err(|e| relabel(e, &path))
}

/// The children of all threads of a process, sorted and without repeats.
/// Threads that exit while this runs are skipped.
pub fn process_children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in list_tasks(pid)? {
        match task_children(pid, tid) {
            Ok(c) => out.extend(c),
            Err(e) if e.errno() == Some(libc::ENOENT) || e.errno() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_children(text: &str) -> Result<Vec<i32>> {
    text.split_ascii_whitespace()
        .map(|s| {
            num::<i32>(s, 10, "pid")
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::parse("children", format!("bad pid '{}'", snippet(s))))
        })
        .collect()
}

/// Parses the target of a `/proc/PID/ns/*` link, `"mnt:[4026531841]"`,
/// into the namespace inode number.
pub fn parse_ns_link(text: &str) -> Result<u64> {
    let bad = || Error::parse("ns link", format!("bad namespace link '{}'", snippet(text)));
    let (name, rest) = text.split_once(":[").ok_or_else(bad)?;
    let digits = rest.strip_suffix(']').ok_or_else(bad)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(bad());
    }
    num(digits, 10, "namespace inode").map_err(|_| bad())
}

/// The namespaces of a process: `(name, inode)` for each `/proc/PID/ns/*`
/// link (`cgroup`, `ipc`, `mnt`, `net`, `pid`, `pid_for_children`, `time`,
/// `time_for_children`, `user`, `uts`), sorted by name.
pub fn read_ns(pid: i32) -> Result<Vec<(String, u64)>> {
    let dir = pid_path(pid, "ns");
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {dir}"), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(format!("listing {dir}"), e))?;
        let name = ent.file_name().into_string().map_err(|n| {
            Error::parse(
                &dir,
                format!("entry name is not UTF-8: '{}'", n.to_string_lossy()),
            )
        })?;
        let path = format!("{dir}/{name}");
        let link = match readlink_text(&path) {
            // A PID namespace unshared for the children before any was
            // forked has no init to show yet: inode 0.
            Err(e) if name == "pid_for_children" && e.errno() == Some(libc::ENOENT) => {
                out.push((name, 0));
                continue;
            }
            r => r?,
        };
        let ino = parse_ns_link(&link).map_err(|e| relabel(e, &path))?;
        out.push((name, ino));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link("mnt:[4026531841]").unwrap(), 4026531841);
        assert_eq!(parse_ns_link("pid_for_children:[1]").unwrap(), 1);
        for bad in [
            "",
            "mnt",
            "mnt:[]",
            "mnt:[12",
            "mnt:[x]",
            ":[1]",
            "mnt:[-1]",
            "mnt:[1]x",
            "m n:[1]",
            "/tmp/foo",
            "mnt:[99999999999999999999]",
        ] {
            let err = parse_ns_link(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("ns link: bad namespace link"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn children_text() {
        assert_eq!(parse_children("12 7 300 ").unwrap(), [12, 7, 300]);
        assert!(parse_children("").unwrap().is_empty());
        assert!(parse_children("\n").unwrap().is_empty());
        for bad in ["x", "1 -2", "0", "1,2", "99999999999"] {
            assert!(parse_children(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn self_namespaces() {
        let pid = std::process::id() as i32;
        let ns = read_ns(pid).unwrap();
        let names: Vec<_> = ns.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["ipc", "mnt", "net", "pid", "user", "uts"] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        let mnt = ns.iter().find(|(n, _)| n == "mnt").unwrap().1;
        let link = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        assert_eq!(link.to_str().unwrap(), format!("mnt:[{mnt}]"));
        assert!(read_ns(-1).unwrap_err().to_string().contains("/proc/-1/ns"));
    }

    fn gettid() -> i32 {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let text = link.to_str().unwrap();
        text.rsplit('/').next().unwrap().parse().unwrap()
    }

    #[test]
    fn self_tasks_and_children() {
        let pid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<i32>();
        let h = std::thread::spawn(move || {
            ready_tx.send(gettid()).unwrap();
            rx.recv().ok();
        });
        let tid = ready_rx.recv().unwrap();
        let tasks = list_tasks(pid).unwrap();
        assert!(tasks.contains(&pid) && tasks.contains(&tid), "{tasks:?}");
        assert!(tasks.windows(2).all(|w| w[0] < w[1]));

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let cpid = child.id() as i32;
        let all = process_children(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        tx.send(()).unwrap();
        h.join().unwrap();
        assert!(all.contains(&cpid), "{all:?} lacks {cpid}");
        assert!(task_children(pid, -1).is_err());
    }
}
