//! POSIX message queues: the queues of a private IPC namespace (every
//! queue, open or not, with its attributes and messages in receive
//! order) and descriptors on queues, of that namespace or of crest's
//! own; mq_notify registrations and queues unlinked while open are
//! refused, and the refused tree runs on untouched.  The `mqueue`
//! workload checks its own state after restore.

mod common;
use common::*;

/// A process in an IPC namespace of its own: three queues (one held open
/// by nobody, one empty), messages of several priorities with equal ones
/// among them, descriptors read-write non-blocking, read-only (two
/// descriptors on one description) and write-only; two cycles in a row.
#[test]
fn private_namespace_queues_two_cycles() {
    let _g = serial();
    let mut w = Workload::start("mqueue", &[]);
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for _ in 0..2 {
        w.dump_ok();
        let o = crest(&["inspect", w.image().to_str().unwrap()]);
        let text = stdout(&o);
        assert!(
            text.contains(
                "POSIX message queue /crest-a of IPC namespace 0 (read-write, O_NONBLOCK)"
            ) && text.contains(
                "POSIX message queue /crest-empty of IPC namespace 0 (write, O_NONBLOCK)"
            ),
            "{text}"
        );
        w.restore_moved(&[]);
    }
    w.go();
    w.expect_pass();
}

/// A container made by util-linux, `unshare --ipc --fork`: the queues of
/// the namespace its init was started in.
#[test]
fn unshare_made_container() {
    let _g = serial();
    let wrapper = ["unshare", "--ipc", "--fork"];
    let mut w = Workload::start_wrapped("mqueue", &wrapper, &["inside"], "ready");
    let o = w.dump(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = std::time::Instant::now();
    while alive(w.pid) && start.elapsed().as_secs() < 10 {
        reap(w.pid, std::time::Duration::from_millis(50));
    }
    assert!(!alive(w.pid), "the dumped process is still there");
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// `unshare --user --map-root-user --ipc --fork`: an IPC namespace owned
/// by the tree's user namespace, made with it at restore; its queues are
/// made once it exists (no process holds a descriptor on them).
#[test]
fn queues_of_a_user_namespace_container() {
    let _g = serial();
    let wrapper = ["unshare", "--user", "--map-root-user", "--ipc", "--fork"];
    let mut w = Workload::start_wrapped("mqueue", &wrapper, &["inside", "nofds"], "ready");
    let o = w.dump(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = std::time::Instant::now();
    while alive(w.pid) && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive(w.pid), "the dumped process is still there");
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// The same container with descriptors on its queues: refused by name.
#[test]
fn descriptors_in_a_user_namespace_container_are_refused() {
    let _g = serial();
    let wrapper = ["unshare", "--user", "--map-root-user", "--ipc", "--fork"];
    let w = Workload::start_wrapped("mqueue", &wrapper, &["inside", "unowned"], "ready");
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    let text = stdout(&o) + &stderr(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("/crest-a") && text.contains("together with a user namespace"),
        "{text}"
    );
    assert!(alive(w.pid));
}

/// `crest dump -o - | crest restore -i -`: the queues go through the pipe
/// into a new namespace while the dumped one is still going away.
#[test]
fn private_queues_through_a_pipe() {
    use std::process::{Command, Stdio};
    let _g = serial();
    let mut w = Workload::start("mqueue", &[]);
    // The dumped process is reaped as soon as it dies: the restored one
    // needs its pid.
    let old = w.pid;
    let reaper = std::thread::spawn(move || reap(old, std::time::Duration::from_secs(30)));
    let mut dump = Command::new(crest_bin())
        .args(["dump", "-p", &w.pid.to_string(), "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = Command::new(crest_bin())
        .args(["restore", "-i", "-", "-d"])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success(), "dump failed");
    assert!(restore.status.success(), "{}", stderr(&restore));
    let _ = reaper.join();
    w.pid = stdout(&restore).trim().parse().unwrap();
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}

/// Descriptors on a queue of crest's own IPC namespace (the machine's):
/// reopened by name with their modes; the messages stay in the queue.
#[test]
fn host_queue_descriptors() {
    let _g = serial();
    let w = Workload::start("mqueue", &["host"]);
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    w.cycle();
}

/// A host queue gone at restore: the restore fails and names it.
#[test]
fn missing_host_queue_is_named_at_restore() {
    let _g = serial();
    let w = Workload::start("mqueue", &["host"]);
    let name = format!("/crest-mq-host-{}", w.pid);
    w.dump_ok();
    crest_sys::mqueue::unlink(&name).unwrap();
    let o = crest(&["restore", "-i", w.image().to_str().unwrap(), "-d"]);
    let text = stderr(&o);
    assert!(!o.status.success(), "restore without the queue succeeded");
    assert!(
        text.contains(&name) && text.contains("does not exist"),
        "{text}"
    );
    assert!(!alive(w.pid));
}

/// Check and dump refuse `refused` (found in the message with `want`),
/// leave the tree running, and it then passes its own checks.
fn refused(args: &[&str], wants: &[&str], passes: bool) {
    let _g = serial();
    let w = Workload::start("mqueue", args);
    let pid = w.pid.to_string();
    let o = crest(&["check", "-p", &pid]);
    let text = stdout(&o) + &stderr(&o);
    assert!(!o.status.success(), "{text}");
    for want in wants {
        assert!(text.contains(want), "check lacks {want:?}: {text}");
    }
    let o = w.dump(&[]);
    let text = stderr(&o);
    assert!(!o.status.success(), "{text}");
    for want in wants {
        assert!(text.contains(want), "dump lacks {want:?}: {text}");
    }
    assert!(alive(w.pid), "the refused tree must keep running");
    if passes {
        w.go();
        w.expect_pass();
    }
}

/// An mq_notify registration on a queue of a private namespace: refused
/// (draining the queue would fire it); the registration is still there
/// afterwards and no signal came.
#[test]
fn notify_registration_in_a_private_namespace_is_refused() {
    refused(
        &["notify"],
        &["/crest-a", "mq_notify registration", "sigev_value"],
        true,
    );
}

/// The same on a queue of crest's namespace held by the tree.
#[test]
fn notify_registration_on_a_host_queue_is_refused() {
    refused(
        &["host", "notify"],
        &["/crest-mq-host-", "mq_notify registration", "sigev_value"],
        true,
    );
}

/// A queue unlinked while a descriptor holds it: refused by name.
#[test]
fn unlinked_queue_is_refused() {
    refused(
        &["unlinked"],
        &["/crest-empty", "unlinked while open"],
        false,
    );
}
