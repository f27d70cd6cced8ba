//! Memory: mappings, their pages, and the mm fields (brk, arg/env, auxv,
//! exe).
//!
//! Dump reads /proc/PID/smaps for the mappings and /proc/PID/pagemap for
//! which pages to save: resident or swapped anonymous pages, and pages of
//! private file mappings that no longer match the file.  Pages that are
//! all zero are dropped when read.  Restore maps every mapping with
//! injected `mmap` calls, streams the pages in with process_vm_writev and
//! then sets the final protections.

pub mod aio;
pub mod cow;
pub mod hugetlb;
pub mod incremental;
pub mod lazy;
pub mod mmstate;
pub mod sysv;
pub mod track;

use crate::error::{Context, Error, Result};
use crate::files::DataSource;
use crate::model::{Backing, Mm, ObjectKind, ShmemKind, ShmemObj, Vma, VmaFlags};
use crate::objects::ObjectTable;
use crate::task::freeze::{Call, Inject};
use crate::Obstacle;
use crest_image::{SealedPages, Writer};
use crest_sys::proc::{MapEntry, Pagemap, PagemapEntry, VmFlags};
use std::collections::HashMap;
use std::io::Write;

/// Pages read from the task per process_vm_readv.
const CHUNK_PAGES: usize = 512;
/// Pagemap entries read per pread.
const PAGEMAP_BATCH: usize = 64 * 1024;
const PR_SET_MM: i32 = 35;
const PR_SET_MM_MAP: u64 = 14;
const MADV_GUARD_INSTALL: u64 = 102;
/// A private anonymous mapping whose pages the kernel may free at any time.
const MAP_DROPPABLE: i32 = 0x08;

pub fn page_size() -> u64 {
    crest_sys::process::page_size() as u64
}

/// `n` rounded up to a whole number of pages.
pub fn round_up(n: u64) -> u64 {
    n.div_ceil(page_size()) * page_size()
}

