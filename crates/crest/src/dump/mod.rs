//! Dump: freeze a process, collect its model, write the image.

pub mod lock;
pub mod pipeline;
pub mod precopy;
pub mod unwind;

use crate::dump::precopy::{PreCopy, Prepared};
use crate::error::{Context, Error, Result};
use crate::model::{Checkpoint, Mm, Process, Signals};
use crate::objects::ObjectTable;
use crate::task::freeze::{FrozenTree, Session};
use crate::{
    codec, files, memory, task::creds, task::signals, task::tasks, task::timers, Obstacle,
};
use crest_image::Writer;
use crest_sys::proc;
use std::io::Write;
use std::time::{Duration, Instant};

/// How to dump.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Let the process run on after the checkpoint instead of killing it.
    pub leave_running: bool,
    /// Only checking (`crest check`): nothing is read that would leave a
    /// trace in the tree (a PID namespace's next PID is read by a helper
    /// that takes one PID there; see `crate::ns::pid::last_pid`).
    pub checking: bool,
    /// LZ4-compress page chunks that compress well.
    pub compress: bool,
    /// With `leave_running`: copy everything in one pass while frozen
    /// instead of pre-copying memory while the tree runs.
    pub no_precopy: bool,
    /// Accept pipe ends whose other end is held outside the tree (a
    /// container runtime's stdio pipes): they are recorded by the key
    /// `pipe:[INODE]`, without their bytes (which stay in the pipe for its
    /// reader), and a restore needs a descriptor for each
    /// ([`crate::RestoreOptions::inherit`]).  A read end with unread bytes
    /// is still refused.
    pub external_pipes: bool,
    /// Checkpoint TCP connections whose peer is outside the tree, holding
    /// their packets back with an nftables table until the restore.
    pub tcp_established: bool,
    /// The tree's network namespace belongs to whoever restores it (a
    /// container runtime: CRIU's `empty_ns`/`external net[…]`): it is
    /// recorded as external, without its devices, addresses or routes,
    /// and a restore joins the one it is given or makes an empty one.
    pub external_net: bool,
    /// Mounts from outside that whoever restores supplies (CRIU's
    /// `ext_mnt`), as (mount point in the tree's mount namespace, name to
    /// map it by at restore): recorded by name, without their contents,
    /// even a tmpfs.
    pub external_mounts: Vec<(String, String)>,
    /// Checkpoint UNIX sockets connected to a named socket outside the
    /// tree (a /dev/log, a bus): the restore connects them to that name
    /// again (`RestoreOptions::ext_unix_sk`).
    pub ext_unix_sk: bool,
    /// The caller states that no AIO context of the tree has requests in
    /// flight (the kernel shows them nowhere, see `crate::memory::aio`):
    /// without it, AIO contexts are refused.
    pub aio_idle: bool,
    /// Record a digest of each saved page, so that this image can be the
    /// parent of an incremental dump (see `crate::memory::incremental`).
    /// Memory is then copied while frozen (no pre-copy).
    pub digests: bool,
    /// Write only the pages that changed since this parent image (implies
    /// `digests`, no pre-copy, and no copy-on-write sharing between the
    /// tree's processes in the image).
    pub parent: Option<ParentImage>,
    /// Leave the tree's private memory write-tracked after the dump (a
    /// tracker process of crest's, see `crate::memory::track`), so that
    /// the next `parent` dump against this image reads only the pages
    /// written since (implies `digests`).
    pub track: bool,
}

/// The parent of an incremental dump.
#[derive(Debug, Clone)]
pub struct ParentImage {
    /// Where to read it.
    pub path: std::path::PathBuf,
    /// The path the image records (relative to the image's directory).
    pub recorded: String,
}

