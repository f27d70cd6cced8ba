//! The swrk request loop.
//!
//! Each packet is one `criu_req`; each gets one final `criu_resp` of the
//! same type, preceded, with `notify_scripts`, by NOTIFY responses the
//! runtime acknowledges one by one ("pre-dump", "post-dump" while the tree
//! is still frozen and its image safe; "pre-restore", "post-restore" with
//! the restored pid).  Without `keep_open` the server ends after the
//! answer.  A malformed request, an unknown type, a runtime that goes away
//! mid-request: an error response if the socket still takes one, and
//! nothing done to any process.

use crate::options::{self, Prepared};
use crate::rpc::*;
use crate::transport::{self, Packet};
use crate::{stats, wire, CRIU_VERSION, IMAGE_NAME};
use prost::Message;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// A failed request: the message for `cr_errmsg` and the log, and an
/// errno for `cr_errno`.
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub errno: i32,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Failure {
        Failure {
            msg: msg.into(),
            errno: 0,
        }
    }

    fn errno(mut self, e: i32) -> Failure {
        self.errno = e;
        self
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::new(s)
    }
}

/// What the loop does after a request.
pub struct Outcome {
    pub resp: CriuResp,
    /// Serve another request on the same socket.
    pub keep_open: bool,
}

fn ok(kind: CriuReqType) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success: true,
        ..Default::default()
    }
}

/// The error response for a request of raw type `kind`.
pub fn failed(kind: i32, f: &Failure) -> CriuResp {
    CriuResp {
        r#type: kind,
        success: false,
        cr_errno: Some(f.errno),
        cr_errmsg: Some(f.msg.clone()),
        ..Default::default()
    }
}

/// Serves requests on `sock` until one without `keep_open`, or until the
/// runtime closes it; returns the exit status.
pub fn serve(sock: OwnedFd) -> i32 {
    let mut served = 0;
    loop {
        let pkt = match transport::recv(&sock) {
            Ok(Packet::Data(p)) => p,
            Ok(Packet::Closed) if served > 0 => return 0,
            Ok(Packet::Closed) => {
                eprintln!("criu swrk (crest): the socket was closed before a request came");
                return 1;
            }
            Err(e) => {
                let f = Failure::new(format!("receiving the request: {e}"));
                let _ = transport::send(&sock, &failed(0, &f).encode_to_vec());
                eprintln!("criu swrk (crest): {}", f.msg);
                return 1;
            }
        };
        served += 1;
        let out = handle(&sock, &pkt);
        let success = out.resp.success;
        if let Err(e) = transport::send(&sock, &out.resp.encode_to_vec()) {
            eprintln!("criu swrk (crest): sending the response: {e}");
            return 1;
        }
        if !success {
            return 1;
        }
        if !out.keep_open {
            return 0;
        }
    }
}

