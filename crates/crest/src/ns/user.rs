//! User namespaces: not restored yet; `check` and `dump` refuse a tree
//! in a user namespace other than crest's, naming it, and the tree runs
//! on.
//!
//! What restore would have to do: the process that first entered the
//! namespace is forked with CLONE_NEWUSER (with the namespaces it owns
//! in the same clone3, so they belong to it) and waits until crest has
//! written its `setgroups`, `uid_map` and `gid_map` from outside; then
//! every id and capability set of the image (read by crest from the
//! initial namespace, so host ids) is translated into the namespace
//! before the stubs set them.  None of that is implemented.
//!
//! Measured on this machine's kernel (6.18) as `nobody`, with a rootless
//! container made by `unshare --user --map-root-user --pid --fork
//! --mount-proc` (`tests/userns.rs` keeps the refusal honest):
//! - allowed: PTRACE_SEIZE/INTERRUPT/DETACH of one's own processes in
//!   the child user namespace, opening /proc/PID/mem, reading
//!   /proc/PID/map_files, environ and timens_offsets; creating a user
//!   and PID namespace with clone3 and set_tid [1] (the owner of a new
//!   user namespace holds CAP_CHECKPOINT_RESTORE in it), so PIDs inside
//!   a new PID namespace could be set; unsharing time and cgroup
//!   namespaces and writing time offsets inside one's own user
//!   namespace; writing a one-line map of one's own uid/gid (after
//!   `setgroups` deny).
//! - refused: clone3 set_tid in the initial PID namespace (EPERM: it
//!   needs CAP_CHECKPOINT_RESTORE in the initial user namespace), so a
//!   rootless restore can keep only the PIDs inside the container's PID
//!   namespace, never the outer ones; joining a cgroup not delegated to
//!   the user (EACCES on cgroup.procs), so cgroup membership and cgroup
//!   namespace roots cannot be recreated outside a delegated subtree.

use crate::Obstacle;

/// The obstacle of a process in user namespace `ino`, not crest's.
pub fn refusal(pid: i32, ino: u64) -> Obstacle {
    Obstacle {
        pid,
        object: "user namespace".into(),
        reason: format!(
            "the process is in another user namespace than crest (user:[{ino}]); user \
             namespaces are not supported yet (restore cannot recreate the uid/gid maps and \
             translate ids and capabilities into a new one)"
        ),
    }
}