/// What a dump did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub image_bytes: u64,
    pub pages_written: u64,
    pub zero_pages_skipped: u64,
    pub processes: usize,
    pub threads: usize,
    pub mappings: usize,
    pub fds: usize,
    /// How long the process was stopped.
    pub frozen_ms: f64,
    /// How long seizing and stopping every task took (before
    /// `frozen_ms`; with the tree's own cgroup frozen first, see
    /// `task::cgfreeze`).
    pub seize_ms: f64,
    pub total_ms: f64,
    pub left_running: bool,
    /// Pages copied while the tree still ran (`--leave-running`).
    pub precopied_pages: u64,
    /// Pages copied while it was frozen: all of them without pre-copy,
    /// else those written (or not yet copied) when it was frozen.
    pub frozen_copied_pages: u64,
    /// Why memory was not pre-copied, when it could have been.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precopy_skipped: Option<String>,
    /// With a parent: pages unchanged since it (not written).
    pub kept_pages: u64,
    /// Of `kept_pages`, those not even read: a write tracker vouched for
    /// them.
    pub vouched_pages: u64,
    /// What write tracking did (found none, fell back, armed, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// The parent named (as recorded), for an incremental dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The PIDs the image holds (processes, then zombies), so that a
    /// caller can tell when a killed tree has let go of them.
    #[serde(skip)]
    pub pids: Vec<i32>,
}

/// Progress of a dump: bytes of memory read so far and the total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Obstacles of one process visible without stopping it.
pub fn preflight(pid: i32) -> Result<Vec<Obstacle>> {
    preflight_in(pid, None, true)
}

/// [`preflight`]; with `threads`, the checks of each thread too, which
/// must come before any call is injected (a thread that could not take
/// one is refused with the tree untouched): from the status the thread
/// stopped with once `tree` is frozen, else read now (a /proc status
/// costs tens of microseconds: a 400-thread dump read each thread's
/// three times).
fn preflight_in(pid: i32, tree: Option<&FrozenTree>, threads: bool) -> Result<Vec<Obstacle>> {
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
        'Z' | 'X' => refuse(
            "task",
            "the process has exited (a zombie); only zombie children inside a tree are kept".into(),
        ),
        _ => {}
    }
    let traced_by_us = || {
        proc::read_status(status.tracer_pid).map(|t| t.tgid).ok() == Some(std::process::id() as i32)
    };
    if status.tracer_pid != 0 && !traced_by_us() {
        refuse(
            "task",
            format!(
                "the process is already traced by {} (a debugger or tracer; crest cannot \
                 trace it too)",
                crate::dump::lock::describe(status.tracer_pid)
            ),
        );
    }
    let tids = match threads {
        true => proc::list_tasks(pid).unwrap_or_default(),
        false => Vec::new(),
    };
    for tid in tids {
        let mode = match tree.and_then(|t| t.status(tid)) {
            Some(st) => Some(st.seccomp),
            None => proc::read_task_status(pid, tid).ok().map(|s| s.seccomp),
        };
        if mode == Some(1) {
            refuse(
                &format!("thread {tid}"),
                "strict-mode seccomp (SECCOMP_SET_MODE_STRICT) cannot be checkpointed: \
                 crest could not run a single call in it"
                    .into(),
            );
        }
    }
    crate::ns::preflight(pid, &mut obs)?;
    Ok(obs)
}

/// The model of a frozen tree, with what is needed to write its pages.
pub struct Collected {
    pub ckpt: Checkpoint,
    /// Page plans, one per process (same order as `ckpt.processes`).
    pub plans: Vec<memory::PagePlan>,
    pub data: Vec<files::DataSource>,
    /// Sockets held in TCP repair mode and the connection lock.
    pub net: crate::net::Dumped,
}

