//! Restore: read an image, rebuild the process, let it run.
//!
//! The metadata is read first and checked; the stub is built as soon as
//! the first page chunk arrives and the pages stream straight into it.
//! Only after the tail has been read and verified does the process get
//! its final registers and run: a truncated or corrupted stream never
//! produces a running process, and on any error the stub is killed.

pub mod fdplan;
pub mod plan;
pub mod stub;

use crate::error::{Context, Error, Result};
use crate::files::{self, UnlinkedFiles};
use crate::model::{Backing, Checkpoint, ObjectKind, Process, SigInfo};
use crate::restore::stub::{FdMove, ProcPlan, StubProc, StubTree, TreePlan};
use crate::task::freeze::{Call, Inject};
use crate::{codec, memory, task::creds, task::signals, task::tasks, task::timers};
use crest_image::{kind, PageChunk, Reader};
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
    /// A lazy restore: the phase that fills the memory still under way
    /// (see `crate::memory::lazy`); the pages it holds back.
    #[serde(skip)]
    pub lazy: Option<crate::memory::lazy::Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_pages: Option<u64>,
    /// Pages taken from the parent images of an incremental image.
    pub parent_pages: u64,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Make the restored root a child of the caller's parent (a sibling
    /// of the caller, `clone3(CLONE_PARENT)`) instead of the caller's: a
    /// container runtime that started crest then waits for the restored
    /// process as for one it started itself.
    pub sibling: bool,
    /// Descriptors (of the caller, open during the call) standing for the
    /// external pipe ends of the image, by key `pipe:[INODE]` (see
    /// [`crate::DumpOptions::external_pipes`]).  Keys the image does not
    /// use are ignored.
    pub inherit: HashMap<String, std::os::fd::RawFd>,
    /// Restore the tree inside a new PID namespace (below crest's) where
    /// every process keeps its PID, under a small init of crest's (see
    /// `crate::ns::pid::into_new_pidns`).  The reported pid is that
    /// init's, in crest's namespace.
    pub new_pidns: bool,
    /// Inner veth name → name of its outer end, made in crest's network
    /// namespace (see `crate::ns::net`).
    pub veth: Vec<(String, String)>,
    /// Recorded namespaces restored into existing ones instead of new
    /// ones, as container runtimes do.
    pub existing_ns: Vec<ExistingNs>,
    /// Where the container's root and its mounts from outside are here
    /// (`--root`, `--ext-mount`; see `crate::ns::mnt`).
    pub mounts: crate::ns::mnt::Mapping,
    /// Called once the root of the tree exists in its new namespaces and
    /// before any process of the tree runs, with the root's pid in
    /// crest's namespace (a runtime runs its OCI hooks there).  An error
    /// fails the restore.
    pub on_namespaces: Option<NamespacesHook>,
    /// Connect the UNIX sockets that were connected outside the tree
    /// (dumped with `DumpOptions::ext_unix_sk`) to their peers' names.
    pub ext_unix_sk: bool,
    /// Let the tree run before its private anonymous memory is in: pages
    /// come on first touch, and the rest in the background (see
    /// `crate::memory::lazy`).
    pub lazy: bool,
    /// With `lazy`: the pages held back come from a post-copy migration's
    /// source, not from the image (see `crate::migrate::postcopy_dest`).
    pub lazy_source: Option<crate::migrate::postcopy_dest::Slot>,
    /// Where an incremental image's parents are (see
    /// `crate::memory::incremental`).
    pub parents: crate::memory::incremental::ParentLookup,
    /// Memory a migration built in crest before the source froze (see
    /// `crate::migrate::prebuild`): its mappings are inherited by the
    /// stubs and their pages are not in the image.
    pub prebuilt: Option<crate::migrate::prebuild::Prebuilt>,
}

/// See [`RestoreOptions::on_namespaces`].
#[derive(Clone)]
pub struct NamespacesHook(pub std::sync::Arc<dyn Fn(i32) -> Result<()> + Send + Sync>);

impl std::fmt::Debug for NamespacesHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamespacesHook")
    }
}

/// A recorded namespace mapped to an existing one.
#[derive(Debug, Clone)]
pub struct ExistingNs {
    /// Its kind ("net"; the only one supported yet).
    pub kind: String,
    /// The inode it had at the dump (`None`: the image's only one of
    /// that kind).
    pub ino: Option<u64>,
    /// The namespace to use: a path such as /run/netns/NAME or
    /// /proc/PID/ns/net.
    pub path: std::path::PathBuf,
}

/// Restores the image read from `input`; returns once the process runs.
/// crest (the caller) is its parent.
pub fn restore<R: Read>(input: R, progress: &mut dyn FnMut(u64)) -> Result<RestoreReport> {
    restore_with(input, &RestoreOptions::default(), progress)
}

/// Validates the image's model and applies the options that change it.
fn prepare(ckpt: &mut Checkpoint, opts: &RestoreOptions) -> Result<()> {
    validate(ckpt)?;
    crate::ns::mnt::finish()?;
    if opts.new_pidns {
        crate::ns::pid::into_new_pidns(ckpt)?;
    }
    Ok(())
}

