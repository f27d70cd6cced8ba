//! User namespaces: their uid/gid maps and setgroups setting, which user
//! namespace owns each other namespace of the tree, and the credentials
//! of the processes inside, relative to their namespace.
//!
//! Dump records, for each user namespace of the tree (the first process
//! seen in it entered it), its maps as crest reads them (outside ids in
//! crest's own user namespace: host terms, whatever the nesting), its
//! setgroups and its parent (NS_GET_PARENT: crest's, or one of the
//! tree's).  The ownership tree is checked: every other namespace of the
//! tree must belong (NS_GET_USERNS) to the user namespace of the process
//! that entered it, which is what restore makes, since it creates each
//! namespace by a clone3 of that process (CLONE_NEWUSER with the others:
//! the kernel makes the user namespace first and gives it the others); a
//! shape that differs (a namespace made by crest's user namespace and
//! entered from inside another, an intermediate user namespace not in
//! the tree) is refused by name.  A network namespace may also belong to
//! the user namespace of the process that entered it: see
//! [`super::owned_net`].  Credentials are read
//! from /proc/PID/status in host terms; capabilities are the raw sets,
//! which mean something relative to the process's own user namespace.
//!
//! Restore forks the process that entered a user namespace with
//! CLONE_NEWUSER (and its other new namespaces, and set_tid for the PIDs
//! of a new PID namespace, which the kernel allows because the new user
//! namespace owns it).  The new process first asks crest for its maps
//! (a datagram on a socket with SO_PASSCRED, which gives crest its PID)
//! and waits on a pipe of its own; crest writes `setgroups`, `uid_map`
//! and `gid_map` (outside ids translated into the parent namespace's
//! terms) from the parent user namespace: itself for a namespace below
//! its own, else a forked helper that joins the parent first (the kernel
//! takes map writes only from there).  Every process inside then runs as
//! the creator's copy with all capabilities in the namespace until its
//! credentials are set last: host ids translated through the map.
//!
//! What an ordinary user can do (measured on Linux 6.18 as `nobody`; the
//! test `tests/userns.rs` runs it): dump a rootless container it owns
//! (ptrace, /proc/PID/mem and map_files of its own processes inside a
//! child user namespace) and restore it: creating a user namespace with
//! PID, mount, UTS, IPC, time and cgroup namespaces in the same clone3,
//! with set_tid for the PIDs inside the new PID namespace, writing a
//! one-line map of its own uid and gid (after "deny" to setgroups).  It
//! cannot: choose PIDs in the initial PID namespace (set_tid needs
//! CAP_CHECKPOINT_RESTORE there), so the container's processes keep their
//! PIDs inside but get new outer ones (a tree in crest's PID namespace is
//! refused); write a map of more than its own id (that needs CAP_SETUID
//! in the parent, which newuidmap's setuid helper has and crest has not),
//! or a gid map without denying setgroups; join cgroups not delegated to
//! it.

use crate::error::{Error, Result};
use crate::model::{Creds, IdExtent, Namespaces, NsId, NsState, Process, UserNsState};
use crate::Obstacle;
use std::os::fd::OwnedFd;

/// Parses a uid_map/gid_map text.
pub fn parse_map(text: &str) -> Result<Vec<IdExtent>> {
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u32> = l
            .split_whitespace()
            .map(|x| x.parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::msg(format!("unexpected id map line {l:?}")))?;
        let [inside, outside, count] = f[..] else {
            return Err(Error::msg(format!("unexpected id map line {l:?}")));
        };
        out.push(IdExtent {
            inside,
            outside,
            count,
        });
    }
    Ok(out)
}

