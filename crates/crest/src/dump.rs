//! Dump: freeze a process, collect its model, write the image.

use crate::error::{Context, Error, Result};
use crate::freeze::{Frozen, Session};
use crate::model::{Checkpoint, Mm, Process, Signals};
use crate::objects::ObjectTable;
use crate::{codec, creds, files, memory, signals, tasks, timers, Obstacle};
use crest_image::Writer;
use crest_sys::proc;
use std::io::Write;
use std::time::{Duration, Instant};

/// How to dump.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Let the process run on after the checkpoint instead of killing it.
    pub leave_running: bool,
}

/// What a dump did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub image_bytes: u64,
    pub pages_written: u64,
    pub zero_pages_skipped: u64,
    pub mappings: usize,
    pub fds: usize,
    /// How long the process was stopped.
    pub frozen_ms: f64,
    pub total_ms: f64,
    pub left_running: bool,
}

/// Progress of a dump: bytes of memory read so far and the total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Obstacles visible without stopping the process.
pub fn preflight(pid: i32) -> Result<Vec<Obstacle>> {
    let mut obs = Vec::new();
    let mut refuse = |object: &str, reason: String| {
        obs.push(Obstacle {
            pid,
            object: object.to_string(),
            reason,
        })
    };
    if pid == std::process::id() as i32 {
        refuse("task", "crest cannot checkpoint itself".into());
        return Ok(obs);
    }
    let status = proc::read_status(pid).map_err(|e| match e.errno() {
        Some(libc::ENOENT) => Error::msg(format!("no process with pid {pid}")),
        _ => e.into(),
    })?;
    if status.tgid != pid {
        refuse(
            "task",
            format!(
                "{pid} is a thread of process {}; give the process id",
                status.tgid
            ),
        );
        return Ok(obs);
    }
    let stat = proc::read_stat(pid)?;
    if stat.flags & 0x0020_0000 != 0 {
        refuse("task", "kernel threads cannot be checkpointed".into());
        return Ok(obs);
    }
    match status.state {
        'Z' | 'X' => refuse("task", "the process has exited (zombie)".into()),
        'T' => refuse(
            "task",
            "the process is stopped by a signal (job control); send it SIGCONT first".into(),
        ),
        't' if status.tracer_pid != 0 => {}
        _ => {}
    }
    if status.tracer_pid != 0 {
        refuse(
            "task",
            format!("the process is already traced by pid {}", status.tracer_pid),
        );
    }
    if status.threads > 1 {
        refuse(
            "task",
            format!(
                "it has {} threads; multi-threaded processes are not supported yet",
                status.threads
            ),
        );
    }
    let children = proc::process_children(pid)?;
    if !children.is_empty() {
        refuse(
            "task",
            format!(
                "it has child processes ({}); process trees are not supported yet",
                children
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if status.seccomp != 0 {
        refuse("task", "seccomp filters cannot be checkpointed yet".into());
    }
    let mine = proc::read_ns(std::process::id() as i32)?;
    for (name, ino) in proc::read_ns(pid)? {
        if let Some((_, m)) = mine.iter().find(|(n, _)| *n == name) {
            if *m != ino {
                refuse(
                    &format!("{name} namespace"),
                    "the process is in another namespace than crest; namespaces are not supported yet".into(),
                );
            }
        }
    }
    Ok(obs)
}

/// Collects the model of a frozen single process.  Obstacles found are
/// pushed; the model is only complete when none were.
pub struct Collected {
    pub ckpt: Checkpoint,
    pub plan: memory::PagePlan,
    pub unlinked: Vec<files::UnlinkedSource>,
}

pub fn collect(frozen: &Frozen, obstacles: &mut Vec<Obstacle>) -> Result<Option<Collected>> {
    let pid = frozen.pid();
    obstacles.extend(
        preflight(pid)?
            .into_iter()
            .filter(|o| !o.reason.contains("traced by")),
    );
    if !obstacles.is_empty() {
        return Ok(None);
    }
    let stat = proc::read_stat(pid)?;
    let status = proc::read_status(pid)?;
    let maps = proc::read_smaps(pid)?;
    let mut objects = ObjectTable::default();
    let mut vmas = memory::collect_vmas(pid, &maps, &mut objects, obstacles)?;
    let mut unlinked = Vec::new();
    let fds = files::collect_fds(pid, &mut objects, obstacles, &mut unlinked)?;
    let exe_path = proc::read_link(pid, "exe")?;
    if exe_path.ends_with(" (deleted)") {
        obstacles.push(Obstacle {
            pid,
            object: "exe".into(),
            reason: format!("the executable {exe_path} was deleted"),
        });
    }
    if !obstacles.is_empty() {
        return Ok(None);
    }
    let exe = objects.file(&exe_path)?;
    let vdso_crc = vdso_crc(pid, &maps)?;

    let session = Session::open(frozen, &maps)?;
    crate::fault::point("dump: session opened")?;
    let thread = tasks::collect_thread(&session, pid)?;
    crate::fault::point("dump: thread collected")?;
    let attrs = tasks::collect_attrs(&session, pid, &stat, status.umask.unwrap_or(0o022))?;
    let creds = creds::collect(&session, &status)?;
    crate::fault::point("dump: attributes collected")?;
    let actions = signals::collect_actions(&session)?;
    crate::fault::point("dump: signal actions collected")?;
    let itimers = timers::collect(&session)?;
    let brk = tasks::collect_brk(&session)?;
    crate::fault::point("dump: timers collected")?;
    session.close()?;
    crate::fault::point("dump: session closed")?;

    let plan = memory::plan_pages(pid, &mut vmas)?;
    let mm = Mm {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: proc::read_auxv(pid)?,
        exe: Some(exe),
        vmas,
        vdso_crc,
    };
    let process = Process {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        creds,
        attrs,
        mm,
        signals: Signals {
            actions,
            shared_pending: signals::collect_pending(pid, true)?,
        },
        itimers,
        fds,
        fs: files::collect_fs(pid)?,
        threads: vec![thread],
    };
    Ok(Some(Collected {
        ckpt: Checkpoint {
            objects: objects.into_objects(),
            processes: vec![process],
        },
        plan,
        unlinked,
    }))
}

/// CRC32C of the vDSO of `pid`, if it has one.
pub fn vdso_crc(pid: i32, maps: &[proc::MapEntry]) -> Result<Option<u32>> {
    let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
        return Ok(None);
    };
    let mem = crest_sys::mem::ProcMem::open(pid, false)?;
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    mem.read(v.start, &mut buf)?;
    Ok(Some(crc32c::crc32c(&buf)))
}

/// Checkpoints process `pid` into `out`.
///
/// `commit` is called with the writer once the whole image (tail
/// included) is written: it must make the image durable (flush, fsync,
/// rename).  Only after it succeeds is the process killed (unless
/// `leave_running`).  On any error the process is left running as it was.
pub fn dump<W: Write>(
    pid: i32,
    out: W,
    opts: &DumpOptions,
    commit: &mut dyn FnMut(W) -> Result<()>,
    progress: Progress,
) -> Result<DumpReport> {
    let t0 = Instant::now();
    let pre = preflight(pid)?;
    if !pre.is_empty() {
        return Err(Error::Unsupported(pre));
    }
    crate::fault::point("dump: before freezing")?;
    let frozen = Frozen::freeze(pid)?;
    let t_frozen = Instant::now();
    crate::fault::point("dump: frozen")?;
    let mut obstacles = Vec::new();
    let collected = collect(&frozen, &mut obstacles)
        .context(|| format!("collecting the state of pid {pid}"))?;
    let Some(c) = collected else {
        return Err(Error::Unsupported(obstacles));
    };
    crate::fault::point("dump: collected")?;
    let mut w = Writer::new(out, &codec::header_here()?)?;
    codec::write_metadata(&mut w, &c.ckpt)?;
    crate::fault::point("dump: metadata written")?;
    files::write_unlinked(&c.unlinked, &mut w)?;
    let p = &c.ckpt.processes[0];
    let total: u64 = c
        .plan
        .runs
        .iter()
        .flatten()
        .map(|r| r.1 * memory::page_size())
        .sum();
    let mut done = 0u64;
    let stats = memory::write_pages(pid, 0, &p.mm.vmas, &c.plan, &mut w, &mut |n| {
        done += n;
        progress(done, total);
    })?;
    crate::fault::point("dump: pages written")?;
    let image_bytes = w.bytes_written();
    let out = w.finish()?;
    crate::fault::point("dump: tail written")?;
    commit(out).context(|| "saving the image".into())?;
    crate::fault::point("dump: image committed")?;
    let mut report = DumpReport {
        pid,
        image_bytes: image_bytes + (crest_image::RECORD_HEADER_LEN + crest_image::Tail::LEN) as u64,
        pages_written: stats.pages_written,
        zero_pages_skipped: stats.zero_pages,
        mappings: p.mm.vmas.len(),
        fds: p.fds.len(),
        left_running: opts.leave_running,
        ..Default::default()
    };
    if opts.leave_running {
        frozen.release()?;
    } else {
        frozen.kill()?;
    }
    report.frozen_ms = ms(t_frozen.elapsed());
    report.total_ms = ms(t0.elapsed());
    Ok(report)
}

/// Lists what stops `pid` from being checkpointed now, stopping it only
/// as long as a dump's collection would.
pub fn check(pid: i32) -> Result<Vec<Obstacle>> {
    let pre = preflight(pid)?;
    if !pre.is_empty() {
        return Ok(pre);
    }
    let frozen = Frozen::freeze(pid)?;
    let mut obstacles = Vec::new();
    collect(&frozen, &mut obstacles)?;
    frozen.release()?;
    Ok(obstacles)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