fn prot_of(m: &MapEntry) -> u32 {
    let mut p = 0;
    if m.read {
        p |= libc::PROT_READ;
    }
    if m.write {
        p |= libc::PROT_WRITE;
    }
    if m.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// Turns smaps entries into the model's mappings, adding backing files to
/// the object table and listing what cannot be checkpointed.
pub fn collect_vmas(
    pid: i32,
    maps: &[MapEntry],
    objects: &mut ObjectTable,
    obstacles: &mut Vec<Obstacle>,
    data: &mut Vec<DataSource>,
) -> Result<Vec<Vma>> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let object = format!("mapping {:x}-{:x} {}", m.start, m.end, m.path);
        let mut refuse = |reason: &str| {
            obstacles.push(Obstacle {
                pid,
                object: object.clone(),
                reason: reason.to_string(),
            })
        };
        let f = &m.vm_flags;
        let mut huge_page = None;
        let mut aio = None;
        let backing = match m.path.as_str() {
            "[vdso]" => Backing::Vdso,
            aio::RING_NAME => match aio::collect(pid, m) {
                Ok(ring) => {
                    aio = Some(ring);
                    Backing::Aio
                }
                Err(reason) => {
                    refuse(&reason);
                    continue;
                }
            },
            _ if f.contains(VmFlags::HUGETLB) => match hugetlb::backing(pid, m, objects, data) {
                Ok((b, size)) => {
                    huge_page = Some(size);
                    b
                }
                Err(reason) => {
                    refuse(&reason);
                    continue;
                }
            },
            "[vvar]" => Backing::Vvar,
            "[vvar_vclock]" => Backing::VvarVclock,
            "[vsyscall]" => Backing::Vsyscall,
            _ if m.inode == 0 && m.dev_major == 0 && m.dev_minor == 0 => {
                if m.path.starts_with('[')
                    && !matches!(m.path.as_str(), "[heap]" | "[stack]")
                    && !m.path.starts_with("[anon:")
                {
                    refuse(&format!("unknown special mapping {}", m.path));
                    continue;
                }
                Backing::Anonymous
            }
            _ if m.path == "/dev/zero (deleted)" || m.path.starts_with("[anon_shmem:") => {
                Backing::Shmem(shmem_object(pid, m, objects, data)?)
            }
            _ if m.is_memfd() => Backing::Shmem(shmem_object(pid, m, objects, data)?),
            _ if m.path == "anon_inode:[io_uring]" => {
                refuse("the rings of an io_uring instance (refused with its descriptor)");
                continue;
            }
            _ if m.path.starts_with("anon_inode:") => {
                refuse(&format!(
                    "a mapping of an anonymous-inode file ({}) is not supported",
                    m.path.trim_start_matches("anon_inode:")
                ));
                continue;
            }
            _ if m.is_sysv_shm() => match sysv_object(pid, m, objects, data) {
                Ok(id) => Backing::Shmem(id),
                Err(reason) => {
                    refuse(&reason);
                    continue;
                }
            },
            _ if m.deleted() => match unlinked_object(pid, m, objects, data) {
                Ok(id) => Backing::File(id),
                Err(reason) => {
                    refuse(&reason);
                    continue;
                }
            },
            _ => {
                let path = m.file_path().unwrap_or(&m.path).to_string();
                match check_mapped_file(m, &path) {
                    Ok(()) => {}
                    Err(reason) => {
                        refuse(&reason);
                        continue;
                    }
                }
                Backing::File(objects.file(&path)?)
            }
        };
        let special = !matches!(
            backing,
            Backing::Anonymous | Backing::File(_) | Backing::Shmem(_)
        );
        if !special {
            if f.contains(VmFlags::IO) || f.contains(VmFlags::PFN_MAP) {
                refuse("device (I/O or PFN) mappings are not supported");
                continue;
            }
            if f.contains(VmFlags::UFFD_MISSING)
                || f.contains(VmFlags::UFFD_WP)
                || f.contains(VmFlags::UFFD_MINOR)
            {
                refuse("the mapping is registered with userfaultfd");
                continue;
            }
            if f.contains(VmFlags::SHADOW_STACK) {
                refuse("shadow stacks are not supported");
                continue;
            }
            if f.contains(VmFlags::SEALED) {
                refuse("sealed (mseal) mappings are not supported yet");
                continue;
            }
        }
        out.push(Vma {
            start: m.start,
            end: m.end,
            prot: prot_of(m),
            shared: m.shared,
            offset: m.offset,
            backing,
            flags: VmaFlags {
                growsdown: f.contains(VmFlags::GROWS_DOWN),
                noreserve: f.contains(VmFlags::NO_RESERVE),
                dontdump: f.contains(VmFlags::DONT_DUMP),
                dontfork: f.contains(VmFlags::DONT_COPY),
                wipeonfork: f.contains(VmFlags::WIPE_ON_FORK),
                hugepage: f.contains(VmFlags::HUGEPAGE),
                nohugepage: f.contains(VmFlags::NO_HUGEPAGE),
                mergeable: f.contains(VmFlags::MERGEABLE),
                locked: f.contains(VmFlags::LOCKED),
                may_write: f.contains(VmFlags::MAY_WRITE),
                seq_read: f.contains(VmFlags::SEQ_READ),
                rand_read: f.contains(VmFlags::RAND_READ),
                droppable: f.contains(VmFlags::DROPPABLE),
            },
            name: m.path.clone(),
            guards: Vec::new(),
            pages: 0,
            cow: None,
            cow_drop: Vec::new(),
            huge_page,
            aio,
            kept: Vec::new(),
            digests: None,
        });
    }
    Ok(out)
}

/// The shared-memory object behind mapping `m`, added to the table (with
/// its content queued for the image) the first time it is met.
/// The object of an unlinked regular file mapped at `m`: the same file as
/// any other mapping or descriptor of it (the first one met carries the
/// content, saved like an unlinked open file's).
fn unlinked_object(
    pid: i32,
    m: &MapEntry,
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
) -> std::result::Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    let at = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let md =
        std::fs::metadata(&at).map_err(|e| format!("the mapped file was deleted ({at}: {e})"))?;
    if !md.is_file() {
        return Err("the mapped file was deleted and is not a regular file".into());
    }
    if md.blocks() * 512 > 1 << 32 {
        return Err("the mapped unlinked file holds more than 4 GiB of data".into());
    }
    let same_as = objects.unlinked(md.dev(), md.ino());
    let flags = if m.shared && m.vm_flags.contains(VmFlags::MAY_WRITE) {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } as u32;
    let id = objects.add(ObjectKind::Open(crate::model::OpenFile {
        flags,
        pos: 0,
        target: crate::model::OpenTarget::Unlinked {
            path: m.path.trim_end_matches(" (deleted)").to_string(),
            size: md.size(),
            mode: md.mode(),
            meta: Some(crate::files::unlinked::meta(&md, flags, same_as)),
        },
    }));
    if same_as.is_none() {
        objects.set_unlinked(md.dev(), md.ino(), id);
        data.push(DataSource::UnlinkedMap {
            object: id,
            path: at,
            size: md.size(),
        });
    }
    Ok(id)
}

