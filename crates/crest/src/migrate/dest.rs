//! The receiving side of a migration (`crest restore --listen`).
//!
//! Every DATA frame is authenticated before its bytes are kept; the image
//! is spooled (an unlinked temporary file) until END has arrived and
//! matches what was received, and only then restored: nothing is built
//! from a stream that is refused, cut, or not yet complete.

use super::image;
use super::proto::{self, Hello, HostId};
use super::transport::{self, Keys, Psk, Receiver, RecvError, Sender};
use super::Channel;
use crate::dump::precopy::Window;
use crate::error::{Error, Result};
use crate::restore::RestoreReport;
use std::io::{self, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// How to receive.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    pub psk: Option<Psk>,
}

/// What the destination did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReceiveReport {
    #[serde(flatten)]
    pub restore: RestoreReport,
    pub handover: bool,
    pub bytes_received: u64,
    /// From the first byte to the end of the stream.
    pub receive_ms: f64,
    /// The restore proper.
    pub restore_ms: f64,
}

/// Receives a migration on `ch` and restores it; returns once the
/// restored tree runs (crest is its parent).
pub fn receive(
    ch: Channel,
    opts: &ListenOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ReceiveReport> {
    if ch.tcp.is_some() && opts.psk.is_none() {
        return Err(Error::msg(
            "refusing to receive over TCP without a pre-shared key: anyone could send a tree",
        ));
    }
    // A source that stops sending (or answering) for this long is gone.
    ch.set_timeout(Some(std::time::Duration::from_secs(300)));
    let mut rx = Receiver::new(ch.read);
    let mut tx = Sender::new(ch.write);
    let mut p = Vec::new();
    let t = rx.recv(&mut p).map_err(|e| match e {
        RecvError::Closed { .. } => Error::msg("the source closed the connection before its hello"),
        e => e.into(),
    })?;
    let t0 = Instant::now();
    if t != proto::HELLO_S {
        return Err(Error::msg(
            "the peer does not speak the crest migration protocol",
        ));
    }
    let theirs = Hello::decode(&p)?;
    let one_way = theirs.flags & proto::ONE_WAY != 0;
    if (theirs.flags & proto::KEYED != 0) != opts.psk.is_some() {
        return Err(Error::msg(if opts.psk.is_some() {
            "the source sends without a key; refusing (nothing restored)"
        } else {
            "the source sends with a key: give --psk"
        }));
    }
    let here = HostId::here()?;
    let nonce_d = if one_way {
        [0; transport::NONCE_LEN]
    } else {
        let n = transport::nonce()?;
        let hello = Hello {
            version: proto::VERSION,
            flags: if opts.psk.is_some() { proto::KEYED } else { 0 },
            nonce: n,
            host: here.clone(),
        };
        tx.send(proto::HELLO_D, &hello.encode())?;
        n
    };
    let keys = Keys::derive(opts.psk.as_ref(), &theirs.nonce, &nonce_d);
    rx.set_key(keys.to_dest);
    tx.set_key(keys.to_source);
    let mut tx = (!one_way).then_some(tx);
    if let Some(tx) = &mut tx {
        tx.send_now(proto::KEYOK, b"")?;
    }
    let handover = !one_way && theirs.host == here;
    // Tell the source why, if it can hear it; then fail.
    let refuse = |tx: &mut Option<Sender>, ty: u8, e: Error| -> Error {
        if let Some(tx) = tx {
            let _ = tx.send_now(ty, e.to_string().as_bytes());
        }
        e
    };
    let received = match receive_image(&mut rx, progress) {
        Ok(s) => s,
        Err(e) => {
            let e = Error::msg(format!("refusing the stream: {e}; nothing was restored"));
            return Err(refuse(&mut tx, proto::REFUSE, e));
        }
    };
    if one_way {
        // The source ends the stream once its tree is gone: on one
        // machine the restore needs its PIDs.
        match rx.recv(&mut p) {
            Err(RecvError::Closed {
                inside_frame: false,
            }) => {}
            Ok(t) => {
                return Err(Error::msg(format!(
                    "message {t} after the end of the stream"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let receive_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if handover {
        let tx = tx.as_mut().expect("duplex");
        tx.send_now(proto::READY, b"")?;
        let go = rx.recv(&mut p);
        match go {
            Ok(proto::GO) => {}
            Ok(proto::ABORT) => {
                return Err(Error::msg(format!(
                    "the source cancelled the migration: {}; nothing was restored",
                    proto::text(&p)
                )))
            }
            Ok(t) => {
                return Err(Error::msg(format!(
                    "the source sent message {t} out of turn"
                )))
            }
            Err(e) => {
                return Err(Error::msg(format!(
                    "waiting for the source to hand over its PIDs: {e}; nothing was restored"
                )))
            }
        }
    }
    let t1 = Instant::now();
    let r = received.into_image().and_then(|img| {
        let r = crate::restore(
            io::BufReader::with_capacity(64 << 10, img.read),
            &mut |_| {},
        );
        if let Some(b) = img.builder {
            let built = b
                .join()
                .unwrap_or_else(|_| Err(Error::msg("the image builder panicked")));
            // A restore that read a complete image (tail checked) had
            // everything the builder wrote; else its error says more.
            if let (Ok(_), Err(e)) = (&r, built) {
                return Err(e);
            }
        }
        r
    });
    match r {
        Ok(r) => {
            if let Some(tx) = &mut tx {
                // The tree runs: if the source cannot hear it now, it
                // resumes its own copy (the one here keeps running).
                if let Err(e) = tx.send_now(proto::RUNNING, &r.pid.to_le_bytes()) {
                    eprintln!(
                        "crest: warning: could not tell the source that pid {} runs: {e}",
                        r.pid
                    );
                }
            }
            Ok(ReceiveReport {
                restore: r,
                handover,
                bytes_received: rx.bytes,
                receive_ms,
                restore_ms: t1.elapsed().as_secs_f64() * 1000.0,
            })
        }
        Err(e) => Err(refuse(&mut tx, proto::FAILED, e)),
    }
}

/// What a stream carried.
enum Received {
    /// A whole image (sent while the tree was frozen).
    Image(std::fs::File),
    /// A pre-copied migration: the copy of the source's page spool, the
    /// metadata image and the page windows.
    Pre {
        spool: std::fs::File,
        meta: Vec<u8>,
        windows: Vec<Window>,
    },
}

/// An image being read by the restore; a pre-copied one is built by a
/// thread of its own while the restore reads it through a pipe.
struct Incoming {
    read: std::fs::File,
    builder: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Received {
    /// The image to restore from.
    fn into_image(self) -> Result<Incoming> {
        match self {
            Received::Image(mut f) => {
                f.rewind()?;
                Ok(Incoming {
                    read: f,
                    builder: None,
                })
            }
            Received::Pre {
                spool,
                meta,
                windows,
            } => {
                let (r, w) = crate::files::make_pipe()?;
                // SAFETY: fcntl on a pipe we own; failing is harmless.
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
                let builder = std::thread::spawn(move || -> Result<()> {
                    let out = io::BufWriter::with_capacity(1 << 20, std::fs::File::from(w));
                    let mut out = image::build(&meta, out, |w| {
                        image::write_windows(w, &windows, &spool)?;
                        Ok(())
                    })?;
                    out.flush()?;
                    Ok(())
                });
                Ok(Incoming {
                    read: std::fs::File::from(r),
                    builder: Some(builder),
                })
            }
        }
    }
}

/// Receives frames until END (or END_PRE), keeping what they carry.
fn receive_image(rx: &mut Receiver, progress: &mut dyn FnMut(u64)) -> Result<Received> {
    let mut image = io::BufWriter::with_capacity(1 << 20, crate::files::spool_file()?);
    let mut spool: Option<std::fs::File> = None;
    let mut spooled = 0u64;
    let mut meta = Vec::new();
    let mut list = Vec::new();
    let mut p = Vec::new();
    let (mut bytes, mut frames) = (0u64, 0u64);
    loop {
        let t = rx.recv(&mut p).map_err(|e| match e {
            RecvError::Closed { .. } => {
                Error::msg("the stream ended before its end (truncated, or the source died)")
            }
            e => e.into(),
        })?;
        match t {
            proto::DATA => {
                image.write_all(&p)?;
                bytes += p.len() as u64;
                frames += 1;
                progress(p.len() as u64);
            }
            proto::END => {
                let (b, f) = proto::decode_end(&p)?;
                if (b, f) != (bytes, frames) {
                    return Err(Error::msg(format!(
                        "the source sent {b} bytes in {f} frames, {bytes} in {frames} arrived"
                    )));
                }
                image.flush()?;
                let f = image.into_inner().map_err(|e| e.into_error())?;
                return Ok(Received::Image(f));
            }
            proto::PRE => {
                if p.len() < 8 {
                    return Err(Error::msg("malformed PRE message"));
                }
                let off = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                if off != spooled {
                    return Err(Error::msg(format!(
                        "pre-copied pages at spool offset {off}, expected {spooled}"
                    )));
                }
                let f = match &mut spool {
                    Some(f) => f,
                    None => spool.insert(crate::files::spool_file()?),
                };
                f.write_all_at(&p[8..], off)?;
                spooled += (p.len() - 8) as u64;
                progress((p.len() - 8) as u64);
            }
            proto::META => meta.extend_from_slice(&p),
            proto::WINDOWS => list.extend_from_slice(&p),
            proto::END_PRE => {
                let (sp, m, n) = proto::decode_end_pre(&p)?;
                if (sp, m) != (spooled, meta.len() as u64) {
                    return Err(Error::msg(format!(
                        "the source sent {sp} page bytes and {m} of metadata, \
                         {spooled} and {} arrived",
                        meta.len()
                    )));
                }
                // The metadata is checked in full now, before any PID is
                // asked for (the image built from it later is checked again
                // by the restore).
                let mut r = crest_image::Reader::new(&meta[..])?;
                let ps = r.page_size() as u64;
                while r.next_record()?.is_some() {}
                let mut windows = Vec::new();
                image::decode_windows(&list, ps, spooled, &mut windows)?;
                if windows.len() as u64 != n {
                    return Err(Error::msg("the page window list is incomplete"));
                }
                let spool = match spool {
                    Some(s) => s,
                    None => crate::files::spool_file()?,
                };
                return Ok(Received::Pre {
                    spool,
                    meta,
                    windows,
                });
            }
            proto::ABORT => {
                return Err(Error::msg(format!(
                    "the source cancelled: {}",
                    proto::text(&p)
                )))
            }
            t => {
                return Err(Error::msg(format!(
                    "unexpected message {t} in the image stream"
                )))
            }
        }
    }
}
