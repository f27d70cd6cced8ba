//! hugetlbfs memory: private and shared MAP_HUGETLB mappings and
//! MFD_HUGETLB memfds (mapped or held as descriptors).
//!
//! Dump: the mapping's file lives on hugetlbfs (`ht` in smaps VmFlags);
//! `fstatfs` of it gives the huge page size.  Private MAP_HUGETLB memory
//! (`/anon_hugepage (deleted)`, private) is anonymous memory whose pages
//! are saved like any other (pagemap reports each small page of a huge
//! one); shared MAP_HUGETLB memory and memfds are shared-memory objects
//! whose content is saved from the file (hugetlbfs files read like any
//! other).  A file of a hugetlbfs mount is refused.
//!
//! Restore: the same size of huge page is asked for (MAP_HUGE_* /
//! MFD_HUGE_* bits); hugetlbfs files take no write(2), so the content of
//! a shared object is copied in through a mapping of it in crest.  Huge
//! pages come from a pool the administrator sizes: before anything is
//! created, restore checks that the pool has enough free pages for every
//! mapping's reservation and every object, and refuses naming the size,
//! what is needed and what is free.

use crate::error::{Error, Result};
use crate::files::DataSource;
use crate::model::{Backing, Checkpoint, ObjectKind};
use crate::objects::ObjectTable;
use crest_sys::proc::MapEntry;
use std::collections::BTreeMap;
use std::os::fd::AsFd;

/// The name the kernel gives MAP_HUGETLB | MAP_ANONYMOUS memory.
const ANON_NAME: &str = "/anon_hugepage (deleted)";
const POOLS: &str = "/sys/kernel/mm/hugepages";

/// The backing of hugetlbfs mapping `m` and its huge page size.
pub fn backing(
    pid: i32,
    m: &MapEntry,
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
) -> std::result::Result<(Backing, u64), String> {
    let at = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let f = std::fs::File::open(&at).map_err(|e| format!("cannot open {at}: {e}"))?;
    let size = crest_sys::mem::hugetlb_page_size(f.as_fd())
        .map_err(|e| e.to_string())?
        .ok_or("the mapping is marked hugetlb but its file is not on hugetlbfs")?;
    if !size.is_power_of_two() || !m.start.is_multiple_of(size) || !m.end.is_multiple_of(size) {
        return Err(format!(
            "the mapping is not aligned to its {} kB huge pages",
            size >> 10
        ));
    }
    if m.is_sysv_shm() {
        return Err("System V shared memory in huge pages (SHM_HUGETLB) is not supported".into());
    }
    if m.path == ANON_NAME && !m.shared {
        return Ok((Backing::Anonymous, size));
    }
    if m.path == ANON_NAME || m.is_memfd() {
        let id = crate::memory::shmem_object(pid, m, objects, data).map_err(|e| e.to_string())?;
        return Ok((Backing::Shmem(id), size));
    }
    Err(format!(
        "a file of a hugetlbfs mount ({}) is not supported (only MAP_HUGETLB memory and \
         MFD_HUGETLB memfds are)",
        m.path
    ))
}

/// The huge page sizes this machine has pools for, in bytes.
pub fn sizes() -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(POOLS) else {
        return Vec::new();
    };
    let mut out: Vec<u64> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(kb << 10)
        })
        .collect();
    out.sort_unstable();
    out
}

fn pool_value(size: u64, file: &str) -> Result<u64> {
    let path = format!("{POOLS}/hugepages-{}kB/{file}", size >> 10);
    let s =
        std::fs::read_to_string(&path).map_err(|e| Error::msg(format!("reading {path}: {e}")))?;
    s.trim()
        .parse()
        .map_err(|_| Error::msg(format!("{path}: not a number: {:?}", s.trim())))
}

/// Free huge pages of `size` that no mapping has reserved yet.
pub fn available(size: u64) -> Result<u64> {
    Ok(pool_value(size, "free_hugepages")?.saturating_sub(pool_value(size, "resv_hugepages")?))
}

