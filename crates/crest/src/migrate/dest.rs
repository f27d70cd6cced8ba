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
    /// Restore lazily from the pages received here: the tree runs before
    /// its private memory is written in (see `crate::memory::lazy`).
    pub lazy: bool,
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
    /// What was built here while the source ran (see `super::prebuild`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prebuilt: Option<super::prebuild::FinishStats>,
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
    // Memory is built here while the source runs (not for a lazy restore,
    // which takes the pages it is given).
    // (`CREST_NO_PREBUILD=1`: the image is built only once the source is
    // frozen, as before; for comparisons.)
    let off = std::env::var_os("CREST_NO_PREBUILD").is_some_and(|v| v == "1");
    let mut pre = (!opts.lazy && !off).then(super::prebuild::Prebuild::new);
    let received = match receive_image(&mut rx, progress, &mut pre) {
        Ok(s) => s,
        Err(e) => {
            let e = Error::msg(format!("refusing the stream: {e}; nothing was restored"));
            return Err(refuse(&mut tx, proto::REFUSE, e));
        }
    };
    if let Received::Lazy(img, index) = received {
        let why = match (&tx, handover, opts.lazy) {
            (None, _, _) => "a post-copy stream needs a reply channel",
            (_, true, _) => "post-copy needs the destination in another PID space",
            (_, _, false) => "the source migrates post-copy (migrate --lazy): give --lazy",
            _ => {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let tx = tx.expect("checked");
                return super::postcopy_dest::restore(img, &index, rx, tx, ms);
            }
        };
        let e = Error::msg(format!("refusing the stream: {why}; nothing was restored"));
        return Err(refuse(&mut tx, proto::REFUSE, e));
    }
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
    let mut prebuilt = None;
    let r = received.into_image().and_then(|img| {
        prebuilt = img.prebuilt.clone();
        let ro = crate::RestoreOptions {
            lazy: opts.lazy,
            prebuilt: img.prebuilt.clone(),
            ..Default::default()
        };
        let r = crate::restore_with(
            io::BufReader::with_capacity(64 << 10, img.read),
            &ro,
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
                prebuilt: prebuilt.map(|p| p.stats()),
            })
        }
        Err(e) => Err(refuse(&mut tx, proto::FAILED, e)),
    }
}

/// What a stream carried.
enum Received {
    /// A whole image (sent while the tree was frozen).
    Image(std::fs::File),
    /// A post-copy image (its lazy pages left out) and their list.
    Lazy(std::fs::File, Vec<u8>),
    /// A pre-copied migration: the copy of the source's page spool, the
    /// metadata image and the page windows.
    Pre {
        spool: std::fs::File,
        meta: Vec<u8>,
        windows: Vec<Window>,
        prebuild: Option<super::prebuild::Prebuild>,
    },
}

/// An image being read by the restore; a pre-copied one is built by a
/// thread of its own while the restore reads it through a pipe.
struct Incoming {
    read: std::fs::File,
    builder: Option<std::thread::JoinHandle<Result<()>>>,
    prebuilt: Option<super::prebuild::Prebuilt>,
}

impl Received {
    /// The image to restore from.
    fn into_image(self) -> Result<Incoming> {
        match self {
            Received::Image(mut f) | Received::Lazy(mut f, _) => {
                f.rewind()?;
                Ok(Incoming {
                    read: f,
                    builder: None,
                    prebuilt: None,
                })
            }
            Received::Pre {
                spool,
                meta,
                windows,
                prebuild,
            } => {
                // The pre-built memory is checked against the final
                // windows; what it holds is left out of the image.
                let (windows, prebuilt) = match prebuild {
                    Some(p) => {
                        let ckpt = super::image::model(&meta)?;
                        let (w, b) = p.finish(&ckpt, windows, &spool)?;
                        (w, Some(b))
                    }
                    None => (windows, None),
                };
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
                    prebuilt,
                })
            }
        }
    }
}

/// Receives frames until END (or END_PRE), keeping what they carry.
fn receive_image(
    rx: &mut Receiver,
    progress: &mut dyn FnMut(u64),
    pre: &mut Option<super::prebuild::Prebuild>,
) -> Result<Received> {
    let mut image = io::BufWriter::with_capacity(1 << 20, crate::files::spool_file()?);
    let mut spool: Option<std::fs::File> = None;
    let mut spooled = 0u64;
    let mut meta = Vec::new();
    let mut list = Vec::new();
    let mut lazy: Option<Vec<u8>> = None;
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
                let mut f = image.into_inner().map_err(|e| e.into_error())?;
                if let Some(ix) = lazy {
                    f.rewind()?;
                    return Ok(Received::Lazy(f, ix));
                }
                return Ok(Received::Image(f));
            }
            proto::LAYOUT => {
                if let Some(pre) = pre {
                    pre.layout(&p)?;
                }
            }
            proto::PRE | proto::PRE_AT => {
                if p.len() < 8 {
                    return Err(Error::msg("malformed PRE message"));
                }
                let (off, head) = if t == proto::PRE_AT {
                    let (off, pid, addr) = super::prebuild::decode_at_head(&p)?;
                    if off == spooled {
                        if let Some(pre) = pre {
                            pre.place(pid, addr, off, &p[super::prebuild::AT_HEAD..]);
                        }
                    }
                    (off, super::prebuild::AT_HEAD)
                } else {
                    (u64::from_le_bytes(p[..8].try_into().expect("8 bytes")), 8)
                };
                if off != spooled {
                    return Err(Error::msg(format!(
                        "pre-copied pages at spool offset {off}, expected {spooled}"
                    )));
                }
                let f = match &mut spool {
                    Some(f) => f,
                    None => spool.insert(crate::files::spool_file()?),
                };
                f.write_all_at(&p[head..], off)?;
                spooled += (p.len() - head) as u64;
                progress((p.len() - head) as u64);
            }
            proto::META => meta.extend_from_slice(&p),
            proto::LAZY_INDEX => lazy.get_or_insert_with(Vec::new).extend_from_slice(&p),
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
                    prebuild: pre.take(),
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
