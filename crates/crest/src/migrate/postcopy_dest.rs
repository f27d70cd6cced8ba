//! The destination of a post-copy migration (`crest restore --listen
//! --lazy`, the source running `crest migrate --lazy`).
//!
//! The stream holds an image whose lazily restorable pages (see
//! `crate::memory::lazy::eligible`) are left out, and their list
//! (LAZY_INDEX: runs of pages by process and address).  The tree is
//! restored lazily at once: each run gets places in a [`Remote`] page
//! source, which the lazy phase reads like its own store.  A thread keeps
//! what the source sends (PAGES, authenticated like every frame) by
//! place; a read of a page not here yet asks the source for it
//! (PAGE_REQ, answered before the pages it pushes in order) and waits.
//! Once every page is in, the source hears ALL_IN.
//!
//! The source failing (ABORT), the connection breaking or a bad frame
//! makes every read fail, and so the lazy phase kills the tree: it never
//! runs on with a page missing or wrong.

use super::proto;
use super::transport::{Receiver, RecvError, Sender};
use super::ReceiveReport;
use crate::error::{Error, Result};
use crate::memory::lazy::{PageSource, Pending};
use crate::model::Checkpoint;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes of one encoded run.
pub const RUN_LEN: usize = 20;

/// Pages of one address space, consecutive, left out of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub space: u32,
    pub addr: u64,
    pub pages: u64,
    /// The place of its first page (places are consecutive in run order).
    pub place: u64,
}

