//! Who may dump and restore what: the kernel's ptrace access check
//! decides who may dump a process; restore never gives a process more
//! privilege than the caller has.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

const NOBODY: &str = "65534";

/// Runs crest as user `nobody` (no capabilities).
fn crest_as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            crest_bin(),
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv")
}

fn open_dir(d: &std::path::Path) {
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
}

#[test]
fn non_root_cannot_dump_a_root_process() {
    let w = Workload::start("idle", &[]);
    open_dir(&w.dir);
    let img = w.dir.join("img-nobody");
    let o = crest_as_nobody(&[
        "dump",
        "-p",
        &w.pid.to_string(),
        "-o",
        img.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("permission denied") || err.contains("cannot attach"),
        "{err}"
    );
    assert!(!img.exists());
    w.go();
    w.expect_pass();
}

#[test]
fn non_root_cannot_restore_a_root_process() {
    let w = Workload::start("idle", &[]);
    w.dump_ok();
    let copy = w.dir.join("img-readable");
    std::fs::copy(w.image(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    open_dir(&w.dir);
    let o = crest_as_nobody(&["restore", "-i", copy.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("more privilege than you have"), "{err}");
    assert!(!std::path::Path::new(&format!("/proc/{}", w.pid)).exists());
    // Root may.
    w.restore_ok();
    w.go();
    w.expect_pass();
}

#[test]
fn a_user_dumps_their_own_process_and_root_restores_it() {
    init();
    let dir = temp_dir("nobody");
    open_dir(&dir);
    let out = crest_as_nobody(&[
        "run",
        "--log",
        dir.join("log").to_str().unwrap(),
        "--",
        workload_bin().to_str().unwrap(),
        "idle",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = stdout(&out).trim().parse().unwrap();
    let ready = dir.join("ready");
    let t = std::time::Instant::now();
    while !ready.exists() && t.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = dir.join("img");
    let d = crest_as_nobody(&["dump", "-p", &pid.to_string(), "-o", img.to_str().unwrap()]);
    assert!(
        d.status.success(),
        "a user may dump their own process: {}",
        stderr(&d)
    );
    reap(pid, std::time::Duration::from_secs(10));
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Without CAP_CHECKPOINT_RESTORE the pid cannot be chosen.
    let r = crest_as_nobody(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("CAP_CHECKPOINT_RESTORE"),
        "{}",
        stderr(&r)
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Root can, and the process stays nobody's.
    let r = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(NOBODY)),
        "{status}"
    );
    std::fs::write(dir.join("go"), b"go\n").unwrap();
    let e = reap(pid, std::time::Duration::from_secs(60));
    let res = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
    assert!(res.starts_with("PASS"), "{res}");
    assert_eq!(e, Some(Exit::Code(0)));
    let _ = std::fs::remove_dir_all(&dir);
}