/// Decodes and serves one request packet.
pub fn handle(sock: &OwnedFd, pkt: &[u8]) -> Outcome {
    let done = |resp| Outcome {
        resp,
        keep_open: false,
    };
    let fields = match wire::fields(pkt) {
        Ok(f) => f,
        Err(e) => {
            return done(failed(
                0,
                &Failure::new(format!("malformed request ({} bytes): {e}", pkt.len()))
                    .errno(libc::EBADMSG),
            ))
        }
    };
    if !fields.iter().any(|f| f.number == 1 && f.payload.is_none()) {
        return done(failed(
            0,
            &Failure::new("malformed request: it has no request type").errno(libc::EBADMSG),
        ));
    }
    let req = match CriuReq::decode(pkt) {
        Ok(r) => r,
        Err(e) => {
            return done(failed(
                0,
                &Failure::new(format!("malformed request: {e}")).errno(libc::EBADMSG),
            ))
        }
    };
    if let Some(n) = fields.iter().map(|f| f.number).find(|n| *n > 6) {
        return done(failed(
            req.r#type,
            &Failure::new(format!(
                "criu_req field {n} is unknown to crest's protocol schema"
            ))
            .errno(libc::EINVAL),
        ));
    }
    let Ok(kind) = CriuReqType::try_from(req.r#type) else {
        return done(failed(
            req.r#type,
            &Failure::new(format!("unknown request type {}", req.r#type)).errno(libc::EINVAL),
        ));
    };
    // prost merges every occurrence of the options field: look at all.
    let raw = wire::all(pkt, 2).unwrap_or_default();
    let result = match kind {
        CriuReqType::Version => Ok(version()),
        CriuReqType::Check => check().map(|()| ok(kind)),
        CriuReqType::FeatureCheck => Ok(features(&req)),
        CriuReqType::Dump => Session::new(sock, &req, kind, &raw).and_then(|s| s.dump()),
        CriuReqType::Restore => Session::new(sock, &req, kind, &raw).and_then(|s| s.restore()),
        CriuReqType::PreDump | CriuReqType::SinglePreDump => Err(Failure::new(format!(
            "{}: iterative pre-dumps are not implemented; crest copies memory while the tree \
             runs inside one DUMP with leave_running",
            kind.name()
        ))
        .errno(libc::EOPNOTSUPP)),
        CriuReqType::Notify => Err(Failure::new(
            "NOTIFY answers a notification, and none is pending",
        )
        .errno(libc::EINVAL)),
        CriuReqType::Empty => {
            Err(Failure::new("request type EMPTY asks for nothing").errno(libc::EINVAL))
        }
        CriuReqType::PageServer
        | CriuReqType::PageServerChld
        | CriuReqType::CpuinfoDump
        | CriuReqType::CpuinfoCheck
        | CriuReqType::WaitPid => Err(Failure::new(format!(
            "{} is not implemented by crest",
            kind.name()
        ))
        .errno(libc::EOPNOTSUPP)),
    };
    match result {
        Ok(resp) => Outcome {
            resp,
            keep_open: req.keep_open(),
        },
        Err(f) => done(failed(kind as i32, &f)),
    }
}

fn version() -> CriuResp {
    let (major, minor, sub) = CRIU_VERSION;
    CriuResp {
        version: Some(CriuVersion {
            major_number: major,
            minor_number: minor,
            sublevel: (sub != 0).then_some(sub),
            name: Some(format!("crest {}", env!("CARGO_PKG_VERSION"))),
            ..Default::default()
        }),
        ..ok(CriuReqType::Version)
    }
}

/// What crest needs from the kernel and its credentials to dump and
/// restore: ptrace, and CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) to give
/// restored processes their pids.
pub fn check() -> Result<(), Failure> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Failure::new(format!("reading /proc/self/status: {e}")))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| Failure::new("no CapEff in /proc/self/status"))?;
    // Capability numbers (linux/capability.h).
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE (to checkpoint processes of other users)");
    }
    if !has(CAP_CHECKPOINT_RESTORE) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (to restore with the same pids)");
    }
    if !std::path::Path::new("/proc/self/ns/pid").exists() {
        missing.push("/proc/PID/ns (namespace identities)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!("crest lacks {}", missing.join(", "))).errno(libc::EPERM))
    }
}

/// Answers every feature asked: none of CRIU's optional features (memory
/// tracking for pre-dumps, lazy pages, pidfd stores) is implemented.
fn features(req: &CriuReq) -> CriuResp {
    let asked = req.features.clone().unwrap_or_default();
    CriuResp {
        features: Some(CriuFeatures {
            mem_track: asked.mem_track.map(|_| false),
            lazy_pages: asked.lazy_pages.map(|_| false),
            pidfd_store: asked.pidfd_store.map(|_| false),
        }),
        ..ok(CriuReqType::FeatureCheck)
    }
}

/// A DUMP or RESTORE being served.
struct Session<'a> {
    sock: &'a OwnedFd,
    opts: CriuOpts,
    p: Prepared,
    kind: CriuReqType,
}