/// Encodes runs `(space, addr, pages)`.
pub fn encode_runs(runs: &[(u32, u64, u64)], out: &mut Vec<u8>) {
    for &(s, a, n) in runs {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Decodes runs, which must be in (space, address) order without
/// overlapping, of pages of size `ps`; gives each its places.
pub fn decode_runs(b: &[u8], ps: u64) -> Result<Vec<Run>> {
    let bad = |what: &str| Error::msg(format!("the lazy page list: {what}"));
    if !b.len().is_multiple_of(RUN_LEN) {
        return Err(bad("a truncated entry"));
    }
    let mut out: Vec<Run> = Vec::with_capacity(b.len() / RUN_LEN);
    let mut place = 0u64;
    for e in b.chunks(RUN_LEN) {
        let space = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
        let addr = u64::from_le_bytes(e[4..12].try_into().expect("8 bytes"));
        let pages = u64::from_le_bytes(e[12..20].try_into().expect("8 bytes"));
        if pages == 0 || pages > 1 << 36 || !addr.is_multiple_of(ps) {
            return Err(bad("a run of impossible size or alignment"));
        }
        pages
            .checked_mul(ps)
            .and_then(|l| addr.checked_add(l))
            .ok_or_else(|| bad("a run past the address space"))?;
        if let Some(l) = out.last() {
            if (l.space, l.addr + l.pages * ps) > (space, addr) {
                return Err(bad("runs out of order or overlapping"));
            }
        }
        out.push(Run {
            space,
            addr,
            pages,
            place,
        });
        place = place
            .checked_add(pages * ps)
            .ok_or_else(|| bad("too many pages"))?;
    }
    Ok(out)
}

/// What the receiving thread and the lazy phase share.
#[derive(Default)]
struct State {
    /// Pages arrived, by place.
    pages: HashMap<u64, Vec<u8>>,
    /// Places asked for already.
    asked: HashSet<u64>,
    /// Why no more pages can come.
    failed: Option<String>,
}

struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn fail(&self, why: String) {
        let mut st = self.lock();
        st.failed.get_or_insert(why);
        self.cv.notify_all();
    }
}

/// The pages of a post-copy migration, as the lazy phase's page source.
pub struct Remote {
    shared: Arc<Shared>,
    tx: Arc<Mutex<Sender>>,
    runs: Arc<Vec<Run>>,
    ps: u64,
}

/// How long a page asked for may take.
const PAGE_WAIT: Duration = Duration::from_secs(60);

impl Remote {
    /// The (space, address, pages) of the source holding places
    /// `off..off + len`.
    fn segments(&self, off: u64, len: u64) -> Result<Vec<(u32, u64, u64)>> {
        let ps = self.ps;
        let mut out = Vec::new();
        let mut at = off;
        while at < off + len {
            let k = self.runs.partition_point(|r| r.place + r.pages * ps <= at);
            let r = self
                .runs
                .get(k)
                .filter(|r| r.place <= at)
                .ok_or_else(|| Error::msg(format!("lazy page place {at}: not announced")))?;
            let n = ((r.place + r.pages * ps).min(off + len) - at) / ps;
            out.push((r.space, r.addr + (at - r.place), n));
            at += n * ps;
        }
        Ok(out)
    }

    fn ask(&self, st: &mut State, off: u64, len: u64) -> Result<()> {
        let ps = self.ps;
        let missing: Vec<u64> = (0..len / ps)
            .map(|k| off + k * ps)
            .filter(|p| !st.pages.contains_key(p) && !st.asked.contains(p))
            .collect();
        let (Some(&first), Some(&last)) = (missing.first(), missing.last()) else {
            return Ok(());
        };
        for p in &missing {
            st.asked.insert(*p);
        }
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        for (space, addr, n) in self.segments(first, last + ps - first)? {
            let mut m = Vec::with_capacity(16);
            m.extend_from_slice(&space.to_le_bytes());
            m.extend_from_slice(&addr.to_le_bytes());
            m.extend_from_slice(&(n as u32).to_le_bytes());
            tx.send_now(proto::PAGE_REQ, &m)
                .map_err(|e| Error::msg(format!("asking the source for pages: {e}")))?;
        }
        Ok(())
    }
}

impl PageSource for Remote {
    fn ready(&mut self, off: u64, n: usize) -> Result<usize> {
        let st = self.shared.lock();
        if let Some(f) = &st.failed {
            return Err(Error::msg(f.clone()));
        }
        Ok((0..n as u64)
            .take_while(|k| st.pages.contains_key(&(off + k * self.ps)))
            .count())
    }

    fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<()> {
        let ps = self.ps;
        let len = buf.len() as u64;
        let t0 = Instant::now();
        let mut st = self.shared.lock();
        loop {
            if let Some(f) = &st.failed {
                return Err(Error::msg(f.clone()));
            }
            if (0..len / ps).all(|k| st.pages.contains_key(&(off + k * ps))) {
                for (k, page) in buf.chunks_mut(ps as usize).enumerate() {
                    page.copy_from_slice(&st.pages[&(off + k as u64 * ps)]);
                }
                return Ok(());
            }
            if let Err(e) = self.ask(&mut st, off, len) {
                // The connection is gone: the source's last word (ABORT)
                // may still be on its way to the receiving thread.
                let (st, _) = self
                    .shared
                    .cv
                    .wait_timeout_while(st, Duration::from_secs(1), |s| s.failed.is_none())
                    .unwrap_or_else(|p| p.into_inner());
                return Err(st.failed.clone().map(Error::msg).unwrap_or(e));
            }
            if t0.elapsed() > PAGE_WAIT {
                return Err(Error::msg(format!(
                    "the source did not send the pages asked for within {PAGE_WAIT:?}"
                )));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn done(&mut self) -> Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = tx.send_now(proto::ALL_IN, b"") {
            // Every page is in: the tree here is whole and runs on.
            eprintln!("crest: warning: could not tell the source that every page is in: {e}");
        }
        Ok(())
    }
}

/// Hands the [`Remote`] to the restore (through `RestoreOptions`).
#[derive(Clone)]
pub struct Slot(Arc<Mutex<Option<Remote>>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("postcopy::Slot")
    }
}

impl Slot {
    /// Announces every run to the lazy restore `l` of `ckpt` and makes
    /// the remote its page source.  A run that cannot be filled lazily
    /// there (no userfaultfd for the process) fails the restore.
    pub fn install(&self, l: Option<&mut Pending>, ckpt: &Checkpoint) -> Result<()> {
        let remote = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::msg("the post-copy page source was used already"))?;
        let Some(l) = l else {
            return Err(Error::msg(
                "a post-copy migration needs a lazy restore, and this one is not",
            ));
        };
        let ps = remote.ps;
        for r in remote.runs.iter() {
            let p = ckpt.processes.get(r.space as usize).ok_or_else(|| {
                Error::msg(format!("lazy pages for unknown address space {}", r.space))
            })?;
            let end = r.addr + r.pages * ps;
            let in_one = p.mm.vmas.iter().any(|v| v.start <= r.addr && end <= v.end);
            if !in_one || !l.wants(r.space as usize, &p.mm.vmas, r.addr) {
                return Err(Error::msg(format!(
                    "pid {}: the pages at {:#x}..{end:#x} cannot be restored lazily here (no \
                     userfaultfd for the process, or not an eligible mapping); migrate without \
                     --lazy",
                    p.pid, r.addr
                )));
            }
            l.hold(r.space as usize, r.addr, r.pages, r.place)?;
        }
        l.set_source(Box::new(remote));
        Ok(())
    }
}

/// Keeps the pages the source sends until the connection ends.
fn receive_pages(mut rx: Receiver, shared: Arc<Shared>, runs: Arc<Vec<Run>>, ps: u64) {
    let mut p = Vec::new();
    let why = loop {
        match rx.recv(&mut p) {
            Ok(proto::PAGES) => {
                if p.len() <= 12 || !((p.len() - 12) as u64).is_multiple_of(ps) {
                    break "a malformed page message from the source".to_string();
                }
                let space = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
                let addr = u64::from_le_bytes(p[4..12].try_into().expect("8 bytes"));
                let n = (p.len() - 12) as u64 / ps;
                let k = runs.partition_point(|r| (r.space, r.addr + r.pages * ps) <= (space, addr));
                let Some(r) = runs
                    .get(k)
                    .filter(|r| r.space == space && r.addr <= addr)
                    .filter(|r| addr + n * ps <= r.addr + r.pages * ps)
                else {
                    break format!(
                        "the source sent pages not announced (space {space}, {addr:#x}, {n} pages)"
                    );
                };
                let place = r.place + (addr - r.addr);
                let mut st = shared.lock();
                for (i, page) in p[12..].chunks(ps as usize).enumerate() {
                    st.pages
                        .entry(place + i as u64 * ps)
                        .or_insert_with(|| page.to_vec());
                }
                shared.cv.notify_all();
            }
            Ok(proto::ABORT) => {
                break format!("the source failed: {}", proto::text(&p));
            }
            Ok(t) => break format!("the source sent message {t} during the lazy phase"),
            Err(RecvError::Closed { .. }) => {
                break "the source closed the connection (it died or gave up)".to_string()
            }
            Err(e) => break format!("from the source: {e}"),
        }
    };
    shared.fail(format!("post-copy: {why}"));
}

/// Restores the post-copy stream `img` (lazily restorable pages listed
/// in `index`) at once; the pages come from the source on `rx`/`tx`.
pub(super) fn restore(
    img: std::fs::File,
    index: &[u8],
    rx: Receiver,
    tx: Sender,
    receive_ms: f64,
) -> Result<ReceiveReport> {
    let ps = crate::memory::page_size();
    let runs = Arc::new(decode_runs(index, ps)?);
    let bytes_received = rx.bytes;
    let shared = Arc::new(Shared {
        st: Mutex::new(State::default()),
        cv: Condvar::new(),
    });
    let tx = Arc::new(Mutex::new(tx));
    {
        let (s, r) = (shared.clone(), runs.clone());
        std::thread::Builder::new()
            .name("crest-postcopy".into())
            .spawn(move || receive_pages(rx, s, r, ps))
            .map_err(|e| Error::msg(format!("starting the post-copy receiver: {e}")))?;
    }
    let slot = Slot(Arc::new(Mutex::new(Some(Remote {
        shared: shared.clone(),
        tx: tx.clone(),
        runs,
        ps,
    }))));
    let t1 = Instant::now();
    let ro = crate::RestoreOptions {
        lazy: true,
        lazy_source: Some(slot),
        ..Default::default()
    };
    let r = crate::restore_with(
        io::BufReader::with_capacity(64 << 10, img),
        &ro,
        &mut |_| {},
    );
    let mut tx = tx.lock().unwrap_or_else(|p| p.into_inner());
    match r {
        Ok(r) => {
            if let Err(e) = tx.send_now(proto::RUNNING, &r.pid.to_le_bytes()) {
                eprintln!(
                    "crest: warning: could not tell the source that pid {} runs: {e}",
                    r.pid
                );
            }
            Ok(ReceiveReport {
                restore: r,
                handover: false,
                bytes_received,
                receive_ms,
                restore_ms: t1.elapsed().as_secs_f64() * 1000.0,
                // Post-copy never pre-builds: the pages come after.
                prebuilt: None,
            })
        }
        Err(e) => {
            let _ = tx.send_now(proto::FAILED, e.to_string().as_bytes());
            shared.fail("the restore failed".into());
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_refusals() {
        let ps = 4096;
        let mut b = Vec::new();
        encode_runs(&[(0, 0x10000, 2), (0, 0x20000, 1), (1, 0x1000, 3)], &mut b);
        let r = decode_runs(&b, ps).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[1].place, r[2].place), (2 * ps, 3 * ps));
        let mut o = Vec::new();
        encode_runs(&[(0, 0x20000, 1), (0, 0x10000, 1)], &mut o);
        assert!(decode_runs(&o, ps).is_err());
        let mut ov = Vec::new();
        encode_runs(&[(0, 0x10000, 2), (0, 0x11000, 1)], &mut ov);
        assert!(decode_runs(&ov, ps).is_err());
        assert!(decode_runs(&b[..30], ps).is_err());
    }
}