/// Huge pages of each size that restoring `ckpt` takes: every private
/// mapping reserves its length when it is made (unless MAP_NORESERVE),
/// and every shared object its size (its shared mappings take no more).
pub fn needed(ckpt: &Checkpoint) -> BTreeMap<u64, (u64, Vec<String>)> {
    let mut need: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    for p in &ckpt.processes {
        for v in &p.mm.vmas {
            if let Some(size) = v.huge_page {
                if !v.shared && !v.flags.noreserve {
                    let e = need.entry(size).or_default();
                    e.0 += (v.end - v.start).div_ceil(size);
                    e.1.push(format!("pid {} mapping {:#x}-{:#x}", p.pid, v.start, v.end));
                }
            }
        }
    }
    for o in &ckpt.objects {
        if let ObjectKind::Shmem(m) = &o.kind {
            if let Some(size) = m.huge_page {
                let e = need.entry(size).or_default();
                e.0 += m.size.div_ceil(size);
                e.1.push(format!("shared memory object {} ({} bytes)", o.id, m.size));
            }
        }
    }
    need
}

/// The image's huge page sizes must exist here (checked at dump too).
pub fn validate(ckpt: &Checkpoint) -> Result<()> {
    let here = sizes();
    for (size, (_, what)) in needed(ckpt) {
        if !here.contains(&size) {
            return Err(Error::Invalid(format!(
                "{}: huge pages of {} kB are not supported on this machine (it has {})",
                what.first().map_or("hugetlb memory", |s| s.as_str()),
                size >> 10,
                here.iter()
                    .map(|s| format!("{} kB", s >> 10))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Before a restore creates anything: the pools hold enough free huge
/// pages for what the image needs.
pub fn check_free(ckpt: &Checkpoint) -> Result<()> {
    for (size, (n, what)) in needed(ckpt) {
        let free = available(size)?;
        if free < n {
            let total = pool_value(size, "nr_hugepages").unwrap_or(0);
            return Err(Error::Invalid(format!(
                "restoring needs {n} free huge pages of {} kB ({}), this machine has {free} \
                 free (nr_hugepages {total}); raise {POOLS}/hugepages-{}kB/nr_hugepages",
                size >> 10,
                what.join(", "),
                size >> 10
            )));
        }
    }
    Ok(())
}

/// Creates the empty hugetlbfs file of a shared MAP_HUGETLB object of
/// `len` bytes: maps such memory in crest, keeps a descriptor of its file
/// (named `/anon_hugepage` as the original) and unmaps it.
pub fn create_anonymous(len: u64, size: u64) -> Result<std::os::fd::OwnedFd> {
    let len = len.max(1).div_ceil(size) * size;
    // SAFETY: a fresh shared mapping nobody else uses.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED
                | libc::MAP_ANONYMOUS
                | libc::MAP_HUGETLB
                | crest_sys::mem::huge_size_bits(size) as i32,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(crest_sys::Error::last_os(format!(
            "mapping {len} bytes of shared memory in {} kB huge pages",
            size >> 10
        ))
        .into());
    }
    let a = p as u64;
    let path = format!("/proc/self/map_files/{a:x}-{:x}", a + len);
    let r = crate::files::open_path(&path, libc::O_RDWR as u32);
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(p, len as usize) };
    r
}

/// Writes `data` at `offset` of hugetlbfs object `fd` (pages of `size`)
/// through a mapping of the huge pages it covers.
pub fn write_at(
    fd: std::os::fd::BorrowedFd<'_>,
    size: u64,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let start = offset / size * size;
    let end = (offset + data.len() as u64).div_ceil(size) * size;
    Ok(crest_sys::mem::write_mapped(
        fd,
        start,
        (end - start) as usize,
        (offset - start) as usize,
        data,
    )?)
}