impl<'a> Session<'a> {
    fn new(
        sock: &'a OwnedFd,
        req: &CriuReq,
        kind: CriuReqType,
        raw: &[&[u8]],
    ) -> Result<Session<'a>, Failure> {
        let opts = req.opts.clone().ok_or_else(|| {
            Failure::new(format!("{} without options", kind.name())).errno(libc::EINVAL)
        })?;
        let peer = transport::peer_pid(sock)
            .map_err(|e| Failure::new(format!("the runtime's pid (SO_PEERCRED): {e}")))?;
        let mut p =
            options::prepare(&opts, peer).map_err(|e| Failure::new(e).errno(libc::EINVAL))?;
        p.log.info(&format!(
            "crest {} serving {} (criu-compatible front, protocol of CRIU {}.{})",
            env!("CARGO_PKG_VERSION"),
            kind.name(),
            CRIU_VERSION.0,
            CRIU_VERSION.1
        ));
        options::describe(&mut p, &opts);
        let refused = options::unsupported(kind, &opts, raw);
        let mut s = Session {
            sock,
            opts,
            p,
            kind,
        };
        if !refused.is_empty() {
            let mut msg = format!("options crest does not implement: {}", refused.join("; "));
            if kind == CriuReqType::Dump {
                // Say first what stops the process itself (another
                // namespace, say): that is usually the root cause.
                if let Some(pid) = s.p.pid {
                    match crest::dump::preflight(pid) {
                        Ok(obs) if !obs.is_empty() => {
                            let o: Vec<String> = obs.iter().map(|o| o.to_string()).collect();
                            msg = format!(
                                "pid {pid} cannot be checkpointed: {}; {msg}",
                                o.join("; ")
                            );
                        }
                        Ok(_) => {}
                        Err(e) => msg = format!("{e}; {msg}"),
                    }
                }
            }
            return Err(s.fail(Failure::new(msg).errno(libc::EOPNOTSUPP)));
        }
        Ok(s)
    }

    /// Logs a failure and returns it.
    fn fail(&mut self, f: Failure) -> Failure {
        self.p
            .log
            .error(&format!("{} failed: {}", self.kind.name(), f.msg));
        f
    }

    /// Runs the runtime's hook `script`: a NOTIFY response, then its
    /// acknowledgement.
    fn notify(&mut self, script: &str, pid: Option<i32>) -> Result<(), Failure> {
        if !self.p.notify {
            return Ok(());
        }
        notify(self.sock, script, pid).inspect_err(|f| self.p.log.error(&f.msg))?;
        self.p
            .log
            .debug(&format!("notification {script}: acknowledged"));
        Ok(())
    }

    fn dump(mut self) -> Result<CriuResp, Failure> {
        let Some(pid) = self.p.pid.filter(|p| *p > 0) else {
            return Err(self.fail(
                Failure::new("DUMP needs pid: crest does not checkpoint the requesting process")
                    .errno(libc::EINVAL),
            ));
        };
        self.notify("pre-dump", None)?;
        let tmp = format!(".{IMAGE_NAME}.partial-{}", std::process::id());
        let file = options::create_in(&self.p.images, &tmp, true)
            .map_err(|e| Failure::new(format!("creating {tmp} in the images directory: {e}")))
            .map_err(|f| self.fail(f))?;
        // As CRIU, pipes leading out of the tree (the runtime's stdio
        // pipes) are dumped; crest records them by key, and a restore
        // needs an inherit_fd for each.
        let dopts = crest::DumpOptions {
            leave_running: self.p.leave_running,
            external_pipes: true,
            external_net: options::external_net(&self.opts),
            external_mounts: options::external_mounts(&self.opts),
            ..Default::default()
        };
        let notify = self.p.notify;
        let mut sink = DirSink {
            dir: &self.p.images,
            tmp: tmp.clone(),
            sock: self.sock,
            notify,
            committed: false,
            net_locked: false,
        };
        let r = crest::dump(
            pid,
            BufWriter::with_capacity(1 << 20, file),
            &dopts,
            &mut sink,
            &mut |_, _| {},
        );
        // The tree runs again (it failed, or leave_running): as CRIU, the
        // runtime unlocks its network.
        let unlock = sink.net_locked && (r.is_err() || self.p.leave_running);
        if unlock {
            if let Err(f) = self.notify("network-unlock", None) {
                if r.is_ok() {
                    return Err(f);
                }
            }
        }
        let report = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = unlink_in(&self.p.images, &tmp);
                return Err(self.fail(Failure::new(e.to_string())));
            }
        };
        self.p.log.info(&format!(
            "dumped pid {} into {IMAGE_NAME}: {} processes, {} pages, frozen {:.1} ms, {}",
            report.pid,
            report.processes,
            report.pages_written,
            report.frozen_ms,
            if report.left_running {
                "left running"
            } else {
                "killed"
            }
        ));
        self.write_stats(stats::DUMP_FILE, &stats::dump_entry(&report));
        Ok(CriuResp {
            dump: Some(CriuDumpResp {
                restored: Some(false),
            }),
            ..ok(CriuReqType::Dump)
        })
    }

    fn restore(mut self) -> Result<CriuResp, Failure> {
        self.notify("pre-restore", None)?;
        let file = options::open_in(&self.p.images, IMAGE_NAME)
            .map_err(|e| {
                Failure::new(format!(
                    "no crest image {IMAGE_NAME} in the images directory: {e}"
                ))
                .errno(e.raw_os_error().unwrap_or(0))
            })
            .map_err(|f| self.fail(f))?;
        let (mounts, netns) = options::restore_mapping(&self.opts);
        // "setup-namespaces": runc runs the OCI prestart hooks with the
        // restored init's pid once its namespaces exist.
        let hook = if self.p.notify {
            let sock = self
                .sock
                .try_clone()
                .map_err(|e| Failure::new(format!("duplicating the socket: {e}")))?;
            Some(crest::NamespacesHook(std::sync::Arc::new(move |pid| {
                notify(&sock, "setup-namespaces", Some(pid)).map_err(|f| crest::Error::msg(f.msg))
            })))
        } else {
            None
        };
        let ropts = crest::RestoreOptions {
            sibling: self.p.sibling,
            inherit: options::inherited(&self.opts),
            mounts,
            existing_ns: netns
                .into_iter()
                .map(|path| crest::ExistingNs {
                    kind: "net".into(),
                    ino: None,
                    path,
                })
                .collect(),
            on_namespaces: hook,
            ..Default::default()
        };
        let report = crest::restore_with(
            BufReader::with_capacity(64 << 10, file),
            &ropts,
            &mut |_| {},
        )
        .map_err(|e| Failure::new(e.to_string()))
        .map_err(|f| self.fail(f))?;
        let pid = report.pid;
        if let Err(f) = self.notify("post-restore", Some(pid)) {
            // The runtime could not take the restored tree: it goes.
            for p in crate::cgroup::tree(pid).into_iter().rev() {
                // SAFETY: plain kill of a process this request restored.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            return Err(f);
        }
        // The tree runs: as CRIU, its network is unlocked last.
        self.notify("network-unlock", None)?;
        self.p.log.info(&format!(
            "restored pid {pid}: {} pages in {:.1} ms",
            report.pages, report.total_ms
        ));
        self.write_stats(stats::RESTORE_FILE, &stats::restore_entry(&report));
        Ok(CriuResp {
            restore: Some(CriuRestoreResp { pid }),
            ..ok(CriuReqType::Restore)
        })
    }

    /// Writes a statistics file into the work directory (a failure is
    /// logged: the checkpoint itself succeeded).
    fn write_stats(&mut self, name: &str, e: &StatsEntry) {
        let r = options::create_in(&self.p.work, name, false)
            .and_then(|mut f| f.write_all(&stats::encode(e)));
        if let Err(err) = r {
            self.p.log.error(&format!("writing {name}: {err}"));
        }
        if self.p.display_stats {
            self.p.log.at(0, &format!("statistics: {e:?}"));
        }
    }
}

