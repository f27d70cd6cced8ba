//! `inspect`: read a whole image (verifying it) and describe what it holds.

use crate::codec;
use crate::error::Result;
use crate::model::{Checkpoint, ObjectKind};
use crest_image::{kind, Reader};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;

/// The document `crest inspect --json` prints.  Its JSON Schema
/// ([`json_schema`]) is generated from these types and the model's, and
/// committed as `docs/image-schema.json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Inspection {
    /// The image header.
    pub header: HeaderView,
    /// Length of the image stream in bytes.
    pub image_bytes: u64,
    /// Records before the tail (the header record included).
    pub records: u64,
    /// The model: every object and process the image holds.
    pub checkpoint: Checkpoint,
    /// Pages stored per mapping, keyed by "space:start" (space: the
    /// process's index in `checkpoint.processes`; start: the mapping's
    /// start address in hex).
    pub pages: BTreeMap<String, u64>,
    /// Bytes of file contents stored (unlinked files, pipe buffers,
    /// shared memory).
    pub file_data_bytes: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HeaderView {
    /// Image format version (from the preamble).
    pub format_version: u32,
    /// The program that wrote the image ("crest 0.1.0").
    pub producer: String,
    /// Architecture ("x86_64").
    pub arch: String,
    pub page_size: u32,
    /// uname sysname, release and version of the dumping machine.
    pub kernel: String,
    /// uname machine.
    pub machine: String,
    /// uname nodename.
    pub nodename: String,
    pub cpu_vendor: String,
    /// XCR0 of the dumping CPU, in hex.
    pub xsave_features: String,
    /// XSAVE area size of the dumping CPU in bytes.
    pub xsave_size: u32,
    pub created_unix_secs: u64,
}

/// The JSON Schema of the `inspect --json` document, as pretty JSON.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Inspection);
    serde_json::to_string_pretty(&schema).expect("a schema serializes") + "\n"
}

pub fn inspect<R: Read>(r: R) -> Result<Inspection> {
    let mut reader = Reader::new(r)?;
    let h = reader.header().clone();
    let format_version = reader.format_version();
    let ps = reader.page_size();
    let mut model = codec::ModelReader::new(format_version);
    let mut pages: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut file_data_bytes = 0;
    while let Some(rec) = reader.next_record()? {
        if model.is_model(rec.kind) {
            model.feed(&rec)?;
            continue;
        }
        model.finish()?;
        match rec.kind {
            kind::FILE_DATA => file_data_bytes += rec.file_data()?.data.len() as u64,
            kind::PAGES => {
                // Dense or sparse: `nr_pages` counts the pages it carries.
                let c = rec.page_chunk(ps)?;
                let start = model
                    .processes()
                    .get(c.space as usize)
                    .and_then(|p| {
                        p.mm.vmas
                            .iter()
                            .find(|v| v.start <= c.addr && c.addr < v.end)
                    })
                    .map(|v| v.start)
                    .unwrap_or(c.addr);
                *pages.entry((c.space, start)).or_default() += c.nr_pages;
            }
            _ => {}
        }
    }
    Ok(Inspection {
        header: HeaderView {
            format_version,
            producer: h.producer,
            arch: h.arch,
            page_size: h.page_size,
            kernel: format!("{} {} {}", h.uts_sysname, h.uts_release, h.uts_version),
            machine: h.uts_machine,
            nodename: h.uts_nodename,
            cpu_vendor: h.cpu_vendor,
            xsave_features: format!("{:#x}", h.xsave_features),
            xsave_size: h.xsave_size,
            created_unix_secs: h.created_unix_secs,
        },
        image_bytes: reader.offset(),
        records: reader.records_read(),
        checkpoint: model.take()?,
        pages: pages
            .into_iter()
            .map(|((s, a), n)| (format!("{s}:{a:x}"), n))
            .collect(),
        file_data_bytes,
    })
}

