//! crest's criu front driven the way a container runtime drives CRIU: a
//! fake runtime (this test) starts `criu swrk 3` (the crest binary under
//! the name `criu`, installed by `crest install-criu-shim`) with one end
//! of a SOCK_SEQPACKET pair, and dumps and restores a plain process (not
//! a container) through the RPC, answering the notifications.  After
//! each restore the workload checks its own state.

mod common;
use common::*;
use crest_criu_compat::rpc::*;
use crest_criu_compat::transport::{self, Packet};
use prost::Message;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `DIR/criu`, the shim, made once per test.
fn shim(dir: &Path) -> PathBuf {
    let o = crest(&["install-criu-shim", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let link = dir.join("criu");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new(crest_bin()).canonicalize().unwrap()
    );
    link
}

/// Sends a request to a fresh `criu swrk 3` and closes the socket at once,
/// as a runtime that dies; returns whether the server exited with 0.
fn rpc_and_vanish(criu: &Path, req: &CriuReq) -> bool {
    let (client, server) = transport::seqpacket_pair().unwrap();
    let mut child = spawn_swrk(criu, server);
    transport::send(&client, &req.encode_to_vec()).unwrap();
    drop(client);
    child.wait().unwrap().success()
}

/// `criu swrk 3` with `server` as its descriptor 3.
fn spawn_swrk(criu: &Path, server: std::os::fd::OwnedFd) -> std::process::Child {
    let sfd = server.as_raw_fd();
    let mut cmd = Command::new(criu);
    cmd.args(["swrk", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: dup2/fcntl are async-signal-safe; they place the server end
    // at descriptor 3 (without close-on-exec) in the child.
    unsafe {
        cmd.pre_exec(move || {
            if sfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(sfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting criu swrk");
    drop(server);
    child
}

/// Notifications a runtime saw: script and pid.
type Notes = Vec<(String, Option<i32>)>;

/// One request served by a fresh `criu swrk 3`: the final response, the
/// notifications seen (answered with `answer(script)`; `None` closes the
/// socket instead), and whether the server exited with status 0.
fn rpc(
    criu: &Path,
    req: &CriuReq,
    answer: &dyn Fn(&str) -> Option<bool>,
) -> (Option<CriuResp>, Notes, bool) {
    let (client, server) = transport::seqpacket_pair().unwrap();
    let mut child = spawn_swrk(criu, server);
    transport::send(&client, &req.encode_to_vec()).unwrap();
    let mut notes = Vec::new();
    let mut last = None;
    while let Packet::Data(d) = transport::recv(&client).unwrap() {
        let resp = CriuResp::decode(&d[..]).expect("a criu_resp");
        if resp.r#type == CriuReqType::Notify as i32 {
            let n = resp.notify.clone().unwrap();
            let script = n.script.unwrap_or_default();
            notes.push((script.clone(), n.pid));
            match answer(&script) {
                Some(ok) => {
                    let ack = CriuReq {
                        r#type: CriuReqType::Notify as i32,
                        notify_success: Some(ok),
                        ..Default::default()
                    };
                    transport::send(&client, &ack.encode_to_vec()).unwrap();
                }
                None => break,
            }
            continue;
        }
        last = Some(resp);
        break;
    }
    drop(client);
    let st = child.wait().unwrap();
    (last, notes, st.success())
}

fn all_ok(_: &str) -> Option<bool> {
    Some(true)
}

/// The directories a runtime opens and names by descriptor.
struct Dirs {
    images: std::fs::File,
    work: std::fs::File,
    images_path: PathBuf,
    work_path: PathBuf,
}

impl Dirs {
    fn new(base: &Path) -> Dirs {
        let images_path = base.join("images");
        let work_path = base.join("work");
        std::fs::create_dir_all(&images_path).unwrap();
        std::fs::create_dir_all(&work_path).unwrap();
        Dirs {
            images: std::fs::File::open(&images_path).unwrap(),
            work: std::fs::File::open(&work_path).unwrap(),
            images_path,
            work_path,
        }
    }

    /// The options runc sends for a dump (those crest implements).
    fn dump_opts(&self, pid: i32, leave_running: bool) -> CriuOpts {
        CriuOpts {
            images_dir_fd: self.images.as_raw_fd(),
            work_dir_fd: Some(self.work.as_raw_fd()),
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            pid: Some(pid),
            leave_running: Some(leave_running),
            notify_scripts: Some(true),
            manage_cgroups: Some(true),
            orphan_pts_master: Some(true),
            shell_job: Some(false),
            ext_unix_sk: Some(false),
            tcp_established: Some(false),
            file_locks: Some(false),
            ..Default::default()
        }
    }

    fn restore_opts(&self, sibling: bool) -> CriuOpts {
        CriuOpts {
            images_dir_fd: self.images.as_raw_fd(),
            work_dir_fd: Some(self.work.as_raw_fd()),
            log_level: Some(4),
            log_file: Some("restore.log".into()),
            rst_sibling: Some(sibling),
            notify_scripts: Some(true),
            manage_cgroups: Some(true),
            evasive_devices: Some(true),
            orphan_pts_master: Some(true),
            ..Default::default()
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work_path.join(name)).unwrap_or_default()
    }
}

fn request(kind: CriuReqType, opts: CriuOpts) -> CriuReq {
    CriuReq {
        r#type: kind as i32,
        opts: Some(opts),
        ..Default::default()
    }
}

fn names(notes: &[(String, Option<i32>)]) -> Vec<&str> {
    notes.iter().map(|(s, _)| s.as_str()).collect()
}

fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s.rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn version_check_and_features_through_the_binary() {
    init();
    let base = temp_dir("criu-basic");
    let criu = shim(&base);
    let o = Command::new(&criu).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("Version: 3."), "{}", stdout(&o));
    let o = Command::new(&criu).arg("check").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "Looks good.");
    let o = Command::new(&criu)
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "crest has no pre-dump memory tracking");
    let o = Command::new(&criu)
        .args(["dump", "-t", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("crest dump"), "{}", stderr(&o));

    let v = CriuReq {
        r#type: CriuReqType::Version as i32,
        ..Default::default()
    };
    let (resp, notes, ok) = rpc(&criu, &v, &all_ok);
    let resp = resp.unwrap();
    assert!(resp.success && ok && notes.is_empty());
    assert_eq!(resp.version.unwrap().major_number, 3);
    let f = CriuReq {
        r#type: CriuReqType::FeatureCheck as i32,
        features: Some(CriuFeatures {
            mem_track: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (resp, _, ok) = rpc(&criu, &f, &all_ok);
    assert!(ok);
    assert_eq!(resp.unwrap().features.unwrap().mem_track, Some(false));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn dump_and_restore_as_the_runtimes_sibling() {
    let w = Workload::start("memory", &["16"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    let (resp, notes, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(w.pid, false)),
        &all_ok,
    );
    let resp = resp.expect("a DUMP response");
    assert!(resp.success, "{:?}\n{}", resp.cr_errmsg, d.log("dump.log"));
    assert!(ok, "criu swrk exits 0 after a dump");
    assert_eq!(names(&notes), ["pre-dump", "post-dump"]);
    assert_eq!(
        reap(w.pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL)),
        "without leave_running the tree is gone"
    );
    assert!(d.images_path.join("crest.img").exists());
    let st =
        crest_criu_compat::stats::decode(&std::fs::read(d.work_path.join("stats-dump")).unwrap())
            .unwrap()
            .dump
            .unwrap();
    assert!(st.pages_written > 0 && st.frozen_time > 0, "{st:?}");
    assert!(d.log("dump.log").contains(&format!("dumped pid {}", w.pid)));

    let (resp, notes, ok) = rpc(
        &criu,
        &request(CriuReqType::Restore, d.restore_opts(true)),
        &all_ok,
    );
    let resp = resp.expect("a RESTORE response");
    assert!(
        resp.success,
        "{:?}\n{}",
        resp.cr_errmsg,
        d.log("restore.log")
    );
    assert!(ok);
    assert_eq!(resp.restore.unwrap().pid, w.pid);
    assert_eq!(names(&notes), ["pre-restore", "post-restore"]);
    assert_eq!(notes[1].1, Some(w.pid), "post-restore carries the pid");
    assert_eq!(
        ppid(w.pid),
        std::process::id() as i32,
        "rst_sibling: the restored process is the runtime's child"
    );
    let st = crest_criu_compat::stats::decode(
        &std::fs::read(d.work_path.join("stats-restore")).unwrap(),
    )
    .unwrap()
    .restore
    .unwrap();
    assert!(st.pages_restored.unwrap() > 0);
    w.go();
    w.expect_pass();
}

#[test]
fn leave_running_then_restore_under_the_checkpointer() {
    let w = Workload::start("memory", &["16"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    let (resp, notes, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(w.pid, true)),
        &all_ok,
    );
    let resp = resp.unwrap();
    assert!(resp.success && ok, "{:?}", resp.cr_errmsg);
    assert_eq!(names(&notes), ["pre-dump", "post-dump"]);
    assert!(alive(w.pid), "leave_running: the process runs on");
    // The original goes; the image brings it back (not as our sibling:
    // under the criu process, then orphaned to this subreaper).
    // SAFETY: plain kill of the workload this test started.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    assert_eq!(
        reap(w.pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
    let (resp, _, ok) = rpc(
        &criu,
        &request(CriuReqType::Restore, d.restore_opts(false)),
        &all_ok,
    );
    let resp = resp.unwrap();
    assert!(
        resp.success && ok,
        "{:?}\n{}",
        resp.cr_errmsg,
        d.log("restore.log")
    );
    assert_eq!(resp.restore.unwrap().pid, w.pid);
    w.go();
    w.expect_pass();
}

#[test]
fn a_failed_post_dump_hook_leaves_the_process_running_and_no_image() {
    let w = Workload::start("memory", &["16"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    let (resp, notes, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(w.pid, false)),
        &|s| Some(s != "post-dump"),
    );
    let resp = resp.unwrap();
    assert!(!resp.success && !ok);
    assert!(
        resp.cr_errmsg.unwrap().contains("post-dump hook failed"),
        "the error names the hook"
    );
    assert_eq!(names(&notes), ["pre-dump", "post-dump"]);
    assert!(alive(w.pid), "the tree must run on");
    assert!(
        !d.images_path.join("crest.img").exists(),
        "no image is left"
    );
    assert!(d.log("dump.log").contains("post-dump hook failed"));
    w.go();
    w.expect_pass();
}

#[test]
fn a_runtime_gone_mid_dump_leaves_the_process_running() {
    let w = Workload::start("memory", &["16"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    // The runtime vanishes at post-dump: the image is complete and the
    // tree still frozen; it must not be killed.
    let (resp, notes, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(w.pid, false)),
        &|s| (s != "post-dump").then_some(true),
    );
    assert!(resp.is_none() && !ok);
    assert_eq!(names(&notes), ["pre-dump", "post-dump"]);
    assert!(alive(w.pid), "the tree must run on");
    assert!(
        !d.images_path.join("crest.img").exists(),
        "no image is left"
    );
    w.go();
    w.expect_pass();
}

#[test]
fn a_runtime_gone_right_after_its_request_leaves_the_process_running() {
    let w = Workload::start("memory", &["64"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    let mut opts = d.dump_opts(w.pid, false);
    opts.notify_scripts = Some(false);
    let ok = rpc_and_vanish(&criu, &request(CriuReqType::Dump, opts));
    assert!(!ok, "the dump must not count as done");
    assert!(
        alive(w.pid),
        "no one will read the result: the tree runs on"
    );
    assert!(
        !d.images_path.join("crest.img").exists(),
        "no image is left"
    );
    assert!(
        d.log("dump.log").contains("closed the socket"),
        "{}",
        d.log("dump.log")
    );
    w.go();
    w.expect_pass();
}
