//! Where a dumped task's self-unwinding trampoline lives: the zero padding
//! after the ELF image in its vDSO mapping.
//!
//! The kernel maps the vDSO as whole pages, and its ELF image (code, data,
//! section headers) ends before the last page does: the bytes after it are
//! zero and nothing ever executes or reads them.  crest writes the 70
//! bytes of [`crest_sys::trampoline::TRAMPOLINE`] there through
//! /proc/PID/mem before the first injected syscall, so every injected call
//! — the first one too — can unwind by itself (see `crest_sys::inject`),
//! and writes zeros back when the session ends.  (The vDSO is mapped
//! read-execute but may-write, so the write through /proc/PID/mem is
//! allowed, as for a debugger's breakpoint: the page becomes the process's
//! private copy, with the same contents once the bytes are put back.)
//!
//! If crest dies during a session, the trampoline stays in the padding:
//! the program never runs it, and the vDSO checksum a dump records is
//! taken over the ELF image with the padding as zeros, so a later dump
//! and restore are not affected.  A process without a vDSO, or whose vDSO
//! has no room, is refused: there is no other place to put the code
//! without a first, unprotected injected call.

use crate::error::{Error, Result};
use crest_sys::mem::ProcMem;
use crest_sys::proc::MapEntry;
use crest_sys::trampoline::TRAMPOLINE;

/// The trampoline, written in a task's vDSO padding.
pub struct Trampoline {
    pub addr: u64,
}

/// The length of the ELF image at the start of `vdso`: the end of the
/// last program segment, section or header table in it (None if it is
/// not a 64-bit ELF image).
pub fn elf_image_len(vdso: &[u8]) -> Option<usize> {
    if vdso.len() < 64 || &vdso[..4] != b"\x7fELF" || vdso[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(vdso.get(o..o + 2)?.try_into().ok()?) as u64);
    let u32_at = |o: usize| Some(u32::from_le_bytes(vdso.get(o..o + 4)?.try_into().ok()?) as u64);
    let u64_at = |o: usize| Some(u64::from_le_bytes(vdso.get(o..o + 8)?.try_into().ok()?));
    let (phoff, shoff) = (u64_at(0x20)?, u64_at(0x28)?);
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    let (shentsize, shnum) = (u16_at(0x3a)?, u16_at(0x3c)?);
    let mut end = 64u64
        .max(phoff + phentsize * phnum)
        .max(shoff + shentsize * shnum);
    for i in 0..phnum {
        let p = (phoff + i * phentsize) as usize;
        end = end.max(u64_at(p + 8)? + u64_at(p + 32)?);
    }
    for i in 0..shnum {
        let s = (shoff + i * shentsize) as usize;
        const SHT_NOBITS: u64 = 8;
        if u32_at(s + 4)? != SHT_NOBITS {
            end = end.max(u64_at(s + 0x18)? + u64_at(s + 0x20)?);
        }
    }
    usize::try_from(end).ok().filter(|&e| e <= vdso.len())
}

/// Where the trampoline goes in a vDSO of these bytes: 16-byte aligned
/// after the image, if the bytes there are zero (or hold the trampoline
/// from an earlier crest that died).
fn spot(vdso: &[u8]) -> Option<usize> {
    let at = elf_image_len(vdso)?.div_ceil(16) * 16;
    let there = vdso.get(at..at + TRAMPOLINE.len())?;
    (there.iter().all(|&b| b == 0) || there == TRAMPOLINE).then_some(at)
}

/// The vDSO's bytes as the kernel maps them fresh: a trampoline left in
/// the padding reads as zeros.
pub fn pristine_vdso(mut vdso: Vec<u8>) -> Vec<u8> {
    if let Some(at) = spot(&vdso) {
        vdso[at..at + TRAMPOLINE.len()].fill(0);
    }
    vdso
}

impl Trampoline {
    /// Writes the trampoline into the vDSO padding of process `pid`.
    pub fn install(mem: &ProcMem, pid: i32, maps: &[MapEntry]) -> Result<Trampoline> {
        let v = maps.iter().find(|m| m.path == "[vdso]").ok_or_else(|| {
            Error::msg(format!(
                "pid {pid} has no vDSO: crest needs its padding for the code that lets \
                 the process unwind by itself if crest dies"
            ))
        })?;
        let mut bytes = vec![0u8; (v.end - v.start) as usize];
        mem.read(v.start, &mut bytes)?;
        let at = spot(&bytes).ok_or_else(|| {
            Error::msg(format!(
                "pid {pid}: its vDSO at {:#x} has no {}-byte zero padding after its ELF image \
                 for the code that lets the process unwind by itself if crest dies",
                v.start,
                TRAMPOLINE.len()
            ))
        })?;
        let addr = v.start + at as u64;
        mem.write(addr, &TRAMPOLINE)?;
        let mut check = [0u8; TRAMPOLINE.len()];
        mem.read(addr, &mut check)?;
        if check != TRAMPOLINE {
            return Err(Error::msg(format!(
                "pid {pid}: writing crest's trampoline into the vDSO at {addr:#x} did not take"
            )));
        }
        Ok(Trampoline { addr })
    }

    /// Puts the padding's zeros back.
    pub fn remove(&self, mem: &ProcMem) -> Result<()> {
        Ok(mem.write(self.addr, &[0u8; TRAMPOLINE.len()])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_vdso() -> Vec<u8> {
        let maps = crest_sys::proc::read_maps(std::process::id() as i32).unwrap();
        let v = maps.iter().find(|m| m.path == "[vdso]").expect("a vDSO");
        let mem = ProcMem::open(std::process::id() as i32, false).unwrap();
        let mut b = vec![0u8; (v.end - v.start) as usize];
        mem.read(v.start, &mut b).unwrap();
        b
    }

    #[test]
    fn this_vdso_has_room() {
        let v = own_vdso();
        let n = elf_image_len(&v).expect("an ELF image");
        assert!(n < v.len() && v[n..].iter().all(|&b| b == 0));
        let at = spot(&v).expect("room for the trampoline");
        let mut left = v.clone();
        left[at..at + TRAMPOLINE.len()].copy_from_slice(&TRAMPOLINE);
        assert_eq!(spot(&left), Some(at));
        assert_eq!(pristine_vdso(left), v);
    }

    #[test]
    fn not_elf_or_no_room() {
        assert_eq!(elf_image_len(&[0u8; 128]), None);
        let mut v = own_vdso();
        let n = elf_image_len(&v).unwrap();
        v.truncate(n.div_ceil(16) * 16 + 4);
        assert_eq!(spot(&v), None);
    }
}
