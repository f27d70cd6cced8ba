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
    let mut child = spawn_swrk(criu, server, Stdio::null(), Stdio::null());
    transport::send(&client, &req.encode_to_vec()).unwrap();
    drop(client);
    child.wait().unwrap().success()
}

/// `criu swrk 3` with `server` as its descriptor 3.
fn spawn_swrk(
    criu: &Path,
    server: std::os::fd::OwnedFd,
    stdin: Stdio,
    stdout: Stdio,
) -> std::process::Child {
    let sfd = server.as_raw_fd();
    let mut cmd = Command::new(criu);
    cmd.args(["swrk", "3"])
        .stdin(stdin)
        .stdout(stdout)
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
    rpc_with_stdio(criu, req, answer, Stdio::null(), Stdio::null())
}

/// [`rpc`] with the server's standard input and output (what runc gives
/// it on a restore: the restored process's stdio).
fn rpc_with_stdio(
    criu: &Path,
    req: &CriuReq,
    answer: &dyn Fn(&str) -> Option<bool>,
    stdin: Stdio,
    stdout: Stdio,
) -> (Option<CriuResp>, Notes, bool) {
    let (client, server) = transport::seqpacket_pair().unwrap();
    let mut child = spawn_swrk(criu, server, stdin, stdout);
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
    // Installing again is harmless; a file that is not the link is kept.
    assert_eq!(shim(&base), criu);
    let other = temp_dir("criu-not-a-link");
    std::fs::write(other.join("criu"), "#!/bin/sh\n").unwrap();
    let o = crest(&["install-criu-shim", other.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("not a symlink"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&other);
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
    assert_eq!(names(&notes), ["pre-dump", "network-lock", "post-dump"]);
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
    eprintln!("stats-dump: {st:?}");
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
    assert_eq!(
        names(&notes),
        [
            "pre-restore",
            "setup-namespaces",
            "post-restore",
            "network-unlock"
        ]
    );
    assert_eq!(
        notes[1].1,
        Some(w.pid),
        "setup-namespaces carries the pid (before the tree runs)"
    );
    assert_eq!(notes[2].1, Some(w.pid), "post-restore carries the pid");
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
    eprintln!("stats-restore: {st:?}");
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
    assert_eq!(
        names(&notes),
        ["pre-dump", "network-lock", "post-dump", "network-unlock"]
    );
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
    assert_eq!(
        names(&notes),
        ["pre-dump", "network-lock", "post-dump", "network-unlock"]
    );
    assert!(alive(w.pid), "the tree must run on");
    assert!(
        !d.images_path.join("crest.img").exists(),
        "no image is left"
    );
    assert!(
        !d.images_path.join("inventory.img").exists(),
        "nor its inventory"
    );
    assert!(d.log("dump.log").contains("post-dump hook failed"));
    w.go();
    w.expect_pass();
}

#[test]
fn a_failed_setup_namespaces_hook_fails_the_restore_and_leaves_no_process() {
    let w = Workload::start("memory", &["16"]);
    let criu = shim(&w.dir);
    let d = Dirs::new(&w.dir);
    let (resp, _, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(w.pid, false)),
        &|_| Some(true),
    );
    assert!(resp.unwrap().success && ok, "{}", d.log("dump.log"));
    assert!(
        d.images_path.join("inventory.img").exists(),
        "an inventory beside the image"
    );
    assert_eq!(
        reap(w.pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
    let (resp, notes, _) = rpc(
        &criu,
        &request(CriuReqType::Restore, d.restore_opts(true)),
        &|s| Some(s != "setup-namespaces"),
    );
    let resp = resp.unwrap();
    assert!(!resp.success, "the runtime's hook failed: no restore");
    assert!(
        resp.cr_errmsg
            .unwrap_or_default()
            .contains("setup-namespaces hook failed"),
        "the error names the hook"
    );
    assert_eq!(names(&notes), ["pre-restore", "setup-namespaces"]);
    // Nothing of the tree is left: no process under that pid (a zombie
    // child of ours would be reaped here).
    let _ = reap(w.pid, Duration::from_millis(500));
    assert!(!alive(w.pid), "no restored process is left");
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
    assert_eq!(names(&notes), ["pre-dump", "network-lock", "post-dump"]);
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

/// A pipe (read end, write end).
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are new and owned by no one else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn pipe_inode(f: &std::fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    f.metadata().unwrap().ino()
}

/// Reads lines from `r` until `n` numbers arrived (or end of file).
fn read_numbers(r: &mut std::io::BufReader<std::fs::File>, n: usize) -> Vec<u64> {
    use std::io::BufRead;
    let mut out = Vec::new();
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        out.push(line.trim().parse().expect("a number"));
    }
    out
}

/// The stdio pipes of a printer: the test's ends and the pipes' keys.
struct Printer {
    pid: i32,
    /// Read end of its stdout.
    out: std::io::BufReader<std::fs::File>,
    /// Write end of its stdin (never written: it only times the loop).
    _input: std::fs::File,
    in_key: String,
    out_key: String,
}

/// A shell loop printing 1, 2, 3… on its stdout, a pipe to this test,
/// and waiting 20 ms on its stdin, another pipe from it (the way a
/// container's stdio are pipes to conmon).  One process: no child comes
/// and goes while it is frozen.
fn start_printer() -> Printer {
    init();
    let (r, w) = pipe();
    let (ir, iw) = pipe();
    let mut cmd = Command::new("setsid");
    cmd.args([
        "bash",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; read -t 0.02 x; done",
    ])
    .stdin(ir.try_clone().unwrap())
    .stdout(w.try_clone().unwrap())
    .stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe: nothing of the test's
    // (a build jobserver's pipe) but stdio goes into the loop.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    // Reaped by pid (reap), as the harness does with its workloads.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    Printer {
        pid: child.id() as i32,
        out: std::io::BufReader::new(r),
        _input: iw,
        in_key: format!("pipe:[{}]", pipe_inode(&ir)),
        out_key: format!("pipe:[{}]", pipe_inode(&w)),
    }
}

#[test]
fn stdio_pipes_to_the_runtime_are_external_and_inherited_on_restore() {
    let Printer {
        pid,
        mut out,
        _input,
        in_key,
        out_key: key,
    } = start_printer();
    let first = read_numbers(&mut out, 3);
    assert_eq!(first, [1, 2, 3]);
    let base = temp_dir("criu-pipes");
    let criu = shim(&base);
    let d = Dirs::new(&base);
    let (resp, _, ok) = rpc(
        &criu,
        &request(CriuReqType::Dump, d.dump_opts(pid, false)),
        &all_ok,
    );
    let resp = resp.unwrap();
    assert!(
        resp.success && ok,
        "{:?}\n{}",
        resp.cr_errmsg,
        d.log("dump.log")
    );
    // The dumped tree is gone: reap it (this test is its subreaper), as
    // the image lists it (the loop's `sleep` child changes all the time).
    let img = d.images_path.join("crest.img");
    let o = crest(&["inspect", "--json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut pids: Vec<i32> = v["checkpoint"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect();
    pids.reverse();
    for p in pids {
        reap(p, Duration::from_secs(10));
    }
    assert!(!alive(pid));
    // What was printed before the checkpoint, to the end of the old pipe.
    let before = read_numbers(&mut out, usize::MAX);
    let last = *before.last().unwrap_or(&3);
    let o = crest(&["inspect", d.images_path.join("crest.img").to_str().unwrap()]);
    assert!(
        stdout(&o).contains(&key),
        "inspect names the external pipe:\n{}",
        stdout(&o)
    );

    // Without a descriptor for the pipe, the restore is refused by key.
    let (resp, _, ok) = rpc(
        &criu,
        &request(CriuReqType::Restore, d.restore_opts(true)),
        &all_ok,
    );
    let resp = resp.unwrap();
    assert!(!resp.success && !ok);
    let msg = resp.cr_errmsg.unwrap();
    assert!(
        msg.contains(&key) || msg.contains(&in_key),
        "names a pipe: {msg}"
    );
    assert!(!alive(pid), "a refused restore leaves nothing");

    // With them (the server's stdin and stdout, as runc passes new
    // pipes), the restored loop prints into the new pipe, going on from
    // its count.
    let (r2, w2) = pipe();
    let (ir2, _iw2) = pipe();
    let mut opts = d.restore_opts(true);
    opts.inherit_fd = vec![
        InheritFd {
            key: in_key.clone(),
            fd: 0,
        },
        InheritFd {
            key: key.clone(),
            fd: 1,
        },
    ];
    let (resp, _, ok) = rpc_with_stdio(
        &criu,
        &request(CriuReqType::Restore, opts),
        &all_ok,
        Stdio::from(ir2),
        Stdio::from(w2),
    );
    let resp = resp.unwrap();
    assert!(
        resp.success && ok,
        "{:?}\n{}",
        resp.cr_errmsg,
        d.log("restore.log")
    );
    assert_eq!(resp.restore.unwrap().pid, pid);
    let mut out2 = std::io::BufReader::new(r2);
    let after = read_numbers(&mut out2, 3);
    assert_eq!(
        after,
        [last + 1, last + 2, last + 3],
        "the count goes on in the new pipe"
    );
    // SAFETY: plain kill of the process this test restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&base);
}