pub(crate) fn shmem_object(
    pid: i32,
    m: &MapEntry,
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
) -> Result<u32> {
    let dev = libc::makedev(m.dev_major, m.dev_minor);
    if let Some(id) = objects.shmem(dev, m.inode) {
        return Ok(id);
    }
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    shmem_from_path(
        objects,
        data,
        dev,
        m.inode,
        &path,
        m.is_memfd().then_some(m.path.as_str()),
    )
}

/// The System V segment attached at mapping `m`, added to the table (with
/// its content queued) the first time it is met.  Only whole attaches
/// (one mapping from offset 0 over the whole segment) are supported.
fn sysv_object(
    pid: i32,
    m: &MapEntry,
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
) -> std::result::Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("cannot stat {path}: {e}"))?
        .size();
    if m.offset != 0 || round_up(size.max(1)) != m.end - m.start {
        return Err(
            "a partial System V shared memory attach (split or partly unmapped) is not supported"
                .to_string(),
        );
    }
    let dev = libc::makedev(m.dev_major, m.dev_minor);
    if let Some(id) = objects.shmem(dev, m.inode) {
        return Ok(id);
    }
    let mut seg = crate::memory::sysv::find_for(pid, m.inode, size)?;
    // A segment marked for removal lists key 0; its name keeps the key.
    if let Some(k) = m
        .path
        .strip_prefix("/SYSV")
        .and_then(|k| k.get(..8))
        .and_then(|k| u32::from_str_radix(k, 16).ok())
    {
        if seg.key == 0 {
            seg.key = k as i32;
        }
    }
    let kind = seg.kind();
    Ok(add_shmem_at(
        objects, data, dev, m.inode, &path, kind, size, None,
    ))
}

#[allow(clippy::too_many_arguments)]
fn add_shmem_at(
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
    dev: u64,
    ino: u64,
    path: &str,
    kind: ShmemKind,
    size: u64,
    owner: Option<(u32, u32, u32)>,
) -> u32 {
    let huge_page = std::fs::File::open(path)
        .ok()
        .and_then(|f| crest_sys::mem::hugetlb_page_size(std::os::fd::AsFd::as_fd(&f)).ok())
        .flatten();
    let id = objects.add_shmem(
        dev,
        ino,
        ObjectKind::Shmem(ShmemObj {
            kind,
            size,
            owner,
            huge_page,
        }),
    );
    data.push(DataSource::Shmem {
        object: id,
        path: path.to_string(),
        size,
    });
    id
}

/// Adds the shared-memory object reachable at `path` (a map_files or fd
/// link); `memfd_link` is its "/memfd:NAME (deleted)" name for a memfd.
pub fn shmem_from_path(
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
    dev: u64,
    ino: u64,
    path: &str,
    memfd_link: Option<&str>,
) -> Result<u32> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path).context(|| format!("opening {path}"))?;
    let md = f.metadata().context(|| format!("stat {path}"))?;
    let size = md.size();
    let owner = memfd_link.map(|_| (md.mode() & 0o7777, md.uid(), md.gid()));
    let kind = match memfd_link {
        Some(link) => {
            // SAFETY: fcntl on a descriptor we own.
            let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
            let name = link
                .trim_start_matches("/memfd:")
                .trim_end_matches(" (deleted)")
                .to_string();
            ShmemKind::Memfd {
                name,
                seals: seals.max(0) as u32,
            }
        }
        None => ShmemKind::Anonymous,
    };
    Ok(add_shmem_at(
        objects, data, dev, ino, path, kind, size, owner,
    ))
}