/// Collects the model of a frozen tree.  Obstacles found are pushed; the
/// model is returned only when there are none.
/// `precopy`, when memory was pre-copied, is the tracking to look past.
pub fn collect(
    tree: &FrozenTree,
    obstacles: &mut Vec<Obstacle>,
    precopy: Option<&Prepared>,
    opts: &DumpOptions,
) -> Result<Option<Collected>> {
    for (pid, _) in &tree.procs {
        obstacles.extend(preflight_in(*pid, Some(tree), true)?);
    }
    if !obstacles.is_empty() {
        return Ok(None);
    }
    // The tree's sockets are read, and their lock made, in its network
    // namespace (see `crate::ns::net`).
    let _netns = crate::ns::net::enter_tree(&tree.procs)?;
    crate::ns::mnt::prepare_dump(tree.procs.first().map(|p| p.0))?;
    let mut objects = ObjectTable::default();
    let mut fd_index = files::FdIndex::default();
    fd_index.net.tcp_established = opts.tcp_established;
    fd_index.net.ext_unix_sk = opts.ext_unix_sk;
    fd_index.net.tree = tree.procs.iter().map(|p| p.0).collect();
    fd_index.net.root = tree.procs.first().map(|p| p.0).unwrap_or(0);
    let mut data = Vec::new();
    let mut staged = Vec::new();
    for (pid, tids) in &tree.procs {
        let pid = *pid;
        let mut maps = proc::read_smaps(pid)?;
        if let Some(p) = precopy {
            p.hide_tracking(pid, &mut maps);
        }
        let vmas = memory::collect_vmas(pid, &maps, &mut objects, obstacles, &mut data)?;
        if !opts.aio_idle {
            memory::aio::refuse_unverified(pid, &vmas, obstacles);
        }
        let fds = files::collect_fds(pid, &mut objects, obstacles, &mut data, &mut fd_index)?;
        let exe_path = proc::read_link(pid, "exe")?;
        if exe_path.ends_with(" (deleted)") {
            obstacles.push(Obstacle {
                pid,
                object: "exe".into(),
                reason: format!("the executable {exe_path} was deleted"),
            });
        }
        let leader = proc::read_status(pid)?;
        let held = fd_index.take_held(pid);
        staged.push((pid, tids, maps, vmas, fds, exe_path, leader, held));
    }
    let held_fds: Vec<(i32, i32, u32)> = staged
        .iter()
        .flat_map(|s| s.4.iter().map(move |f| (s.0, f.fd, f.file)))
        .collect();
    files::inotify_deleted::link(&mut objects, &held_fds, obstacles);
    let pids: Vec<i32> = tree.procs.iter().map(|p| p.0).collect();
    let external = opts.external_pipes.then_some(files::ExternalPipes {
        objects: &mut objects,
        data: &mut data,
    });
    files::check_pipe_ends(&fd_index, &pids, obstacles, external);
    crate::net::unix::check_peers(objects.as_slice(), pids[0], obstacles);
    fd_index.net.verify(obstacles);
    let shared = check_shared_tables(&pids, obstacles)?;
    let mut ppids = std::collections::HashMap::new();
    for &p in &pids {
        ppids.insert(p, proc::read_stat(p)?.ppid);
    }
    let (namespaces, mut proc_ns) = crate::ns::collect(
        &tree.procs,
        &ppids,
        opts,
        &mut objects,
        &mut data,
        obstacles,
    )?;
    crate::ns::mqueue::link_descriptors(
        &fd_index.mq,
        &mut objects,
        &namespaces,
        &proc_ns,
        obstacles,
    );
    if !obstacles.is_empty() {
        return Ok(None);
    }
    let mut processes = Vec::new();
    let mut plans = Vec::new();
    // Stopped processes by parent: the parent says whether it collected
    // the stop (see `crate::task::jobctl`).
    let mut stopped_children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for &c in &pids[1..] {
        if tree.stop_signal(c).is_some() {
            stopped_children
                .entry(proc::read_stat(c)?.ppid)
                .or_default()
                .push(c);
        }
    }
    let mut collected_stops = std::collections::HashSet::new();
    for ((pid, tids, maps, mut vmas, fds, exe_path, status, held), pns) in
        staged.into_iter().zip(proc_ns.iter_mut())
    {
        let stat = proc::read_stat(pid)?;
        let exe = objects.file(&exe_path)?;
        let vdso_crc = vdso_crc(pid, &maps)?;
        let session = Session::open(tids, &maps)?;
        crate::fault::point("dump: session opened")?;
        let lead = session.thread(0);
        let mut threads = Vec::with_capacity(tids.len());
        for (i, &tid) in tids.iter().enumerate() {
            let read;
            let st = match tree.status(tid) {
                Some(st) => st,
                None => {
                    read = proc::read_task_status(pid, tid)?;
                    &read
                }
            };
            let mut th = tasks::collect_thread(&session.thread(i), pid, tid, st)?;
            if i > 0 {
                let differs = st.uid != status.uid
                    || st.gid != status.gid
                    || st.groups != status.groups
                    || (st.cap_inh, st.cap_prm, st.cap_eff, st.cap_bnd, st.cap_amb)
                        != (
                            status.cap_inh,
                            status.cap_prm,
                            status.cap_eff,
                            status.cap_bnd,
                            status.cap_amb,
                        )
                    || st.no_new_privs != status.no_new_privs;
                if differs {
                    th.creds = Some(creds::collect(&session.thread(i), st)?);
                }
            }
            threads.push(th);
        }
        crate::fault::point("dump: threads collected")?;
        let attrs = tasks::collect_attrs(&lead, pid, &stat, status.umask.unwrap_or(0o022))?;
        let creds = creds::collect(&lead, &status)?;
        crate::fault::point("dump: attributes collected")?;
        // Batched reads run a helper thread of the process's own, which must
        // run to the end: not under seccomp filters, and not while a
        // job-control stop holds or is pending (the thread would stop with
        // the group).  See `crest_sys::trampoline`.
        let one_by_one = status.seccomp != 0 || tree.stopped(pid) || signals::stop_pending(pid);
        let actions = signals::collect_actions(&lead, one_by_one)?;
        crate::fault::point("dump: signal actions collected")?;
        let itimers = timers::collect(&lead)?;
        let posix_timers = timers::collect_posix(&lead, tids)?;
        let brk = tasks::collect_brk(&lead)?;
        let mm_state = crate::memory::mmstate::collect(&lead)?;
        for &c in stopped_children.get(&pid).into_iter().flatten() {
            if !crate::task::jobctl::stop_pending_in_parent(&lead, c)? {
                collected_stops.insert(c);
            }
        }
        crate::fault::point("dump: timers collected")?;
        session.close()?;
        crate::fault::point("dump: session closed")?;

        let plan = memory::plan_pages(pid, &mut vmas)?;
        let mut task_state = crate::model::TaskState {
            stop_signal: tree.stop_signal(pid).unwrap_or(0),
            stop_collected: collected_stops.contains(&pid),
            ..Default::default()
        };
        tasks::collect_task_state(pid, &mut task_state)?;
        crate::task::cgroups::collect(pid, tids, &mut task_state, &mut threads)?;
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
            state: mm_state,
        };
        processes.push(Process {
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
            posix_timers,
            fds,
            fs: files::collect_fs(pid)?,
            threads,
            stopped: tree.stopped(pid),
            zombies: zombie_children(pid)?,
            shares_files_with: shared.get(&pid).and_then(|s| s.0),
            shares_fs_with: shared.get(&pid).and_then(|s| s.1),
            locks: held.0,
            fd_owners: held.1,
            task_state,
            ns: Default::default(),
        });
        plans.push(plan);
        let zombies = &processes.last().expect("just pushed").zombies;
        if !pns.pids.is_empty() {
            for z in zombies {
                pns.zombie_pids.push(crate::ns::pid::zombie_levels(z.pid)?);
            }
        }
        processes.last_mut().expect("just pushed").ns = std::mem::take(pns);
    }
    let cgroups = crate::task::cgroup_dirs::collect(&processes, &pids)?;
    Ok(Some(Collected {
        ckpt: Checkpoint {
            objects: objects.into_objects(),
            processes,
            namespaces,
            cgroups,
            parent: None,
        },
        plans,
        data,
        net: fd_index.net.take_dumped(),
    }))
}

