//! Issue 16: state that must come back exactly (file locks, per-description
//! flags and owners, unlinked and sparse files, O_PATH), real programs
//! holding locks (flock(1), sqlite), and images restore would reject,
//! which dump must refuse with the tree left running.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn file_locks_of_every_kind() {
    Workload::start("locks", &[]).cycle();
}

#[test]
fn file_locks_twice() {
    Workload::start("locks", &[]).cycle_twice();
}

#[test]
fn description_flags_owners_unlinked_sparse_tmpfile_opath() {
    let w = Workload::start("fdstate", &[]);
    w.dump_ok();
    let len = std::fs::metadata(w.image()).unwrap().len();
    assert!(
        len < 64 << 20,
        "the image is {len} bytes: the 1 GiB hole was written out"
    );
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// Waits until `cond` holds (60 s at most).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn flock_n(path: &str) -> bool {
    Command::new("flock")
        .args(["-n", path, "true"])
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// flock(1) holding a lock while its command runs: after the restore
/// another `flock -n` must still fail.
#[test]
fn flock_command_keeps_its_lock() {
    init();
    let dir = temp_dir("flock1");
    let lock = dir.join("lockfile");
    let lock_s = lock.to_str().unwrap().to_string();
    let o = crest(&[
        "run",
        "--",
        "flock",
        &lock_s,
        "python3",
        "-c",
        &format!(
            "import os, time\nopen('{0}/ready', 'w')\n\
             while not os.path.exists('{0}/go'): time.sleep(0.02)\nopen('{0}/out', 'w')",
            dir.display()
        ),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    // The command runs (a python3 launcher may start several processes
    // first): the whole tree exists.
    wait_until("the command runs", || dir.join("ready").exists());
    assert!(!flock_n(&lock_s), "flock(1) holds the lock");
    let img = dir.join("img");
    let tree = descendants(pid);
    let o = crest(&["dump", "-p", &pid.to_string(), "-o", img.to_str().unwrap()]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    for &p in tree.iter().rev() {
        reap(p, Duration::from_secs(10));
    }
    reap(pid, Duration::from_secs(10));
    assert!(
        flock_n(&lock_s),
        "the lock must be free while the tree is gone"
    );
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(o.status.success(), "restore: {}", stderr(&o));
    assert!(
        !flock_n(&lock_s),
        "after the restore the lock must be held again"
    );
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(reap(pid, Duration::from_secs(30)), Some(Exit::Code(0)));
    assert!(dir.join("out").exists());
    assert!(flock_n(&lock_s), "flock(1) released its lock at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// sqlite with a write transaction open across the checkpoint: after the
/// restore another connection gets SQLITE_BUSY, and the transaction
/// commits.
#[test]
fn sqlite_write_transaction_keeps_its_locks() {
    init();
    let body = r#"
import os, sys, time, sqlite3
D = sys.argv[1]
for mode in ("delete", "wal"):
    db = D + "/db-" + mode
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("pragma journal_mode=" + mode)
    c.execute("create table t(x)")
    c.execute("begin immediate")
    c.execute("insert into t values (1)")
    if mode == "delete": c1 = c
    else: c2 = c
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
e = []
for mode in ("delete", "wal"):
    other = sqlite3.connect(D + "/db-" + mode, timeout=0, isolation_level=None)
    try:
        other.execute("begin immediate"); other.execute("insert into t values (2)")
        e.append(mode + ": another connection could write during the transaction")
    except sqlite3.OperationalError as x:
        if "locked" not in str(x) and "busy" not in str(x): e.append(mode + ": " + str(x))
    other.close()
c1.execute("commit"); c2.execute("commit")
for mode in ("delete", "wal"):
    r = sqlite3.connect(D + "/db-" + mode).execute("select x from t").fetchall()
    if r != [(1,)]: e.append(mode + ": rows %r" % r)
    ok = sqlite3.connect(D + "/db-" + mode).execute("pragma integrity_check").fetchone()[0]
    if ok != "ok": e.append(mode + ": integrity " + ok)
open(D + "/result.tmp", "w").write("PASS\n" if not e else "FAIL\n" + "\n".join(e) + "\n")
os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not e else 1)
"#;
    Workload::start_python("sqlite", body).cycle();
}

/// Dump must refuse, by name and with the tree running, what restore
/// could not rebuild.
fn refused(script: &str, wants: &[&str]) {
    let w = Workload::start_python("refused", script);
    for args in [&["check"][..], &["dump"][..]] {
        let o = if args[0] == "check" {
            crest(&["check", "-p", &w.pid.to_string()])
        } else {
            w.dump(&[])
        };
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            !o.status.success() || args[0] == "check",
            "{} accepted it: {text}",
            args[0]
        );
        for want in wants {
            assert!(
                text.contains(want),
                "{}: {want:?} missing in: {text}",
                args[0]
            );
        }
        assert!(alive(w.pid), "the tree must keep running");
    }
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
}

const PROTO: &str = r#"
import os, sys, time, socket
D = sys.argv[1]
def ready():
    open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
def done():
    while not os.path.exists(D + "/go"): time.sleep(0.01)
    open(D + "/result.tmp", "w").write("PASS\n"); os.rename(D + "/result.tmp", D + "/result"); os._exit(0)
"#;

#[test]
fn deleted_directory_fifo_device_and_cwd() {
    Workload::start("deleted", &[]).cycle();
}

#[test]
fn cwd_in_the_proc_directory_of_a_dead_process_is_refused() {
    let s = format!(
        "{PROTO}\nr, w = os.pipe()\npid = os.fork()\n\
         if pid == 0:\n    os.read(r, 1); os._exit(0)\n\
         os.chdir('/proc/%d' % pid); os.write(w, b'x'); os.waitpid(pid, 0)\nready(); done()\n"
    );
    refused(&s, &["cwd", "(deleted)", "cannot be made again"]);
}

/// /proc files of the tree's own processes are opened by the restored
/// process once it exists.
#[test]
fn proc_files_of_the_tree() {
    Workload::start("procfiles", &[]).cycle();
}

/// The structural fix: only the restore plan knows that a /proc file of
/// the tree shared by two processes cannot be reopened as one.
#[test]
fn proc_file_shared_by_two_processes_is_refused() {
    let s = format!(
        "{PROTO}\nf = open('/proc/self/status')\npid = os.fork()\n\
         if pid == 0:\n    time.sleep(600); os._exit(0)\nready()\n\
         while not os.path.exists(D + '/go'): time.sleep(0.01)\n\
         os.kill(pid, 9); os.waitpid(pid, 0); done()\n"
    );
    refused(&s, &["/status", "shared by pids"]);
}

/// Sockets whose file was deleted keep their name and no file appears,
/// even when the directory is gone or the path holds another file.
#[test]
fn unix_sockets_whose_file_is_gone() {
    Workload::start("unixnames", &[]).cycle();
}

/// A listener whose path is gone cannot get its accepted connection
/// back (restore remakes it through the path): refused at dump.
#[test]
fn unix_listener_with_a_connection_whose_directory_was_removed_is_refused() {
    let s = format!(
        "{PROTO}\nos.mkdir(D + '/sd'); s = socket.socket(socket.AF_UNIX); s.bind(D + '/sd/sock'); s.listen()\n\
         c = socket.socket(socket.AF_UNIX); c.connect(D + '/sd/sock'); a, _ = s.accept()\n\
         os.unlink(D + '/sd/sock'); os.rmdir(D + '/sd')\nready(); done()\n"
    );
    refused(&s, &["sd/sock", "connections are remade through that path"]);
}

/// One unlinked file opened by two processes (two descriptions) is one
/// file after the restore: what the child writes the parent reads.
#[test]
fn unlinked_file_shared_by_two_processes() {
    let body = r#"
import os, sys, time
D = sys.argv[1]
f = os.open(D + "/u", os.O_RDWR | os.O_CREAT, 0o600)
g = os.open(D + "/u", os.O_RDWR)
os.write(f, b"before")
os.unlink(D + "/u")
pid = os.fork()
if pid == 0:
    os.close(f)
    while not os.path.exists(D + "/go"): time.sleep(0.01)
    os.pwrite(g, b"child!", 0)
    os._exit(0 if os.fstat(g).st_nlink == 0 else 3)
os.close(g)
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
_, st = os.waitpid(pid, 0)
e = []
if os.waitstatus_to_exitcode(st) != 0: e.append("child status %d" % st)
got = os.pread(f, 6, 0)
if got != b"child!": e.append("parent reads %r: not the child's file" % got)
open(D + "/result.tmp", "w").write("PASS\n" if not e else "FAIL\n" + "\n".join(e) + "\n")
os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not e else 1)
"#;
    Workload::start_python("unlinked-shared", body).cycle();
}

/// The structural fix: a dump by a crest whose hard limits are lower than
/// the tree's (as a restore from it would be) is refused before the tree
/// is killed, naming the limit; the tree runs on.
#[test]
fn hard_limit_above_the_restorers_is_refused_at_dump() {
    let w = Workload::start("idle", &[]);
    let img = w.image();
    let o = Command::new("prlimit")
        .args([
            "--nofile=256:256",
            crest_bin(),
            "dump",
            "-p",
            &w.pid.to_string(),
            "-o",
        ])
        .arg(&img)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the dump must be refused");
    assert!(
        err.contains("resource limit 7") && err.contains("CAP_SYS_RESOURCE"),
        "{err}"
    );
    assert!(alive(w.pid), "the tree must keep running");
    assert!(!img.exists());
    w.go();
    w.expect_pass();
}

/// The same check at restore: a restorer with a lower hard limit refuses
/// before it builds anything, and leaves nothing behind.
#[test]
fn hard_limit_above_the_restorers_fails_the_restore_before_building() {
    let w = Workload::start("idle", &[]);
    w.dump_ok();
    let o = Command::new("prlimit")
        .args([
            "--as=1073741824:1073741824",
            crest_bin(),
            "restore",
            "-d",
            "-i",
        ])
        .arg(w.image())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the restore must be refused");
    assert!(
        err.contains("resource limit 9") && err.contains("CAP_SYS_RESOURCE"),
        "{err}"
    );
    assert!(!alive(w.pid), "nothing may be left running");
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// Epoll registrations are made before the processes exist at restore,
/// and a /proc file of the tree is opened only later: the plan refuses
/// an epoll watching one at dump, with the tree left running.
#[test]
fn epoll_on_a_proc_file_of_the_tree_is_refused() {
    let s = format!(
        "{PROTO}\nimport select\nm = open('/proc/self/mounts')\ne = select.epoll()\n\
         e.register(m.fileno(), select.EPOLLPRI)\nready(); done()\n"
    );
    refused(
        &s,
        &[
            "epoll watches /proc/",
            "/mounts",
            "opened only once its process exists",
        ],
    );
}

/// Files unlinked while mapped: their content comes back, shared with a
/// descriptor of the same file (MAP_SHARED writes seen through both),
/// private copies stay private.
#[test]
fn mappings_of_unlinked_files() {
    Workload::start("unlinked-maps", &[]).cycle();
}

/// O_PATH | O_NOFOLLOW descriptors of symbolic links (one dangling) stay
/// descriptors of the links.
#[test]
fn opath_descriptors_of_symlinks() {
    Workload::start("opath-links", &[]).cycle();
}