/// The file mapped must be the one now at its path (not replaced since).
fn check_mapped_file(m: &MapEntry, path: &str) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&*crate::ns::mnt::host_path(path))
        .map_err(|e| format!("cannot stat the mapped file: {e}"))?;
    if md.ino() != m.inode {
        return Err(format!(
            "the mapped file was replaced on disk (inode {} mapped, {} at the path now)",
            m.inode,
            md.ino()
        ));
    }
    Ok(())
}

/// Whether page `e` of mapping `v` must be saved.
fn must_save(v: &Vma, e: PagemapEntry) -> bool {
    match v.backing {
        Backing::Anonymous => e.present() || e.swapped(),
        Backing::File(_) | Backing::Shmem(_) if !v.shared => {
            e.swapped() || (e.present() && !e.file_or_shared())
        }
        _ => false,
    }
}

/// Runs of pages to save, per mapping: (start address, page count).
pub struct PagePlan {
    pub runs: Vec<Vec<(u64, u64)>>,
}

/// Finds the pages to save, and records counts and guard regions in the
/// mappings: with PAGEMAP_SCAN (Linux 6.15+, which reports guard regions),
/// which lists runs of pages, else by reading every pagemap entry.
pub fn plan_pages(pid: i32, vmas: &mut [Vma]) -> Result<PagePlan> {
    match plan_pages_scan(pid, vmas) {
        Ok(plan) => Ok(plan),
        Err(_) => {
            for v in vmas.iter_mut() {
                v.pages = 0;
                v.guards.clear();
            }
            plan_pages_read(pid, vmas)
        }
    }
}

/// [`plan_pages`] with PAGEMAP_SCAN: a page is saved if it is present or
/// swapped and neither a file page (private file mappings keep only
/// their modified, anonymous, pages) nor a guard marker.
fn plan_pages_scan(pid: i32, vmas: &mut [Vma]) -> Result<PagePlan> {
    use crest_sys::proc::{page_category as cat, ScanQuery};
    let ps = page_size();
    let pagemap = Pagemap::open(pid)?;
    // One walk finds both: runs of pages to save, and guard regions.
    let query = ScanQuery {
        any: cat::PRESENT | cat::SWAPPED | cat::GUARD,
        excluded: cat::FILE,
        report: cat::GUARD,
        ..Default::default()
    };
    let mut runs = Vec::with_capacity(vmas.len());
    let mut found = Vec::new();
    for v in vmas.iter_mut() {
        let mut vruns: Vec<(u64, u64)> = Vec::new();
        let readable_kind = matches!(
            v.backing,
            Backing::Anonymous | Backing::File(_) | Backing::Shmem(_)
        );
        if readable_kind {
            found.clear();
            pagemap.scan(v.start, v.end, query, false, &mut found)?;
            for &(s, e, c) in &found {
                if c & cat::GUARD != 0 {
                    v.guards.push((s, e));
                    continue;
                }
                if !takes_pages(v) {
                    continue;
                }
                let mut a = s;
                while a < e {
                    let n = ((e - a) / ps).min(CHUNK_PAGES as u64);
                    vruns.push((a, n));
                    v.pages += n;
                    a += n * ps;
                }
            }
        }
        runs.push(vruns);
    }
    Ok(PagePlan { runs })
}

/// [`plan_pages`] by reading the pagemap entry of every page.
fn plan_pages_read(pid: i32, vmas: &mut [Vma]) -> Result<PagePlan> {
    let ps = page_size();
    let pagemap = Pagemap::open(pid)?;
    let mut entries = vec![PagemapEntry(0); PAGEMAP_BATCH];
    let mut runs = Vec::with_capacity(vmas.len());
    for v in vmas.iter_mut() {
        let mut vruns: Vec<(u64, u64)> = Vec::new();
        let readable_kind = matches!(
            v.backing,
            Backing::Anonymous | Backing::File(_) | Backing::Shmem(_)
        );
        if !readable_kind {
            runs.push(vruns);
            continue;
        }
        let mut addr = v.start;
        while addr < v.end {
            let n = (((v.end - addr) / ps) as usize).min(PAGEMAP_BATCH);
            pagemap
                .read(addr, &mut entries[..n])
                .context(|| format!("reading the page map of pid {pid} at {addr:#x}"))?;
            for (i, e) in entries[..n].iter().enumerate() {
                let a = addr + i as u64 * ps;
                if e.guard() {
                    match v.guards.last_mut() {
                        Some(g) if g.1 == a => g.1 = a + ps,
                        _ => v.guards.push((a, a + ps)),
                    }
                }
                if !e.guard() && must_save(v, *e) {
                    v.pages += 1;
                    match vruns.last_mut() {
                        Some(r) if r.0 + r.1 * ps == a && r.1 < CHUNK_PAGES as u64 => r.1 += 1,
                        _ => vruns.push((a, 1)),
                    }
                }
            }
            addr += n as u64 * ps;
        }
        runs.push(vruns);
    }
    Ok(PagePlan { runs })
}

