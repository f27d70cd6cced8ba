//! The model records of format 3: one record per kernel concept, each
//! payload one MessagePack map with named fields (`rmp_serde` with
//! struct maps).
//!
//! Compatibility comes from the encoding: a reader skips map keys it does
//! not know, and a field missing from a record takes its
//! `#[serde(default)]` (a field without one is mandatory: the record is
//! refused, naming it and the field).  Which model part goes into which
//! record is decided here, with exhaustive destructuring and matching, so
//! that a field or an enum variant added to the model without a record
//! does not compile.
//!
//! Order: the objects (in id order), then per process its TASK record,
//! followed by CREDS, THREAD (one per thread, leader first), MM,
//! MAPPINGS (0 or more), FDTABLE, SIGNALS, TIMERS, FS.

use crate::error::{Error, Result};
use crate::model::{
    Attrs, Checkpoint, Creds, Fd, FsInfo, ITimers, Mm, Object, ObjectKind, OpenTarget, PosixTimer,
    Process, Signals, Thread, Vma, Zombie,
};
use crate::model::{FdOwner, FileLock, ProcNs, TaskState};
use crest_image::{kind, Record, Writer};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Write;

/// Mappings per MM or MAPPINGS record (about 4 MiB of payload): an
/// address space with more goes on in MAPPINGS records.
pub const MAPPINGS_PER_RECORD: usize = 16384;

/// Deepest nesting of maps and arrays a record may have (the model has
/// fewer than 10 levels): deeper input is refused before it can exhaust
/// the stack.
pub const MAX_DEPTH: usize = 32;

/// The TASK record: what belongs to the thread group itself.
#[derive(Debug, Serialize, Deserialize)]
struct TaskRec<'a> {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    attrs: Cow<'a, Attrs>,
    stopped: bool,
    zombies: Cow<'a, [Zombie]>,
    #[serde(default)]
    shares_files_with: Option<i32>,
    #[serde(default)]
    shares_fs_with: Option<i32>,
    /// Job-control stop, audit ids, OOM score and cgroups.
    #[serde(default)]
    task_state: Cow<'a, TaskState>,
    /// The namespaces the process is in and its PIDs inside them.
    #[serde(default)]
    ns: Cow<'a, ProcNs>,
}

/// The MAPPINGS record.
#[derive(Debug, Serialize, Deserialize)]
struct MappingsRec<'a> {
    vmas: Cow<'a, [Vma]>,
}

/// The FDTABLE record.
#[derive(Debug, Serialize, Deserialize)]
struct FdTableRec<'a> {
    fds: Cow<'a, [Fd]>,
    /// File locks taken through these descriptors (see `crate::files::locks`).
    #[serde(default)]
    locks: Cow<'a, [FileLock]>,
    /// SIGIO owners of these descriptors (see `crate::files::fown`).
    #[serde(default)]
    fd_owners: Cow<'a, [FdOwner]>,
}

/// The TIMERS record.
#[derive(Debug, Serialize, Deserialize)]
struct TimersRec<'a> {
    itimers: ITimers,
    #[serde(default)]
    posix_timers: Cow<'a, [PosixTimer]>,
}

/// One record's payload.
pub fn encode_record<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| Error::msg(format!("encoding the model: {e}")))
}

/// Decodes the payload of a record of `kind` (at stream offset `offset`).
pub fn decode_record<'de, T: Deserialize<'de>>(b: &'de [u8], kind: u32, offset: u64) -> Result<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(b);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|e| {
        Error::Invalid(format!(
            "cannot decode the {} record at byte {offset}: {e}",
            kind::name(kind)
        ))
    })
}

/// The record kind of an object.
pub fn object_record_kind(o: &ObjectKind) -> u32 {
    match o {
        ObjectKind::File(_) => kind::FILE_ID,
        ObjectKind::Pipe(_) => kind::PIPE,
        ObjectKind::Shmem(_) => kind::SHMEM,
        ObjectKind::Cow(_) => kind::COW,
        ObjectKind::Open(f) => match &f.target {
            OpenTarget::Regular(_)
            | OpenTarget::Directory { .. }
            | OpenTarget::CharDevice { .. }
            | OpenTarget::Fifo { .. }
            | OpenTarget::Unlinked { .. }
            | OpenTarget::FifoData { .. }
            | OpenTarget::PosixMq { .. } => kind::OPEN_FILE,
            OpenTarget::PipeEnd { .. } => kind::OPEN_PIPE,
            OpenTarget::Memfd { .. } => kind::OPEN_MEMFD,
            OpenTarget::Eventfd { .. }
            | OpenTarget::Timerfd { .. }
            | OpenTarget::Signalfd { .. }
            | OpenTarget::Inotify { .. }
            | OpenTarget::Fanotify(_)
            | OpenTarget::Epoll { .. }
            | OpenTarget::Pidfd { .. } => kind::OPEN_EVENT,
            OpenTarget::Path { .. } | OpenTarget::Deleted(_) => kind::OPEN_FILE,
            OpenTarget::Unix(_) | OpenTarget::Inet(_) | OpenTarget::Netlink(_) => kind::OPEN_SOCKET,
            OpenTarget::PtyMaster(_)
            | OpenTarget::PtySlave { .. }
            | OpenTarget::TtyAlias { .. }
            | OpenTarget::SystemTty(_) => kind::OPEN_TTY,
        },
    }
}