/// [`restore`] with options.
pub fn restore_with<R: Read>(
    input: R,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let mut reader = Reader::new(input)?;
    codec::check_header(reader.header())?;
    let page_size = reader.page_size();
    let mut model = codec::ModelReader::new(reader.format_version());
    let mut ckpt = Checkpoint::default();
    let mut unlinked = UnlinkedFiles::default();
    unlinked.inherit(&opts.inherit)?;
    let mut build: Option<Build> = None;
    let mut spool: Option<Spool> = None;
    // The copy-on-write ranges, mapped in crest once the metadata is read.
    let mut regions: Option<crate::memory::cow::Regions> = None;
    let mut pages = 0u64;
    let mut model_done = false;
    // Connection locks the image names go when the restore ends, however.
    let mut locks = crate::net::lock::Pending::default();
    if let Some(e) = opts.existing_ns.iter().find(|e| e.kind != "net") {
        return Err(Error::msg(format!(
            "restoring into an existing {} namespace ({}) is not supported",
            e.kind,
            e.path.display()
        )));
    }
    // The mount tree of the image, built detached once the model is read.
    let mut mnt_tree = None;
    let mut chain = None;
    while let Some(rec) = reader.next_record()? {
        if (model.is_model(rec.kind) || rec.kind == kind::FILE_DATA)
            && (build.is_some() || spool.is_some())
        {
            return Err(Error::Invalid(format!(
                "{} record at byte {} comes after the memory pages",
                rec.kind_name(),
                rec.offset
            )));
        }
        if model.is_model(rec.kind) {
            if model_done {
                return Err(Error::Invalid(format!(
                    "{} record at byte {} comes after the file data",
                    rec.kind_name(),
                    rec.offset
                )));
            }
            model.feed(&rec)?;
            continue;
        }
        if !model_done {
            ckpt = model.take()?;
            unlinked
                .sysv()
                .set_private(crate::memory::sysv::private_objects(&ckpt));
            chain = crate::memory::incremental::Chain::of(&ckpt)?;
            for o in &ckpt.objects {
                locks.note(o);
            }
            model_done = true;
            if let Some(p) = &opts.prebuilt {
                regions = Some(p.attach(&mut ckpt)?);
            }
            // Before anything (file data included) takes huge pages.
            crate::memory::hugetlb::check_free(&ckpt)?;
            mnt_tree = crate::ns::mnt::start(&ckpt, &opts.mounts)?;
        }
        match rec.kind {
            kind::FILE_DATA => {
                let d = rec.file_data()?;
                let obj = u32::try_from(d.object).ok().and_then(|id| ckpt.object(id));
                if !crate::ns::mnt::write_data(d.object, d.offset, d.data)? {
                    unlinked.write(obj, d.object as u32, d.offset, d.data)?;
                }
            }
            kind::PAGES if crate::memory::cow::is_cow_space(rec.page_chunk(page_size)?.space) => {
                let c = rec.page_chunk(page_size)?;
                if build.is_some() || spool.is_some() {
                    return Err(Error::Invalid(format!(
                        "shared page chunk at byte {} comes after the processes' pages",
                        rec.offset
                    )));
                }
                if regions.is_none() {
                    validate(&ckpt)?;
                    regions = Some(crate::memory::cow::Regions::prepare(&ckpt)?);
                }
                let r = regions.as_mut().expect("prepared above");
                for (addr, data) in c.runs() {
                    r.fill(addr, data)?;
                }
                pages += c.nr_pages;
                progress(c.data.len() as u64);
            }
            kind::PAGES => {
                let c = rec.page_chunk(page_size)?;
                if build.is_none() && spool.is_none() {
                    prepare(&mut ckpt, opts)?;
                    if regions.is_none() {
                        regions = Some(crate::memory::cow::Regions::prepare(&ckpt)?);
                    }
                    if ckpt
                        .processes
                        .iter()
                        .any(|p| p.ns.pids.is_empty() && pid_held_by_live_process(p.pid))
                    {
                        // Most likely the dump feeding this stream, which
                        // lets the pid go only after its tail: keep the
                        // pages on disk until then.
                        spool = Some(Spool::new()?);
                    } else {
                        let r = regions.take().expect("prepared above");
                        build = Some(Build::start(
                            std::mem::take(&mut ckpt),
                            &mut unlinked,
                            opts,
                            r,
                            t0,
                        )?);
                    }
                }
                match (&mut build, &mut spool) {
                    (Some(b), _) => b.fill(&c)?,
                    (None, Some(s)) => {
                        for (addr, data) in c.runs() {
                            s.push(c.space, addr, data)?;
                        }
                    }
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
    if !model_done {
        ckpt = model.take()?;
        unlinked
            .sysv()
            .set_private(crate::memory::sysv::private_objects(&ckpt));
        chain = crate::memory::incremental::Chain::of(&ckpt)?;
        if let Some(p) = &opts.prebuilt {
            regions = Some(p.attach(&mut ckpt)?);
        }
        mnt_tree = crate::ns::mnt::start(&ckpt, &opts.mounts)?;
    }
    let build = match build {
        Some(b) => b,
        None => {
            let mut ckpt = ckpt;
            if spool.is_none() {
                // (else prepared when the first page arrived)
                prepare(&mut ckpt, opts)?;
            }
            for p in ckpt.processes.iter().filter(|p| p.ns.pids.is_empty()) {
                wait_pid_free(p.pid);
            }
            let r = match regions.take() {
                Some(r) => r,
                None => crate::memory::cow::Regions::prepare(&ckpt)?,
            };
            let mut b = Build::start(ckpt, &mut unlinked, opts, r, t0)?;
            if let Some(s) = spool {
                s.replay(&mut |space, addr, data| {
                    b.fill(&PageChunk::new(space, addr, data, page_size)?)
                })?;
            }
            b
        }
    };
    let mut build = build;
    if let Some(slot) = &opts.lazy_source {
        slot.install(build.lazy.as_mut(), &build.ckpt)?;
    }
    let mut parent_pages = 0;
    if let Some(chain) = &chain {
        let spaces: HashMap<i32, u32> = build
            .ckpt
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pid, i as u32))
            .collect();
        parent_pages = crate::memory::incremental::fill_from_parents(
            chain,
            &opts.parents,
            page_size,
            &mut |pid, addr, data| {
                let space = *spaces.get(&pid).ok_or_else(|| {
                    Error::Invalid(format!("kept pages for pid {pid}, which the image lacks"))
                })?;
                build.fill(&crate::memory::incremental::chunk(
                    space, addr, data, page_size,
                )?)
            },
        )?;
    }
    let lock_ns = build.net.as_ref().map(crate::ns::net::dup).transpose()?;
    let lazy_pages = build.lazy.as_ref().map(|l| l.pages());
    let (pid, lazy) = build.finish()?;
    drop(mnt_tree);
    // The tree runs: a lock that cannot be removed is only reported.
    // (In the tree's network namespace: the table is there if the dumped
    // tree was in the one restored into.)
    let _in = lock_ns.as_ref().map(crate::ns::net::enter).transpose()?;
    if let Err(e) = locks.release() {
        eprintln!("crest: warning: {e}");
    }
    unlinked.keep_sysv();
    Ok(RestoreReport {
        pid,
        pages: pages + parent_pages,
        parent_pages,
        image_bytes: reader.offset(),
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        lazy,
        lazy_pages,
    })
}

/// Checks what restore relies on before anything is created.
pub fn validate(ckpt: &Checkpoint) -> Result<()> {
    if ckpt.processes.is_empty() {
        return Err(Error::Invalid("the image holds no process".into()));
    }
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 * 1024 * 1024);
    let mut tids = std::collections::HashSet::new();
    for (i, p) in ckpt.processes.iter().enumerate() {
        if p.pid <= 1 || p.pid > pid_max {
            return Err(Error::Invalid(format!(
                "pid {} is outside 2..={pid_max}",
                p.pid
            )));
        }
        if i > 0 && !ckpt.processes[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(Error::Invalid(format!(
                "pid {}: its parent {} is not before it in the image",
                p.pid, p.ppid
            )));
        }
        match p.threads.first() {
            Some(t) if t.tid == p.pid => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "pid {}: the first thread must be the leader",
                    p.pid
                )))
            }
        }
        for z in &p.zombies {
            if z.pid <= 1 || z.pid > pid_max || !tids.insert(z.pid) {
                return Err(Error::Invalid(format!(
                    "pid {}: bad or repeated zombie pid {}",
                    p.pid, z.pid
                )));
            }
        }
        for t in &p.threads {
            if t.tid <= 1 || t.tid > pid_max || !tids.insert(t.tid) {
                return Err(Error::Invalid(format!(
                    "pid {}: bad or repeated thread id {}",
                    p.pid, t.tid
                )));
            }
            tasks::resume_regs(&t.regs)?;
        }
        validate_process(ckpt, p)?;
        let sharing = [p.shares_files_with, p.shares_fs_with];
        if sharing
            .iter()
            .any(|s| s.is_some_and(|s| i == 0 || s != p.ppid))
        {
            return Err(Error::Invalid(format!(
                "pid {}: it shares its descriptor table or fs information with \
                 a process other than its parent",
                p.pid
            )));
        }
        if p.shares_files_with.is_some() && ckpt.processes.iter().any(|c| c.ppid == p.pid) {
            return Err(Error::Invalid(format!(
                "pid {}: it shares its parent's descriptor table and has children",
                p.pid
            )));
        }
    }
    crate::memory::hugetlb::validate(ckpt)?;
    crate::memory::aio::validate(ckpt)?;
    crate::ns::validate_ipc(ckpt)?;
    crate::ns::mqueue::validate(ckpt)?;
    crate::ns::validate(&ckpt.namespaces, &ckpt.processes)
}