/// What a process shares with its parent in the tree: the parent's pid
/// for the descriptor table (CLONE_FILES) and for cwd/root/umask (CLONE_FS).
type Shared = std::collections::HashMap<i32, (Option<i32>, Option<i32>)>;

/// Processes created with CLONE_FILES, CLONE_FS or CLONE_SIGHAND but not
/// CLONE_VM share their descriptor table, fs information or signal
/// handlers with another process.  Restore recreates a descriptor table
/// or fs information shared with the process's parent in the tree (it
/// forks the child with the same flag); every other shape is refused, as
/// is sharing signal handlers (the kernel allows that only with CLONE_VM)
/// and a shared descriptor table in a process with children of its own
/// (they are forked before the table is in place).
fn check_shared_tables(pids: &[i32], obstacles: &mut Vec<Obstacle>) -> Result<Shared> {
    use crest_sys::process::kcmp_type;
    let what = [
        (kcmp_type::FILES, "its descriptor table (CLONE_FILES)"),
        (kcmp_type::FS, "its cwd/root/umask (CLONE_FS)"),
        (kcmp_type::SIGHAND, "its signal handlers (CLONE_SIGHAND)"),
    ];
    let mut ppids = std::collections::HashMap::new();
    for &p in pids {
        ppids.insert(p, proc::read_stat(p)?.ppid);
    }
    let mut parents_of: std::collections::HashSet<i32> = std::collections::HashSet::new();
    parents_of.extend(ppids.values().copied());
    // Per kind, for each process: the earlier processes (in `pids` order)
    // that share that table with it.
    let mut partners_of = Vec::with_capacity(what.len());
    for (kind, _) in what {
        partners_of.push(sharing_groups(pids, kind)?);
    }
    let mut shared = Shared::new();
    for (i, &b) in pids.iter().enumerate() {
        let parent = ppids[&b];
        for (k, (_, name)) in what.into_iter().enumerate() {
            let partners = &partners_of[k][i];
            let Some(&first) = partners.first() else {
                continue;
            };
            let with_parent = k < 2 && partners.contains(&parent);
            let has_children = parents_of.contains(&b);
            if with_parent && !(k == 0 && has_children) {
                let e = shared.entry(b).or_default();
                if k == 0 {
                    e.0 = Some(parent);
                } else {
                    e.1 = Some(parent);
                }
                continue;
            }
            let extra = if with_parent {
                " and has child processes of its own"
            } else {
                ""
            };
            obstacles.push(Obstacle {
                pid: b,
                object: "task".into(),
                reason: format!("it shares {name} with pid {first}{extra}; not supported yet"),
            });
        }
    }
    Ok(shared)
}