/// The user namespace `pid` is in: its maps, setgroups and parent.
/// `known` gives the inode of each user namespace already in the table.
pub fn collect(
    pid: i32,
    mine: u64,
    known: &[(u64, NsId)],
    obstacles: &mut Vec<Obstacle>,
) -> Result<NsState> {
    let read = |f: &str| {
        let p = format!("/proc/{pid}/{f}");
        std::fs::read_to_string(&p).map_err(|e| Error::msg(format!("reading {p}: {e}")))
    };
    let uid_map = parse_map(&read("uid_map")?)?;
    let gid_map = parse_map(&read("gid_map")?)?;
    let setgroups = read("setgroups")?.trim() == "allow";
    let fd = crest_sys::ns::open(pid, "user")?;
    let parent_ino = match crest_sys::ns::parent(&fd)? {
        Some(p) => Some(crest_sys::ns::ino(&p)?),
        None => None,
    };
    let parent = match parent_ino {
        Some(p) if p == mine => None,
        Some(p) => match known.iter().find(|k| k.0 == p) {
            Some(k) => Some(k.1),
            None => {
                obstacles.push(Obstacle {
                    pid,
                    object: "user namespace".into(),
                    reason: format!(
                        "its user namespace's parent (user:[{p}]) is neither crest's nor one \
                         of the tree's: restore cannot recreate a user namespace no process of \
                         the tree is in (give the outermost process inside crest's)"
                    ),
                });
                None
            }
        },
        None => None,
    };
    if uid_map.is_empty() || gid_map.is_empty() {
        obstacles.push(Obstacle {
            pid,
            object: "user namespace".into(),
            reason: "its user namespace has no uid or gid map written yet".into(),
        });
    }
    Ok(NsState::User(UserNsState {
        uid_map,
        gid_map,
        setgroups,
        parent,
        owner_uid: None,
    }))
}

/// Checks that namespace `kind` of `pid`, which `pid` entered, belongs to
/// the user namespace `pid` is in (`user_ino`), and for a network
/// namespace, to that one or to crest's (`mine`): restore creates it
/// that way.  True when a network namespace belongs to the process's
/// user namespace, not crest's (see [`super::owned_net`]).
pub fn check_owner(
    pid: i32,
    kind: &str,
    user_ino: u64,
    mine: u64,
    obstacles: &mut Vec<Obstacle>,
) -> Result<bool> {
    if kind == "user" {
        return Ok(false);
    }
    let fd = crest_sys::ns::open(pid, kind)?;
    let owner = match crest_sys::ns::owner(&fd)? {
        Some(o) => Some(crest_sys::ns::ino(&o)?),
        None => None,
    };
    if kind == "net" && owner == Some(mine) {
        return Ok(false);
    }
    if owner != Some(user_ino) {
        let own = owner.map_or("one crest cannot see".into(), |o| format!("user:[{o}]"));
        let reason = if kind == "net" {
            format!(
                "its network namespace belongs to user namespace {own}, neither crest's nor                  the one the process is in (user:[{user_ino}]): crest recreates a network                  namespace in one of those (not supported)"
            )
        } else {
            format!(
                "its {kind} namespace belongs to user namespace {own}, not to the one the                  process is in (user:[{user_ino}]): restore creates each namespace from inside                  the user namespace of the process that entered it"
            )
        };
        obstacles.push(Obstacle {
            pid,
            object: format!("{kind} namespace"),
            reason,
        });
        return Ok(false);
    }
    Ok(kind == "net")
}

/// Refuses the processes restore could not fork the children or
/// threads of: a process creates them with set_tid at each level of its
/// PID namespaces below crest's (its own PID in crest's namespace when it
/// is in crest's), which the kernel allows only with CAP_CHECKPOINT_RESTORE
/// in the user namespace owning each of those PID namespaces; a stub has
/// capabilities in its own user namespace and those below it, nowhere
/// else.  The owner of a PID namespace is the user namespace of the
/// process that entered it.  `forks(i)`: whether process `i` has children or threads;
/// `parent(i)`: the index of its parent in the tree.
pub fn check_forks(
    table: &Namespaces,
    procs: &[(i32, crate::model::ProcNs)],
    forks: &dyn Fn(usize) -> bool,
    parent: &dyn Fn(usize) -> Option<usize>,
    obstacles: &mut Vec<Obstacle>,
) {
    let below = |mut u: Option<NsId>, anc: NsId| loop {
        match u {
            Some(x) if x == anc => return true,
            Some(x) => {
                u = match table.table.get(x as usize).map(|n| &n.state) {
                    Some(NsState::User(s)) => s.parent,
                    _ => None,
                }
            }
            None => return false,
        }
    };
    for (i, (pid, me)) in procs.iter().enumerate() {
        let Some(mine) = me.user else { continue };
        if !forks(i) {
            continue;
        }
        let owner_of = |pidns: NsId| {
            procs
                .iter()
                .find(|(_, q)| q.pid == Some(pidns))
                .and_then(|(_, q)| q.user)
        };
        let bad = match me.pid {
            None => Some("crest's PID namespace".to_string()),
            Some(pn) => {
                // Its PID namespace and every one above it below crest's:
                // those of its ancestors in the tree.
                let mut levels = vec![pn];
                let mut at = parent(i);
                while let Some(j) = at {
                    if let Some(x) = procs[j].1.pid {
                        if !levels.contains(&x) {
                            levels.push(x);
                        }
                    }
                    at = parent(j);
                }
                levels
                    .into_iter()
                    .find(|&l| !below(owner_of(l), mine))
                    .map(|l| format!("PID namespace {l} of the image"))
            }
        };
        if let Some(what) = bad {
            obstacles.push(Obstacle {
                pid: *pid,
                object: "user namespace".into(),
                reason: format!(
                    "it has children or threads in {what}, which belongs to a user namespace \
                     outside its own: restore could not give them their PIDs from inside its \
                     user namespace (not supported; a container that unshares its user \
                     namespace together with a PID namespace can be checkpointed)"
                ),
            });
        }
    }
}