/// Counters for a page dump.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageStats {
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub zero_pages: u64,
}

/// Whether `page` holds only zero bytes.
pub fn is_zero(page: &[u8]) -> bool {
    // Word-wise OR: the compiler vectorizes this.
    page.chunks_exact(8).fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().unwrap())
    }) == 0
}

/// Reads the planned pages from the frozen task and writes them as page
/// chunks, dropping all-zero pages.  A reader thread copies the memory
/// out of the task and seals it ([`SealedPages`]: finds the zero pages,
/// chooses dense or sparse chunks, computes the checksums), a few hundred
/// KiB at a time so that each part is sealed while it is still in that
/// core's cache; this thread only writes the sealed records
/// (compressing them first with `compress`): both cores work, and crest
/// holds only a few chunks at a time.
pub fn write_pages<W: Write>(
    pid: i32,
    space: u32,
    vmas: &[Vma],
    plan: &PagePlan,
    compress: bool,
    out: &mut Writer<W>,
    progress: &mut dyn FnMut(u64),
) -> Result<PageStats> {
    let ps = page_size() as usize;
    let image_ps = out.page_size();
    let mut stats = PageStats::default();
    let procmem = crest_sys::mem::ProcMem::open(pid, false)?;
    let jobs: Vec<(u64, u64, bool)> = vmas
        .iter()
        .zip(&plan.runs)
        .flat_map(|(v, runs)| {
            let readable = v.prot & libc::PROT_READ as u32 != 0;
            runs.iter().map(move |&(a, n)| (a, n, readable))
        })
        .collect();
    let procmem = &procmem;
    crate::dump::pipeline::run(
        &jobs,
        CHUNK_PAGES * ps,
        |&(addr, n, readable), buf| {
            let read = |at: u64, part: &mut [u8]| -> Result<()> {
                if readable {
                    Ok(crest_sys::mem::read(pid, at, part)?)
                } else {
                    Ok(procmem.read(at, part)?)
                }
            };
            SealedPages::read_and_seal(space, addr, buf, n as usize * ps, image_ps, read)
        },
        |_, sealed| {
            out.write_sealed(&sealed, compress)?;
            stats.pages_scanned += (sealed.len() / ps) as u64;
            stats.pages_written += sealed.pages();
            stats.zero_pages += sealed.zero_pages();
            progress(sealed.len() as u64);
            crate::fault::point("dump: page chunk written")?;
            Ok(sealed.into_buffer())
        },
    )?;
    Ok(stats)
}

/// The protection a mapping gets while its pages are written in.
fn fill_prot(v: &Vma) -> u32 {
    if v.pages > 0 {
        v.prot | libc::PROT_WRITE as u32
    } else {
        v.prot
    }
}

/// Whether a mapping gets MADV_HUGEPAGE before its pages are written: a
/// private anonymous one the process had advised so, with pages to fill.
/// (With THP "always" no advice is needed: the fresh mapping takes huge
/// pages on its first writes anyway.)
fn thp_while_filling(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous)
        && !v.shared
        && v.huge_page.is_none()
        && v.flags.hugepage
        && v.pages > 0
}

/// Whether the mapping's pages go into the image (restore writes them in).
pub fn takes_pages(v: &Vma) -> bool {
    match v.backing {
        Backing::Anonymous => true,
        Backing::File(_) | Backing::Shmem(_) => !v.shared,
        _ => false,
    }
}

