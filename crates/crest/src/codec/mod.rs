//! Model ↔ image records, and the image header for this machine.
//!
//! The one place that knows how the [`model`](crate::model) is laid out in
//! records: [`records`] for the current format (3: one record per kernel
//! concept, each a MessagePack map with named fields), [`legacy_v2`] for
//! the PROCESS and FILE postcard records of formats 1 and 2, read and
//! converted into the current model.  `docs/image-format.md` describes
//! both.

pub mod convert;
pub mod inspect;
mod legacy_v2;
mod records;

use crate::error::{Error, Result};
use crate::model::Checkpoint;
use crest_image::{kind, Header, Record, Writer};
use crest_sys::arch;
use std::io::Write;

pub use records::{
    decode_record, encode_record, object_record_kind, MAPPINGS_PER_RECORD, MAX_DEPTH,
};

/// Writes the object table, then each process (its TASK record first, then
/// the records of its other parts), in the current format.
pub fn write_metadata<W: Write>(w: &mut Writer<W>, ckpt: &Checkpoint) -> Result<()> {
    records::write(w, ckpt)
}

/// Writes the model as format 2 did (FILE and PROCESS postcard records).
/// Only for tests that check old images of live processes still restore:
/// the image's version word must then be set to 2 by the caller.
#[doc(hidden)]
pub fn write_metadata_v2<W: Write>(w: &mut Writer<W>, ckpt: &Checkpoint) -> Result<()> {
    for o in &ckpt.objects {
        w.write_record(kind::FILE, 0, &legacy_v2::encode_object(o)?)?;
    }
    for p in &ckpt.processes {
        w.write_record(kind::PROCESS, 0, &legacy_v2::encode_process(p)?)?;
    }
    Ok(())
}

/// Whether records of `kind` carry the model in an image of format
/// `version` (and so must come before the memory pages).
pub fn is_model_record(version: u32, kind: u32) -> bool {
    if version < 3 {
        matches!(kind, kind::PROCESS | kind::FILE)
    } else {
        kind::is_model_v3(kind)
    }
}

/// Assembles the [`Checkpoint`] from the model records of an image, in
/// the order the reader returns them, whatever the image's format
/// version.
#[derive(Debug)]
pub struct ModelReader {
    version: u32,
    ckpt: Checkpoint,
    v3: records::Assembler,
}

impl ModelReader {
    /// For an image of format `version` (from the reader's preamble).
    pub fn new(version: u32) -> Self {
        ModelReader {
            version,
            ckpt: Checkpoint::default(),
            v3: records::Assembler::default(),
        }
    }

    /// Whether `kind` is a model record of this image's version.
    pub fn is_model(&self, kind: u32) -> bool {
        is_model_record(self.version, kind)
    }

    /// Takes in one model record (`is_model(rec.kind)`).
    pub fn feed(&mut self, rec: &Record<'_>) -> Result<()> {
        if self.version < 3 {
            match rec.kind {
                kind::FILE => {
                    let o = legacy_v2::decode_object(rec.payload)?;
                    records::push_object(&mut self.ckpt, o)
                }
                kind::PROCESS => {
                    let p = legacy_v2::decode_process(rec.payload)?;
                    self.ckpt.processes.push(p);
                    Ok(())
                }
                k => Err(unexpected(k, rec.offset, self.version)),
            }
        } else if matches!(rec.kind, kind::PROCESS | kind::FILE) {
            Err(unexpected(rec.kind, rec.offset, self.version))
        } else {
            self.v3.feed(&mut self.ckpt, rec)
        }
    }

    /// The processes read so far: complete ones only (the last one once
    /// [`finish`](ModelReader::finish) was called), for looking up mappings
    /// while pages stream.
    pub fn processes(&self) -> &[crate::model::Process] {
        &self.ckpt.processes
    }

    /// Ends the model: the last process must be complete.  Call it when
    /// the first record after the model arrives; calling it again does
    /// nothing.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(p) = self.v3.finish()? {
            self.ckpt.processes.push(p);
        }
        Ok(())
    }

    /// The whole model ([`finish`](ModelReader::finish) first).
    pub fn take(&mut self) -> Result<Checkpoint> {
        self.finish()?;
        Ok(std::mem::take(&mut self.ckpt))
    }
}

fn unexpected(k: u32, offset: u64, version: u32) -> Error {
    Error::Invalid(format!(
        "{} record at byte {offset} in a format {version} image: that format does not \
         have it",
        kind::name(k)
    ))
}

/// The header describing this machine.
pub fn header_here() -> Result<Header> {
    let [sysname, nodename, release, version, machine] = crest_sys::process::uname()?;
    Ok(Header {
        producer: format!("crest {}", env!("CARGO_PKG_VERSION")),
        arch: arch::ARCH.to_string(),
        page_size: crest_sys::process::page_size() as u32,
        uts_sysname: sysname,
        uts_nodename: nodename,
        uts_release: release,
        uts_version: version,
        uts_machine: machine,
        cpu_vendor: arch::cpu_vendor(),
        xsave_features: arch::xcr0(),
        xsave_size: arch::xsave_size() as u32,
        created_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// Refuses an image this machine cannot run, saying exactly why.
pub fn check_header(img: &Header) -> Result<()> {
    let here = header_here()?;
    let mut why = Vec::new();
    if img.arch != here.arch {
        why.push(format!(
            "it is for {} and this machine is {}",
            img.arch, here.arch
        ));
    }
    if img.page_size != here.page_size {
        why.push(format!(
            "its page size is {} and this machine's is {}",
            img.page_size, here.page_size
        ));
    }
    let missing = img.xsave_features & !here.xsave_features;
    if missing != 0 {
        let names: Vec<String> = (0..64)
            .filter(|b| missing & (1u64 << b) != 0)
            .map(|b| format!("{} (bit {b})", arch::xfeature_name(b)))
            .collect();
        why.push(format!(
            "the image's CPU had register state this CPU lacks: {}",
            names.join(", ")
        ));
    } else if img.xsave_size != here.xsave_size {
        why.push(format!(
            "its XSAVE area is {} bytes and this CPU's is {}",
            img.xsave_size, here.xsave_size
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(Error::Incompatible(format!(
            "this image cannot be restored on this machine: {}",
            why.join("; ")
        )))
    }
}