impl Inspection {
    /// Pages stored for the mapping starting at `start` of process `space`.
    pub fn pages_of(&self, space: usize, start: u64) -> u64 {
        self.pages
            .get(&format!("{space}:{start:x}"))
            .copied()
            .unwrap_or(0)
    }

    /// A short description of an object.
    pub fn describe_object(&self, id: u32) -> String {
        match self.checkpoint.object(id) {
            Some(ObjectKind::File(f)) => f.path.clone(),
            Some(ObjectKind::Pipe(p)) => match &p.external {
                Some(key) => format!("pipe {key} to outside the tree (supplied on restore)"),
                None => format!("pipe ({} bytes in flight)", p.data_len),
            },
            Some(ObjectKind::Shmem(m)) => match &m.kind {
                crate::model::ShmemKind::Anonymous => {
                    format!("shared memory #{id} ({} bytes)", m.size)
                }
                crate::model::ShmemKind::Memfd { name, .. } => {
                    format!("memfd:{name} #{id} ({} bytes)", m.size)
                }
                crate::model::ShmemKind::SysV { key, shmid, .. } => {
                    format!("SysV shm id {shmid} key {key:#x} #{id} ({} bytes)", m.size)
                }
            },
            Some(ObjectKind::Cow(c)) => format!(
                "copy-on-write {:#x}-{:#x} #{id} ({} shared pages)",
                c.start, c.end, c.pages
            ),
            Some(ObjectKind::Open(o)) => match &o.target {
                crate::model::OpenTarget::Regular(f) => f.path.clone(),
                crate::model::OpenTarget::Directory { path } => format!("{path}/ (directory)"),
                crate::model::OpenTarget::CharDevice { path, .. } => path.clone(),
                crate::model::OpenTarget::Fifo { path } => format!("{path} (fifo)"),
                crate::model::OpenTarget::FifoData { path, pipe } => format!(
                    "{path} (fifo, {} bytes in flight)",
                    match self.checkpoint.object(*pipe) {
                        Some(ObjectKind::Pipe(p)) => p.data_len,
                        _ => 0,
                    }
                ),
                crate::model::OpenTarget::Memfd { shmem } => self.describe_object(*shmem),
                crate::model::OpenTarget::PipeEnd { pipe, write } => format!(
                    "pipe #{pipe} {} end{}",
                    if *write { "write" } else { "read" },
                    match self.checkpoint.object(*pipe) {
                        Some(ObjectKind::Pipe(p)) => match &p.external {
                            Some(key) => format!(", {key} to outside the tree"),
                            None => format!(", {} bytes in flight", p.data_len),
                        },
                        _ => String::new(),
                    }
                ),
                crate::model::OpenTarget::Unlinked { path, size, .. } => {
                    format!("{path} (deleted, {size} bytes saved)")
                }
                crate::model::OpenTarget::Unix(u) => crate::net::unix::describe(u),
                t @ (crate::model::OpenTarget::Inet(_) | crate::model::OpenTarget::Netlink(_)) => {
                    crate::net::describe(t)
                }
                crate::model::OpenTarget::PtyMaster(p) => format!(
                    "pty master of /dev/pts/{} ({}x{})",
                    p.index, p.winsize[0], p.winsize[1]
                ),
                crate::model::OpenTarget::PtySlave { index, .. } => {
                    format!("pty slave /dev/pts/{index}")
                }
                crate::model::OpenTarget::TtyAlias { index } => {
                    format!("/dev/tty, naming pty slave /dev/pts/{index}")
                }
                crate::model::OpenTarget::SystemTty(t) => crate::files::console::describe(t),
                crate::model::OpenTarget::PosixMq { name, ipc_ns } => {
                    crate::ns::mqueue::describe(name, *ipc_ns, o.flags)
                }
                t => crate::files::events::describe(t).unwrap_or_else(|| format!("{t:?}")),
            },
            None => format!("<missing object {id}>"),
        }
    }
}