/// Sends notification `script` and waits for the runtime's answer.
pub fn notify(sock: &OwnedFd, script: &str, pid: Option<i32>) -> Result<(), Failure> {
    let msg = CriuResp {
        notify: Some(CriuNotify {
            script: Some(script.into()),
            pid,
        }),
        ..ok(CriuReqType::Notify)
    };
    transport::send(sock, &msg.encode_to_vec())
        .map_err(|e| Failure::new(format!("sending notification {script}: {e}")))?;
    let pkt = match transport::recv(sock) {
        Ok(Packet::Data(p)) => p,
        Ok(Packet::Closed) => {
            return Err(Failure::new(format!(
                "the runtime closed the socket during notification {script}"
            ))
            .errno(libc::EPIPE))
        }
        Err(e) => return Err(Failure::new(format!("notification {script}: {e}"))),
    };
    let ack = CriuReq::decode(&pkt[..])
        .map_err(|e| Failure::new(format!("malformed answer to notification {script}: {e}")))?;
    if ack.r#type != CriuReqType::Notify as i32 {
        return Err(Failure::new(format!(
            "the runtime answered notification {script} with request type {}",
            ack.r#type
        )));
    }
    if !ack.notify_success() {
        return Err(Failure::new(format!("the runtime's {script} hook failed")));
    }
    Ok(())
}