fn validate_process(ckpt: &Checkpoint, p: &Process) -> Result<()> {
    let ps = memory::page_size();
    let mut prev_end = 0u64;
    for v in &p.mm.vmas {
        let what = || format!("pid {}: mapping {:#x}-{:#x}", p.pid, v.start, v.end);
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
        for &(gs, ge) in &v.guards {
            if gs % ps != 0 || ge % ps != 0 || gs >= ge || gs < v.start || ge > v.end {
                return Err(Error::Invalid(format!(
                    "{}: guard region {gs:#x}-{ge:#x} is not inside it",
                    what()
                )));
            }
        }
        prev_end = v.end;
        crate::memory::cow::validate(ckpt, p.pid, v)?;
        if let Backing::File(id) = v.backing {
            if !matches!(
                ckpt.object(id),
                Some(ObjectKind::File(_))
                    | Some(ObjectKind::Open(crate::model::OpenFile {
                        target: crate::model::OpenTarget::Unlinked { .. },
                        ..
                    }))
            ) {
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
                "pid {}: bad or repeated descriptor number {}",
                p.pid, fd.fd
            )));
        }
        if !matches!(ckpt.object(fd.file), Some(ObjectKind::Open(_))) {
            return Err(Error::Invalid(format!(
                "pid {}: fd {}: object {} is not an open file",
                p.pid, fd.fd, fd.file
            )));
        }
    }
    if let Some(id) = p.mm.exe {
        if !matches!(ckpt.object(id), Some(ObjectKind::File(_))) {
            return Err(Error::Invalid(format!(
                "pid {}: exe: object {id} is not a file",
                p.pid
            )));
        }
    }
    Ok(())
}

/// Opens what descriptor source `src` of process `p` names (an open file
/// description once: `opened` remembers it) and returns crest's descriptor
/// for the stub to take, kept open in `held`.
fn open_source(
    ckpt: &Checkpoint,
    p: &Process,
    src: &fdplan::Source,
    unlinked: &mut UnlinkedFiles,
    pipes: &stub::Pipes,
    opened: &mut HashMap<u32, i32>,
    held: &mut Vec<OwnedFd>,
) -> Result<i32> {
    use fdplan::Source;
    let lookup = |id| ckpt.object(id).cloned();
    let kind = |id: u32| {
        ckpt.object(id)
            .ok_or_else(|| Error::Invalid(format!("pid {}: no object {id}", p.pid)))
    };
    let open_file = |id: u32, write: bool| {
        let ObjectKind::File(fid) = kind(id)? else {
            return Err(Error::Invalid(format!(
                "pid {}: object {id} is no file",
                p.pid
            )));
        };
        files::open_checked(fid, write)
    };
    let f = match *src {
        Source::Description { id, fd } => {
            if let Some(&s) = opened.get(&id) {
                return Ok(s);
            }
            let ObjectKind::Open(o) = kind(id)? else {
                return Err(Error::Invalid(format!(
                    "pid {}: fd {fd}: object {id} is no open file",
                    p.pid
                )));
            };
            let f = files::open_object(id, o, unlinked, &lookup)
                .context(|| format!("pid {}: fd {fd}", p.pid))?;
            opened.insert(id, stub::raw(&f));
            f
        }
        Source::Shmem(id) => {
            let ObjectKind::Shmem(m) = kind(id)? else {
                return Err(Error::Invalid(format!(
                    "pid {}: object {id} is no shared memory",
                    p.pid
                )));
            };
            // The registry holds it.
            return Ok(stub::raw(unlinked.shmem(id, m)?));
        }
        Source::MappedOpen { id, addr } => {
            let ObjectKind::Open(o) = kind(id)? else {
                return Err(Error::Invalid(format!(
                    "pid {}: object {id} is no open file",
                    p.pid
                )));
            };
            // A mapped unlinked file: the one file recreated for every
            // mapping and descriptor of it.
            files::open_object(id, o, unlinked, &lookup)
                .context(|| format!("pid {}: mapping {addr:#x}", p.pid))?
        }
        Source::MappedFile { id, write } => open_file(id, write)?,
        Source::Exe(id) => open_file(id, false)?,
        Source::Cwd => match &p.fs.cwd_deleted {
            Some(n) => unlinked
                .open_deleted(n, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)
                .context(|| format!("pid {}: its deleted cwd {}", p.pid, n.path))?,
            None => open_dir(&p.fs.cwd)?,
        },
        Source::Root => open_dir(&p.fs.root)?,
        Source::Ready => return Ok(stub::raw(&pipes.ready_w)),
        Source::Hold => return Ok(stub::raw(&pipes.hold_r)),
    };
    let s = stub::raw(&f);
    held.push(f);
    Ok(s)
}

