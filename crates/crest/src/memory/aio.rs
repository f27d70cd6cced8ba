//! AIO contexts (io_setup): the ring mapping `/[aio] (deleted)`.
//!
//! A context's id is the address of its ring, a shared mapping of the
//! context's anonymous file that starts with a struct aio_ring header (id,
//! nr, head, tail, magic, features, header length: 32 bytes) followed by
//! `nr` struct io_event slots of 32 bytes.  Completed events wait between
//! head and tail until io_getevents (or the program itself, through the
//! ring) reaps them.
//!
//! Dump reads the header and the unreaped events from the ring.
//!
//! Restore: io_setup with a request count that gives a ring of the same
//! size (the kernel sizes it from max(nr_events, 4 * possible CPUs) * 2,
//! rounded up to whole pages: restore checks this machine gives the same
//! `nr`), then mremap of the ring to the original address (the kernel
//! allows it: aio_ring_mremap moves the context's id with it).  The
//! kernel keeps its own copy of the tail, so the ring's head and tail
//! are brought where they were by requests that complete at once (reads
//! of 0 bytes from a memfd): `head` of them submitted and reaped, then
//! `tail - head` submitted and left; their events are then overwritten
//! with the saved ones.  The kernel's count of free request slots comes
//! out as it was (the unreaped events hold theirs).
//!
//! Requests in flight (submitted, not completed) live only in the kernel:
//! nothing in /proc or in the ring shows them, and the only way to count
//! the free request slots is to submit requests, which changes the ring.
//! So crest cannot tell whether a context has requests in flight, and a
//! dump refuses every AIO context unless the caller states it has none
//! ([`crate::DumpOptions::aio_idle`]).

use crate::error::{Error, Result};
use crate::model::{AioRing, Backing, Checkpoint, Vma};
use crate::task::freeze::Inject;
use crate::Obstacle;
use crest_sys::proc::MapEntry;

/// The name of a ring mapping in /proc/PID/maps.
pub const RING_NAME: &str = "/[aio] (deleted)";
const HEADER: usize = 32;
const EVENT: usize = 32;
const RING_MAGIC: u32 = 0xa10a_10a1;
/// Dummy requests per io_submit at restore.
const BATCH: u64 = 64;
const IOCB_CMD_PREAD: u16 = 0;

/// Reads the state of the ring mapped at `m`.
pub fn collect(pid: i32, m: &MapEntry) -> std::result::Result<AioRing, String> {
    let len = (m.end - m.start) as usize;
    if !(m.read && m.write && m.shared) || m.exec {
        return Err("an AIO ring whose protection was changed is not supported".into());
    }
    let mut buf = vec![0u8; len];
    crest_sys::mem::read(pid, m.start, &mut buf).map_err(|e| e.to_string())?;
    let word = |i: usize| u32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap());
    let (nr, head, tail, magic) = (word(1), word(2), word(3), word(4));
    if magic != RING_MAGIC || word(6) != 0 || word(7) as usize != HEADER {
        return Err(format!(
            "the AIO ring's header is not one this kernel writes (magic {magic:#x})"
        ));
    }
    if nr as usize != (len - HEADER) / EVENT || head >= nr || tail >= nr {
        return Err(format!(
            "the AIO ring's header is inconsistent (nr {nr}, head {head}, tail {tail}, \
             {len} bytes)"
        ));
    }
    let mut events = Vec::new();
    let mut i = head;
    while i != tail {
        let at = HEADER + i as usize * EVENT;
        let q = |k: usize| u64::from_ne_bytes(buf[at + k * 8..at + k * 8 + 8].try_into().unwrap());
        events.push((q(0), q(1), q(2) as i64, q(3) as i64));
        i = (i + 1) % nr;
    }
    Ok(AioRing {
        nr,
        head,
        tail,
        events,
    })
}

