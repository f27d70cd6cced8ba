//! Trees written in Python (an ordinary, unmodified interpreter): shared
//! memory between processes, zombie children, a job-control stop, and a
//! shared descriptor table that must be refused.  Each script follows the
//! workload protocol and checks its own state after the restore.

mod common;
use common::*;

/// Common protocol code: `ready()`, `wait_go()`, `result(errors)`.
const PROTO: &str = r#"
import os, sys, time
D = sys.argv[1]
def ready():
    open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
def wait_go():
    while not os.path.exists(D + "/go"): time.sleep(0.01)
def result(errors):
    open(D + "/result.tmp", "w").write("PASS\n" if not errors else "FAIL\n" + "\n".join(errors) + "\n")
    os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not errors else 1)
"#;

fn script(body: &str) -> String {
    format!("{PROTO}\n{body}")
}

#[test]
fn shared_memory_between_processes() {
    let body = r#"
import mmap
m = mmap.mmap(-1, 1 << 20)                      # MAP_SHARED | MAP_ANONYMOUS
m[:5] = b"hello"
fd = os.memfd_create("crest-py", os.MFD_ALLOW_SEALING)
os.write(fd, b"memfd" * 2000)
mf = mmap.mmap(fd, 10000)
pid = os.fork()
if pid == 0:
    wait_go()
    m[100:105] = b"child"; mf[0:5] = b"CHILD"
    os._exit(0)
ready(); wait_go()
_, st = os.waitpid(pid, 0)
e = []
if m[:5] != b"hello" or m[100:105] != b"child": e.append("shared anonymous memory: %r %r" % (m[:5], m[100:105]))
if mf[0:10] != b"CHILDmemfd": e.append("memfd mapping: %r" % mf[0:10])
if os.pread(fd, 10, 0) != b"CHILDmemfd": e.append("memfd read: %r" % os.pread(fd, 10, 0))
if os.waitstatus_to_exitcode(st) != 0: e.append("child status %d" % st)
result(e)
"#;
    Workload::start_python("py-shmem", &script(body)).cycle();
}

#[test]
fn zombie_children_keep_their_status() {
    let body = r#"
import signal
a = os.fork()
if a == 0: os._exit(3)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); os._exit(0)
while True:   # both must be zombies before the checkpoint
    s = [open("/proc/%d/stat" % p).read().rsplit(") ", 1)[1][0] for p in (a, b)]
    if s == ["Z", "Z"]: break
    time.sleep(0.01)
ready(); wait_go()
e = []
p, st = os.waitpid(a, 0)
if p != a or not os.WIFEXITED(st) or os.WEXITSTATUS(st) != 3: e.append("first zombie: %d %#x" % (p, st))
p, st = os.waitpid(b, 0)
if p != b or not os.WIFSIGNALED(st) or os.WTERMSIG(st) != signal.SIGTERM: e.append("second zombie: %d %#x" % (p, st))
result(e)
"#;
    Workload::start_python("py-zombies", &script(body)).cycle();
}

#[test]
fn a_stopped_process_stays_stopped() {
    let body = r#"
ready()
os.kill(os.getpid(), 19)       # SIGSTOP: the test continues it after the restore
wait_go()
result([])
"#;
    let w = Workload::start_python("py-stopped", &script(body));
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(") ")
                    .next()
                    .unwrap_or("")
                    .chars()
                    .next()
                    .unwrap_or('?')
            })
            .unwrap_or('?')
    };
    let t = std::time::Instant::now();
    while state(w.pid) != 'T' && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(state(w.pid), 'T');
    w.dump_ok();
    w.restore_ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        state(w.pid),
        'T',
        "the restored process must still be stopped"
    );
    // SAFETY: plain kill of a pid this test started.
    unsafe { libc::kill(w.pid, libc::SIGCONT) };
    w.go();
    w.expect_pass();
}

#[test]
fn a_shared_descriptor_table_is_refused() {
    let body = r#"
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall(56, 0x400 | signal.SIGCHLD, 0, 0, 0, 0)   # clone(CLONE_FILES)
if pid == 0:
    wait_go(); os._exit(0)
ready(); wait_go()
os.waitpid(pid, 0)
result([])
"#;
    let w = Workload::start_python("py-clone-files", &script(body));
    let o = w.dump(&[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("shares its descriptor table (CLONE_FILES)"),
        "{}",
        stderr(&o)
    );
    w.go();
    w.expect_pass();
}