fn user_state(ns: &Namespaces, id: NsId) -> Result<&UserNsState> {
    match ns.table.get(id as usize).map(|n| &n.state) {
        Some(NsState::User(u)) => Ok(u),
        _ => Err(Error::Invalid(format!(
            "namespace {id} is not a user namespace of the image"
        ))),
    }
}

/// `id` (host terms) seen through `map`: the id inside.
pub fn up(map: &[IdExtent], id: u32) -> Option<u32> {
    map.iter()
        .find(|e| id >= e.outside && (id - e.outside) < e.count)
        .map(|e| e.inside + (id - e.outside))
}

/// `map` (outside ids in host terms) with its outside ids in the terms
/// of the parent whose own map (host terms) is `parent`: each extent
/// split where the parent's extents split.
pub fn to_parent(map: &[IdExtent], parent: &[IdExtent]) -> Result<Vec<IdExtent>> {
    let mut out = Vec::new();
    for e in map {
        let mut done = 0u32;
        while done < e.count {
            let host = e.outside + done;
            let Some(p) = parent
                .iter()
                .find(|p| host >= p.outside && host - p.outside < p.count)
            else {
                return Err(Error::Invalid(format!(
                    "id {host} of a nested user namespace's map is not mapped in its parent"
                )));
            };
            let n = (e.count - done).min(p.count - (host - p.outside));
            out.push(IdExtent {
                inside: e.inside + done,
                outside: p.inside + (host - p.outside),
                count: n,
            });
            done += n;
        }
    }
    Ok(out)
}

fn map_text(map: &[IdExtent]) -> Vec<u8> {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect::<String>()
        .into_bytes()
}

/// What crest writes for a new user namespace: its maps in its parent's
/// terms and whether setgroups is denied.
pub struct Maps {
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    pub deny_setgroups: bool,
}

/// The maps of user namespace `id` of the image.
pub fn maps(ns: &Namespaces, id: NsId) -> Result<Maps> {
    let u = user_state(ns, id)?;
    let (uid, gid) = match u.parent {
        None => (u.uid_map.clone(), u.gid_map.clone()),
        Some(p) => {
            let pu = user_state(ns, p)?;
            (
                to_parent(&u.uid_map, &pu.uid_map)?,
                to_parent(&u.gid_map, &pu.gid_map)?,
            )
        }
    };
    Ok(Maps {
        uid_map: map_text(&uid),
        gid_map: map_text(&gid),
        deny_setgroups: !u.setgroups,
    })
}

/// The ids (inside) the stub creating user namespace `id` takes once
/// its maps are written, if crest's own (effective, host terms, which
/// the stub has) are not mapped there: the lowest mapped ones.
pub fn stub_ids(ns: &Namespaces, id: NsId) -> Result<Option<(u32, u32)>> {
    let u = user_state(ns, id)?;
    // SAFETY: plain getters.
    let (me_u, me_g) = unsafe { (libc::geteuid(), libc::getegid()) };
    // crest's ids in host terms: crest runs in the initial user namespace
    // or the image's host terms are its own.
    if up(&u.uid_map, me_u).is_some() && up(&u.gid_map, me_g).is_some() {
        return Ok(None);
    }
    let low = |m: &[IdExtent]| m.iter().map(|e| e.inside).min();
    match (low(&u.uid_map), low(&u.gid_map)) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        _ => Err(Error::Invalid(format!(
            "user namespace {id} has an empty map"
        ))),
    }
}