/// Two adjacent mappings created one after the other would be merged by
/// the kernel into one, although the checkpointed process had two (they
/// had different anon_vmas).  Every other mapping of a run of adjacent
/// ones gets a temporary madvise flag while it is created and filled, so
/// no two neighbours look alike and each gets its own anon_vma; the flag
/// is cleared at the end.  Returns (set, clear) advice per mapping.
fn merge_barriers(vmas: &[Vma]) -> Vec<Option<(i32, i32)>> {
    let mut out: Vec<Option<(i32, i32)>> = vec![None; vmas.len()];
    let kind = |v: &Vma| {
        matches!(
            v.backing,
            Backing::Anonymous | Backing::File(_) | Backing::Shmem(_)
        )
    };
    for i in 1..vmas.len() {
        let (a, b) = (&vmas[i - 1], &vmas[i]);
        if a.end != b.start || !kind(a) || !kind(b) || out[i - 1].is_some() {
            continue;
        }
        out[i] = if !b.flags.dontfork {
            Some((libc::MADV_DONTFORK, libc::MADV_DOFORK))
        } else if !b.flags.dontdump {
            Some((libc::MADV_DONTDUMP, libc::MADV_DODUMP))
        } else {
            None
        };
    }
    out
}

/// Maps every mapping of the model into the (emptied) task.
/// `file_fds` gives, for each backing file object, a descriptor open in
/// the task; `sysv`, for each System V shared memory object, its shmid
/// (those are attached with `shmat`).
/// `inherited(v)`: the mapping is already there, inherited copy-on-write
/// (see `crate::memory::cow`): it only gets its protection.
pub fn map_vmas(
    t: &impl Inject,
    vmas: &[Vma],
    file_fds: &HashMap<u32, i32>,
    sysv: &HashMap<u32, i32>,
    inherited: &dyn Fn(&Vma) -> bool,
) -> Result<()> {
    let barriers = merge_barriers(vmas);
    let mut calls = Vec::with_capacity(vmas.len() * 2);
    let mut want = Vec::with_capacity(vmas.len() * 2);
    for (v, barrier) in vmas.iter().zip(&barriers) {
        if inherited(v) {
            // It keeps crest's protection until finish_vmas.
            if let Some((set, _)) = barrier {
                calls.push(Call::new(
                    libc::SYS_madvise,
                    &[v.start, v.end - v.start, *set as u64],
                    format!(
                        "keeping {:#x}-{:#x} apart from its neighbour",
                        v.start, v.end
                    ),
                ));
                want.push(None);
            }
            continue;
        }
        if let Some(&shmid) = match v.backing {
            Backing::Shmem(id) => sysv.get(&id),
            _ => None,
        } {
            let mut flags = 0;
            if v.prot & libc::PROT_WRITE as u32 == 0 {
                flags |= libc::SHM_RDONLY;
            }
            if v.prot & libc::PROT_EXEC as u32 != 0 {
                flags |= libc::SHM_EXEC;
            }
            let what = format!("attaching {:#x}-{:#x} {}", v.start, v.end, v.name);
            calls.push(Call::new(
                libc::SYS_shmat,
                &[shmid as u64, v.start, flags as u64],
                what,
            ));
            want.push(Some(v.start));
            if v.prot & libc::PROT_READ as u32 == 0 {
                calls.push(Call::new(
                    libc::SYS_mprotect,
                    &[v.start, v.end - v.start, v.prot as u64],
                    format!("setting the protection of {:#x}-{:#x}", v.start, v.end),
                ));
                want.push(None);
            }
            continue;
        }
        let (mut flags, fd) = match v.backing {
            Backing::Anonymous => (libc::MAP_ANONYMOUS, -1),
            Backing::File(id) | Backing::Shmem(id) => (
                0,
                *file_fds.get(&id).ok_or_else(|| {
                    Error::Invalid(format!("mapping {:#x}: no file object {id}", v.start))
                })?,
            ),
            _ => continue,
        };
        flags |= if v.shared {
            libc::MAP_SHARED
        } else if v.flags.droppable {
            MAP_DROPPABLE
        } else {
            libc::MAP_PRIVATE
        };
        flags |= libc::MAP_FIXED_NOREPLACE;
        if v.flags.growsdown {
            flags |= libc::MAP_GROWSDOWN;
        }
        if v.flags.noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        if let (Backing::Anonymous, Some(size)) = (v.backing, v.huge_page) {
            flags |= libc::MAP_HUGETLB | crest_sys::mem::huge_size_bits(size) as i32;
        }
        let offset = if fd >= 0 { v.offset } else { 0 };
        calls.push(Call::new(
            libc::SYS_mmap,
            &[
                v.start,
                v.end - v.start,
                fill_prot(v) as u64,
                flags as u64,
                fd as i64 as u64,
                offset,
            ],
            format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
        ));
        want.push(Some(v.start));
        if thp_while_filling(v) {
            // Before the pages are written: the first write into each
            // 2 MiB-aligned piece then faults in a huge page, as the
            // process had (finish_vmas sets the advice again, harmlessly).
            calls.push(Call::new(
                libc::SYS_madvise,
                &[v.start, v.end - v.start, libc::MADV_HUGEPAGE as u64],
                format!("madvise(MADV_HUGEPAGE) {:#x}-{:#x}", v.start, v.end),
            ));
            want.push(None);
        }
        if let Some((set, _)) = barrier {
            calls.push(Call::new(
                libc::SYS_madvise,
                &[v.start, v.end - v.start, *set as u64],
                format!(
                    "keeping {:#x}-{:#x} apart from its neighbour",
                    v.start, v.end
                ),
            ));
            want.push(None);
        }
    }
    let got = t.batch(&calls)?;
    for ((c, w), g) in calls.iter().zip(&want).zip(&got) {
        if let Some(start) = w {
            if g != start {
                return Err(Error::msg(format!(
                    "pid {}: {} landed at {g:#x}",
                    t.pid(),
                    c.what
                )));
            }
        }
    }
    // AIO rings last: io_setup puts a ring anywhere free, then it moves.
    for v in vmas {
        if let (Backing::Aio, Some(ring)) = (v.backing, &v.aio) {
            aio::restore(t, v, ring)?;
        }
    }
    Ok(())
}

