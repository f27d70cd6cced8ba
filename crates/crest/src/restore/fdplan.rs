//! The descriptor plan of a restore, made from the model alone before
//! anything is opened: the descriptors each stub places and where each
//! comes from, the helper descriptors above the program's own (mapped
//! files, the executable, cwd, root, the stubs' pipes), which process
//! closes them, and the tree's parent and table-sharing links as indices.
//!
//! The build (`Build::start`) then opens each source in the plan's order
//! (an open file description once for all its descriptors) and hands the
//! stubs the moves.  Everything the build would otherwise discover midway
//! — a parent missing from the image, a descriptor on an object that is no
//! open file — is an error here, before the first side effect.

use crate::error::{Error, Result};
use crate::model::{Backing, Checkpoint, ObjectKind, Process};
use std::collections::HashMap;

/// Where a descriptor placed in a stub comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Open file description `id`, the program's descriptor `fd` (the
    /// description is opened once for every descriptor on it).
    Description {
        id: u32,
        fd: i32,
    },
    /// The shared memory object behind a mapping.
    Shmem(u32),
    /// A mapped file that is an open-file object of the image (a deleted
    /// file, recreated once for every mapping and descriptor of it); the
    /// first mapping's address, for errors.
    MappedOpen {
        id: u32,
        addr: u64,
    },
    /// A mapped file of the machine; opened for writing when a shared
    /// writable mapping of it exists.
    MappedFile {
        id: u32,
        write: bool,
    },
    /// The executable (`/proc/PID/exe`).
    Exe(u32),
    /// The working directory (a deleted one is recreated).
    Cwd,
    /// The root directory, when it is not `/`.
    Root,
    /// The stubs' ready pipe (write end) and hold pipe (read end).
    Ready,
    Hold,
}

/// One descriptor a stub places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub src: Source,
    pub dst: i32,
    pub cloexec: bool,
}

/// One process's part of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcFds {
    /// The parent's index in the image (None for the root).
    pub parent: Option<usize>,
    /// The index of the process whose descriptor table this one shares:
    /// that process places this one's descriptors too.
    pub files_parent: Option<usize>,
    /// What this process contributes, in order: the program's descriptors
    /// (none for a table sharer), then its helper descriptors.
    pub placed: Vec<Placed>,
    /// First helper descriptor (all are above the program's own).
    pub aux_lo: i32,
    /// One past the last helper descriptor of the table so far.
    pub aux_end: i32,
    /// Helper descriptor of each mapping backing (by object id).
    pub file_fds: HashMap<u32, i32>,
    /// Helper descriptor of the executable, or -1.
    pub exe_fd: i32,
    pub cwd_fd: i32,
    pub root_fd: Option<i32>,
    pub ready_dst: i32,
    pub hold_dst: i32,
    /// Whether this process closes the helper descriptors when it is
    /// finished: a table shared with children is closed once, by the last
    /// of them.
    pub close_aux: bool,
    /// Indices of its children, in image order.
    pub children: Vec<usize>,
}

/// The whole plan, one entry per process of the image, in image order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    pub procs: Vec<ProcFds>,
    /// Above every descriptor number a stub places.
    pub max_dst: i32,
}

/// The index of the process `pid` among the first `before` of the image.
fn earlier(ckpt: &Checkpoint, before: usize, pid: i32) -> Option<usize> {
    ckpt.processes[..before].iter().position(|q| q.pid == pid)
}

