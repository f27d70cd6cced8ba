//! User namespaces are refused (issue 12): a rootless container made by
//! `nobody` with `unshare --user --map-root-user --pid --fork
//! --mount-proc` is refused by `crest check` and `crest dump` run as
//! `nobody`, with the user namespace named, and keeps running.  (What a
//! non-root user can and cannot do on this kernel is in
//! `crest::ns::user`.)

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(NOBODY)
        .arg(crest_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn rootless_container_is_refused_by_name_and_runs_on() {
    init();
    let dir = temp_dir("userns");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut wrapper = Command::new("setpriv")
        .args(NOBODY)
        .args(["unshare", "--user", "--map-root-user", "--pid", "--fork"])
        .args(["--mount-proc", "sleep", "100"])
        .spawn()
        .unwrap();
    // unshare's child, the container's init (sleep).
    let up = wrapper.id() as i32;
    let start = std::time::Instant::now();
    let mut init_pid = None;
    while init_pid.is_none() && start.elapsed().as_secs() < 10 {
        let kids =
            std::fs::read_to_string(format!("/proc/{up}/task/{up}/children")).unwrap_or_default();
        init_pid = kids
            .split_whitespace()
            .next()
            .and_then(|k| k.parse::<i32>().ok());
        if let Some(p) = init_pid {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() != "sleep" {
                init_pid = None;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = init_pid.expect("the container's init").to_string();
    let o = as_nobody(&["check", "-p", &pid]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!o.status.success(), "check accepted it: {text}");
    assert!(
        text.contains("user namespace") && text.contains("not supported"),
        "{text}"
    );
    let img = dir.join("img");
    let o = as_nobody(&["dump", "-p", &pid, "-o", img.to_str().unwrap()]);
    let text = stderr(&o);
    assert!(!o.status.success(), "dump accepted it");
    assert!(text.contains("user namespace"), "{text}");
    assert!(alive(pid.parse().unwrap()), "the refused container is gone");
    let _ = wrapper.kill();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    let _ = wrapper.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