/// Checks that a page chunk lies inside one mapping that takes pages.
pub fn check_chunk(vmas: &[Vma], addr: u64, len: u64) -> Result<()> {
    let end = addr
        .checked_add(len)
        .ok_or_else(|| Error::Invalid(format!("page chunk at {addr:#x} overflows")))?;
    let i = vmas.partition_point(|v| v.end <= addr);
    match vmas.get(i) {
        Some(v) if v.start <= addr && end <= v.end && takes_pages(v) && v.pages > 0 => Ok(()),
        _ => Err(Error::Invalid(format!(
            "page chunk {addr:#x}-{end:#x} lies outside any mapping that holds saved pages"
        ))),
    }
}

/// Sets final protections and memory advice once the pages are in.
pub fn finish_vmas(t: &impl Inject, vmas: &[Vma]) -> Result<()> {
    let mut calls = Vec::new();
    let mut named = Vec::new();
    for (v, barrier) in vmas.iter().zip(merge_barriers(vmas)) {
        if !matches!(
            v.backing,
            Backing::Anonymous | Backing::File(_) | Backing::Shmem(_)
        ) {
            continue;
        }
        let len = v.end - v.start;
        let what = |op: &str| format!("{op} {:#x}-{:#x}", v.start, v.end);
        if let Some((_, clear)) = barrier {
            calls.push(Call::new(
                libc::SYS_madvise,
                &[v.start, len, clear as u64],
                what("clearing the temporary flag of"),
            ));
        }
        if fill_prot(v) != v.prot || v.cow.is_some() {
            calls.push(Call::new(
                libc::SYS_mprotect,
                &[v.start, len, v.prot as u64],
                what("setting the protection of"),
            ));
        }
        if v.cow.is_some() && !v.flags.dontdump {
            // crest may have marked an inherited range (see `crate::memory::cow`).
            calls.push(Call::new(
                libc::SYS_madvise,
                &[v.start, len, libc::MADV_DODUMP as u64],
                what("clearing the temporary MADV_DONTDUMP of"),
            ));
        }
        let advice = [
            (v.flags.dontdump, libc::MADV_DONTDUMP),
            (v.flags.dontfork, libc::MADV_DONTFORK),
            (v.flags.wipeonfork, libc::MADV_WIPEONFORK),
            (v.flags.hugepage, libc::MADV_HUGEPAGE),
            (v.flags.nohugepage, libc::MADV_NOHUGEPAGE),
            (v.flags.mergeable, libc::MADV_MERGEABLE),
            (v.flags.seq_read, libc::MADV_SEQUENTIAL),
            (v.flags.rand_read, libc::MADV_RANDOM),
        ];
        for (on, adv) in advice {
            if on {
                calls.push(Call::new(
                    libc::SYS_madvise,
                    &[v.start, len, adv as u64],
                    what(&format!("madvise({adv})")),
                ));
            }
        }
        for &(gs, ge) in &v.guards {
            calls.push(Call::new(
                libc::SYS_madvise,
                &[gs, ge - gs, MADV_GUARD_INSTALL],
                format!("installing guard region {gs:#x}-{ge:#x}"),
            ));
        }
        if v.flags.locked {
            calls.push(Call::new(libc::SYS_mlock, &[v.start, len], what("locking")));
        }
        if let Some(name) = v
            .name
            .strip_prefix("[anon:")
            .and_then(|n| n.strip_suffix(']'))
        {
            named.push((v, name));
        }
    }
    for c in calls {
        t.queue(c)?;
    }
    for (v, name) in named {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        let at = t.place(&b)?;
        t.queue(Call::new(
            libc::SYS_prctl,
            &[
                libc::PR_SET_VMA as u64,
                libc::PR_SET_VMA_ANON_NAME as u64,
                v.start,
                v.end - v.start,
                at,
            ],
            format!("naming {:#x}-{:#x}", v.start, v.end),
        ))?;
    }
    Ok(())
}

