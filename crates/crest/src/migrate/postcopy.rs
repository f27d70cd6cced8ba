//! The source of a post-copy migration (`crest migrate --lazy`).
//!
//! The tree is frozen and its state collected as for a dump; the image
//! sent holds everything but the pages the destination can fill on
//! demand (private anonymous memory, see `crate::memory::lazy::eligible`),
//! which are listed instead (LAZY_INDEX).  The destination restores at
//! once and its tree runs; meanwhile the source sends those pages from
//! the frozen tree's memory (process_vm_readv), the ones the destination
//! asks for (PAGE_REQ: a task waits on them) before the rest, in order.
//! The source tree is killed once the destination says every page is in
//! (ALL_IN).
//!
//! Failures:
//! - the destination refuses the stream or its restore fails (REFUSE,
//!   FAILED): its tree never ran; the source tree resumes here.
//! - after the stream, the connection breaks, the destination stops
//!   answering, or a page of the source tree cannot be read (then the
//!   destination hears ABORT): the destination kills its tree (it cannot
//!   run without its memory).  That tree may have run already, with
//!   side effects (output, messages sent) a resumed source would make a
//!   second time; so by default the source tree is killed too: the
//!   migration failed and the tree is gone, with nothing done twice.
//!   `--lazy-resume-on-failure` resumes the source tree instead, for
//!   trees whose effects may be repeated (at least once instead of at
//!   most once).  If the source crest itself dies meanwhile, a watchdog
//!   it forked kills the frozen tree (with `--lazy-resume-on-failure`
//!   none: the kernel lets the tree go, it resumes), and the destination
//!   kills its own.

use super::postcopy_dest::{encode_runs, RUN_LEN};
use super::proto;
use super::source::{reply, unexpected, FrameWriter, MigrateOptions, MigrateReport, Session};
use super::transport::Sender;
use crate::dump::{collect, DumpOptions};
use crate::error::{Context, Error, Result};
use crate::memory::lazy::eligible;
use crate::memory::PagePlan;
use crate::task::freeze::FrozenTree;
use crate::{codec, files, memory};
use crest_image::Writer;
use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the lazy phase of a post-copy migration took.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LazyReport {
    /// Pages left out of the image, sent afterwards.
    pub pages: u64,
    /// Of those, sent because the destination asked for them.
    pub requested_pages: u64,
    /// Bytes of the image sent while frozen (metadata and other pages).
    pub image_bytes: u64,
    /// From the freeze until the destination said every page is in.
    pub all_in_ms: f64,
}

/// Pages per PAGES message.
const PUSH_PAGES: u64 = 256;

/// One run of pages to send: (space, address, pages, pid, readable).
type LazyRun = (u32, u64, u64, i32, bool);

