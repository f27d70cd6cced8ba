//! The source side of a pre-copied migration.
//!
//! While the tree runs, the pre-copy rounds ([`crate::dump::precopy`]) spool its
//! pages; every stretch spooled is sent at once (PRE, with its spool
//! offset), so the destination holds a copy of the spool.  Then the tree
//! is frozen, the pages written since are spooled (and so sent) too, and
//! what is left is small: the metadata (a complete image without pages,
//! META) and the list of which spool bytes make each page chunk
//! (WINDOWS).  The destination builds the image from those and restores
//! it.  The tree stays frozen until the destination says it runs.

use super::image;
use super::prebuild;
use super::proto;
use super::source::{reply, unexpected, wait_gone, MigrateReport, Session, PIDS_FREED};
use super::transport::Sender;
use crate::dump::precopy::{PreCopy, Tap, Tapped};
use crate::dump::{collect, DumpOptions};
use crate::error::{Context, Error, Result};
use crate::task::freeze::FrozenTree;
use crate::{codec, files};
use crest_image::Writer;
use std::io::Seek;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest piece of data per frame.
const PIECE: usize = 1 << 20;

/// A [`Tap`] sending the layout of each process (LAYOUT) and each
/// spooled stretch with where it was read (PRE_AT), so the destination
/// can build the memory as it arrives (see `super::prebuild`).
pub(super) fn tap(tx: Arc<Mutex<Sender>>) -> Tap {
    Box::new(move |t| {
        let mut tx = tx.lock().unwrap_or_else(|p| p.into_inner());
        match t {
            Tapped::Layout { pid, vmas } => tx
                .send(proto::LAYOUT, &prebuild::encode_layout(pid, vmas))
                .context(|| "sending the memory layout to the destination".into()),
            Tapped::Pages {
                off,
                pid,
                addr,
                data,
            } => {
                let (mut off, mut addr) = (off, addr);
                let mut head = Vec::with_capacity(prebuild::AT_HEAD + PIECE);
                for part in data.chunks(PIECE) {
                    head.clear();
                    head.extend_from_slice(&prebuild::encode_at_head(off, pid, addr));
                    head.extend_from_slice(part);
                    tx.send(proto::PRE_AT, &head)
                        .context(|| "sending pre-copied pages to the destination".into())?;
                    off += part.len() as u64;
                    addr += part.len() as u64;
                }
                Ok(())
            }
        }
    })
}

/// Sends `bytes` as frames of type `ty`.
fn send_all(tx: &mut Sender, ty: u8, bytes: &[u8]) -> Result<()> {
    for part in bytes.chunks(PIECE) {
        tx.send(ty, part)?;
    }
    Ok(())
}

/// Finishes a migration whose memory `pc` is pre-copying into `tx`.
pub(super) fn finish(
    pid: i32,
    pc: PreCopy,
    tx: Arc<Mutex<Sender>>,
    mut s: Session,
    t0: Instant,
) -> Result<MigrateReport> {
    let rounds = pc.rounds;
    let frozen = FrozenTree::freeze(pid)?;
    let t_frozen = Instant::now();
    let mut prep = pc.stop()?;
    let mut obstacles = Vec::new();
    let c = collect(
        &frozen,
        &mut obstacles,
        Some(&prep),
        &DumpOptions::default(),
    )
    .context(|| format!("collecting the state of pid {pid}"))?;
    let Some(c) = c else {
        return Err(Error::Unsupported(obstacles));
    };
    let mut w = Writer::new(Vec::new(), &codec::header_here()?)?;
    codec::write_metadata(&mut w, &c.ckpt)?;
    files::write_data(&c.data, &mut w)?;
    let meta = w.finish()?;
    // The pages written since the rounds go to the spool, and so out.
    let spooled = prep.complete(&c.ckpt, &c.plans)?;
    let windows = spooled.windows();
    let mut list = Vec::new();
    image::encode_windows(&windows, &mut list);
    let spool_len = prep.spool_len();
    let mut tx = tx.lock().unwrap_or_else(|p| p.into_inner());
    send_all(&mut tx, proto::META, &meta)?;
    // Whole windows per frame.
    let mut at = 0;
    let mut start = 0;
    for w in &windows {
        let n = image::encoded_len(w);
        if at - start + n > PIECE && at > start {
            tx.send(proto::WINDOWS, &list[start..at])?;
            start = at;
        }
        at += n;
    }
    if at > start {
        tx.send(proto::WINDOWS, &list[start..at])?;
    }
    let end = proto::encode_end_pre(spool_len, meta.len() as u64, windows.len() as u64);
    tx.send_now(proto::END_PRE, &end)
        .context(|| "sending the end of the stream".into())?;
    let sent_ms = ms(t_frozen.elapsed());
    let mut report = MigrateReport {
        pid,
        handover: s.handover,
        image_bytes: spool_len + meta.len() as u64,
        pages_written: windows.iter().flat_map(|w| &w.pieces).map(|p| p.1).sum(),
        precopy_rounds: Some(rounds + 1),
        frozen_send_ms: Some(sent_ms),
        precopied_pages: prep.pages_copied,
        frozen_copied_pages: prep.pages_reread,
        ..Default::default()
    };
    let pids: Vec<i32> = c
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
        .collect();
    let rx = s.rx.as_mut().expect("pre-copy needs a reply channel");
    let verdict = reply(rx);
    let restored = match verdict {
        Ok((proto::RUNNING, p)) if !s.handover && p.len() == 4 => {
            frozen.kill()?;
            i32::from_le_bytes(p[..4].try_into().expect("4 bytes"))
        }
        Ok((proto::READY, _)) if s.handover => {
            frozen.kill()?;
            let res = wait_gone(&pids, PIDS_FREED)
                .and_then(|_| tx.send_now(proto::GO, b"").map_err(Error::from))
                .and_then(|_| reply(rx))
                .and_then(|(t, p)| match t {
                    proto::RUNNING if p.len() == 4 => {
                        Ok(i32::from_le_bytes(p[..4].try_into().expect("4 bytes")))
                    }
                    t => Err(unexpected(t, &p)),
                });
            match res {
                Ok(p) => p,
                Err(e) => {
                    // Our tree is gone: build its image here and restore it.
                    let local = crate::files::spool_file().and_then(|f| {
                        let mut f = image::build(&meta, f, |w| {
                            prep.write_pages(&spooled, false, w, &mut |_, _| {})?;
                            Ok(())
                        })?;
                        f.rewind()?;
                        Ok(f)
                    });
                    return Err(super::source::restore_here(pid, local.ok(), e));
                }
            }
        }
        Ok((t, p)) => {
            frozen.release()?;
            return Err(unexpected(t, &p));
        }
        Err(e) => {
            frozen.release()?;
            return Err(e);
        }
    };
    crate::memory::sysv::remove_dumped(&c.ckpt);
    report.restored_pid = Some(restored);
    report.downtime_ms = ms(t_frozen.elapsed());
    report.bytes_sent = tx.bytes;
    report.total_ms = ms(t0.elapsed());
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
