//! Cgroup facts the options rely on.
//!
//! crest does not record or recreate cgroups: restored processes start in
//! the cgroups of the crest process, which is where a runtime puts the
//! checkpointer before a restore.  `cg_root` is accepted when it names
//! exactly those cgroups.  `freeze_cgroup` names the container's cgroup:
//! crest freezes with ptrace, and uses the cgroup to make sure no process
//! of the container is outside the dumped tree (it would escape the
//! checkpoint).

use std::collections::BTreeSet;

/// `(controllers, path)` of every line of `/proc/PID/cgroup` ("" is the
/// unified v2 hierarchy).
pub fn memberships(pid: &str) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some((ctrls, path))
        })
        .collect())
}

/// Whether this process is already in cgroup `path` of controller `ctrl`
/// (`None` or "" for the unified hierarchy).
pub fn in_cgroup(ctrl: Option<&str>, path: &str) -> Result<bool, String> {
    let own = memberships("self").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    let ctrl = ctrl.unwrap_or("");
    let norm = |p: &str| p.trim_end_matches('/').to_string();
    Ok(own.iter().any(|(c, p)| {
        let matches_ctrl = if ctrl.is_empty() {
            c.is_empty()
        } else {
            c == ctrl || c.split(',').any(|x| x == ctrl)
        };
        matches_ctrl && (norm(p) == norm(path) || (path.is_empty() && p == "/"))
    }))
}

/// Every process of the tree rooted at `pid` (itself included).
pub fn tree(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if !out.insert(p) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Processes in cgroup directory `dir` that are not in the tree of `pid`.
pub fn outside_tree(dir: &str, pid: i32) -> Result<Vec<i32>, String> {
    let procs = std::fs::read_to_string(format!("{}/cgroup.procs", dir.trim_end_matches('/')))
        .map_err(|e| format!("freeze_cgroup {dir}: reading cgroup.procs: {e}"))?;
    let members = tree(pid);
    Ok(procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| !members.contains(p))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroups_are_found() {
        let own = memberships("self").unwrap();
        assert!(!own.is_empty());
        for (c, p) in &own {
            let ctrl = c.split(',').next().filter(|s| !s.is_empty());
            assert!(in_cgroup(ctrl, p).unwrap(), "{c}:{p}");
            assert!(!in_cgroup(ctrl, "/crest-no-such-cgroup").unwrap());
        }
    }

    #[test]
    fn tree_holds_the_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let t = tree(me);
        assert!(t.contains(&me) && t.contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