/// Migrates `pid` post-copy over the session `s`.
pub(super) fn send(
    pid: i32,
    s: Session,
    opts: &MigrateOptions,
    progress: &mut dyn FnMut(u64, u64),
    t0: Instant,
) -> Result<MigrateReport> {
    let Session {
        mut tx,
        rx,
        handover,
    } = s;
    let Some(rx) = rx else {
        return Err(Error::msg(
            "--lazy needs a reply channel (the destination asks for pages): not with --one-way",
        ));
    };
    if handover {
        return Err(Error::msg(
            "--lazy: the destination shares this PID space, so the restored tree would need the \
             PIDs the frozen tree holds while it serves its pages; restore in another PID \
             namespace or host, or migrate without --lazy",
        ));
    }
    let _lock = crate::dump::lock::take(pid)?;
    let frozen = FrozenTree::freeze(pid)?;
    let t_frozen = Instant::now();
    let mut obstacles = Vec::new();
    let c = collect(&frozen, &mut obstacles, None, &DumpOptions::default())
        .context(|| format!("collecting the state of pid {pid}"))?;
    let Some(mut c) = c else {
        return Err(Error::Unsupported(obstacles));
    };
    let unrestorable = crate::restore::plan::check_here(&c.ckpt);
    if !unrestorable.is_empty() {
        return Err(Error::Unsupported(unrestorable));
    }
    // The pages left out, and the plans of the others.
    let mut lazy: Vec<LazyRun> = Vec::new();
    let mut plans = Vec::new();
    for (space, (p, plan)) in c.ckpt.processes.iter().zip(&c.plans).enumerate() {
        let mut rest = PagePlan { runs: Vec::new() };
        for (v, runs) in p.mm.vmas.iter().zip(&plan.runs) {
            if eligible(v) {
                let readable = v.prot & libc::PROT_READ as u32 != 0;
                lazy.extend(
                    runs.iter()
                        .map(|&(a, n)| (space as u32, a, n, p.pid, readable)),
                );
                rest.runs.push(Vec::new());
            } else {
                rest.runs.push(runs.clone());
            }
        }
        plans.push(rest);
    }
    let mut index = Vec::new();
    let listed: Vec<(u32, u64, u64)> = lazy.iter().map(|r| (r.0, r.1, r.2)).collect();
    encode_runs(&listed, &mut index);
    for part in index.chunks((1 << 20) / RUN_LEN * RUN_LEN) {
        tx.send(proto::LAZY_INDEX, part)?;
    }
    let mut w = Writer::new(FrameWriter::new(tx), &codec::header_here()?)?;
    codec::write_metadata(&mut w, &c.ckpt)?;
    files::write_data(&c.data, &mut w)?;
    crate::ns::mnt::tmpfs::write_pending(&mut w)?;
    let mut pages_written = 0;
    for (space, (p, plan)) in c.ckpt.processes.iter().zip(&plans).enumerate() {
        let s = memory::write_pages(
            p.pid,
            space as u32,
            &p.mm.vmas,
            plan,
            false,
            &mut w,
            &mut |_| {},
        )?;
        pages_written += s.pages_written;
    }
    let image_bytes = w.bytes_written();
    let (tx, _) = w
        .finish()?
        .finish()
        .context(|| "sending the image to the destination".into())?;
    let total_pages: u64 = lazy.iter().map(|r| r.2).sum();
    let mut report = MigrateReport {
        pid,
        image_bytes,
        pages_written: pages_written + total_pages,
        frozen_copied_pages: pages_written,
        lazy: Some(LazyReport {
            pages: total_pages,
            image_bytes,
            ..Default::default()
        }),
        ..Default::default()
    };
    // From here on the destination's tree may run: if this crest dies,
    // the default policy still holds (a watchdog kills the frozen tree,
    // which the kernel would let go).
    let pidfds: Vec<std::os::fd::OwnedFd> = if opts.lazy_resume_on_failure {
        Vec::new()
    } else {
        frozen
            .procs
            .iter()
            .map(|(p, _)| crest_sys::pidfd::open(*p))
            .collect::<std::result::Result<_, _>>()?
    };
    let watchdog = if pidfds.is_empty() {
        None
    } else {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = pidfds.iter().map(|f| f.as_raw_fd()).collect();
        Some(crest_sys::watchdog::Watchdog::spawn(&[], &raw)?)
    };
    let phase = serve(&lazy, tx, rx, progress, total_pages);
    if let Some(w) = watchdog {
        w.dismiss();
    }
    drop(pidfds);
    let (running, requested, tx) = match phase {
        Ok(x) => x,
        Err(Failure::NotRun(e)) => {
            c.net.release();
            frozen.release()?;
            return Err(Error::msg(format!("{e} (pid {pid} runs on here)")));
        }
        Err(Failure::Lost(e)) => {
            return Err(if opts.lazy_resume_on_failure {
                c.net.release();
                frozen.release()?;
                Error::msg(format!(
                    "post-copy failed after the destination's tree may have run: {e}; the \
                     destination kills its copy; pid {pid} resumed here \
                     (--lazy-resume-on-failure)"
                ))
            } else {
                frozen.kill()?;
                c.net.killed();
                crate::memory::sysv::remove_dumped(&c.ckpt);
                Error::msg(format!(
                    "post-copy failed after the destination's tree may have run: {e}; the \
                     destination kills its copy, and the tree here was killed too, so that \
                     nothing it did there is done twice (--lazy-resume-on-failure resumes it \
                     instead)"
                ))
            });
        }
    };
    frozen.kill()?;
    c.net.killed();
    crate::memory::sysv::remove_dumped(&c.ckpt);
    if let Some(l) = &mut report.lazy {
        l.requested_pages = requested;
        l.all_in_ms = ms(t_frozen.elapsed());
    }
    report.restored_pid = Some(running.0);
    report.downtime_ms = running.1;
    report.bytes_sent = tx.bytes;
    report.total_ms = ms(t0.elapsed());
    Ok(report)
}