fn unlink_in(dir: &OwnedFd, name: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: unlinkat with a valid directory descriptor and a C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The image in the images directory: written under a temporary name,
/// made durable and renamed to [`IMAGE_NAME`] when complete; then the
/// runtime's "post-dump" hook runs while the tree is still frozen.  If it
/// fails, or the runtime has gone away meanwhile, the image goes and the
/// tree runs on.
struct DirSink<'a> {
    dir: &'a OwnedFd,
    tmp: String,
    sock: &'a OwnedFd,
    notify: bool,
    committed: bool,
    /// "network-lock" was acknowledged: the runtime must hear
    /// "network-unlock" if the tree runs on.
    net_locked: bool,
}

impl crest::dump::ImageSink<BufWriter<std::fs::File>> for DirSink<'_> {
    fn commit(&mut self, w: BufWriter<std::fs::File>) -> crest::Result<()> {
        let f = w
            .into_inner()
            .map_err(|e| crest::Error::msg(format!("writing the image: {}", e.error())))?;
        f.sync_all()?;
        let from = std::ffi::CString::new(self.tmp.as_str()).expect("no NUL in the name");
        let to = std::ffi::CString::new(IMAGE_NAME).expect("no NUL in the name");
        let d = self.dir.as_raw_fd();
        // SAFETY: renameat within one directory descriptor, C strings.
        if unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) } != 0 {
            return Err(crest::Error::msg(format!(
                "renaming the image to {IMAGE_NAME}: {}",
                std::io::Error::last_os_error()
            )));
        }
        self.committed = true;
        let inv = options::create_in(self.dir, crate::inventory::FILE, false).and_then(|mut f| {
            f.write_all(&crate::inventory::encode())
                .and_then(|()| f.sync_all())
        });
        if let Err(e) = inv {
            self.rollback();
            return Err(crest::Error::msg(format!(
                "writing {}: {e}",
                crate::inventory::FILE
            )));
        }
        // SAFETY: fsync of a directory descriptor we hold.
        unsafe { libc::fsync(d) };
        if transport::peer_gone(self.sock) {
            self.rollback();
            return Err(crest::Error::msg(
                "the runtime closed the socket before the dump completed; the tree is left running",
            ));
        }
        if self.notify {
            if let Err(f) = notify(self.sock, "post-dump", None) {
                self.rollback();
                return Err(crest::Error::msg(f.msg));
            }
        }
        Ok(())
    }

    fn frozen(&mut self) -> crest::Result<()> {
        if self.notify {
            notify(self.sock, "network-lock", None).map_err(|f| crest::Error::msg(f.msg))?;
            self.net_locked = true;
        }
        Ok(())
    }

    fn rollback(&mut self) {
        if self.committed {
            let _ = unlink_in(self.dir, crate::inventory::FILE);
            let _ = unlink_in(self.dir, IMAGE_NAME);
            self.committed = false;
        }
    }
}