/// A new user namespace's stub waiting for its maps.
pub struct Gate {
    /// Index of the process (in the plan) that creates it.
    pub idx: usize,
    pub maps: Maps,
    /// The pipe the stub reads one byte from once its maps are written.
    pub read: OwnedFd,
    pub write: OwnedFd,
}

/// Writes the maps of the user namespace the stub `pid` (crest's PID)
/// has just created, from the namespace's parent.
pub fn answer(pid: i32, maps: &Maps) -> Result<()> {
    let mine = crest_sys::ns::ino(&crest_sys::ns::open(std::process::id() as i32, "user")?)?;
    let theirs = crest_sys::ns::open(pid, "user")?;
    let parent = crest_sys::ns::parent(&theirs)?
        .ok_or_else(|| Error::msg("the new user namespace's parent is out of crest's sight"))?;
    let via = (crest_sys::ns::ino(&parent)? != mine).then_some(&parent);
    crest_sys::ns::write_id_maps(pid, via, maps.deny_setgroups, &maps.uid_map, &maps.gid_map)
        .map_err(|e| {
            let hint = if e.errno() == Some(libc::EPERM) {
                " (a user who is not root may map only their own uid and gid, and only with \
                 setgroups denied)"
            } else {
                ""
            };
            Error::msg(format!(
                "writing the id maps of the new user namespace of pid {pid}: {e}{hint}"
            ))
        })
}

/// The credentials `c` (host terms) as the process in user namespace
/// `user` sets them: every id translated through the namespace's map.
/// `groups_fixed`: setgroups is denied there (the supplementary groups
/// stay those the process was created with).
pub fn inside(ns: &Namespaces, user: Option<NsId>, pid: i32, c: &Creds) -> Result<(Creds, bool)> {
    let Some(id) = user else {
        return Ok((c.clone(), false));
    };
    let u = user_state(ns, id)?;
    let miss = |what: &str, v: u32| {
        Error::Invalid(format!(
            "pid {pid}: its {what} {v} is not mapped in its user namespace"
        ))
    };
    let mut out = c.clone();
    for (k, v) in c.uids.iter().enumerate() {
        out.uids[k] = up(&u.uid_map, *v).ok_or_else(|| miss("uid", *v))?;
    }
    for (k, v) in c.gids.iter().enumerate() {
        out.gids[k] = up(&u.gid_map, *v).ok_or_else(|| miss("gid", *v))?;
    }
    if u.setgroups {
        out.groups = c
            .groups
            .iter()
            .map(|g| up(&u.gid_map, *g).ok_or_else(|| miss("group", *g)))
            .collect::<Result<_>>()?;
    }
    Ok((out, !u.setgroups))
}

/// Whether process `i` of the image is in a user namespace other than
/// crest's (its capabilities are relative to it).
pub fn in_own(procs: &[Process], i: usize) -> bool {
    procs[i].ns.user.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(inside: u32, outside: u32, count: u32) -> IdExtent {
        IdExtent {
            inside,
            outside,
            count,
        }
    }

    #[test]
    fn parses_maps() {
        let m = parse_map("         0     100000      65536\n      65536 1000 1\n").unwrap();
        assert_eq!(m, vec![e(0, 100000, 65536), e(65536, 1000, 1)]);
        assert!(parse_map("0 1\n").is_err());
    }

    #[test]
    fn nested_map_in_parent_terms() {
        // Parent: 0..10 -> host 1000..; 10..20 -> host 5000...
        let parent = [e(0, 1000, 10), e(10, 5000, 10)];
        // Child maps its 0..15 onto host 1005..1010 and 5000..5010.
        let child = [e(0, 1005, 5), e(5, 5000, 10)];
        assert_eq!(
            to_parent(&child, &parent).unwrap(),
            vec![e(0, 5, 5), e(5, 10, 10)]
        );
        // An extent across two parent extents is split.
        let parent = [e(0, 100, 2), e(2, 102, 2)];
        assert_eq!(
            to_parent(&[e(7, 101, 2)], &parent).unwrap(),
            vec![e(7, 1, 1), e(8, 2, 1)]
        );
        assert!(to_parent(&[e(0, 1, 1)], &parent).is_err());
        assert_eq!(up(&[e(0, 100000, 65536)], 100005), Some(5));
        assert_eq!(up(&[e(0, 100000, 65536)], 5), None);
    }
}
