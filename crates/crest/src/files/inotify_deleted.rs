//! inotify watches on files unlinked while open.
//!
//! The kernel keeps a watch on an unlinked inode for as long as the inode
//! lives: unlinking sends IN_ATTRIB (the link count changed), and only
//! when the last reference goes (the last descriptor closed) does the
//! watch report IN_DELETE_SELF and IN_IGNORED.  Such a watch can be
//! restored exactly when the file is still held in the tree, by a
//! descriptor or a mapping: the dump's own unlinked-file object recreates
//! the inode (see `crate::files::unlinked`, and
//! `crate::memory::collect_vmas` for mapped ones), and the watch is put
//! on it once its name is gone again — through crest's /proc/self/fd link
//! of a descriptor, or through a restored process's /proc/PID/map_files
//! link of a mapping (a path lookup: no event) — so neither the
//! re-creation nor the unlink queues an event, and the program's last
//! close or munmap still ends the watch with IN_DELETE_SELF and
//! IN_IGNORED.  (A private mapping's file comes back opened read-only, so
//! its munmap reports IN_CLOSE_NOWRITE even where the program had opened
//! it for writing.)
//!
//! Refused by name: a watched file that was deleted and is held only
//! outside the tree, since nothing in the image recreates it.

use crate::error::{Error, Result};
use crate::model::{Backing, Checkpoint, ObjectKind, OpenFile, OpenTarget};
use crate::objects::ObjectTable;
use crate::Obstacle;
use std::collections::{HashMap, HashSet};
use std::os::fd::{BorrowedFd, RawFd};

const DELETED: &str = " (deleted)";

/// After every descriptor and mapping of the tree is collected: links
/// each watch on a deleted file (its path still ends in " (deleted)") to
/// the object of the tree that recreates that file, or refuses it.
/// `held`: (pid, fd, object) of every descriptor collected.
pub fn link(objects: &mut ObjectTable, held: &[(i32, i32, u32)], obstacles: &mut Vec<Obstacle>) {
    // The unlinked-file objects (each held by a descriptor or a mapping of
    // the tree), by the first object of each file (the one others name in
    // `same_as`).
    let mut held_files: HashSet<u32> = HashSet::new();
    for o in objects.as_slice() {
        if let ObjectKind::Open(OpenFile {
            target: OpenTarget::Unlinked { meta, .. },
            ..
        }) = &o.kind
        {
            held_files.insert(meta.as_ref().and_then(|m| m.same_as).unwrap_or(o.id));
        }
    }
    let ids: Vec<u32> = objects.as_slice().iter().map(|o| o.id).collect();
    for id in ids {
        let lookup: Vec<(usize, u64, u64)> = match objects.get_mut(id) {
            Some(ObjectKind::Open(OpenFile {
                target: OpenTarget::Inotify { watches },
                ..
            })) => watches
                .iter()
                .enumerate()
                .filter(|(_, w)| w.unlinked.is_none() && w.path.ends_with(DELETED))
                .map(|(i, w)| (i, w.dev, w.ino))
                .collect(),
            _ => continue,
        };
        for (i, dev, ino) in lookup {
            let file = objects
                .unlinked(dev, ino)
                .filter(|f| held_files.contains(f));
            let Some(ObjectKind::Open(OpenFile {
                target: OpenTarget::Inotify { watches },
                ..
            })) = objects.get_mut(id)
            else {
                continue;
            };
            let w = &mut watches[i];
            match file {
                Some(f) => {
                    w.path = w.path.trim_end_matches(DELETED).to_string();
                    w.unlinked = Some(f);
                }
                None => {
                    let (pid, fd) = held
                        .iter()
                        .find(|h| h.2 == id)
                        .map(|h| (h.0, h.1))
                        .unwrap_or((0, -1));
                    obstacles.push(Obstacle {
                        pid,
                        object: format!("fd {fd}"),
                        reason: format!(
                            "inotify watch {} is on {}, a file deleted while open that no \
                             descriptor or mapping of the tree holds (nothing recreates it)",
                            w.wd, w.path
                        ),
                    });
                }
            }
        }
    }
}

/// Crest's descriptor of a recreated unlinked file `file` (or of another
/// description of the same file), from the opened objects.
fn recreated(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>, file: u32) -> Option<RawFd> {
    if let Some(&fd) = opened.get(&file) {
        return Some(fd);
    }
    opened.iter().find_map(|(&id, &fd)| match ckpt.object(id) {
        Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Unlinked { meta: Some(m), .. },
            ..
        })) if m.same_as == Some(file) => Some(fd),
        _ => None,
    })
}

/// Where a restored process maps the recreated unlinked file `file` (or
/// another description of it): its /proc/PID/map_files link.  `pids`:
/// each image process's pid in crest's namespace, in image order.
fn mapped(ckpt: &Checkpoint, pids: &[i32], file: u32) -> Option<String> {
    let is_file = |id: u32| {
        id == file
            || matches!(ckpt.object(id), Some(ObjectKind::Open(OpenFile {
                target: OpenTarget::Unlinked { meta: Some(m), .. },
                ..
            })) if m.same_as == Some(file))
    };
    ckpt.processes.iter().zip(pids).find_map(|(p, pid)| {
        p.mm.vmas
            .iter()
            .find(|v| matches!(v.backing, Backing::File(id) if is_file(id)))
            .map(|v| format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
    })
}

/// Adds the watches of every inotify instance that has one on an unlinked
/// file, once the recreated files have lost their names again and the
/// processes have mapped theirs (`opened`: crest's descriptors of the
/// image's objects; `pids`: the restored processes' pids, in image order).
pub fn add_deferred(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>, pids: &[i32]) -> Result<()> {
    let mut ids: Vec<u32> = opened.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Inotify { watches },
            ..
        })) = ckpt.object(id)
        else {
            continue;
        };
        if !watches.iter().any(|w| w.unlinked.is_some()) {
            continue;
        }
        // SAFETY: crest holds every opened descriptor until the stubs have
        // theirs; this borrow ends with this iteration.
        let ifd = unsafe { BorrowedFd::borrow_raw(opened[&id]) };
        let ifd = ifd.try_clone_to_owned()?;
        crate::files::events::add_watches(&ifd, watches, &|w| {
            let file = w.unlinked.unwrap_or(u32::MAX);
            match recreated(ckpt, opened, file) {
                Some(fd) => Ok(format!("/proc/self/fd/{fd}")),
                None => mapped(ckpt, pids, file).ok_or_else(|| {
                    Error::Invalid(format!(
                        "inotify watch {} is on the unlinked file {} (object {file}), \
                         which is neither opened nor mapped",
                        w.wd, w.path
                    ))
                }),
            }
        })?;
    }
    Ok(())
}