enum Failure {
    /// The destination says its tree never ran.
    NotRun(Error),
    /// The destination's tree may have run.
    Lost(Error),
}

/// Sends the pages, those asked for first, until ALL_IN.  Returns the
/// restored pid and the time from the freeze until RUNNING, the pages
/// sent on request, and the sender.
fn serve(
    lazy: &[LazyRun],
    mut tx: Sender,
    mut rx: super::transport::Receiver,
    progress: &mut dyn FnMut(u64, u64),
    total: u64,
) -> std::result::Result<((i32, f64), u64, Sender), Failure> {
    let t0 = Instant::now();
    let ps = memory::page_size();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let r = reply(&mut rx);
        let last = !matches!(r, Ok((proto::PAGE_REQ | proto::RUNNING, _)));
        if etx.send(r).is_err() || last {
            break;
        }
    });
    let fail_after: Option<u64> = std::env::var("CREST_FAULT_POSTCOPY_UNREADABLE_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    // Test hooks: stop sending after N pages (a source that hangs: the
    // test kills it); change one byte of the first page sent (a wrong
    // page at that address, which the workload's checks must catch).
    let stall_after: Option<u64> = std::env::var("CREST_FAULT_POSTCOPY_STALL_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let corrupt: Option<u64> = std::env::var("CREST_FAULT_POSTCOPY_CORRUPT")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
    let mut sent_pages = 0u64;
    let mut requested = 0u64;
    let mut asked: HashSet<(u32, u64)> = HashSet::new();
    let mut running: Option<(i32, f64)> = None;
    let (mut k, mut at) = (0usize, 0u64);
    let mut buf = vec![0u8; 12 + (PUSH_PAGES * ps) as usize];
    let mut procmem: std::collections::HashMap<i32, crest_sys::mem::ProcMem> = Default::default();
    // Reads and sends pages `addr..+n` of run `r`.
    let mut send_pages = |tx: &mut Sender, r: &LazyRun, addr: u64, n: u64, sent: &mut u64| {
        let len = (n * ps) as usize;
        buf[..4].copy_from_slice(&r.0.to_le_bytes());
        buf[4..12].copy_from_slice(&addr.to_le_bytes());
        let data = &mut buf[12..12 + len];
        let read = if fail_after.is_some_and(|f| *sent + n > f) {
            Err(Error::msg(
                "unreadable (CREST_FAULT_POSTCOPY_UNREADABLE_AFTER)".to_string(),
            ))
        } else if r.4 {
            crest_sys::mem::read(r.3, addr, data).map_err(Error::from)
        } else {
            let m = match procmem.entry(r.3) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(crest_sys::mem::ProcMem::open(r.3, false).map_err(Error::from)?)
                }
            };
            m.read(addr, data).map_err(Error::from)
        };
        if stall_after.is_some_and(|f| *sent + n > f) {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if let Some(c) = corrupt.filter(|&c| read.is_ok() && addr <= c && c < addr + n * ps) {
            data[(c - addr) as usize] ^= 0x5a;
        }
        if let Err(e) = read {
            let why = format!("pid {}: reading its page at {addr:#x}: {e}", r.3);
            let _ = tx.send_now(proto::ABORT, why.as_bytes());
            linger(&erx);
            return Err(Error::msg(why));
        }
        tx.send_now(proto::PAGES, &buf[..12 + len])
            .map_err(|e| Error::msg(format!("sending pages to the destination: {e}")))?;
        *sent += n;
        Ok(())
    };
    let lost = Failure::Lost;
    loop {
        let pushed_all = k >= lazy.len();
        let ev = if pushed_all {
            match erx.recv() {
                Ok(e) => Some(e),
                Err(_) => return Err(lost(Error::msg("the reply reader ended"))),
            }
        } else {
            match erx.try_recv() {
                Ok(e) => Some(e),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(lost(Error::msg("the reply reader ended")))
                }
            }
        };
        match ev {
            None => {}
            Some(Ok((proto::PAGE_REQ, p))) if p.len() == 16 => {
                let space = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
                let addr = u64::from_le_bytes(p[4..12].try_into().expect("8 bytes"));
                let n = u32::from_le_bytes(p[12..16].try_into().expect("4 bytes")) as u64;
                let end = addr.saturating_add(n.saturating_mul(ps));
                let r = lazy
                    .iter()
                    .find(|r| r.0 == space && r.1 <= addr && end <= r.1 + r.2 * ps && n > 0);
                let Some(r) = r else {
                    let why = format!(
                        "the destination asked for pages not sent lazily ({space}, {addr:#x}, {n})"
                    );
                    let _ = tx.send_now(proto::ABORT, why.as_bytes());
                    linger(&erx);
                    return Err(lost(Error::msg(why)));
                };
                let mut a = addr;
                while a < end {
                    let m = ((end - a) / ps).min(PUSH_PAGES);
                    send_pages(&mut tx, r, a, m, &mut sent_pages).map_err(lost)?;
                    a += m * ps;
                }
                for i in 0..n {
                    asked.insert((space, addr + i * ps));
                }
                requested += n;
            }
            Some(Ok((proto::RUNNING, p))) if p.len() == 4 && running.is_none() => {
                let pid = i32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
                running = Some((pid, ms(t0.elapsed())));
            }
            Some(Ok((proto::ALL_IN, _))) if running.is_some() => {
                return Ok((running.expect("checked"), requested, tx));
            }
            Some(Ok((t @ (proto::FAILED | proto::REFUSE), p))) if running.is_none() => {
                return Err(Failure::NotRun(unexpected(t, &p)));
            }
            Some(Ok((t, p))) => return Err(lost(unexpected(t, &p))),
            Some(Err(e)) => return Err(lost(e)),
        }
        if !pushed_all {
            // The next pages in order, but those sent on request.
            let r = &lazy[k];
            let mut a = r.1 + at * ps;
            let end = (r.1 + r.2 * ps).min(a + PUSH_PAGES * ps);
            while a < end {
                let from = a;
                while a < end && !asked.contains(&(r.0, a)) {
                    a += ps;
                }
                if a > from {
                    send_pages(&mut tx, r, from, (a - from) / ps, &mut sent_pages).map_err(lost)?;
                }
                while a < end && asked.contains(&(r.0, a)) {
                    a += ps;
                }
            }
            at = (end - r.1) / ps;
            if at == r.2 {
                k += 1;
                at = 0;
            }
            progress(sent_pages.min(total) * ps, total * ps);
        }
    }
}

/// After ABORT: reads on until the destination closes (a while at
/// most), so that no request of its is left unread when this side
/// closes: the kernel would reset the connection, and the ABORT could be
/// lost before the destination reads it.
fn linger(erx: &mpsc::Receiver<Result<(u8, Vec<u8>)>>) {
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match erx.recv_timeout(left) {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