/// For each of `pids`, the earlier ones that share its `kind` of table
/// (kcmp).  kcmp orders what it compares, so the processes are sorted by
/// their table and equal neighbours grouped: O(n log n) calls instead of
/// one per pair (a 400-process tree made 240,000 of them).  If the kernel
/// gives no order, every pair is compared.
fn sharing_groups(pids: &[i32], kind: i32) -> Result<Vec<Vec<i32>>> {
    use crest_sys::process::kcmp;
    use std::cmp::Ordering;
    let n = pids.len();
    let mut out = vec![Vec::new(); n];
    let failed = std::cell::Cell::new(false);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| match kcmp(pids[x], pids[y], kind, 0, 0) {
        Ok(0) => Ordering::Equal,
        Ok(1) => Ordering::Less,
        Ok(2) => Ordering::Greater,
        _ => {
            failed.set(true);
            Ordering::Equal
        }
    });
    if !failed.get() {
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && kcmp(pids[order[start]], pids[order[end]], kind, 0, 0)? == 0 {
                end += 1;
            }
            let mut group: Vec<usize> = order[start..end].to_vec();
            group.sort_unstable();
            for (j, &i) in group.iter().enumerate() {
                out[i] = group[..j].iter().map(|&e| pids[e]).collect();
            }
            start = end;
        }
        return Ok(out);
    }
    for (i, &b) in pids.iter().enumerate() {
        for &a in &pids[..i] {
            if kcmp(a, b, kind, 0, 0)? == 0 {
                out[i].push(a);
            }
        }
    }
    Ok(out)
}

