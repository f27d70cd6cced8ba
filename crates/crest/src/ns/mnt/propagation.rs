//! Mount propagation of a mount tree recorded whole: peer groups
//! (`shared:N`), slaves (`master:N`) and unbindable mounts.
//!
//! Dump records each mount's optional fields of mountinfo and refuses
//! a relation restore cannot make (see [`check`]).  Restore makes the
//! groups anew in the new namespace, once every mount is attached: all
//! mounts private first (nothing of the new tree stays a peer of
//! crest's mounts it was cloned from), then per peer group, masters
//! first: its widest member (the one whose root holds the others') is
//! made a peer of its master group (move_mount MOVE_MOUNT_SET_GROUP from
//! a member of that group), then a slave of it, then shared (a new
//! group), and the other members join it (MOVE_MOUNT_SET_GROUP, which
//! copies the master too).  Slaves that are not shared are made peers
//! of their master group, then slaves.  The group numbers are the
//! kernel's: new ones at restore, the same relations.
//!
//! A master group that is not in the namespace (`unshare -m
//! --propagation slave` makes every mount a slave of crest's): for a
//! mount that is a slave and not shared, dump records the mount point in
//! crest's namespace of a member of that group that holds its root
//! ([`find_outside_masters`]); restore opens that mount if it is still
//! there and shared ([`open_outside_master`]), and the stub makes the
//! mount a peer of it (MOVE_MOUNT_SET_GROUP from the descriptor), then a
//! slave: events from crest's namespace reach it again.  A group that
//! cannot be found again (other host, unmounted), or a shared mount with
//! an outside master, is restored private, and the restore warns, naming
//! the mounts ([`external_masters`]).  A stub in a user namespace may not
//! join a group of crest's namespace: the mount is restored private, with
//! the same warning.

use super::{below, Step};
use crate::model::MountRec;
use crate::Obstacle;
use crest_sys::proc::MountInfo;
use std::collections::BTreeMap;
use std::ffi::CString;

/// `root` (a mount's root in its filesystem) holds `other`.
fn holds(root: &str, other: &str) -> bool {
    below(other, root).is_some()
}

/// The peer groups of `recs` by number, members in record order.
fn groups(recs: &[&MountRec]) -> BTreeMap<u64, Vec<usize>> {
    let mut g: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        if let Some(n) = r.shared {
            g.entry(n).or_default().push(i);
        }
    }
    g
}

/// The member of a group whose root holds every other member's.
fn leader(recs: &[&MountRec], members: &[usize]) -> Option<usize> {
    members.iter().copied().find(|&l| {
        members
            .iter()
            .all(|&o| recs[o].fs_type == recs[l].fs_type && holds(&recs[l].root, &recs[o].root))
    })
}

/// A member of group `master` a mount with root `root` can be made a
/// slave of (its root holds `root`).
fn source(
    recs: &[&MountRec],
    g: &BTreeMap<u64, Vec<usize>>,
    master: u64,
    root: &str,
) -> Option<usize> {
    g.get(&master)?
        .iter()
        .copied()
        .find(|&m| holds(&recs[m].root, root))
}

