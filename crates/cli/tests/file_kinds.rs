//! Kinds of files refused before: fanotify groups, inotify watches on
//! files unlinked while open, the console and virtual terminals; each
//! workload checks its own state and behaviour after the restore.

mod common;
use common::*;
use std::path::PathBuf;

/// A private tmpfs for the fanotify marks (no other process's activity
/// reaches it); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(tag: &str) -> Tmpfs {
        let d = temp_dir(tag);
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "crest-test"])
            .arg(&d)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs on {}", d.display());
        Tmpfs(d)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn fanotify_groups_and_marks() {
    let t = Tmpfs::new("fanotify-mnt");
    Workload::start("fanotify", &[t.path()]).cycle();
}

#[test]
fn fanotify_twice() {
    let t = Tmpfs::new("fanotify-mnt");
    Workload::start("fanotify", &[t.path()]).cycle_twice();
}

#[test]
fn fanotify_leave_running_and_inspect() {
    let t = Tmpfs::new("fanotify-mnt");
    Workload::start("fanotify", &[t.path()]).leave_running_and_inspect(&[
        "fanotify (flags 0x2, event flags 0100000;",
        "fanotify (flags 0x203, event flags 0100000;",
        "mask 0x8000020",
        "ignored 0x20",
        "mount ",
        "filesystem of ",
    ]);
}

#[test]
fn fanotify_with_queued_events_is_refused() {
    let t = Tmpfs::new("fanotify-mnt");
    let w = Workload::start("fanotify", &[t.path(), "queued"]);
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains("fanotify group has") && err.contains("queued"),
        "unexpected refusal: {err}"
    );
    assert!(alive(w.pid), "the process must keep running");
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
}

#[test]
fn inotify_watch_on_a_file_unlinked_while_open() {
    Workload::start("inotify-deleted", &[]).cycle();
}

#[test]
fn inotify_watch_on_a_file_unlinked_while_open_twice() {
    Workload::start("inotify-deleted", &[]).cycle_twice();
}

/// The watched file was deleted and is no longer open, only mapped: the
/// mapping recreates it, the watch is put on it, and the munmap after
/// restore ends the watch as it would have.
#[test]
fn inotify_watch_on_a_deleted_file_only_mapped() {
    Workload::start("inotify-deleted", &["mapped"]).cycle();
}

/// A watch on a deleted file that only a process outside the tree holds
/// open: nothing in the image could recreate it, so check and dump refuse
/// it by name and the tree runs on.
#[test]
fn inotify_watch_on_a_deleted_file_held_outside_is_refused() {
    let dir = temp_dir("inotify-outside");
    let f = dir.join("held-outside");
    // Held open here, outside the dumped tree, once the tree unlinks it.
    let held = std::fs::File::create(&f).expect("creating the watched file");
    let script = format!(
        r#"
import ctypes, os, sys, time
D = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
i = libc.inotify_init1(os.O_NONBLOCK)
wd = libc.inotify_add_watch(i, b"{f}", 0x400)
if i < 0 or wd != 1: sys.exit("inotify setup failed")
os.unlink("{f}")
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
open(D + "/result.tmp", "w").write("PASS\n"); os.rename(D + "/result.tmp", D + "/result")
"#,
        f = f.display()
    );
    let w = Workload::start_python("inotify-outside", &script);
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains("inotify watch 1") && err.contains("no descriptor or mapping of the tree"),
        "unexpected refusal: {err}"
    );
    assert!(alive(w.pid), "the process must keep running");
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
    drop(held);
}

#[test]
fn console_and_virtual_terminals() {
    // tty2 and tty3 here (the workloads' selftest uses tty4 and tty5);
    // nothing is written to them, tty3's termios is the program's own and
    // is reset when its last descriptor closes.
    Workload::start("terminals", &["2", "3"]).cycle();
}

#[test]
fn console_and_virtual_terminals_leave_running_and_inspect() {
    Workload::start("terminals", &["6", "7"]).leave_running_and_inspect(&[
        "terminal /dev/console (device 5:1",
        "terminal /dev/tty6 (device 4:6",
        "terminal /dev/tty7 (device 4:7",
    ]);
}

#[test]
fn controlling_terminal_alias_on_a_pty_of_the_tree() {
    // /dev/tty on a pty of the tree is restored (crates/cli/tests/tty_alias.rs
    // checks it through the descriptor); here the common checks of fd 63.
    Workload::start("terminals", &["alias"]).cycle();
}
