//! cgroup namespaces: the cgroup of each hierarchy that is the
//! namespace's root ("/" for its members).
//!
//! Dump reads /proc/PID/cgroup twice: from crest (full paths) and from a
//! thread of crest that joins the namespace for a moment (paths relative
//! to the namespace's root); each root is the full path less the
//! relative one.  A member outside its namespace's root (a relative path
//! going up, "/..") is refused: restore could not place it.
//!
//! Restore creates the namespace with the process that first entered
//! it: its stub routine first moves itself into each root cgroup (it
//! writes 0 to their `cgroup.procs`), then unshares CLONE_NEWCGROUP,
//! which takes the cgroups it is in as the new namespace's root; crest
//! later moves it (and every member) into its own cgroups
//! ([`crate::task::cgroups::restore_process`]).  Its children inherit the
//! namespace.

use crate::error::{Error, Result};
use crate::model::{CgroupMember, CgroupNsState, NsState};
use crate::Obstacle;

/// The root of `full` given the same cgroup relative to the namespace.
fn root_of(full: &str, rel: &str) -> Option<String> {
    if rel == "/" {
        return Some(full.to_string());
    }
    if rel.starts_with("/..") {
        return None;
    }
    let r = full.strip_suffix(rel)?;
    Some(if r.is_empty() {
        "/".into()
    } else {
        r.to_string()
    })
}

/// The cgroup namespace `pid` is in.
pub fn collect(pid: i32, obstacles: &mut Vec<Obstacle>) -> Result<NsState> {
    let path = format!("/proc/{pid}/cgroup");
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map_err(|e| Error::msg(format!("reading {p}: {e}")))
            .and_then(|t| crate::task::cgroups::parse(&t))
    };
    let full = read(&path)?;
    let rel = crest_sys::ns::run_in(pid, "cgroup", libc::CLONE_NEWCGROUP, || read(&path))
        .map_err(|e| Error::msg(format!("reading the cgroup namespace of pid {pid}: {e}")))??;
    let mut roots = Vec::new();
    for f in &full {
        let Some(r) = rel.iter().find(|r| r.hierarchy == f.hierarchy) else {
            continue;
        };
        match root_of(&f.path, &r.path) {
            Some(root) => roots.push(CgroupMember {
                hierarchy: f.hierarchy,
                controllers: f.controllers.clone(),
                path: root,
            }),
            None => obstacles.push(Obstacle {
                pid,
                object: "cgroup namespace".into(),
                reason: format!(
                    "the process is in cgroup {} of hierarchy {} ({}), outside its cgroup \
                     namespace's root (it sees {}); restore cannot place it",
                    f.path, f.hierarchy, f.controllers, r.path
                ),
            }),
        }
    }
    Ok(NsState::Cgroup(CgroupNsState { roots }))
}

/// The `cgroup.procs` files of the namespace's roots, which the creating
/// stub writes itself into before it unshares.
pub fn plan(state: &NsState) -> Result<Option<Vec<std::ffi::CString>>> {
    let NsState::Cgroup(st) = state else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for m in &st.roots {
        let p = crate::task::cgroups::procs_file(m)?;
        out.push(std::ffi::CString::new(p).map_err(|_| Error::msg("cgroup path has a NUL"))?);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_from_full_and_relative_paths() {
        assert_eq!(root_of("/a/b", "/").as_deref(), Some("/a/b"));
        assert_eq!(root_of("/a/b/c", "/c").as_deref(), Some("/a/b"));
        assert_eq!(root_of("/c", "/c").as_deref(), Some("/"));
        assert_eq!(root_of("/a", "/../x"), None);
        assert_eq!(root_of("/a/b", "/x"), None);
    }
}