/// Sets brk, the arg/env areas, auxv and the exe link in one
/// PR_SET_MM_MAP call (`exe_fd` open in the task, or -1), queued.
pub fn set_mm_fields(t: &impl Inject, mm: &Mm, exe_fd: i32) -> Result<()> {
    let auxv: Vec<u8> = mm
        .auxv
        .iter()
        .flat_map(|&(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()])
        .flatten()
        .collect();
    // struct prctl_mm_map, then the auxv it points to.
    const MAP_LEN: usize = 104;
    let at = t.place_with(MAP_LEN + auxv.len(), &mut |at, b| {
        let words = [
            mm.start_code,
            mm.end_code,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.brk,
            mm.start_stack,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
            at + MAP_LEN as u64,
        ];
        for (i, v) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b[96..100].copy_from_slice(&(auxv.len() as u32).to_ne_bytes());
        b[100..104].copy_from_slice(&(exe_fd as u32).to_ne_bytes());
        b[MAP_LEN..].copy_from_slice(&auxv);
    })?;
    t.queue(Call::new(
        libc::SYS_prctl,
        &[PR_SET_MM as u64, PR_SET_MM_MAP, at, MAP_LEN as u64, 0],
        "setting the mm fields (PR_SET_MM_MAP)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of planning find the same pages and guard regions in a
    /// mapping of this process with resident, untouched and guard pages.
    #[test]
    fn scan_and_read_plans_agree() {
        let ps = page_size();
        let len = 64 * ps as usize;
        // SAFETY: a fresh private mapping; nothing else references it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        for i in [0u64, 1, 2, 7, 20, 21, 40, 63] {
            // SAFETY: inside the mapping made above.
            unsafe { ((base + i * ps) as *mut u8).write_volatile(1) };
        }
        // SAFETY: madvise on pages of the mapping made above.
        let g = unsafe {
            libc::madvise(
                (base + 30 * ps) as *mut libc::c_void,
                2 * ps as usize,
                MADV_GUARD_INSTALL as i32,
            )
        };
        let vma = || Vma {
            start: base,
            end: base + len as u64,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            shared: false,
            offset: 0,
            backing: Backing::Anonymous,
            flags: VmaFlags::default(),
            name: String::new(),
            guards: Vec::new(),
            pages: 0,
            cow: None,
            cow_drop: Vec::new(),
            huge_page: None,
            aio: None,
            kept: Vec::new(),
            digests: None,
        };
        let pid = std::process::id() as i32;
        let (mut a, mut b) = ([vma()], [vma()]);
        let scanned = plan_pages_scan(pid, &mut a).expect("PAGEMAP_SCAN");
        let read = plan_pages_read(pid, &mut b).unwrap();
        assert_eq!(scanned.runs, read.runs);
        assert_eq!(a[0].pages, 8);
        assert_eq!(a[0].pages, b[0].pages);
        assert_eq!(a[0].guards, b[0].guards);
        if g == 0 {
            assert_eq!(a[0].guards, vec![(base + 30 * ps, base + 32 * ps)]);
        }
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p, len) };
    }
}