/// Per-process numbers the finishing steps need.
struct Aux {
    /// Descriptor number (in the stub) of the executable, or -1.
    exe_fd: i32,
    /// First helper descriptor (all are above the target's own).
    aux_lo: i32,
    /// Whether this process closes the helper descriptors at the end: a
    /// descriptor table shared with children is closed once, by the last
    /// of them, when every process on it is finished.
    close_aux: bool,
}

/// A restore in progress: the stubs and what they still need.
struct Build {
    ckpt: Checkpoint,
    tree: StubTree,
    /// Descriptors crest holds open for the stubs (dropped when done).
    _held: Vec<OwnedFd>,
    aux: Vec<Aux>,
    /// The network namespace made for the tree (see `crate::ns::net`).
    net: Option<crate::ns::net::Made>,
    /// The cgroups made for the tree (after `tree`: removed once the stubs
    /// are gone).
    cgroups: crate::task::cgroup_dirs::Created,
    /// A lazy restore: the pages held back, and the descriptors.
    lazy: Option<crate::memory::lazy::Pending>,
}

impl Build {
    /// `ckpt` has been [`prepare`]d (with `opts.new_pidns`: moved under
    /// crest's init, in the new PID namespace `prepare` put it in).
    fn start(
        ckpt: Checkpoint,
        unlinked: &mut UnlinkedFiles,
        opts: &RestoreOptions,
        mut regions: crate::memory::cow::Regions,
        t0: Instant,
    ) -> Result<Build> {
        let init = opts.new_pidns;
        if init {
            for p in &ckpt.processes {
                let userns = p.ns.user.is_some();
                creds::check_restorable(p.pid, &p.creds, userns)?;
                for t in p.threads.iter().filter_map(|t| t.creds.as_ref()) {
                    creds::check_restorable(p.pid, t, userns)?;
                }
            }
        } else {
            // The checks dump made before letting the tree go, made again
            // here: this machine may not be the one dumped on.
            crate::restore::plan::require(&ckpt)?;
        }
        // Which descriptors each stub places, from the model alone.
        let fds = fdplan::plan(&ckpt)?;
        // PIDs in namespaces below crest's are made fresh: only the others
        // must be free here.
        for p in ckpt.processes.iter().filter(|p| p.ns.pids.is_empty()) {
            let ids = p
                .threads
                .iter()
                .map(|t| t.tid)
                .chain(p.zombies.iter().map(|z| z.pid));
            for tid in ids {
                wait_zombie_gone(tid);
                if crest_sys::process::exists(tid) {
                    let who = crest_sys::proc::read_comm(tid).unwrap_or_else(|_| "?".into());
                    return Err(Error::msg(format!(
                        "pid {} is in use (by \"{who}\"); the restored process needs that pid",
                        tid
                    )));
                }
            }
        }
        // The tree's own cgroups are made first (removed again if the
        // restore fails); then every cgroup must exist.
        let cgroups = crate::task::cgroup_dirs::prepare(&ckpt)?;
        crate::task::cgroups::check(&ckpt)?;
        unlinked.tree_tasks = ckpt
            .processes
            .iter()
            .flat_map(|p| p.threads.iter().map(|t| t.tid))
            .collect();
        let sid_here = unsafe_getsid();
        let view = crate::ns::pid::View::new(&ckpt.processes);
        let mut held: Vec<OwnedFd> = Vec::new();
        // Each open file description is opened once: every descriptor on
        // it, in any process, gets the same one.
        let mut opened: HashMap<u32, i32> = HashMap::new();
        // The tree's network namespace exists before its sockets, which
        // crest makes inside it.
        // A network namespace owned by the tree's user namespace: both
        // made now (see `crate::ns::owned_net`).
        let early = crate::ns::owned_net::prepare(&ckpt)?;
        let early_net = early
            .as_ref()
            .map(crate::ns::owned_net::net_fd)
            .transpose()?;
        let net = crate::ns::net::prepare(&ckpt, opts, early_net)?;
        let inside = net
            .as_ref()
            .map(|m| crate::ns::net::enter(&m.ns))
            .transpose()?;
        // IPC namespaces with POSIX message queues are made now, with
        // their queues, so that descriptors on them open with the others.
        unlinked.early_ipc = crate::ns::mqueue::prepare(&ckpt)?;
        let pipes = stub::pipes()?;
        let mut gates: Vec<crate::ns::user::Gate> = Vec::new();
        let mut procs: Vec<ProcPlan> = Vec::new();
        let mut aux_info: Vec<(Aux, HashMap<u32, i32>)> = Vec::new();
        for (i, (p, pf)) in ckpt.processes.iter().zip(&fds.procs).enumerate() {
            let mut moves = Vec::with_capacity(pf.placed.len());
            for m in &pf.placed {
                let src = open_source(&ckpt, p, &m.src, unlinked, &pipes, &mut opened, &mut held)?;
                moves.push(FdMove {
                    src,
                    dst: m.dst,
                    cloexec: m.cloexec,
                });
            }
            let (ready_dst, hold_dst) = (pf.ready_dst, pf.hold_dst);
            if let Some(j) = pf.files_parent {
                let pp: &mut ProcPlan = &mut procs[j];
                pp.moves.append(&mut moves);
                pp.tmp.resize(pp.moves.len(), 0);
            }
            let share = p.shares_files_with.map_or(0, |_| libc::CLONE_FILES as u64)
                | p.shares_fs_with.map_or(0, |_| libc::CLONE_FS as u64);
            let lead = &p.threads[0];
            let comm = tasks::comm_bytes(tasks::comm_of(&lead.comm, &lead.comm_raw));
            let parent = pf.parent.map(|j| &ckpt.processes[j]);
            let (setsid, pgid) = session_plan(p, parent, sid_here)?;
            let mut new_ns = crate::ns::new_ns_flags(&ckpt.processes, i);
            if init && i == 0 {
                // crest's init made the namespace.
                new_ns &= !(libc::CLONE_NEWPID as u64);
            }
            let mut ipcns = -1;
            if let Some(fd) = p.ns.ipc.and_then(|id| unlinked.early_ipc.get(id)) {
                if new_ns & libc::CLONE_NEWIPC as u64 != 0 {
                    new_ns &= !(libc::CLONE_NEWIPC as u64);
                    ipcns = stub::raw(fd);
                }
            }
            let uts = if new_ns & libc::CLONE_NEWUTS as u64 != 0 {
                crate::ns::state(&ckpt.namespaces, p.ns.uts).and_then(crate::ns::uts::names)
            } else {
                None
            };
            let mnt = if new_ns & libc::CLONE_NEWNS as u64 != 0 {
                crate::ns::state(&ckpt.namespaces, p.ns.mnt).and_then(crate::ns::mnt::plan)
            } else {
                None
            };
            let time = if crate::ns::enters(&ckpt.processes, i, "time") {
                crate::ns::state(&ckpt.namespaces, p.ns.time).and_then(crate::ns::time::plan)
            } else {
                None
            };
            let mut userns_fd = -1;
            if let (Some(e), Some(u)) = (&early, p.ns.user) {
                if u == e.user && new_ns & libc::CLONE_NEWUSER as u64 != 0 {
                    new_ns &= !(libc::CLONE_NEWUSER as u64);
                    userns_fd = stub::raw(&e.made.user);
                }
            }
            let (userns_gate, userns_ids) = match p.ns.user {
                Some(u) if userns_fd >= 0 => (-1, crate::ns::user::stub_ids(&ckpt.namespaces, u)?),
                Some(u) if new_ns & libc::CLONE_NEWUSER as u64 != 0 => {
                    let (read, write) = crate::files::make_pipe()?;
                    let fd = stub::raw(&read);
                    gates.push(crate::ns::user::Gate {
                        idx: i,
                        maps: crate::ns::user::maps(&ckpt.namespaces, u)?,
                        read,
                        write,
                    });
                    (fd, crate::ns::user::stub_ids(&ckpt.namespaces, u)?)
                }
                _ => (-1, None),
            };
            let cgroup_ns = match crate::ns::state(&ckpt.namespaces, p.ns.cgroup) {
                Some(st) if crate::ns::enters(&ckpt.processes, i, "cgroup") => {
                    crate::ns::cgroup::plan(st)?
                }
                _ => None,
            };
            procs.push(ProcPlan {
                pid: p.pid,
                time,
                cgroup_ns,
                userns_gate,
                userns_ids,
                userns_fd,
                mnt,
                // The outer PID too, where crest may choose it: a process
                // in a user namespace of the image is created from inside
                // it, without CAP_CHECKPOINT_RESTORE over crest's PIDs.
                tids: crate::ns::pid::set_tid(
                    &p.ns.pids,
                    p.pid,
                    !opts.new_pidns && p.ns.user.is_none(),
                ),
                nested: !p.ns.pids.is_empty(),
                new_ns,
                ipcns,
                netns: crate::ns::joins_net(&ckpt.processes, i)
                    .and(net.as_ref())
                    .map_or(-1, crate::ns::net::raw),
                uts,
                children: Vec::new(),
                setsid,
                pgid,
                ctty: None,
                tmp: vec![0; moves.len()],
                moves,
                cwd_fd: pf.cwd_fd,
                root_fd: pf.root_fd,
                umask: p.attrs.umask,
                personality: p.attrs.personality,
                comm,
                actions: p.signals.actions.clone(),
                ready_dst,
                hold_dst,
                share,
                zombies: tasks::zombie_plans(p, parent, sid_here, &view)?,
                agent: None,
                early: false,
                kids_ns_of: p.ns.pid_for_children.and_then(|ns| {
                    ckpt.processes
                        .iter()
                        .position(|c| c.ppid == p.pid && c.ns.pid == Some(ns))
                }),
            });
            aux_info.push((
                Aux {
                    exe_fd: pf.exe_fd,
                    aux_lo: pf.aux_lo,
                    close_aux: pf.close_aux,
                },
                pf.file_fds.clone(),
            ));
        }
        for (pp, pf) in procs.iter_mut().zip(&fds.procs) {
            pp.children = pf.children.clone();
        }
        crate::files::tty::plan_ctty(&ckpt, &opened, &mut procs)?;
        // A child on its parent's descriptor table no longer has crest's
        // descriptors when it runs: its terminal is the parent's copy.
        for i in 0..procs.len() {
            let (Some(t), Some(j)) = (procs[i].ctty, fds.procs[i].files_parent) else {
                continue;
            };
            let parent = &procs[j];
            let Some(m) = parent.moves.iter().find(|m| m.src == t) else {
                return Err(Error::msg(format!(
                    "pid {}: its controlling terminal is not in the descriptor table it shares",
                    procs[i].pid
                )));
            };
            procs[i].ctty = Some(m.dst);
        }
        // Files in flight in UNIX sockets' queues, held by no process.
        for (id, o) in crate::net::unix::in_flight(&ckpt, &opened) {
            let f = files::open_object(id, o, unlinked, &|id| ckpt.object(id).cloned())
                .context(|| format!("object {id}, in flight in a UNIX socket's queue"))?;
            opened.insert(id, stub::raw(&f));
            held.push(f);
        }
        if let Some(why) = crate::net::unix::external_refused(&ckpt, opts.ext_unix_sk) {
            return Err(Error::Incompatible(why));
        }
        let plan = TreePlan {
            floor: stub::max_open_fd().max(fds.max_dst) + 1,
            helper: stub::pick_helper_addr(ckpt.processes.iter().map(|p| p.mm.vmas.as_slice()))?,
            ready_src: stub::raw(&pipes.ready_w),
            hold_src: stub::raw(&pipes.hold_r),
            root_sibling: opts.sibling,
            procs,
            init,
            userns: stub::UsernsPlan::new(gates)?,
            agent: None,
            agent_buf: Vec::new(),
        };
        let root = ckpt.processes[0].pid;
        // UNIX sockets whose credentials name PIDs of a PID namespace of
        // the tree are built once that namespace's init exists (it waits,
        // serving the calls PID 1 makes; see `crate::net::unix::creds`).
        let agents = crate::net::unix::agents_for(&ckpt, init)?;
        let started = StubTree::start(plan, pipes, agents)
            .context(|| format!("restoring pid {root}: the PID namespaces' inits"))?;
        crate::net::unix::restore(&ckpt, &opened, &started.agents())?;
        crate::net::finish(&ckpt, &opened)?;
        crate::files::events::add_epoll_targets(&ckpt, &opened)?;
        drop(inside);
        files::unlink_recreated(unlinked)?;
        crate::fault::point("restore: before creating the processes")?;
        let tree = started
            .spawn()
            .context(|| format!("restoring pid {root}"))?;
        crate::ns::restore_after_spawn(&ckpt, &tree, unlinked)?;
        if let (Some(h), Some(sp)) = (&opts.on_namespaces, tree.procs.first()) {
            (h.0)(sp.pid).context(|| format!("restoring pid {root}: the namespaces hook"))?;
        }
        files::release_pipes(unlinked);
        let sysv_ids = crate::memory::sysv::shmids(&ckpt.objects);
        let mut lazy = opts
            .lazy
            .then(|| crate::memory::lazy::Pending::new(ckpt.processes.len(), t0))
            .transpose()?;
        for (i, ((p, sp), (_, file_fds))) in ckpt
            .processes
            .iter()
            .zip(&tree.procs)
            .zip(&aux_info)
            .enumerate()
        {
            let pid = p.pid;
            (|| -> Result<()> {
                // By its pid in crest's namespace (the image's may be of
                // a PID namespace below it).
                crate::task::cgroups::restore_process(sp.pid, &p.task_state)?;
                sp.empty_address_space(&regions.kept_by(&p.mm.vmas))?;
                sp.map_vdso(&p.mm.vmas)?;
                check_vdso(sp, p)?;
                crate::fault::point("restore: address space emptied")?;
                memory::map_vmas(&sp.thread(0), &p.mm.vmas, file_fds, &sysv_ids, &|v| {
                    regions.inherited(v)
                })?;
                regions.apply(&sp.thread(0), &|runs| sp.write_pages(runs), &p.mm.vmas)?;
                if let Some(l) = &mut lazy {
                    l.take(i, &sp.thread(0), sp.pid, &p.mm.vmas)?;
                }
                crate::fault::point("restore: memory mapped")?;
                Ok(())
            })()
            .context(|| format!("rebuilding the address space of pid {pid}"))?;
        }
        // The stubs hold the shared pages now.
        regions.release();
        unlinked.seal(&|id| ckpt.object(id).cloned())?;
        unlinked.close_built(&|id| ckpt.object(id).cloned());
        // Once crest's own descriptions of the recreated files are closed
        // (a close is an event), and before anything runs.
        let pids: Vec<i32> = tree.procs.iter().map(|sp| sp.pid).collect();
        crate::files::inotify_deleted::add_deferred(&ckpt, &opened, &pids)?;
        Ok(Build {
            ckpt,
            tree,
            _held: held,
            aux: aux_info.into_iter().map(|(a, _)| a).collect(),
            net,
            cgroups,
            lazy,
        })
    }

