//! The sending side of a migration (`crest migrate`).
//!
//! The tree is checkpointed by [`crate::dump`] into the connection (not
//! left running, so it stays frozen once its image is written); the
//! dump's sink is where the protocol waits for the destination's verdict:
//! it returns successfully only once the destination says the restored
//! tree runs (or, on a handover, that it has all it needs), and only then
//! does the dump kill the tree.  Any error before that leaves the dump's
//! usual guarantee: the tree resumes as it was.

use super::proto::{self, Hello, HostId};
use super::transport::{self, Keys, Psk, Receiver, RecvError, Sender};
use super::Channel;
use crate::dump::precopy::PreCopy;
use crate::dump::{DumpOptions, ImageSink};
use crate::error::{Context, Error, Result};
use std::io::{self, IoSlice, Seek, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to migrate.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    pub psk: Option<Psk>,
    /// No reply channel: the tree is killed once the stream is flushed.
    pub one_way: bool,
    pub compress: bool,
    /// Send all memory while the tree is frozen (no pre-copy rounds).
    pub no_precopy: bool,
    /// How long to wait for each reply of the destination.
    pub timeout: Option<Duration>,
    /// Post-copy (see `postcopy`): the destination runs the tree at once
    /// and gets its memory afterwards.
    pub lazy: bool,
    /// Post-copy: resume the tree here if the lazy phase fails (the
    /// default kills it; see `postcopy`).
    pub lazy_resume_on_failure: bool,
}

/// What a migration did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MigrateReport {
    pub pid: i32,
    /// The pid the destination reports for the restored tree.
    pub restored_pid: Option<i32>,
    /// The PIDs were handed over (both sides share a PID space).
    pub handover: bool,
    /// From the freeze to the destination's RUNNING (or, one-way, to the
    /// end of the stream).
    pub downtime_ms: f64,
    pub total_ms: f64,
    /// Bytes sent on the connection (framing included).
    pub bytes_sent: u64,
    pub image_bytes: u64,
    pub pages_written: u64,
    /// Pre-copy rounds while the tree ran (none: everything was sent
    /// while it was frozen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precopy_rounds: Option<u32>,
    /// From the freeze until the last byte was sent (pre-copied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_send_ms: Option<f64>,
    /// Pages sent while the tree ran.
    pub precopied_pages: u64,
    /// Pages sent while it was frozen.
    pub frozen_copied_pages: u64,
    /// Why memory was not pre-copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precopy_skipped: Option<String>,
    /// Post-copy: what the lazy phase took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy: Option<super::postcopy::LazyReport>,
}

/// Size of the DATA frames.
const FRAME: usize = 1 << 20;

/// The image stream cut into DATA frames (and, on a handover, copied
/// into a local spool so the tree can be restored here if the
/// destination fails).
pub struct FrameWriter {
    tx: Sender,
    buf: Vec<u8>,
    copy: Option<std::fs::File>,
    bytes: u64,
    frames: u64,
}

