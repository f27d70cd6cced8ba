//! Model ↔ image records, and the image header for this machine.

use crate::error::{Error, Result};
use crate::model::{Checkpoint, Object, Process};
use crest_image::{kind, Header, Writer};
use crest_sys::arch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::msg(format!("encoding the model: {e}")))
}

pub fn decode<T: DeserializeOwned>(b: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(b)
        .map_err(|e| Error::Invalid(format!("cannot decode a {what} record: {e}")))
}

/// Writes the object table and the processes.
pub fn write_metadata<W: Write>(w: &mut Writer<W>, ckpt: &Checkpoint) -> Result<()> {
    for o in &ckpt.objects {
        w.write_record(kind::FILE, 0, &encode(o)?)?;
    }
    if ckpt.namespaces != Default::default() {
        w.write_record(kind::NAMESPACES, 0, &encode(&ckpt.namespaces)?)?;
    }
    for p in &ckpt.processes {
        w.write_record(kind::PROCESS, 0, &encode(p)?)?;
    }
    Ok(())
}

pub fn decode_object(b: &[u8]) -> Result<Object> {
    decode(b, "object")
}

pub fn decode_process(b: &[u8]) -> Result<Process> {
    decode(b, "process")
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