fn put<W: Write, T: Serialize + ?Sized>(w: &mut Writer<W>, k: u32, v: &T) -> Result<()> {
    w.write_record(k, 0, &encode_record(v)?)?;
    Ok(())
}

/// Writes the model records of `ckpt`.
pub fn write<W: Write>(w: &mut Writer<W>, ckpt: &Checkpoint) -> Result<()> {
    let Checkpoint {
        objects,
        processes,
        namespaces,
        cgroups,
        parent,
    } = ckpt;
    for o in objects {
        put(w, object_record_kind(&o.kind), o)?;
    }
    if *namespaces != Default::default() {
        put(w, kind::NAMESPACES, namespaces)?;
    }
    if !cgroups.is_empty() {
        put(w, kind::CGROUPS, cgroups)?;
    }
    if let Some(parent) = parent {
        put(w, kind::PARENT, parent)?;
    }
    for p in processes {
        write_process(w, p)?;
    }
    Ok(())
}

fn write_process<W: Write>(w: &mut Writer<W>, p: &Process) -> Result<()> {
    // Every field of the process goes into one record: a field added to
    // `Process` must be placed here (and read back in `Partial::build`).
    let Process {
        pid,
        ppid,
        pgid,
        sid,
        creds,
        attrs,
        mm,
        signals,
        itimers,
        fds,
        fs,
        threads,
        posix_timers,
        stopped,
        zombies,
        shares_files_with,
        shares_fs_with,
        locks,
        fd_owners,
        task_state,
        ns,
    } = p;
    let task = TaskRec {
        pid: *pid,
        ppid: *ppid,
        pgid: *pgid,
        sid: *sid,
        attrs: Cow::Borrowed(attrs),
        stopped: *stopped,
        zombies: Cow::Borrowed(zombies),
        shares_files_with: *shares_files_with,
        shares_fs_with: *shares_fs_with,
        task_state: Cow::Borrowed(task_state),
        ns: Cow::Borrowed(ns),
    };
    put(w, kind::TASK, &task)?;
    put(w, kind::CREDS, creds)?;
    for t in threads {
        put(w, kind::THREAD, t)?;
    }
    if mm.vmas.len() <= MAPPINGS_PER_RECORD {
        put(w, kind::MM, mm)?;
    } else {
        let head = Mm {
            vmas: mm.vmas[..MAPPINGS_PER_RECORD].to_vec(),
            ..mm.clone()
        };
        put(w, kind::MM, &head)?;
        for part in mm.vmas[MAPPINGS_PER_RECORD..].chunks(MAPPINGS_PER_RECORD) {
            put(
                w,
                kind::MAPPINGS,
                &MappingsRec {
                    vmas: Cow::Borrowed(part),
                },
            )?;
        }
    }
    put(
        w,
        kind::FDTABLE,
        &FdTableRec {
            fds: Cow::Borrowed(fds),
            locks: Cow::Borrowed(locks),
            fd_owners: Cow::Borrowed(fd_owners),
        },
    )?;
    put(w, kind::SIGNALS, signals)?;
    put(
        w,
        kind::TIMERS,
        &TimersRec {
            itimers: *itimers,
            posix_timers: Cow::Borrowed(posix_timers),
        },
    )?;
    put(w, kind::FS, fs)
}

/// Appends an object; ids must be the indexes of the table.
pub fn push_object(ckpt: &mut Checkpoint, o: Object) -> Result<()> {
    if o.id as usize != ckpt.objects.len() {
        return Err(Error::Invalid(format!(
            "object {} out of order (expected {})",
            o.id,
            ckpt.objects.len()
        )));
    }
    ckpt.objects.push(o);
    Ok(())
}

/// A process whose records are being read.
#[derive(Debug)]
struct Partial {
    /// Stream offset of its TASK record.
    offset: u64,
    task: TaskRec<'static>,
    creds: Option<Creds>,
    threads: Vec<Thread>,
    mm: Option<Mm>,
    /// Whether a record after MM (other than MAPPINGS) was read.
    past_mm: bool,
    fds: Option<FdTableRec<'static>>,
    signals: Option<Signals>,
    timers: Option<TimersRec<'static>>,
    fs: Option<FsInfo>,
}