/// The unreaped exited children of `pid`.
fn zombie_children(pid: i32) -> Result<Vec<crate::model::Zombie>> {
    let mut out = Vec::new();
    for c in proc::process_children(pid)? {
        if let Ok(st) = proc::read_stat(c) {
            if st.state == 'Z' || st.state == 'X' {
                out.push(crate::model::Zombie {
                    pid: c,
                    pgid: st.pgrp,
                    sid: st.session,
                    status: st.exit_code,
                    comm: st.comm.clone(),
                    comm_raw: tasks::read_comm_raw(&format!("/proc/{c}/comm"))?,
                });
            }
        }
    }
    Ok(out)
}

/// CRC32C of the vDSO of `pid`, if it has one, as the kernel maps it
/// (a trampoline an earlier crest left in its padding, see
/// [`crate::dump::unwind`], reads as the zeros it replaced).
pub fn vdso_crc(pid: i32, maps: &[proc::MapEntry]) -> Result<Option<u32>> {
    let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
        return Ok(None);
    };
    let mem = crest_sys::mem::ProcMem::open(pid, false)?;
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    mem.read(v.start, &mut buf)?;
    Ok(Some(crc32c::crc32c(&crate::dump::unwind::pristine_vdso(
        buf,
    ))))
}

/// Checkpoints process `pid` into `out`.
///
/// Where a dump's image goes once written: `commit` makes it durable
/// (flush, fsync, rename) and `rollback` removes a committed image again
/// if the dump still fails after the commit.
pub trait ImageSink<W> {
    fn commit(&mut self, w: W) -> Result<()>;
    fn rollback(&mut self) {}
    /// The tree was just frozen (nothing of it runs until the dump ends);
    /// an error leaves it running and fails the dump.
    fn frozen(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A sink that only flushes (streams, memory).
pub struct Flush;

impl<W: Write> ImageSink<W> for Flush {
    fn commit(&mut self, mut w: W) -> Result<()> {
        w.flush()?;
        Ok(())
    }
}

/// Checkpoints the tree rooted at `pid` into `out`.
///
/// Once the whole image (tail included) is written, `sink.commit` makes
/// it durable; only then is the tree killed (unless `leave_running`).  On
/// any error the tree is left running as it was, and a committed image
/// is rolled back.
pub fn dump<W: Write>(
    pid: i32,
    out: W,
    opts: &DumpOptions,
    sink: &mut dyn ImageSink<W>,
    progress: Progress,
) -> Result<DumpReport> {
    let t0 = Instant::now();
    let _lock = crate::dump::lock::take(pid)?;
    // Pre-copy injects calls into the running tree: its threads are
    // checked first.  Without it, they are checked once frozen.
    let digesting = opts.digests || opts.parent.is_some() || opts.track;
    let precopying = opts.leave_running && !opts.no_precopy && !digesting;
    let parent = opts
        .parent
        .as_ref()
        .map(|p| memory::incremental::load_parent(&p.path, p.recorded.clone()))
        .transpose()?;
    let pre = preflight_in(pid, None, precopying)?;
    if !pre.is_empty() {
        return Err(Error::Unsupported(pre));
    }
    if parent.is_none() {
        // A write tracker left by an earlier dump counts from an image
        // this dump does not use: it ends before anything is collected.
        memory::track::end(pid)?;
    }
    let mut precopy = None;
    let mut precopy_skipped = None;
    if precopying {
        match PreCopy::run(pid, progress)? {
            Ok(pc) => precopy = Some(pc),
            Err(why) => precopy_skipped = Some(why),
        }
    }
    crate::fault::point("dump: before freezing")?;
    // Declared before the collected state: on an early return that state
    // (sockets in repair mode) goes first, then the tree is let go.
    let t_seize = Instant::now();
    let mut frozen = Some(FrozenTree::freeze(pid)?);
    let t_frozen = Instant::now();
    let seize_ms = ms(t_seize.elapsed());
    sink.frozen()?;
    crate::fault::point("dump: frozen")?;
    let prepared = precopy.map(PreCopy::stop).transpose()?;
    let mut obstacles = Vec::new();
    let tree = frozen.as_ref().expect("just frozen");
    // Before collecting: the tracker's registrations are gone after it.
    let vouched = match &parent {
        Some(par) => memory::track::vouch(tree, pid, par.reference.digest)?,
        None => memory::track::Vouched::default(),
    };
    let collected = collect(tree, &mut obstacles, prepared.as_ref(), opts)
        .context(|| format!("collecting the state of pid {pid}"))?;
    let Some(mut c) = collected else {
        return Err(Error::Unsupported(obstacles));
    };
    // Never let a tree go for an image restore would reject here.
    let unrestorable = crate::restore::plan::check_here(&c.ckpt);
    if !unrestorable.is_empty() {
        return Err(Error::Unsupported(unrestorable));
    }
    // Pages shared copy-on-write are saved once (not while pre-copying:
    // that copied each process's pages already).
    let cow = match prepared {
        None if parent.is_none() => Some(crate::memory::cow::plan(&mut c.ckpt, &mut c.plans)?),
        _ => None,
    };
    let mut kept_pages = 0;
    let mut zero_pages = 0;
    let mut vouched_pages = 0;
    let mut tracking = vouched.note.clone();
    // Armed before any page is read, so that every write after the read
    // is seen.
    let armed = if opts.track {
        match memory::track::arm(tree, &c.ckpt)? {
            Ok(a) => Some(a),
            Err(why) => {
                tracking = Some(format!("write tracking not armed: {why}"));
                None
            }
        }
    } else {
        None
    };
    if digesting {
        for (p, plan) in c.ckpt.processes.iter_mut().zip(&mut c.plans) {
            let before = parent
                .as_ref()
                .map(|par| memory::incremental::ParentDigests::of(&par.ckpt, p.pid));
            let s = memory::incremental::digest_pages(
                p.pid,
                &mut p.mm.vmas,
                plan,
                before.as_ref(),
                vouched.of(p.pid),
            )
            .context(|| format!("digesting the pages of pid {}", p.pid))?;
            kept_pages += s.kept_pages;
            vouched_pages += s.vouched_pages;
            zero_pages += s.zero_pages;
        }
        c.ckpt.parent = parent.as_ref().map(|p| p.reference.clone());
    }
    crate::fault::point("dump: collected")?;
    let mut w = Writer::new(out, &codec::header_here()?)?;
    codec::write_metadata(&mut w, &c.ckpt)?;
    crate::fault::point("dump: metadata written")?;
    files::write_data(&c.data, &mut w)?;
    crate::ns::mnt::tmpfs::write_pending(&mut w)?;
    let ps = memory::page_size();
    let cow_plans = cow.iter().flat_map(|w| w.sources.iter().map(|s| &s.1));
    let planned: u64 = c
        .plans
        .iter()
        .chain(cow_plans)
        .flat_map(|p| p.runs.iter().flatten())
        .map(|r| r.1)
        .sum();
    let mut report = DumpReport {
        seize_ms,
        pid,
        processes: c.ckpt.processes.len(),
        threads: c.ckpt.processes.iter().map(|p| p.threads.len()).sum(),
        mappings: c.ckpt.processes.iter().map(|p| p.mm.vmas.len()).sum(),
        fds: c.ckpt.processes.iter().map(|p| p.fds.len()).sum(),
        left_running: opts.leave_running,
        precopy_skipped,
        kept_pages,
        vouched_pages,
        tracking,
        parent: c.ckpt.parent.as_ref().map(|p| p.path.clone()),
        pids: c
            .ckpt
            .processes
            .iter()
            .map(|p| p.pid)
            .chain(
                c.ckpt
                    .processes
                    .iter()
                    .flat_map(|p| p.zombies.iter().map(|z| z.pid)),
            )
            .collect(),
        ..Default::default()
    };
    if let Some(mut prep) = prepared {
        // Everything but the pages is in the image, and the pages the
        // pre-copy could not keep are in its spool: let the tree go.
        let spooled = prep.complete(&c.ckpt, &c.plans)?;
        crate::fault::point("dump: frozen pages copied")?;
        c.net.release();
        frozen.take().expect("not released yet").release()?;
        report.frozen_ms = ms(t_frozen.elapsed());
        prep.end_tracking();
        report.precopied_pages = prep.pages_copied;
        report.frozen_copied_pages = prep.pages_reread;
        report.pages_written = prep.write_pages(&spooled, opts.compress, &mut w, progress)?;
    } else {
        let total = planned * ps;
        let mut done = 0u64;
        // The shared pages first: restore needs them before the processes.
        for (pi, plan) in cow.iter().flat_map(|w| &w.sources) {
            let p = &c.ckpt.processes[*pi];
            let s = memory::write_pages(
                p.pid,
                crate::model::COW_SPACE,
                &p.mm.vmas,
                plan,
                opts.compress,
                &mut w,
                &mut |n| {
                    done += n;
                    progress(done, total);
                },
            )?;
            report.pages_written += s.pages_written;
        }
        for (space, (p, plan)) in c.ckpt.processes.iter().zip(&c.plans).enumerate() {
            let s = memory::write_pages(
                p.pid,
                space as u32,
                &p.mm.vmas,
                plan,
                opts.compress,
                &mut w,
                &mut |n| {
                    done += n;
                    progress(done, total);
                },
            )?;
            report.pages_written += s.pages_written;
        }
        report.frozen_copied_pages = planned;
        if opts.leave_running {
            // The image holds everything: the tree may run on while it is
            // finished and saved.
            c.net.release();
            frozen.take().expect("not released yet").release()?;
            report.frozen_ms = ms(t_frozen.elapsed());
        }
    }
    report.zero_pages_skipped = planned - report.pages_written.min(planned) + zero_pages;
    crate::fault::point("dump: pages written")?;
    let image_bytes = w.bytes_written();
    let (out, digest) = w.finish_digest()?;
    crate::fault::point("dump: tail written")?;
    sink.commit(out).context(|| "saving the image".into())?;
    if let Some(a) = armed {
        // Only a saved image can be the start of the tracking.
        report.tracking = Some(match a.commit(digest) {
            Ok(()) => match report.tracking.take() {
                Some(n) => format!("{n}; write tracking armed"),
                None => "write tracking armed".into(),
            },
            Err(e) => format!("write tracking lost: {e}"),
        });
    }
    // Without --leave-running the tree is still frozen, and goes only now
    // that its image is safe.
    let killing = frozen.is_some();
    let r = finish_dump(frozen);
    if r.is_err() {
        sink.rollback();
    }
    r?;
    if killing {
        // The tree is gone: its connections close without a word.
        c.net.killed();
    }
    if killing {
        report.frozen_ms = ms(t_frozen.elapsed());
    }
    if !opts.leave_running {
        // The segments went into the image with the tree: free their ids.
        crate::memory::sysv::remove_dumped(&c.ckpt);
    }
    report.image_bytes =
        image_bytes + (crest_image::RECORD_HEADER_LEN + crest_image::Tail::LEN) as u64;
    report.total_ms = ms(t0.elapsed());
    Ok(report)
}

/// After the commit: a tree still frozen goes with its image.
fn finish_dump(frozen: Option<FrozenTree>) -> Result<()> {
    crate::fault::point("dump: image committed")?;
    match frozen {
        Some(f) => f.kill(),
        None => Ok(()),
    }
}

/// Lists what stops `pid` from being checkpointed now, stopping it only
/// as long as a dump's collection would.
pub fn check(pid: i32) -> Result<Vec<Obstacle>> {
    check_with(pid, &DumpOptions::default())
}

/// [`check`] for a dump with these options (`tcp_established`).
pub fn check_with(pid: i32, opts: &DumpOptions) -> Result<Vec<Obstacle>> {
    let pre = preflight(pid)?;
    if !pre.is_empty() {
        return Ok(pre);
    }
    let frozen = FrozenTree::freeze(pid)?;
    let mut obstacles = Vec::new();
    let opts = DumpOptions {
        checking: true,
        ..opts.clone()
    };
    let collected = collect(&frozen, &mut obstacles, None, &opts);
    frozen.release()?;
    if let Some(c) = collected? {
        // The same checks dump makes before it lets the tree go.
        obstacles.extend(crate::restore::plan::check_here(&c.ckpt));
    }
    Ok(obstacles)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