    /// Writes the pages of chunk `c` into its process once its whole
    /// window is known to lie in one mapping that takes pages: all the runs
    /// of a sparse chunk with one process_vm_writev.
    fn fill(&mut self, c: &PageChunk<'_>) -> Result<()> {
        let (Some(p), Some(sp)) = (
            self.ckpt.processes.get(c.space as usize),
            self.tree.procs.get(c.space as usize),
        ) else {
            return Err(Error::Invalid(format!(
                "page chunk at {:#x} for unknown address space {}",
                c.addr, c.space
            )));
        };
        memory::check_chunk(&p.mm.vmas, c.addr, c.end() - c.addr)?;
        if let Some(l) = self
            .lazy
            .as_mut()
            .filter(|l| l.wants(c.space as usize, &p.mm.vmas, c.addr))
        {
            for (addr, data) in c.runs() {
                l.push(c.space as usize, addr, data)?;
            }
            return crate::fault::point("restore: page chunk written");
        }
        let runs: Vec<(u64, &[u8])> = c.runs().collect();
        sp.write_pages(&runs)?;
        crate::fault::point("restore: page chunk written")
    }

    fn finish(self) -> Result<(i32, Option<crate::memory::lazy::Phase>)> {
        // `cgroups` first: bound first, it is dropped last, after the
        // stubs, when this returns early.
        let Build {
            cgroups,
            ckpt,
            mut tree,
            _held,
            aux,
            net,
            lazy,
        } = self;
        // Lazy: the memory is registered and served from here on, before
        // any injected call (rseq, say) can make the kernel touch it.
        let lazy = match lazy {
            Some(l) => {
                let procs: Vec<(i32, &[crate::model::Vma])> = ckpt
                    .processes
                    .iter()
                    .zip(tree.procs.iter())
                    .map(|(p, sp)| (sp.pid, p.mm.vmas.as_slice()))
                    .collect();
                Some(AbortOnDrop(Some(l.start(&procs)?)))
            }
            None => None,
        };
        let rest = (move || -> Result<i32> {
            let view = crate::ns::pid::View::new(&ckpt.processes);
            for (i, (p, sp)) in ckpt.processes.iter().zip(tree.procs.iter()).enumerate() {
                let parent_pgid = ckpt.processes[..i]
                    .iter()
                    .find(|q| q.pid == p.ppid)
                    .map(|q| q.pgid)
                    .unwrap_or_else(unsafe_getpgid);
                join_group(p, parent_pgid, &sp.thread(0), &view)
                    .context(|| format!("restoring the process group of pid {}", p.pid))?;
                tasks::join_zombie_groups(p, &sp.thread(0), &view)?;
            }
            for ((p, sp), a) in ckpt.processes.iter().zip(tree.procs.iter_mut()).zip(&aux) {
                crate::files::events::add_process_targets(&sp.thread(0), &ckpt, p)?;
                crate::files::pidfd::restore_in_tree(&sp.thread(0), &ckpt, p)?;
                crate::files::tty::restore_foreground(&sp.thread(0), &ckpt, p)?;
                let locks = table_locks(&ckpt, p, a);
                finish_process(&ckpt, p, sp, a, &locks, &view)
                    .context(|| format!("restoring the state of pid {}", p.pid))?;
            }
            crate::fault::point("restore: before resuming")?;
            let fin = |pi: usize, ti: usize| -> Result<(crest_sys::arch::UserRegs, Vec<u8>, u64)> {
                let th = &ckpt.processes[pi].threads[ti];
                Ok((tasks::resume_regs(&th.regs)?, th.xsave.clone(), th.sigmask))
            };
            // Every process holds its own descriptors: crest's copies go
            // before anything runs (see `UnlinkedFiles::close_built`).
            drop(_held);
            let stops = crate::task::jobctl::plan(&ckpt, (unsafe_getsid(), unsafe_getpgid()));
            let parents: Vec<Option<usize>> = ckpt
                .processes
                .iter()
                .map(|p| ckpt.processes.iter().position(|q| q.pid == p.ppid))
                .collect();
            // A failed release has killed the stubs.
            let pid = tree.release(&fin, &stops, &parents)?;
            if let Some(n) = net {
                n.commit();
            }
            cgroups.commit();
            Ok(pid)
        })();
        match (rest, lazy) {
            (Ok(pid), lazy) => Ok((pid, lazy.and_then(|mut l| l.0.take()))),
            (Err(e), Some(mut l)) => {
                // The lazy phase may have failed first (and killed the
                // stubs): its error says why.
                let phase = l.0.take().expect("started");
                match phase.abort() {
                    Err(le) => Err(Error::msg(format!("{le} (the restore then failed: {e})"))),
                    Ok(_) => Err(e),
                }
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// A lazy phase started by a restore that may still fail: stopped if it
/// does (the stubs are killed as the restore unwinds).
struct AbortOnDrop(Option<crate::memory::lazy::Phase>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.abort();
        }
    }
}

/// Puts the process into the process group led by another process of the
/// tree, once every stub exists (and so every group).
fn join_group(
    p: &Process,
    parent_pgid: i32,
    t: &impl Inject,
    view: &crate::ns::pid::View,
) -> Result<()> {
    if p.pgid != p.pid && p.sid != p.pid && p.pgid != parent_pgid {
        t.call(
            libc::SYS_setpgid,
            &[0, view.of(p, p.pgid) as u64],
            &format!("joining process group {}", p.pgid),
        )?;
    }
    Ok(())
}

/// Everything after the pages, for one process, while it is still held.
/// The injected calls are queued and run together (see [`Inject::queue`]).
fn finish_process(
    ckpt: &Checkpoint,
    p: &Process,
    sp: &mut StubProc,
    a: &Aux,
    locks: &[crate::model::FileLock],
    view: &crate::ns::pid::View,
) -> Result<()> {
    // SIGTRAP stops the batch loop: pending ones are queued after it ran
    // for the last time (below).
    let not_trap = |s: &&SigInfo| s.signo != libc::SIGTRAP;
    {
        let t = sp.thread(0);
        memory::finish_vmas(&t, &p.mm.vmas)?;
        crate::fault::point("restore: protections set")?;
        memory::set_mm_fields(&t, &p.mm, a.exe_fd)?;
        crate::memory::mmstate::restore(&t, &p.mm.state)?;
        crate::fault::point("restore: mm fields set")?;
        if !p.zombies.is_empty() {
            // The recreated zombies' exits queued a SIGCHLD the process
            // did not have pending: take it off before restoring its own.
            drain_sigchld(&t)?;
        }
        signals::restore_pending(&t, None, p.signals.shared_pending.iter().filter(not_trap))?;
    }
    for (k, th) in p.threads[1..].iter().enumerate() {
        let levels = p.ns.tids.get(k).map_or(&[][..], |l| l.as_slice());
        // Its threads keep their outer TIDs when the process kept its PID.
        let outer = sp.pid == p.pid;
        sp.add_thread(&crate::ns::pid::set_tid(levels, th.tid, outer))?;
        let host = sp.threads.last().map_or(th.tid, |t| t.tid);
        crate::task::cgroups::restore_thread(sp.pid, host, th)?;
    }
    // The leader queues every thread's signals: only it may queue one
    // claiming another sender.
    for th in &p.threads {
        let pending = th.pending.iter().filter(not_trap);
        signals::restore_pending(&sp.thread(0), Some(view.of(p, th.tid)), pending)?;
    }
    for (i, th) in p.threads.iter().enumerate() {
        let t = sp.thread(i);
        signals::restore_altstack(&t, &th.altstack)?;
        tasks::restore_thread_regs(&t, th)?;
        tasks::restore_comm(&t, th)?;
    }
    let t = sp.thread(0);
    tasks::restore_prctl(&t, &p.attrs)?;
    if a.close_aux {
        t.queue(Call::new(
            libc::SYS_close_range,
            &[a.aux_lo as u64, u32::MAX as u64, 0],
            "closing restore helper descriptors".into(),
        ))?;
    }
    // The descriptor table is final: the locks can be taken.
    crate::files::locks::restore(&t, locks)?;
    tasks::restore_rlimits(&t, &p.attrs)?;
    tasks::restore_loginuid(&t, sp.pid, &p.task_state)?;
    crate::task::seccomp::restore(p.pid, &p.threads, &|i| sp.thread(i), stub::SEIZE_OPTIONS)?;
    tasks::restore_oom_score_adj(sp.pid, &p.task_state)?;
    crate::fault::point("restore: before credentials")?;
    for i in 0..p.threads.len() {
        let own = p.threads[i].creds.as_ref();
        let (c, fixed_groups) =
            crate::ns::user::inside(&ckpt.namespaces, p.ns.user, p.pid, own.unwrap_or(&p.creds))?;
        creds::restore(&sp.thread(i), &c, fixed_groups)?;
        // A credential change clears the parent-death signal: set it after.
        tasks::restore_pdeath(&sp.thread(i), &p.attrs)?;
    }
    let t = sp.thread(0);
    t.queue(Call::new(
        libc::SYS_prctl,
        &[libc::PR_SET_DUMPABLE as u64, p.attrs.dumpable as u64],
        "setting the dumpable flag".into(),
    ))?;
    timers::restore(&t, &p.itimers)?;
    let mut posix_timers = p.posix_timers.clone();
    for pt in posix_timers.iter_mut().filter(|pt| pt.tid != 0) {
        pt.tid = view.of(p, pt.tid);
    }
    timers::restore_posix(&t, &posix_timers)?;
    crate::files::fown::restore(&t, &p.fd_owners)?;
    // Every process exists now (and this one's threads): its /proc files
    // can be opened.
    crate::files::procfiles::reopen(&t, ckpt, p, &crate::files::procfiles::tree_ids(ckpt))?;
    t.flush()?;
    restore_traps(p, sp, view)?;
    tasks::restore_attrs_outside(sp.pid, &p.attrs)
}

/// The locks process `p` takes at its end: those of every process on its
/// descriptor table, taken by the one that closes the helper descriptors
/// (the last of them), since any close of a file drops POSIX locks on it.
fn table_locks(ckpt: &Checkpoint, p: &Process, a: &Aux) -> Vec<crate::model::FileLock> {
    if !a.close_aux {
        return Vec::new();
    }
    let table = p.shares_files_with.unwrap_or(p.pid);
    ckpt.processes
        .iter()
        .filter(|q| q.pid == table || q.shares_files_with == Some(table))
        .flat_map(|q| q.locks.iter().copied())
        .collect()
}

/// What the batch loop's int3 would disturb, restored once it has run for
/// the last time, by syscall stops: the action of SIGTRAP (the kernel
/// forces the trap's SIGTRAP through with the default action if the
/// signal is ignored or blocked) and pending SIGTRAPs (queued with every
/// signal blocked, so that none is delivered meanwhile; the final masks
/// are set at release).
fn restore_traps(p: &Process, sp: &StubProc, view: &crate::ns::pid::View) -> Result<()> {
    let d = sp.direct();
    if let Some(act) = p.signals.actions.iter().find(|a| a.signo == libc::SIGTRAP) {
        signals::restore_action(&d, act)?;
    }
    let is_trap = |s: &&SigInfo| s.signo == libc::SIGTRAP;
    let any = p.signals.shared_pending.iter().any(|s| is_trap(&s))
        || p.threads
            .iter()
            .any(|t| t.pending.iter().any(|s| is_trap(&s)));
    if !any {
        return Ok(());
    }
    for t in &sp.threads {
        crest_sys::ptrace::set_sigmask(t.tid, !0)?;
    }
    signals::restore_pending(&d, None, p.signals.shared_pending.iter().filter(is_trap))?;
    for th in &p.threads {
        let tid = Some(view.of(p, th.tid));
        signals::restore_pending(&d, tid, th.pending.iter().filter(is_trap))?;
    }
    Ok(())
}

/// Dequeues a pending SIGCHLD of the task, if any (queued).
fn drain_sigchld(t: &impl Inject) -> Result<()> {
    let set: u64 = 1 << (libc::SIGCHLD - 1);
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&set.to_ne_bytes());
    // b[8..24]: a zero timeout
    let s = t.place(&b)?;
    t.queue(
        Call::new(
            libc::SYS_rt_sigtimedwait,
            &[s, 0, s + 8, 8],
            "taking off the recreated zombies' SIGCHLD".into(),
        )
        .may_fail(),
    )
}

/// How a stub joins its session and process group: (setsid, setpgid arg).
fn session_plan(
    p: &Process,
    parent: Option<&Process>,
    sid_here: i32,
) -> Result<(bool, Option<i32>)> {
    let (psid, ppgid) = match parent {
        Some(q) => (q.sid, q.pgid),
        None => (sid_here, unsafe_getpgid()),
    };
    let setsid = p.sid == p.pid;
    // A container's init in a session led from outside its PID namespace
    // sees no session id (0) there, in any session: it stays in crest's.
    let hidden = parent.is_none() && p.ns.pids.last() == Some(&1);
    if !setsid && p.sid != psid && !hidden {
        return Err(Error::Incompatible(format!(
            "pid {} belonged to session {}, which cannot be recreated here \
             (start programs with `crest run` to give them a session of their own)",
            p.pid, p.sid
        )));
    }
    // Joining another process's group is done later (see join_group):
    // that group's leader may not have created it yet when this stub runs.
    let pgid = if setsid || p.pgid == ppgid || p.pgid != p.pid {
        None
    } else {
        Some(0)
    };
    Ok((setsid, pgid))
}

fn unsafe_getsid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getsid(0) }
}

fn unsafe_getpgid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getpgid(0) }
}

/// A checkpointed process killed by dump stays a zombie until its parent
/// reaps it (an init that reaps lazily can take seconds): wait a little
/// for that instead of failing at once.
fn wait_zombie_gone(pid: i32) {
    if matches!(crest_sys::proc::read_stat(pid), Ok(st) if st.state == 'Z' || st.state == 'X') {
        // A failure here shows as the pid still in use, named by the caller.
        let _ = crest_sys::pidfd::wait_reaped(pid, std::time::Duration::from_secs(10));
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
    // A failure here shows as the pid still in use, named later.
    let _ = crest_sys::pidfd::wait_reaped(pid, std::time::Duration::from_secs(30));
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
        Ok(Spool {
            file: crate::files::spool_file()?,
            len: 0,
        })
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
    if let Some(r) = crate::ns::mnt::open_rooted(path, libc::O_DIRECTORY | libc::O_PATH) {
        return r.context(|| format!("opening directory {path}"));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(path)
        .context(|| format!("opening directory {path}"))?;
    Ok(f.into())
}

/// The vDSO now mapped must be the code the process was using.
fn check_vdso(stub: &StubProc, p: &Process) -> Result<()> {
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