fn once<T>(slot: &mut Option<T>, v: T, k: u32, pid: i32, offset: u64) -> Result<()> {
    if slot.is_some() {
        return Err(Error::Invalid(format!(
            "a second {} record for pid {pid}, at byte {offset}",
            kind::name(k)
        )));
    }
    *slot = Some(v);
    Ok(())
}

impl Partial {
    fn build(self) -> Result<Process> {
        let pid = self.task.pid;
        let missing = |k: u32| {
            Error::Invalid(format!(
                "pid {pid} (TASK record at byte {}) has no {} record",
                self.offset,
                kind::name(k)
            ))
        };
        if self.threads.is_empty() {
            return Err(missing(kind::THREAD));
        }
        let creds = self.creds.ok_or_else(|| missing(kind::CREDS))?;
        let mm = self.mm.ok_or_else(|| missing(kind::MM))?;
        let fds = self.fds.ok_or_else(|| missing(kind::FDTABLE))?;
        let signals = self.signals.ok_or_else(|| missing(kind::SIGNALS))?;
        let timers = self.timers.ok_or_else(|| missing(kind::TIMERS))?;
        let fs = self.fs.ok_or_else(|| missing(kind::FS))?;
        let t = self.task;
        Ok(Process {
            pid: t.pid,
            ppid: t.ppid,
            pgid: t.pgid,
            sid: t.sid,
            creds,
            attrs: t.attrs.into_owned(),
            mm,
            signals,
            itimers: timers.itimers,
            fds: fds.fds.into_owned(),
            fs,
            threads: self.threads,
            posix_timers: timers.posix_timers.into_owned(),
            stopped: t.stopped,
            zombies: t.zombies.into_owned(),
            shares_files_with: t.shares_files_with,
            shares_fs_with: t.shares_fs_with,
            task_state: t.task_state.into_owned(),
            ns: t.ns.into_owned(),
            locks: fds.locks.into_owned(),
            fd_owners: fds.fd_owners.into_owned(),
        })
    }
}

/// Builds processes from their records.
#[derive(Debug, Default)]
pub struct Assembler {
    current: Option<Partial>,
}