impl FrameWriter {
    pub(super) fn new(tx: Sender) -> FrameWriter {
        FrameWriter {
            tx,
            buf: Vec::with_capacity(FRAME),
            copy: None,
            bytes: 0,
            frames: 0,
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(c) = &mut self.copy {
            c.write_all(&self.buf)?;
        }
        self.tx.send(proto::DATA, &self.buf)?;
        self.bytes += self.buf.len() as u64;
        self.frames += 1;
        self.buf.clear();
        Ok(())
    }

    /// Sends what is left and END, flushed.
    pub(super) fn finish(mut self) -> io::Result<(Sender, Option<std::fs::File>)> {
        self.emit()?;
        let end = proto::encode_end(self.bytes, self.frames);
        self.tx.send_now(proto::END, &end)?;
        Ok((self.tx, self.copy))
    }
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            let mut b: &[u8] = b;
            while !b.is_empty() {
                let take = b.len().min(FRAME - self.buf.len());
                self.buf.extend_from_slice(&b[..take]);
                b = &b[take..];
                n += take;
                if self.buf.len() == FRAME {
                    self.emit()?;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames go out when full or at the end: a flush is not a reason
        // to send a short one.
        Ok(())
    }
}

/// After the commit: how the destination answered.
enum Verdict {
    Running(i32),
    /// Handover: it holds the verified image and needs the PIDs.
    Ready,
    /// One-way: nobody answers.
    Sent,
}

/// The dump's sink: ends the stream and waits for the verdict.
struct Sink {
    rx: Option<Receiver>,
    handover: bool,
    /// What the commit leaves for after the dump.
    after: Option<(Sender, Option<std::fs::File>, Verdict)>,
}

impl ImageSink<FrameWriter> for Sink {
    fn commit(&mut self, w: FrameWriter) -> Result<()> {
        let (tx, copy) = w
            .finish()
            .context(|| "sending the image to the destination".into())?;
        let verdict = match &mut self.rx {
            None => Verdict::Sent,
            Some(rx) => match reply(rx)? {
                (proto::RUNNING, p) if !self.handover && p.len() == 4 => {
                    Verdict::Running(i32::from_le_bytes(p[..4].try_into().expect("4 bytes")))
                }
                (proto::READY, _) if self.handover => Verdict::Ready,
                (t, p) => return Err(unexpected(t, &p)),
            },
        };
        self.after = Some((tx, copy, verdict));
        Ok(())
    }
}

/// The next message of the destination, errors made readable.
pub(super) fn reply(rx: &mut Receiver) -> Result<(u8, Vec<u8>)> {
    let mut p = Vec::new();
    match rx.recv(&mut p) {
        Ok(t) => Ok((t, p)),
        Err(RecvError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Error::msg("the destination did not answer in time"))
        }
        Err(RecvError::Closed { .. }) => Err(Error::msg(
            "the destination closed the connection (it died or gave up)",
        )),
        Err(e) => Err(Error::msg(format!("from the destination: {e}"))),
    }
}

pub(super) fn unexpected(t: u8, p: &[u8]) -> Error {
    match t {
        proto::REFUSE => Error::msg(format!(
            "the destination refused the stream: {}",
            proto::text(p)
        )),
        proto::FAILED => Error::msg(format!(
            "the restore on the destination failed: {}",
            proto::text(p)
        )),
        t => Error::msg(format!("the destination sent message {t} out of turn")),
    }
}

/// A connection after the handshake.
pub(super) struct Session {
    pub tx: Sender,
    /// None on a one-way stream.
    pub rx: Option<Receiver>,
    /// Both sides share the PID space (see [`proto`]).
    pub handover: bool,
}

/// Sends the hello and, with a reply channel, checks the destination's:
/// it must prove it holds the same key before anything else is sent.
fn handshake(ch: Channel, opts: &MigrateOptions) -> Result<Session> {
    if ch.tcp.is_some() && opts.psk.is_none() {
        return Err(Error::msg(
            "refusing to send over TCP without a pre-shared key (--psk)",
        ));
    }
    ch.set_timeout(opts.timeout);
    let mut tx = Sender::new(ch.write);
    let mut rx = Receiver::new(ch.read);
    let here = HostId::here()?;
    let nonce_s = transport::nonce()?;
    let mut flags = 0;
    if opts.one_way {
        flags |= proto::ONE_WAY;
    }
    if opts.psk.is_some() {
        flags |= proto::KEYED;
    }
    let hello = Hello {
        version: proto::VERSION,
        flags,
        nonce: nonce_s,
        host: here.clone(),
    };
    tx.send_now(proto::HELLO_S, &hello.encode())
        .context(|| "sending the hello".into())?;
    if opts.one_way {
        tx.set_key(Keys::derive(opts.psk.as_ref(), &nonce_s, &[0; transport::NONCE_LEN]).to_dest);
        return Ok(Session {
            tx,
            rx: None,
            handover: false,
        });
    }
    let (t, p) = reply(&mut rx).context(|| "waiting for the destination's hello".into())?;
    if t != proto::HELLO_D {
        return Err(unexpected(t, &p));
    }
    let theirs = Hello::decode(&p)?;
    if (theirs.flags & proto::KEYED != 0) != opts.psk.is_some() {
        return Err(Error::msg(if opts.psk.is_some() {
            "the destination holds no key (--psk): refusing to send"
        } else {
            "the destination requires a key: give --psk"
        }));
    }
    let keys = Keys::derive(opts.psk.as_ref(), &nonce_s, &theirs.nonce);
    rx.set_key(keys.to_source);
    match reply(&mut rx) {
        Ok((proto::KEYOK, _)) => {}
        Ok((t, p)) => return Err(unexpected(t, &p)),
        Err(e) => {
            return Err(Error::msg(format!(
                "the destination failed to prove it holds the same key ({e}): nothing sent"
            )))
        }
    }
    tx.set_key(keys.to_dest);
    Ok(Session {
        tx,
        rx: Some(rx),
        handover: theirs.host == here,
    })
}

/// Migrates the tree rooted at `pid` over `ch`.
///
/// With a reply channel, memory is pre-copied while the tree runs (if
/// the tree allows write tracking; else, and on a one-way stream, the
/// whole image is sent while it is frozen).
pub fn migrate(
    pid: i32,
    ch: Channel,
    opts: &MigrateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MigrateReport> {
    let t0 = Instant::now();
    let obstacles = crate::dump::preflight(pid)?;
    if !obstacles.is_empty() {
        return Err(Error::Unsupported(obstacles));
    }
    let s = handshake(ch, opts)?;
    if opts.lazy {
        return super::postcopy::send(pid, s, opts, progress, t0);
    }
    let mut skipped = None;
    let s = if s.rx.is_some() && !opts.no_precopy {
        let Session { tx, rx, handover } = s;
        let tx = Arc::new(Mutex::new(tx));
        let tap = super::precopied::tap(tx.clone());
        let attempt = PreCopy::run_tapped(pid, progress, Some(tap))
            .context(|| format!("pre-copying the memory of pid {pid} (it runs on here)"))?;
        let s = Session {
            tx: Sender::new(Box::new(io::sink())),
            rx,
            handover,
        };
        match attempt {
            Ok(pc) => {
                return super::precopied::finish(pid, pc, tx, s, t0)
                    .context(|| format!("migrating pid {pid} (it runs on here)"));
            }
            Err(why) => {
                skipped = Some(why);
                let tx = Arc::try_unwrap(tx)
                    .map_err(|_| Error::msg("the pre-copy still holds the connection"))?
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner());
                Session { tx, ..s }
            }
        }
    } else {
        s
    };
    let mut r = send_frozen(pid, s, opts, progress, t0)?;
    r.precopy_skipped = skipped;
    Ok(r)
}

/// Sends the whole image while the tree is frozen (a dump into the
/// connection whose commit waits for the destination's verdict).
fn send_frozen(
    pid: i32,
    s: Session,
    opts: &MigrateOptions,
    progress: &mut dyn FnMut(u64, u64),
    t0: Instant,
) -> Result<MigrateReport> {
    let Session { tx, rx, handover } = s;
    let copy = if handover {
        Some(crate::files::spool_file()?)
    } else {
        None
    };
    let writer = FrameWriter {
        tx,
        buf: Vec::with_capacity(FRAME),
        copy,
        bytes: 0,
        frames: 0,
    };
    let mut sink = Sink {
        rx,
        handover,
        after: None,
    };
    let dopts = DumpOptions {
        leave_running: false,
        compress: opts.compress,
        no_precopy: true,
        ..Default::default()
    };
    let d = crate::dump(pid, writer, &dopts, &mut sink, progress)
        .context(|| format!("migrating pid {pid} (it runs on here)"))?;
    let (mut tx, copy, verdict) = sink.after.take().expect("committed");
    let since_kill = Instant::now();
    let mut report = MigrateReport {
        pid,
        handover,
        image_bytes: d.image_bytes,
        pages_written: d.pages_written,
        frozen_copied_pages: d.pages_written,
        ..Default::default()
    };
    match verdict {
        Verdict::Running(p) => report.restored_pid = Some(p),
        Verdict::Sent => {
            // Whoever restores from this stream on this machine needs the
            // PIDs: let the stream end only once they are free.
            let _ = wait_gone(&d.pids, Duration::from_secs(5));
        }
        Verdict::Ready => {
            let rx = sink.rx.as_mut().expect("a reply channel");
            let res = wait_gone(&d.pids, PIDS_FREED)
                .and_then(|_| tx.send_now(proto::GO, b"").map_err(Error::from))
                .and_then(|_| reply(rx))
                .and_then(|(t, p)| match t {
                    proto::RUNNING if p.len() == 4 => {
                        Ok(i32::from_le_bytes(p[..4].try_into().expect("4 bytes")))
                    }
                    t => Err(unexpected(t, &p)),
                });
            match res {
                Ok(p) => report.restored_pid = Some(p),
                Err(e) => return Err(restore_here(pid, copy, e)),
            }
        }
    }
    report.downtime_ms = d.frozen_ms + ms(since_kill.elapsed());
    report.bytes_sent = tx.bytes;
    report.total_ms = ms(t0.elapsed());
    Ok(report)
}

/// How long a killed tree's parent may take to reap it on a handover.
pub(super) const PIDS_FREED: Duration = Duration::from_secs(30);

/// Waits until no process holds any of `pids` (the killed tree's parent
/// has reaped it).
pub(super) fn wait_gone(pids: &[i32], limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    for &p in pids {
        while std::path::Path::new(&format!("/proc/{p}")).exists() {
            if t0.elapsed() > limit {
                return Err(Error::msg(format!(
                    "pid {p} of the killed tree was not reaped by its parent within {limit:?}: \
                     the destination cannot take it over"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// After a handover the destination failed: the tree is restored here
/// from the copy of its image.
pub(super) fn restore_here(pid: i32, copy: Option<std::fs::File>, why: Error) -> Error {
    let Some(mut f) = copy else {
        return why;
    };
    let local = f
        .rewind()
        .map_err(Error::from)
        .and_then(|_| crate::restore(io::BufReader::with_capacity(64 << 10, &f), &mut |_| {}));
    match local {
        Ok(r) => Error::msg(format!(
            "{why}; after the handover, so the tree was restored here again (pid {})",
            r.pid
        )),
        Err(e) => {
            let keep = std::env::temp_dir().join(format!("crest-migrate-{pid}.img"));
            let saved = f
                .rewind()
                .map_err(Error::from)
                .and_then(|_| {
                    let mut out = std::fs::File::create(&keep)?;
                    io::copy(&mut f, &mut out)?;
                    Ok(())
                })
                .map(|_| format!("its image is saved in {}", keep.display()))
                .unwrap_or_else(|e: Error| format!("saving its image failed too: {e}"));
            Error::msg(format!(
                "{why}; after the handover, and restoring the tree here failed too ({e}); {saved}"
            ))
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