/// At dump: the relations restore could not make.
pub fn check(pid: i32, recs: &[MountRec], obstacles: &mut Vec<Obstacle>) {
    let refs: Vec<&MountRec> = recs.iter().collect();
    let g = groups(&refs);
    for (n, members) in &g {
        if leader(&refs, members).is_none() {
            let m = &refs[members[0]];
            obstacles.push(Obstacle {
                pid,
                object: format!("mount {}", m.mount_point),
                reason: format!(
                    "peer group {n} ({}): no member's root holds the others' roots, so the \
                     group cannot be rejoined at restore",
                    members
                        .iter()
                        .map(|&i| refs[i].mount_point.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    for r in &refs {
        let Some(m) = r.master else { continue };
        if g.contains_key(&m) && source(&refs, &g, m, &r.root).is_none() {
            obstacles.push(Obstacle {
                pid,
                object: format!("mount {}", r.mount_point),
                reason: format!(
                    "{}: a slave of peer group {m}, none of whose mounts holds its root {}; \
                     it cannot be made a slave of it again",
                    r.mount_point, r.root
                ),
            });
        }
    }
}

/// At dump: for each mount of `out` (a whole tree) that is a slave, not
/// shared, of a peer group outside the namespace, the mount point of a
/// member of that group in crest's namespace (`mine`) on the same
/// device whose root holds the mount's ([`MountRec::outside_master`]).
pub fn find_outside_masters(out: &mut [MountRec], mine: &[MountInfo], theirs: &[MountInfo]) {
    let inside: Vec<u64> = out.iter().filter_map(|r| r.shared).collect();
    for r in out.iter_mut() {
        let Some(m) = r.master.filter(|m| !inside.contains(m)) else {
            continue;
        };
        if r.shared.is_some() {
            continue;
        }
        let Some(t) = theirs.iter().find(|t| t.mnt_id == r.id) else {
            continue;
        };
        r.outside_master = mine
            .iter()
            .find(|e| {
                e.shared() == Some(m)
                    && (e.major, e.minor) == (t.major, t.minor)
                    && holds(&e.root, &r.root)
            })
            .map(|e| e.mount_point.clone());
    }
}

/// At restore: a descriptor (O_PATH, on its root) on the mount of crest's
/// namespace at `r.outside_master`, if it is still there, shared, of the
/// same type, and its root holds `r`'s.
pub fn open_outside_master(r: &MountRec) -> Option<std::os::fd::OwnedFd> {
    let at = r.outside_master.as_ref()?;
    let mine = crest_sys::proc::read_mountinfo(std::process::id() as i32).ok()?;
    // The last mount at that point is the one seen there.
    let e = mine.iter().rev().find(|e| &e.mount_point == at)?;
    if e.shared().is_none() || e.fs_type != r.fs_type || !holds(&e.root, &r.root) {
        return None;
    }
    let f = std::fs::File::open(at).ok()?;
    Some(f.into())
}

/// The mount points of `recs` that are slaves of a peer group outside
/// the namespace that restore does not rejoin (they come back private):
/// those whose group has no member in crest's namespace (`joined`: the
/// ids of those that do).
pub fn external_masters(recs: &[&MountRec], joined: &[u64]) -> Vec<String> {
    let g = groups(recs);
    recs.iter()
        .filter(|r| !joined.contains(&r.id))
        .filter(|r| r.master.is_some_and(|m| !g.contains_key(&m)))
        .map(|r| format!("{} (master:{})", r.mount_point, r.master.unwrap_or(0)))
        .collect()
}

/// At restore, in the process creating the namespace once every mount
/// is attached: the steps that recreate the propagation of `recs`.
pub(super) fn steps(recs: &[&MountRec]) -> Vec<Step> {
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let at = |i: usize| c(&recs[i].mount_point);
    let mut out = vec![Step::Propagate {
        at: c("/"),
        flag: libc::MS_REC | libc::MS_PRIVATE,
    }];
    let g = groups(recs);
    let inside = |m: Option<u64>| m.filter(|m| g.contains_key(m));
    let mut done: Vec<u64> = Vec::new();
    loop {
        let before = done.len();
        for (n, members) in &g {
            if done.contains(n) {
                continue;
            }
            let master = members.iter().find_map(|&i| inside(recs[i].master));
            if master.is_some_and(|m| !done.contains(&m) && m != *n) {
                continue;
            }
            done.push(*n);
            let Some(l) = leader(recs, members) else {
                continue;
            };
            if let Some(m) = master {
                if let Some(s) = source(recs, &g, m, &recs[l].root) {
                    out.push(Step::SetGroup {
                        from: at(s),
                        to: at(l),
                    });
                    out.push(Step::Propagate {
                        at: at(l),
                        flag: libc::MS_SLAVE,
                    });
                }
            }
            out.push(Step::Propagate {
                at: at(l),
                flag: libc::MS_SHARED,
            });
            for &o in members.iter().filter(|&&o| o != l) {
                out.push(Step::SetGroup {
                    from: at(l),
                    to: at(o),
                });
            }
        }
        if done.len() == before {
            // Only a cycle of masters is left, which the kernel cannot
            // make: those groups stay private.
            break;
        }
    }
    for (i, r) in recs.iter().enumerate() {
        if r.shared.is_some() {
            continue;
        }
        let Some(m) = inside(r.master) else { continue };
        if let Some(s) = source(recs, &g, m, &r.root) {
            out.push(Step::SetGroup {
                from: at(s),
                to: at(i),
            });
            out.push(Step::Propagate {
                at: at(i),
                flag: libc::MS_SLAVE,
            });
        }
    }
    for (i, r) in recs.iter().enumerate() {
        if r.unbindable {
            out.push(Step::Propagate {
                at: at(i),
                flag: libc::MS_UNBINDABLE,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mp: &str, root: &str, shared: Option<u64>, master: Option<u64>) -> MountRec {
        MountRec {
            mount_point: mp.into(),
            root: root.into(),
            fs_type: "tmpfs".into(),
            shared,
            master,
            ..Default::default()
        }
    }

    #[test]
    fn slaves_of_groups_outside_are_named() {
        let a = rec("/", "/", Some(3), Some(1));
        let b = rec("/x", "/", None, Some(3));
        let c = rec("/y", "/", None, Some(9));
        assert_eq!(
            external_masters(&[&a, &b, &c], &[]),
            ["/ (master:1)", "/y (master:9)"]
        );
    }

    fn show(s: &[Step]) -> Vec<String> {
        s.iter()
            .map(|s| match s {
                Step::SetGroup { from, to } => {
                    format!(
                        "group {} -> {}",
                        from.to_str().unwrap(),
                        to.to_str().unwrap()
                    )
                }
                Step::Propagate { at, flag } => format!("{} {flag:#x}", at.to_str().unwrap()),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn peers_then_slaves() {
        let recs = [
            rec("/", "/", None, Some(1)),
            rec("/s", "/", None, Some(7)),
            rec("/a", "/", Some(7), None),
            rec("/b", "/sub", Some(7), None),
            rec("/c", "/sub", Some(9), Some(7)),
            rec("/d", "/sub", Some(9), Some(7)),
        ];
        let refs: Vec<&MountRec> = recs.iter().collect();
        let got = show(&steps(&refs));
        let want = [
            format!("/ {:#x}", libc::MS_REC | libc::MS_PRIVATE),
            format!("/a {:#x}", libc::MS_SHARED),
            "group /a -> /b".into(),
            "group /a -> /c".into(),
            format!("/c {:#x}", libc::MS_SLAVE),
            format!("/c {:#x}", libc::MS_SHARED),
            "group /c -> /d".into(),
            "group /a -> /s".into(),
            format!("/s {:#x}", libc::MS_SLAVE),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_group_without_a_widest_member_is_refused() {
        let recs = [
            rec("/", "/", None, None),
            rec("/a", "/x", Some(3), None),
            rec("/b", "/y", Some(3), None),
        ];
        let mut obs = Vec::new();
        check(1, &recs, &mut obs);
        assert_eq!(obs.len(), 1, "{obs:?}");
        assert!(obs[0].reason.contains("peer group 3"));
    }
}