/// A dump refuses AIO contexts unless told none has requests in flight.
pub fn refuse_unverified(pid: i32, vmas: &[Vma], obstacles: &mut Vec<Obstacle>) {
    for v in vmas.iter().filter(|v| v.backing == Backing::Aio) {
        obstacles.push(Obstacle {
            pid,
            object: format!("AIO context {:#x}", v.start),
            reason: "requests in flight on an AIO context cannot be detected (the kernel \
                     shows them nowhere) and would be lost; if the program has none, dump \
                     with --aio-idle"
                .into(),
        });
    }
}

/// The number of possible CPUs (/sys/devices/system/cpu/possible).
pub fn possible_cpus() -> Result<u32> {
    let path = "/sys/devices/system/cpu/possible";
    let s =
        std::fs::read_to_string(path).map_err(|e| Error::msg(format!("reading {path}: {e}")))?;
    parse_cpu_list(s.trim()).ok_or_else(|| Error::msg(format!("{path}: cannot parse {s:?}")))
}

fn parse_cpu_list(s: &str) -> Option<u32> {
    let mut n = 0;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// The `nr` of the ring io_setup(`req`) makes (fs/aio.c: ioctx_alloc,
/// aio_setup_ring).
fn ring_slots(req: u32, cpus: u32, page: u64) -> u32 {
    let events = req.max(cpus * 4) as u64 * 2 + 2;
    let pages = (HEADER as u64 + EVENT as u64 * events).div_ceil(page);
    ((pages * page - HEADER as u64) / EVENT as u64) as u32
}

/// The request count restore passes to io_setup for a ring of `nr` slots.
fn request_for(nr: u32) -> u32 {
    nr.saturating_sub(2) / 2
}

/// Every AIO ring of the image can be made here with the same size.
pub fn validate(ckpt: &Checkpoint) -> Result<()> {
    let mut cpus = None;
    for p in &ckpt.processes {
        for v in p.mm.vmas.iter().filter(|v| v.backing == Backing::Aio) {
            let what = format!("pid {}: AIO context {:#x}", p.pid, v.start);
            let Some(r) = &v.aio else {
                return Err(Error::Invalid(format!("{what}: no ring state")));
            };
            let page = crate::memory::page_size();
            if (v.end - v.start)
                .checked_sub(HEADER as u64)
                .map(|n| n / EVENT as u64)
                != Some(r.nr as u64)
                || r.head >= r.nr
                || r.tail >= r.nr
                || r.events.len() as u64 != (r.tail + r.nr - r.head) as u64 % r.nr as u64
            {
                return Err(Error::Invalid(format!("{what}: inconsistent ring state")));
            }
            let c = match cpus {
                Some(c) => c,
                None => *cpus.insert(possible_cpus()?),
            };
            let here = ring_slots(request_for(r.nr), c, page);
            if here != r.nr {
                return Err(Error::Invalid(format!(
                    "{what}: its ring has {} slots; io_setup on this machine ({c} possible \
                     CPUs) makes rings of {here}",
                    r.nr
                )));
            }
        }
    }
    Ok(())
}

/// Recreates the context of ring mapping `v` (see the module comment).
pub fn restore(t: &impl Inject, v: &Vma, r: &AioRing) -> Result<()> {
    let at = v.start;
    let len = v.end - v.start;
    let what = |s: &str| format!("AIO context {at:#x}: {s}");
    let s = t.scratch();
    // Scratch: context id at 0, memfd name at 8, the iocb at 64, the
    // iocb pointers at 128, reaped events after them.
    let (iocb, ptrs) = (s + 64, s + 128);
    let events = ptrs + BATCH * 8;
    t.write_scratch(0, &[0u8; 8])?;
    t.call(
        libc::SYS_io_setup,
        &[request_for(r.nr) as u64, s],
        &what("io_setup"),
    )?;
    let mut id = [0u8; 8];
    t.read_scratch(0, &mut id)?;
    let made = u64::from_ne_bytes(id);
    if made != at {
        let got = t.call(
            libc::SYS_mremap,
            &[
                made,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                at,
            ],
            &what("moving the ring to its address"),
        )?;
        if got != at {
            return Err(Error::msg(what(&format!("the ring moved to {got:#x}"))));
        }
    }
    let header = read_header(t.pid(), at)?;
    if header.0 != r.nr {
        return Err(Error::msg(what(&format!(
            "io_setup made a ring of {} slots, not {}",
            header.0, r.nr
        ))));
    }
    let queued = (r.tail + r.nr - r.head) % r.nr;
    if r.head > 0 || queued > 0 {
        t.write_scratch(8, b"crest-aio\0")?;
        let fd = t.call(
            libc::SYS_memfd_create,
            &[s + 8, libc::MFD_CLOEXEC as u64],
            &what("making a file for the requests that set the ring's tail"),
        )?;
        let mut cb = [0u8; 64];
        cb[16..18].copy_from_slice(&IOCB_CMD_PREAD.to_ne_bytes());
        cb[20..24].copy_from_slice(&(fd as u32).to_ne_bytes());
        cb[24..32].copy_from_slice(&s.to_ne_bytes());
        t.write_scratch(iocb - s, &cb)?;
        let table: Vec<u8> = (0..BATCH).flat_map(|_| iocb.to_ne_bytes()).collect();
        t.write_scratch(ptrs - s, &table)?;
        let submit = |n: u64| -> Result<()> {
            let got = t.call(libc::SYS_io_submit, &[at, n, ptrs], &what("io_submit"))?;
            if got != n {
                return Err(Error::msg(what(&format!("io_submit took {got} of {n}"))));
            }
            Ok(())
        };
        let run = (|| -> Result<()> {
            let mut left = r.head as u64;
            while left > 0 {
                let n = left.min(BATCH);
                submit(n)?;
                let got = t.call(
                    libc::SYS_io_getevents,
                    &[at, n, n, events, 0],
                    &what("io_getevents"),
                )?;
                if got != n {
                    return Err(Error::msg(what(&format!(
                        "io_getevents reaped {got} of {n}"
                    ))));
                }
                left -= n;
            }
            let mut left = queued as u64;
            while left > 0 {
                let n = left.min(BATCH);
                submit(n)?;
                left -= n;
            }
            Ok(())
        })();
        t.call(libc::SYS_close, &[fd], &what("closing the memfd"))?;
        run?;
    }
    let (_, head, tail) = read_header(t.pid(), at)?;
    if (head, tail) != (r.head, r.tail) {
        return Err(Error::msg(what(&format!(
            "the ring's head and tail came out {head} and {tail}, not {} and {}",
            r.head, r.tail
        ))));
    }
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::with_capacity(r.events.len());
    for (i, e) in r.events.iter().enumerate() {
        let slot = (r.head as u64 + i as u64) % r.nr as u64;
        let mut b = Vec::with_capacity(EVENT);
        b.extend_from_slice(&e.0.to_ne_bytes());
        b.extend_from_slice(&e.1.to_ne_bytes());
        b.extend_from_slice(&e.2.to_ne_bytes());
        b.extend_from_slice(&e.3.to_ne_bytes());
        runs.push((at + HEADER as u64 + slot * EVENT as u64, b));
    }
    let refs: Vec<(u64, &[u8])> = runs.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    crest_sys::mem::write_runs(t.pid(), &refs)?;
    Ok(())
}

/// (nr, head, tail) of the ring at `at` of `pid`.
fn read_header(pid: i32, at: u64) -> Result<(u32, u32, u32)> {
    let mut h = [0u8; 16];
    crest_sys::mem::read(pid, at, &mut h)?;
    let w = |i: usize| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().unwrap());
    Ok((w(1), w(2), w(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("0,2"), Some(2));
        assert_eq!(parse_cpu_list("x"), None);
    }

    /// The request count chosen for a ring gives that ring back.
    #[test]
    fn ring_sizes_round_trip() {
        for cpus in [1, 2, 4, 64] {
            for req in [1, 8, 100, 128, 1000, 4096] {
                let nr = ring_slots(req, cpus, 4096);
                assert_eq!(ring_slots(request_for(nr), cpus, 4096), nr, "{req} {cpus}");
            }
        }
        assert_eq!(ring_slots(128, 2, 4096), 383);
    }
}
