//! Restore: read an image, rebuild the process, let it run.
//!
//! The metadata is read first and checked; the stub is built as soon as
//! the first page chunk arrives and the pages stream straight into it.
//! Only after the tail has been read and verified does the process get
//! its final registers and run: a truncated or corrupted stream never
//! produces a running process, and on any error the stub is killed.

use crate::error::{Context, Error, Result};
use crate::files::{self, UnlinkedFiles};
use crate::freeze::Inject;
use crate::model::{Backing, Checkpoint, ObjectKind, Process};
use crate::stub::{self, FdMove, Stub, StubPlan};
use crate::{codec, creds, memory, signals, tasks, timers};
use crest_image::{kind, Reader};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    pub pid: i32,
    pub pages: u64,
    pub image_bytes: u64,
    pub total_ms: f64,
}

/// Restores the image read from `input`; returns once the process runs.
/// crest (the caller) is its parent.
pub fn restore<R: Read>(input: R, progress: &mut dyn FnMut(u64)) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let mut reader = Reader::new(input)?;
    codec::check_header(reader.header())?;
    let page_size = reader.page_size();
    let mut ckpt = Checkpoint::default();
    let mut unlinked = UnlinkedFiles::default();
    let mut build: Option<Build> = None;
    let mut spool: Option<Spool> = None;
    let mut pages = 0u64;
    while let Some(rec) = reader.next_record()? {
        match rec.kind {
            kind::FILE | kind::PROCESS | kind::FILE_DATA if build.is_some() || spool.is_some() => {
                return Err(Error::Invalid(format!(
                    "{} record at byte {} comes after the memory pages",
                    rec.kind_name(),
                    rec.offset
                )))
            }
            kind::FILE => {
                let o = codec::decode_object(rec.payload)?;
                if o.id as usize != ckpt.objects.len() {
                    return Err(Error::Invalid(format!(
                        "object {} out of order (expected {})",
                        o.id,
                        ckpt.objects.len()
                    )));
                }
                ckpt.objects.push(o);
            }
            kind::PROCESS => ckpt.processes.push(codec::decode_process(rec.payload)?),
            kind::FILE_DATA => {
                let d = rec.file_data()?;
                let obj = u32::try_from(d.object).ok().and_then(|id| ckpt.object(id));
                unlinked.write(obj, d.object as u32, d.offset, d.data)?;
            }
            kind::PAGES => {
                let c = rec.page_chunk(page_size)?;
                if build.is_none() && spool.is_none() {
                    let p = validate(&ckpt)?;
                    if pid_held_by_live_process(p.pid) {
                        // Most likely the dump feeding this stream, which
                        // lets the pid go only after its tail: keep the
                        // pages on disk until then.
                        spool = Some(Spool::new()?);
                    } else {
                        build = Some(Build::start(std::mem::take(&mut ckpt), &mut unlinked)?);
                    }
                }
                match (&mut build, &mut spool) {
                    (Some(b), _) => b.fill(c.space, c.addr, c.data)?,
                    (None, Some(s)) => s.push(c.space, c.addr, c.data)?,
                    (None, None) => unreachable!("one of them was set up above"),
                }
                pages += c.nr_pages;
                progress(c.data.len() as u64);
            }
            k => {
                return Err(Error::Invalid(format!(
                    "unexpected {} record at byte {}",
                    kind::name(k),
                    rec.offset
                )))
            }
        }
    }
    // The tail is verified: nothing above could have been resumed yet.
    let build = match build {
        Some(b) => b,
        None => {
            if let Ok(p) = validate(&ckpt) {
                wait_pid_free(p.pid);
            }
            let mut b = Build::start(ckpt, &mut unlinked)?;
            if let Some(s) = spool {
                s.replay(&mut |space, addr, data| b.fill(space, addr, data))?;
            }
            b
        }
    };
    let pid = build.finish()?;
    Ok(RestoreReport {
        pid,
        pages,
        image_bytes: reader.offset(),
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Checks what restore relies on before anything is created.
pub fn validate(ckpt: &Checkpoint) -> Result<&Process> {
    let p = match ckpt.processes.as_slice() {
        [p] => p,
        [] => return Err(Error::Invalid("the image holds no process".into())),
        _ => {
            return Err(Error::Invalid(
                "the image holds several processes; this crest restores one".into(),
            ))
        }
    };
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 * 1024 * 1024);
    if p.pid <= 1 || p.pid > pid_max {
        return Err(Error::Invalid(format!(
            "pid {} is outside 2..={pid_max}",
            p.pid
        )));
    }
    let th = match p.threads.as_slice() {
        [t] if t.tid == p.pid => t,
        _ => {
            return Err(Error::Invalid(format!(
                "pid {}: expected exactly one thread",
                p.pid
            )))
        }
    };
    tasks::resume_regs(&th.regs)?;
    let ps = memory::page_size();
    let mut prev_end = 0u64;
    for v in &p.mm.vmas {
        let what = || format!("mapping {:#x}-{:#x}", v.start, v.end);
        if v.start % ps != 0 || v.end % ps != 0 || v.start >= v.end {
            return Err(Error::Invalid(format!(
                "{}: not page-aligned or empty",
                what()
            )));
        }
        if v.backing != Backing::Vsyscall && v.end > crest_image::USER_ADDR_END {
            return Err(Error::Invalid(format!("{}: outside user space", what())));
        }
        if v.start < prev_end {
            return Err(Error::Invalid(format!(
                "{}: overlaps the previous mapping",
                what()
            )));
        }
        prev_end = v.end;
        if let Backing::File(id) = v.backing {
            if !matches!(ckpt.object(id), Some(ObjectKind::File(_))) {
                return Err(Error::Invalid(format!(
                    "{}: object {id} is not a file",
                    what()
                )));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for fd in &p.fds {
        if fd.fd < 0 || fd.fd >= 1 << 20 || !seen.insert(fd.fd) {
            return Err(Error::Invalid(format!(
                "bad or repeated descriptor number {}",
                fd.fd
            )));
        }
        if !matches!(ckpt.object(fd.file), Some(ObjectKind::Open(_))) {
            return Err(Error::Invalid(format!(
                "fd {}: object {} is not an open file",
                fd.fd, fd.file
            )));
        }
    }
    if let Some(id) = p.mm.exe {
        if !matches!(ckpt.object(id), Some(ObjectKind::File(_))) {
            return Err(Error::Invalid(format!("exe: object {id} is not a file")));
        }
    }
    Ok(p)
}

/// A restore in progress: the stub and what it still needs.
struct Build {
    ckpt: Checkpoint,
    stub: Stub,
    /// Descriptors crest holds open for the stub (dropped when done).
    _held: Vec<OwnedFd>,
    /// Descriptor number (in the stub) of the executable, and the first
    /// helper descriptor (all helper descriptors are above the target's).
    exe_fd: i32,
    aux_lo: i32,
}

impl Build {
    fn start(ckpt: Checkpoint, unlinked: &mut UnlinkedFiles) -> Result<Build> {
        let p = validate(&ckpt)?;
        wait_zombie_gone(p.pid);
        if crest_sys::process::exists(p.pid) {
            let who = crest_sys::proc::read_comm(p.pid).unwrap_or_else(|_| "?".into());
            return Err(Error::msg(format!(
                "pid {} is in use (by \"{who}\"); the restored process needs that pid",
                p.pid
            )));
        }
        // Open every open file description once.
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut opened: HashMap<u32, i32> = HashMap::new();
        let mut moves = Vec::new();
        for fd in &p.fds {
            let src = match opened.get(&fd.file) {
                Some(&s) => s,
                None => {
                    let Some(ObjectKind::Open(o)) = ckpt.object(fd.file) else {
                        unreachable!("validated")
                    };
                    let f = files::open_object(fd.file, o, unlinked)
                        .context(|| format!("pid {}: fd {}", p.pid, fd.fd))?;
                    let s = stub::raw(&f);
                    held.push(f);
                    opened.insert(fd.file, s);
                    s
                }
            };
            moves.push(FdMove {
                src,
                dst: fd.fd,
                cloexec: fd.cloexec,
            });
        }
        files::unlink_recreated(unlinked)?;
        // Helper descriptors, numbered above the target's.
        let aux_lo = p.fds.iter().map(|f| f.fd).max().unwrap_or(-1) + 1;
        let mut next = aux_lo;
        let mut aux = |f: OwnedFd, held: &mut Vec<OwnedFd>, moves: &mut Vec<FdMove>| {
            let dst = next;
            next += 1;
            moves.push(FdMove {
                src: stub::raw(&f),
                dst,
                cloexec: true,
            });
            held.push(f);
            dst
        };
        let mut file_fds: HashMap<u32, i32> = HashMap::new();
        for v in &p.mm.vmas {
            if let Backing::File(id) = v.backing {
                if file_fds.contains_key(&id) {
                    continue;
                }
                let Some(ObjectKind::File(fid)) = ckpt.object(id) else {
                    unreachable!("validated")
                };
                let write =
                    p.mm.vmas
                        .iter()
                        .any(|w| w.backing == Backing::File(id) && w.shared && w.flags.may_write);
                let f = files::open_checked(fid, write)?;
                file_fds.insert(id, aux(f, &mut held, &mut moves));
            }
        }
        let exe_fd = match p.mm.exe {
            Some(id) => {
                let Some(ObjectKind::File(fid)) = ckpt.object(id) else {
                    unreachable!("validated")
                };
                aux(files::open_checked(fid, false)?, &mut held, &mut moves)
            }
            None => -1,
        };
        let cwd = open_dir(&p.fs.cwd)?;
        let cwd_fd = aux(cwd, &mut held, &mut moves);
        let root_fd = if p.fs.root != "/" {
            Some(aux(open_dir(&p.fs.root)?, &mut held, &mut moves))
        } else {
            None
        };
        let (err_read, err_write) = stub::error_pipe()?;
        let err_src = stub::raw(&err_write);
        let err_dst = aux(err_write, &mut held, &mut moves);
        let floor = stub::max_open_fd().max(next) + 1;
        let mut comm = [0u8; 16];
        let name = p.threads[0].comm.as_bytes();
        comm[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
        let plan = StubPlan {
            pid: p.pid,
            setsid: p.sid == p.pid,
            pgid: (p.pgid == p.pid && p.sid != p.pid).then_some(0),
            moves,
            floor,
            cwd_fd,
            root_fd,
            umask: p.attrs.umask,
            personality: p.attrs.personality,
            comm,
            actions: p.signals.actions.clone(),
            helper: stub::pick_helper_addr(&p.mm.vmas)?,
            err_src,
            err_dst,
        };
        crate::fault::point("restore: before creating the process")?;
        let stub = Stub::spawn(&plan, stub::raw(&err_read))
            .context(|| format!("restoring pid {}", p.pid))?;
        let pid = p.pid;
        (|| -> Result<()> {
            stub.empty_address_space()?;
            stub.map_vdso(&p.mm.vmas)?;
            check_vdso(&stub, p)?;
            crate::fault::point("restore: address space emptied")?;
            memory::map_vmas(&stub, &p.mm.vmas, &file_fds)?;
            crate::fault::point("restore: memory mapped")?;
            Ok(())
        })()
        .context(|| format!("rebuilding the address space of pid {pid}"))?;
        Ok(Build {
            ckpt,
            stub,
            _held: held,
            exe_fd,
            aux_lo,
        })
    }

    fn process(&self) -> &Process {
        &self.ckpt.processes[0]
    }

    fn fill(&mut self, space: u32, addr: u64, data: &[u8]) -> Result<()> {
        if space != 0 {
            return Err(Error::Invalid(format!(
                "page chunk for unknown address space {space}"
            )));
        }
        memory::check_chunk(&self.process().mm.vmas, addr, data.len() as u64)?;
        self.stub.write_pages(addr, data)?;
        crate::fault::point("restore: page chunk written")
    }

    fn finish(self) -> Result<i32> {
        let Build {
            ckpt,
            stub,
            _held,
            exe_fd,
            aux_lo,
        } = self;
        let p = &ckpt.processes[0];
        let th = &p.threads[0];
        let t = &stub;
        (|| -> Result<()> {
            memory::finish_vmas(t, &p.mm.vmas)?;
            crate::fault::point("restore: protections set")?;
            memory::set_mm_fields(t, &p.mm, exe_fd)?;
            crate::fault::point("restore: mm fields set")?;
            signals::restore_altstack(t, &th.altstack)?;
            signals::restore_pending(t, None, &p.signals.shared_pending)?;
            signals::restore_pending(t, Some(th.tid), &th.pending)?;
            tasks::restore_thread_regs(t, th)?;
            tasks::restore_prctl(t, &p.attrs)?;
            t.call(
                libc::SYS_close_range,
                &[aux_lo as u64, u32::MAX as u64, 0],
                "closing restore helper descriptors",
            )?;
            crate::fault::point("restore: before credentials")?;
            creds::restore(t, &p.creds)?;
            tasks::restore_attrs_outside(p.pid, &p.attrs)?;
            t.prctl(
                libc::PR_SET_DUMPABLE,
                &[p.attrs.dumpable as u64],
                "setting the dumpable flag",
            )?;
            timers::restore(t, &p.itimers)?;
            Ok(())
        })()
        .context(|| format!("restoring the state of pid {}", p.pid))?;
        crate::fault::point("restore: before resuming")?;
        let regs = tasks::resume_regs(&th.regs)?;
        stub.finish(&regs, &th.xsave, th.sigmask)
    }
}

/// A checkpointed process killed by dump stays a zombie until its parent
/// reaps it (an init that reaps lazily can take seconds): wait a little
/// for that instead of failing at once.
fn wait_zombie_gone(pid: i32) {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while Instant::now() < deadline {
        match crest_sys::proc::read_stat(pid) {
            Ok(st) if st.state == 'Z' || st.state == 'X' => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Whether `pid` belongs to a running (not zombie) process.
fn pid_held_by_live_process(pid: i32) -> bool {
    match crest_sys::proc::read_stat(pid) {
        Ok(st) => st.state != 'Z' && st.state != 'X',
        Err(_) => false,
    }
}

/// Waits up to 30 s for `pid` to be released (the dump that feeds a
/// spooled restore kills its process once the image is complete).
fn wait_pid_free(pid: i32) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while crest_sys::process::exists(pid) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Receives page chunks: (address space, address, bytes).
type PageSink<'a> = dyn FnMut(u32, u64, &[u8]) -> Result<()> + 'a;

/// Page chunks kept in an unlinked temporary file while the pid they
/// belong to is still taken.
struct Spool {
    file: std::fs::File,
    len: u64,
}

impl Spool {
    fn new() -> Result<Spool> {
        let dir = std::env::temp_dir();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(&dir)
            .context(|| format!("creating a spool file in {}", dir.display()))?;
        Ok(Spool { file, len: 0 })
    }

    fn push(&mut self, space: u32, addr: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&space.to_le_bytes());
        h[8..16].copy_from_slice(&addr.to_le_bytes());
        h[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        self.file
            .write_all_at(&h, self.len)
            .context(|| "writing the spool".into())?;
        self.file
            .write_all_at(data, self.len + 24)
            .context(|| "writing the spool".into())?;
        self.len += 24 + data.len() as u64;
        Ok(())
    }

    fn replay(self, f: &mut PageSink) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut off = 0;
        let mut buf = Vec::new();
        while off < self.len {
            let mut h = [0u8; 24];
            self.file
                .read_exact_at(&mut h, off)
                .context(|| "reading the spool".into())?;
            let space = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let addr = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let len = u64::from_le_bytes(h[16..24].try_into().unwrap()) as usize;
            buf.resize(len, 0);
            self.file
                .read_exact_at(&mut buf, off + 24)
                .context(|| "reading the spool".into())?;
            f(space, addr, &buf)?;
            off += 24 + len as u64;
        }
        Ok(())
    }
}

fn open_dir(path: &str) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(path)
        .context(|| format!("opening directory {path}"))?;
    Ok(f.into())
}

/// The vDSO now mapped must be the code the process was using.
fn check_vdso(stub: &Stub, p: &Process) -> Result<()> {
    let (Some(want), Some(v)) = (
        p.mm.vdso_crc,
        p.mm.vmas.iter().find(|v| v.backing == Backing::Vdso),
    ) else {
        return Ok(());
    };
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    stub.read_mem(v.start, &mut buf)?;
    if crc32c::crc32c(&buf) != want {
        return Err(Error::Incompatible(
            "this kernel's vDSO differs from the one the process was using; \
             restoring onto a different kernel build is not supported yet"
                .into(),
        ));
    }
    Ok(())
}
