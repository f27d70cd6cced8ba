//! Checks shared by every scenario: the pid and the set of open fds.

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{list_fds, readlink};

/// Pid and open fds (with their `/proc/self/fd` link targets) before ready.
pub struct Baseline {
    pid: i32,
    fds: Vec<(i32, Option<String>)>,
}

impl Baseline {
    pub fn record() -> Self {
        Self {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            fds: snapshot(),
        }
    }

    /// Same pid as before and as written in `ready`; same fds pointing at
    /// the same objects. For stdio only presence is compared: the harness
    /// may legitimately reattach stdio pipes on restore.
    pub fn verify(&self, p: &Proto, c: &mut Checks) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        c.eq("getpid() vs pid before ready", self.pid, pid);
        c.eq("getpid() vs pid written to ready", p.ready_pid(), pid);
        self.verify_fds(c);
    }

    /// For a member of a process tree (which writes no `ready`): the same
    /// pid as before, and the same fds pointing at the same objects.
    pub fn verify_member(&self, c: &mut Checks) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        c.eq("getpid() vs pid before ready", self.pid, pid);
        self.verify_fds(c);
    }

    fn verify_fds(&self, c: &mut Checks) {
        let now = snapshot();
        let before: Vec<i32> = self.fds.iter().map(|f| f.0).collect();
        let after: Vec<i32> = now.iter().map(|f| f.0).collect();
        if before != after {
            c.fail(format!(
                "open fds (/proc/self/fd): expected {before:?}, got {after:?}"
            ));
            return;
        }
        for ((fd, a), (_, b)) in self.fds.iter().zip(&now) {
            if a != b {
                c.fail(format!(
                    "readlink /proc/self/fd/{fd}: expected {a:?}, got {b:?}"
                ));
            }
        }
    }
}

fn snapshot() -> Vec<(i32, Option<String>)> {
    list_fds()
        .into_iter()
        .map(|fd| {
            let link = if fd > 2 {
                readlink(&format!("/proc/self/fd/{fd}"))
            } else {
                None
            };
            (fd, link)
        })
        .collect()
}