impl Assembler {
    /// Takes in one model record of a format 3 image.
    pub fn feed(&mut self, ckpt: &mut Checkpoint, rec: &Record<'_>) -> Result<()> {
        let (k, b, at) = (rec.kind, rec.payload, rec.offset);
        match k {
            kind::FILE_ID
            | kind::OPEN_FILE
            | kind::OPEN_PIPE
            | kind::OPEN_MEMFD
            | kind::OPEN_EVENT
            | kind::OPEN_SOCKET
            | kind::OPEN_TTY
            | kind::PIPE
            | kind::SHMEM
            | kind::COW => {
                if self.current.is_some() || !ckpt.processes.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{} record at byte {at} after the first process: the object \
                         table comes first",
                        kind::name(k)
                    )));
                }
                let o: Object = decode_record(b, k, at)?;
                let want = object_record_kind(&o.kind);
                if want != k {
                    return Err(Error::Invalid(format!(
                        "the {} record at byte {at} holds object {} of kind {}",
                        kind::name(k),
                        o.id,
                        kind::name(want)
                    )));
                }
                push_object(ckpt, o)
            }
            kind::NAMESPACES => {
                if self.current.is_some() || !ckpt.processes.is_empty() {
                    return Err(Error::Invalid(format!(
                        "the NAMESPACES record at byte {at} comes after the processes"
                    )));
                }
                if ckpt.namespaces != Default::default() {
                    return Err(Error::Invalid(format!(
                        "a second NAMESPACES record at byte {at}"
                    )));
                }
                ckpt.namespaces = decode_record(b, k, at)?;
                Ok(())
            }
            kind::CGROUPS => {
                if self.current.is_some() || !ckpt.processes.is_empty() {
                    return Err(Error::Invalid(format!(
                        "the CGROUPS record at byte {at} comes after the processes"
                    )));
                }
                if !ckpt.cgroups.is_empty() {
                    return Err(Error::Invalid(format!(
                        "a second CGROUPS record at byte {at}"
                    )));
                }
                ckpt.cgroups = decode_record(b, k, at)?;
                Ok(())
            }
            kind::PARENT => {
                if self.current.is_some() || !ckpt.processes.is_empty() {
                    return Err(Error::Invalid(format!(
                        "the PARENT record at byte {at} comes after the processes"
                    )));
                }
                if ckpt.parent.is_some() {
                    return Err(Error::Invalid(format!(
                        "a second PARENT record at byte {at}"
                    )));
                }
                ckpt.parent = Some(decode_record(b, k, at)?);
                Ok(())
            }
            kind::TASK => {
                let task: TaskRec<'static> = decode_record(b, k, at)?;
                if let Some(p) = self.current.take() {
                    ckpt.processes.push(p.build()?);
                }
                self.current = Some(Partial {
                    offset: at,
                    task,
                    creds: None,
                    threads: Vec::new(),
                    mm: None,
                    past_mm: false,
                    fds: None,
                    signals: None,
                    timers: None,
                    fs: None,
                });
                Ok(())
            }
            _ => {
                let Some(p) = self.current.as_mut() else {
                    return Err(Error::Invalid(format!(
                        "{} record at byte {at} before any TASK record",
                        kind::name(k)
                    )));
                };
                let pid = p.task.pid;
                if k != kind::MAPPINGS && p.mm.is_some() {
                    p.past_mm = true;
                }
                match k {
                    kind::CREDS => once(&mut p.creds, decode_record(b, k, at)?, k, pid, at),
                    kind::THREAD => {
                        p.threads.push(decode_record(b, k, at)?);
                        Ok(())
                    }
                    kind::MM => once(&mut p.mm, decode_record(b, k, at)?, k, pid, at),
                    kind::MAPPINGS => match p.mm.as_mut() {
                        Some(mm) if !p.past_mm => {
                            let more: MappingsRec<'static> = decode_record(b, k, at)?;
                            mm.vmas.extend(more.vmas.into_owned());
                            Ok(())
                        }
                        _ => Err(Error::Invalid(format!(
                            "MAPPINGS record at byte {at} of pid {pid} does not follow \
                             its MM record"
                        ))),
                    },
                    kind::FDTABLE => {
                        let t: FdTableRec<'static> = decode_record(b, k, at)?;
                        once(&mut p.fds, t, k, pid, at)
                    }
                    kind::SIGNALS => once(&mut p.signals, decode_record(b, k, at)?, k, pid, at),
                    kind::TIMERS => once(&mut p.timers, decode_record(b, k, at)?, k, pid, at),
                    kind::FS => once(&mut p.fs, decode_record(b, k, at)?, k, pid, at),
                    _ => Err(Error::Invalid(format!(
                        "unexpected {} record at byte {at}",
                        kind::name(k)
                    ))),
                }
            }
        }
    }

    /// The last process, complete, if one is being read.
    pub fn finish(&mut self) -> Result<Option<Process>> {
        self.current.take().map(Partial::build).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FsInfo, ITimer};

    /// A later version of the FS record, with a field this reader does not
    /// know.
    #[derive(Serialize)]
    struct FsLater {
        cwd: String,
        future_field: Vec<u64>,
        root: String,
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let b = encode_record(&FsLater {
            cwd: "/a".into(),
            future_field: vec![1, 2, 3],
            root: "/".into(),
        })
        .unwrap();
        let fs: FsInfo = decode_record(&b, kind::FS, 0).unwrap();
        assert_eq!((fs.cwd.as_str(), fs.root.as_str()), ("/a", "/"));
    }

    /// A TIMERS record written before `posix_timers` existed.
    #[derive(Serialize)]
    struct TimersEarlier {
        itimers: ITimers,
    }

    #[test]
    fn a_missing_field_with_a_default_takes_it() {
        let it = ITimers {
            real: ITimer {
                interval_us: 1,
                value_us: 2,
            },
            ..ITimers::default()
        };
        let b = encode_record(&TimersEarlier { itimers: it }).unwrap();
        let t: TimersRec<'static> = decode_record(&b, kind::TIMERS, 0).unwrap();
        assert_eq!(t.itimers, it);
        assert!(t.posix_timers.is_empty());
    }

    #[derive(Serialize)]
    struct FsWithoutRoot {
        cwd: String,
    }

    #[test]
    fn a_missing_mandatory_field_is_refused_by_record_and_name() {
        let b = encode_record(&FsWithoutRoot { cwd: "/a".into() }).unwrap();
        let e = decode_record::<FsInfo>(&b, kind::FS, 4096).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("FS record at byte 4096") && msg.contains("missing field `root`"),
            "{msg}"
        );
    }

    #[test]
    fn an_unknown_enum_variant_is_refused_by_name() {
        #[derive(Serialize)]
        enum Later {
            Teleporter { range: u32 },
        }
        #[derive(Serialize)]
        struct Obj {
            id: u32,
            kind: Later,
        }
        let b = encode_record(&Obj {
            id: 0,
            kind: Later::Teleporter { range: 5 },
        })
        .unwrap();
        let e = decode_record::<Object>(&b, kind::FILE_ID, 0).unwrap_err();
        assert!(e.to_string().contains("Teleporter"), "{e}");
    }
}