/// Plans the descriptors of every process of `ckpt` (which restore has
/// validated; what is planned is checked again, as errors).
pub fn plan(ckpt: &Checkpoint) -> Result<FdPlan> {
    let tree_ids = crate::files::procfiles::tree_ids(ckpt);
    let mut procs: Vec<ProcFds> = Vec::with_capacity(ckpt.processes.len());
    let mut max_dst = 0;
    for (i, p) in ckpt.processes.iter().enumerate() {
        let parent = match i {
            0 => None,
            _ => Some(earlier(ckpt, i, p.ppid).ok_or_else(|| {
                Error::Invalid(format!(
                    "pid {}: its parent {} is not before it in the image",
                    p.pid, p.ppid
                ))
            })?),
        };
        let files_parent = p
            .shares_files_with
            .map(|pp| {
                earlier(ckpt, i, pp).ok_or_else(|| {
                    Error::Invalid(format!(
                        "pid {}: the process {pp} whose descriptor table it shares is not \
                         before it in the image",
                        p.pid
                    ))
                })
            })
            .transpose()?;
        let mut placed = Vec::new();
        if files_parent.is_none() {
            for fd in &p.fds {
                let Some(ObjectKind::Open(o)) = ckpt.object(fd.file) else {
                    return Err(Error::Invalid(format!(
                        "pid {}: fd {} is on object {}, which is no open file",
                        p.pid, fd.fd, fd.file
                    )));
                };
                if crate::files::procfiles::deferred_path(o, &tree_ids).is_some() {
                    continue; // opened by the process itself, later
                }
                placed.push(Placed {
                    src: Source::Description {
                        id: fd.file,
                        fd: fd.fd,
                    },
                    dst: fd.fd,
                    cloexec: fd.cloexec,
                });
            }
        }
        let aux_lo = match files_parent {
            Some(j) => procs[j].aux_lo,
            None => p.fds.iter().map(|f| f.fd).max().unwrap_or(-1) + 1,
        };
        let mut next = files_parent.map_or(aux_lo, |j| procs[j].aux_end);
        let mut aux = |src: Source, placed: &mut Vec<Placed>| {
            let dst = next;
            next += 1;
            placed.push(Placed {
                src,
                dst,
                cloexec: true,
            });
            dst
        };
        let mut file_fds: HashMap<u32, i32> = HashMap::new();
        for v in &p.mm.vmas {
            let id = match v.backing {
                Backing::Shmem(id) | Backing::File(id) => id,
                _ => continue,
            };
            if file_fds.contains_key(&id) {
                continue;
            }
            let src = match (v.backing, ckpt.object(id)) {
                (Backing::Shmem(_), Some(ObjectKind::Shmem(_))) => Source::Shmem(id),
                (Backing::File(_), Some(ObjectKind::Open(_))) => {
                    Source::MappedOpen { id, addr: v.start }
                }
                (Backing::File(_), Some(ObjectKind::File(_))) => Source::MappedFile {
                    id,
                    write: writes_shared(p, id),
                },
                _ => {
                    return Err(Error::Invalid(format!(
                        "pid {}: mapping {:#x}-{:#x} is backed by object {id}, which is no \
                         file or shared memory",
                        p.pid, v.start, v.end
                    )))
                }
            };
            file_fds.insert(id, aux(src, &mut placed));
        }
        let exe_fd = match p.mm.exe {
            Some(id) => {
                let Some(ObjectKind::File(_)) = ckpt.object(id) else {
                    return Err(Error::Invalid(format!(
                        "pid {}: its executable is object {id}, which is no file",
                        p.pid
                    )));
                };
                aux(Source::Exe(id), &mut placed)
            }
            None => -1,
        };
        let cwd_fd = aux(Source::Cwd, &mut placed);
        let root_fd = (p.fs.root != "/").then(|| aux(Source::Root, &mut placed));
        let (ready_dst, hold_dst) = match files_parent {
            Some(j) => (procs[j].ready_dst, procs[j].hold_dst),
            None => (
                aux(Source::Ready, &mut placed),
                aux(Source::Hold, &mut placed),
            ),
        };
        max_dst = max_dst.max(next);
        if let Some(j) = files_parent {
            procs[j].aux_end = next;
        }
        if let Some(j) = parent {
            procs[j].children.push(i);
        }
        procs.push(ProcFds {
            parent,
            files_parent,
            placed,
            aux_lo,
            aux_end: next,
            file_fds,
            exe_fd,
            cwd_fd,
            root_fd,
            ready_dst,
            hold_dst,
            close_aux: true,
            children: Vec::new(),
        });
    }
    // A table shared with children is closed by the last process on it.
    for i in 0..procs.len() {
        if let Some(j) = procs[i].files_parent {
            procs[j].close_aux = false;
            let pp = ckpt.processes[i].shares_files_with;
            procs[i].close_aux =
                (i + 1..procs.len()).all(|k| ckpt.processes[k].shares_files_with != pp);
        }
    }
    Ok(FdPlan { procs, max_dst })
}

/// Whether `p` maps file object `id` shared and writable somewhere.
fn writes_shared(p: &Process, id: u32) -> bool {
    p.mm.vmas
        .iter()
        .any(|w| w.backing == Backing::File(id) && w.shared && w.flags.may_write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fd, FileId, FsInfo, Object, OpenFile, Vma};

    /// A process of the golden image, emptied and renamed.
    fn proc(pid: i32, ppid: i32) -> Process {
        let mut p = golden().processes[0].clone();
        p.pid = pid;
        p.ppid = ppid;
        p.fds.clear();
        p.mm.vmas.clear();
        p.mm.exe = None;
        p.fs = FsInfo {
            cwd: "/".into(),
            root: "/".into(),
            cwd_deleted: None,
        };
        p.shares_files_with = None;
        p.shares_fs_with = None;
        p.threads.truncate(1);
        p.threads[0].tid = pid;
        p
    }

    /// The golden image: every field and variant of the model filled in.
    fn golden() -> Checkpoint {
        serde_json::from_str(include_str!("../../tests/golden/v3-4.json")).unwrap()
    }

    /// An image of `procs` with an open file (object 0), a file (1), a
    /// shared memory object (2), and an open file on /proc/PID of the
    /// first process (3).
    fn image(procs: Vec<Process>) -> Checkpoint {
        let objs = golden().objects;
        let find = |f: &dyn Fn(&ObjectKind) -> bool| {
            objs.iter()
                .find(|o| f(&o.kind))
                .expect("the golden image has every kind")
                .kind
                .clone()
        };
        let mut open = find(&|k| matches!(k, ObjectKind::Open(_)));
        if let ObjectKind::Open(OpenFile { target, .. }) = &mut open {
            *target = crate::model::OpenTarget::Regular(regular("/etc/hostname"));
        }
        let mut proc_open = open.clone();
        if let ObjectKind::Open(OpenFile { target, .. }) = &mut proc_open {
            *target = crate::model::OpenTarget::Regular(regular(&format!(
                "/proc/{}/status",
                procs[0].pid
            )));
        }
        let file = find(&|k| matches!(k, ObjectKind::File(_)));
        let shmem = find(&|k| matches!(k, ObjectKind::Shmem(_)));
        let mut ckpt = golden();
        ckpt.processes = procs;
        ckpt.objects = [open, file, shmem, proc_open]
            .into_iter()
            .enumerate()
            .map(|(id, kind)| Object {
                id: id as u32,
                kind,
            })
            .collect();
        ckpt
    }

    fn regular(path: &str) -> FileId {
        let mut f = golden()
            .objects
            .iter()
            .find_map(|o| match &o.kind {
                ObjectKind::Open(OpenFile {
                    target: crate::model::OpenTarget::Regular(f),
                    ..
                }) => Some(f.clone()),
                _ => None,
            })
            .expect("a regular open file in the golden image");
        f.path = path.into();
        f
    }

    fn fd(fd: i32, file: u32) -> Fd {
        Fd {
            fd,
            cloexec: fd > 2,
            file,
        }
    }

    fn vma(start: u64, backing: Backing, shared: bool, write: bool) -> Vma {
        let mut v = golden().processes[0].mm.vmas[0].clone();
        v.start = start;
        v.end = start + 4096;
        v.backing = backing;
        v.shared = shared;
        v.flags.may_write = write;
        v
    }

    fn srcs(p: &ProcFds) -> Vec<(Source, i32)> {
        p.placed.iter().map(|m| (m.src.clone(), m.dst)).collect()
    }

    #[test]
    fn helpers_sit_above_the_programs_descriptors() {
        let mut p = proc(100, 1);
        p.fds = vec![fd(0, 0), fd(1, 0), fd(5, 0)];
        p.fs.root = "/srv".into();
        let plan = plan(&image(vec![p])).unwrap();
        let p = &plan.procs[0];
        assert_eq!(
            srcs(p),
            vec![
                (Source::Description { id: 0, fd: 0 }, 0),
                (Source::Description { id: 0, fd: 1 }, 1),
                (Source::Description { id: 0, fd: 5 }, 5),
                (Source::Cwd, 6),
                (Source::Root, 7),
                (Source::Ready, 8),
                (Source::Hold, 9),
            ]
        );
        assert_eq!((p.aux_lo, p.aux_end, p.exe_fd), (6, 10, -1));
        assert_eq!((p.cwd_fd, p.root_fd), (6, Some(7)));
        assert!(p.placed[3..].iter().all(|m| m.cloexec));
        assert!(!p.placed[0].cloexec && p.placed[2].cloexec);
        assert_eq!(plan.max_dst, 10);
        assert!(p.close_aux);
        assert_eq!(p.parent, None);
    }

    #[test]
    fn a_mapped_backing_gets_one_helper_opened_for_writing_if_shared_writable() {
        let mut p = proc(100, 1);
        p.mm.exe = Some(1);
        p.mm.vmas = vec![
            vma(0x1000, Backing::File(1), false, false),
            vma(0x3000, Backing::File(1), true, true),
            vma(0x5000, Backing::Shmem(2), true, true),
            vma(0x7000, Backing::Shmem(2), true, true),
            vma(0x9000, Backing::Anonymous, false, true),
            vma(0xb000, Backing::File(0), false, false),
        ];
        let plan = plan(&image(vec![p])).unwrap();
        let p = &plan.procs[0];
        assert_eq!(
            srcs(p),
            vec![
                (Source::MappedFile { id: 1, write: true }, 0),
                (Source::Shmem(2), 1),
                (
                    Source::MappedOpen {
                        id: 0,
                        addr: 0xb000
                    },
                    2
                ),
                (Source::Exe(1), 3),
                (Source::Cwd, 4),
                (Source::Ready, 5),
                (Source::Hold, 6),
            ]
        );
        assert_eq!(p.file_fds, HashMap::from([(1, 0), (2, 1), (0, 2)]));
        assert_eq!(p.exe_fd, 3);
    }

    #[test]
    fn a_shared_table_is_placed_by_its_owner_and_closed_by_the_last_sharer() {
        let mut a = proc(100, 1);
        a.fds = vec![fd(0, 0), fd(3, 0)];
        let mut b = proc(101, 100);
        b.fds = a.fds.clone();
        b.shares_files_with = Some(100);
        let c = proc(102, 100);
        let mut d = proc(103, 100);
        d.fds = a.fds.clone();
        d.shares_files_with = Some(100);
        let plan = plan(&image(vec![a, b, c, d])).unwrap();
        let [a, b, c, d] = &plan.procs[..] else {
            panic!()
        };
        // a: its descriptors, cwd 4, ready 5, hold 6.
        assert_eq!((a.aux_lo, a.aux_end), (4, 9));
        assert_eq!(
            (a.cwd_fd, a.ready_dst, a.hold_dst, a.close_aux),
            (4, 5, 6, false)
        );
        // b and d: no descriptors of their own, helpers after the owner's,
        // the owner's pipes.
        assert_eq!(srcs(b), vec![(Source::Cwd, 7)]);
        assert_eq!((b.files_parent, b.ready_dst, b.hold_dst), (Some(0), 5, 6));
        assert_eq!(srcs(d), vec![(Source::Cwd, 8)]);
        assert!(!b.close_aux && d.close_aux);
        // c has a table of its own.
        assert_eq!(c.files_parent, None);
        assert_eq!(
            srcs(c),
            vec![(Source::Cwd, 0), (Source::Ready, 1), (Source::Hold, 2)]
        );
        assert!(c.close_aux);
        assert_eq!(a.children, vec![1, 2, 3]);
        assert_eq!((b.parent, c.parent, d.parent), (Some(0), Some(0), Some(0)));
        assert_eq!(plan.max_dst, 9);
    }

    #[test]
    fn a_proc_file_of_the_tree_is_left_to_the_process() {
        let mut p = proc(100, 1);
        p.fds = vec![fd(0, 0), fd(4, 3)];
        let plan = plan(&image(vec![p])).unwrap();
        let p = &plan.procs[0];
        assert_eq!(p.placed[0].src, Source::Description { id: 0, fd: 0 });
        assert!(p
            .placed
            .iter()
            .all(|m| !matches!(m.src, Source::Description { id: 3, .. })));
        // Still above every descriptor of the program.
        assert_eq!(p.aux_lo, 5);
    }

    #[test]
    fn impossible_links_are_errors_not_panics() {
        let orphan = proc(101, 77);
        let e = plan(&image(vec![proc(100, 1), orphan])).unwrap_err();
        assert!(e.to_string().contains("pid 101: its parent 77"), "{e}");

        let mut sharer = proc(101, 100);
        sharer.shares_files_with = Some(102);
        let e = plan(&image(vec![proc(100, 1), sharer, proc(102, 100)])).unwrap_err();
        assert!(
            e.to_string().contains("process 102 whose descriptor table"),
            "{e}"
        );

        let mut p = proc(100, 1);
        p.fds = vec![fd(3, 2)];
        let e = plan(&image(vec![p])).unwrap_err();
        assert!(e.to_string().contains("fd 3 is on object 2"), "{e}");

        let mut p = proc(100, 1);
        p.mm.vmas = vec![vma(0x1000, Backing::Shmem(1), true, true)];
        let e = plan(&image(vec![p])).unwrap_err();
        assert!(e.to_string().contains("mapping 0x1000-0x2000"), "{e}");

        let mut p = proc(100, 1);
        p.mm.exe = Some(0);
        let e = plan(&image(vec![p])).unwrap_err();
        assert!(e.to_string().contains("executable is object 0"), "{e}");
    }
}
