//! Trees written in Python (an ordinary, unmodified interpreter): shared
//! memory between processes, zombie children, a job-control stop, and
//! descriptor tables and fs information shared without CLONE_VM.  Each
//! script follows the workload protocol and checks its own state after
//! the restore.

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

/// A child made with clone(CLONE_FILES) (no CLONE_VM) shares its parent's
/// descriptor table after the restore: a descriptor either opens shows
/// up in the other, and no restore helper descriptor is left in it.
#[test]
fn a_shared_descriptor_table_stays_shared() {
    let body = r#"
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
def wait_file(n):
    while not os.path.exists(D + "/" + n): time.sleep(0.01)
    return int(open(D + "/" + n).read())
def put(n, v):
    open(D + "/" + n + ".tmp", "w").write("%d" % v); os.rename(D + "/" + n + ".tmp", D + "/" + n)
R = os.path.realpath(D)
def target(fd):
    try: return os.readlink("/proc/self/fd/%d" % fd)
    except OSError: return None
pid = libc.syscall(56, 0x400 | signal.SIGCHLD, 0, 0, 0, 0)   # clone(CLONE_FILES)
if pid == 0:
    wait_go()
    wait_file("p-checked")
    fd = os.open(D + "/child-file", os.O_CREAT | os.O_WRONLY, 0o600)
    put("c-fd", fd)
    n = wait_file("p-fd")
    os._exit(0 if target(n) == R + "/parent-file" else 1)
if pid < 0: result(["clone failed: errno %d" % ctypes.get_errno()])
before = sorted(os.listdir("/proc/self/fd"))
ready(); wait_go()
e = []
after = sorted(os.listdir("/proc/self/fd"))
if after != before: e.append("descriptors before %r, after the restore %r" % (before, after))
put("p-checked", 1)
n = wait_file("c-fd")
if target(n) != R + "/child-file": e.append("the child's new fd %d is %r here" % (n, target(n)))
fd = os.open(D + "/parent-file", os.O_CREAT | os.O_WRONLY, 0o600)
put("p-fd", fd)
_, st = os.waitpid(pid, 0)
if os.waitstatus_to_exitcode(st) != 0: e.append("the child did not see the parent's new fd (status %#x)" % st)
result(e)
"#;
    Workload::start_python("py-clone-files", &script(body)).cycle();
}

/// A child made with clone(CLONE_FS) shares cwd and umask with its parent
/// after the restore: a chdir/umask in either is seen by the other.
#[test]
fn shared_fs_information_stays_shared() {
    let body = r#"
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
def wait_flag(n):
    while not os.path.exists(D + "/" + n): time.sleep(0.01)
def flag(n): open(D + "/" + n, "w").close()
def umask():
    m = os.umask(0); os.umask(m); return m
R = os.path.realpath(D)
for d in ("a", "b", "c"): os.mkdir(D + "/" + d)
os.chdir(D + "/a"); os.umask(0o027)
pid = libc.syscall(56, 0x200 | signal.SIGCHLD, 0, 0, 0, 0)   # clone(CLONE_FS)
if pid == 0:
    wait_go()
    wait_flag("p-checked")
    os.chdir(D + "/b"); os.umask(0o011)
    flag("c-changed")
    wait_flag("p-changed")
    os._exit(0 if os.getcwd() == R + "/c" and umask() == 0o033 else 1)
if pid < 0: result(["clone failed: errno %d" % ctypes.get_errno()])
ready(); wait_go()
e = []
if os.getcwd() != R + "/a" or umask() != 0o027: e.append("after the restore: %s %o" % (os.getcwd(), umask()))
flag("p-checked")
wait_flag("c-changed")
if os.getcwd() != R + "/b" or umask() != 0o011: e.append("the child's chdir/umask not seen: %s %o" % (os.getcwd(), umask()))
os.chdir(D + "/c"); os.umask(0o033)
flag("p-changed")
_, st = os.waitpid(pid, 0)
if os.waitstatus_to_exitcode(st) != 0: e.append("the child did not see the parent's chdir/umask (status %#x)" % st)
result(e)
"#;
    Workload::start_python("py-clone-fs", &script(body)).cycle();
}

/// clone(CLONE_FILES | CLONE_FS) next to a plain child with a table of
/// its own: the shared child writes into a pipe through the shared table
/// and its chdir is the parent's; the plain child keeps its own table.
#[test]
fn files_and_fs_shared_next_to_a_plain_child() {
    let body = r#"
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
R = os.path.realpath(D)
os.mkdir(D + "/x")
r, w = os.pipe()
plain = os.fork()
if plain == 0:
    os.close(w)
    wait_go()
    os._exit(0 if os.read(r, 5) == b"hello" else 1)
os.close(r)
shared = libc.syscall(56, 0x400 | 0x200 | signal.SIGCHLD, 0, 0, 0, 0)   # CLONE_FILES | CLONE_FS
if shared == 0:
    wait_go()
    os.chdir(D + "/x")
    fd = os.open("mine", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(w, b"hello")
    os._exit(0)
ready(); wait_go()
e = []
_, st = os.waitpid(shared, 0)
if os.waitstatus_to_exitcode(st) != 0: e.append("shared child status %#x" % st)
if os.getcwd() != R + "/x": e.append("cwd %s" % os.getcwd())
mine = [f for f in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + f) and os.readlink("/proc/self/fd/" + f) == R + "/x/mine"]
if not mine: e.append("the shared child's open file is not in the table")
_, st = os.waitpid(plain, 0)
if os.waitstatus_to_exitcode(st) != 0: e.append("plain child status %#x" % st)
result(e)
"#;
    Workload::start_python("py-clone-files-fs", &script(body)).cycle();
}

/// Two siblings sharing a descriptor table their parent does not have
/// (clone(CLONE_PARENT | CLONE_FILES) from one of them) are refused.
/// (Signal handlers cannot be shared without CLONE_VM: the kernel
/// refuses clone(CLONE_SIGHAND) without it, checked here too.)
#[test]
fn a_descriptor_table_shared_between_siblings_is_refused() {
    let body = r#"
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
e = []
r = libc.syscall(56, 0x800 | signal.SIGCHLD, 0, 0, 0, 0)   # clone(CLONE_SIGHAND)
if r == 0: os._exit(0)
if r > 0: os.waitpid(r, 0); e.append("clone(CLONE_SIGHAND) without CLONE_VM worked")
elif ctypes.get_errno() != 22: e.append("clone(CLONE_SIGHAND): errno %d" % ctypes.get_errno())
a = os.fork()
if a == 0:
    b = libc.syscall(56, 0x8000 | 0x400 | signal.SIGCHLD, 0, 0, 0, 0)   # CLONE_PARENT | CLONE_FILES
    if b == 0: wait_go(); os._exit(0)
    open(D + "/b", "w").write("%d" % b)
    wait_go(); os._exit(0 if b > 0 else 1)
while not os.path.exists(D + "/b") or not open(D + "/b").read(): time.sleep(0.01)
b = int(open(D + "/b").read())
ready(); wait_go()
for p in (a, b):
    _, st = os.waitpid(p, 0)
    if os.waitstatus_to_exitcode(st) != 0: e.append("pid %d status %#x" % (p, st))
result(e)
"#;
    let w = Workload::start_python("py-clone-files-siblings", &script(body));
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

/// A thread with credentials of its own (a raw setresgid in one thread)
/// keeps them; the other threads keep theirs.
#[test]
fn per_thread_credentials() {
    let body = r#"
import threading, ctypes
libc = ctypes.CDLL(None, use_errno=True)
res = {}
def t():
    res["r"] = libc.syscall(119, 1234, 1234, 1234)   # setresgid: this thread only
    res["tid"] = threading.get_native_id()
    wait_go()
    st = open("/proc/self/task/%d/status" % res["tid"]).read()
    res["gid"] = [l for l in st.splitlines() if l.startswith("Gid:")][0]
th = threading.Thread(target=t); th.start()
while "tid" not in res: time.sleep(0.01)
ready(); wait_go(); th.join()
e = []
if res["r"] != 0: e.append("setresgid failed: %r" % res["r"])
if res["gid"].split()[1:] != ["1234"] * 4: e.append("thread gids after restore: " + res["gid"])
main = [l for l in open("/proc/self/status").read().splitlines() if l.startswith("Gid:")][0]
if main.split()[1:] != ["0"] * 4: e.append("main thread gids: " + main)
result(e)
"#;
    Workload::start_python("py-thread-creds", &script(body)).cycle();
}

/// System V shared memory (a private segment, one with a key and one
/// marked for removal) attached by a parent and, at another address, by
/// its child: same ids, keys, modes, sizes and attach counts after the
/// restore, and still shared.
#[test]
fn system_v_shared_memory() {
    let body = r#"
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
IPC_CREAT, IPC_EXCL, IPC_RMID, IPC_STAT, SHM_DEST = 0o1000, 0o2000, 0, 2, 0o1000
KEY = 0x43520000 | (os.getpid() & 0xfff) << 4
# (key, size, mode, marked for removal)
SEGS = [(0, 3 * 4096 + 100, 0o640, False), (KEY, 1 << 16, 0o604, False), (KEY + 1, 8192, 0o600, True)]
ids = [libc.shmget(k, n, IPC_CREAT | IPC_EXCL | m) for k, n, m, _ in SEGS]
if min(ids) < 0: raise SystemExit("shmget: errno %d" % ctypes.get_errno())
def stat(i):
    b = ctypes.create_string_buffer(256)
    if libc.shmctl(i, IPC_STAT, b) != 0: return None
    u = lambda f, o: struct.unpack_from(f, b, o)[0]
    return (u("i", 0), u("H", 20) & 0o1777, u("Q", 48), u("Q", 88))   # key, mode, size, nattch
def pattern(n, salt): return bytes((j * 7 + salt) & 0xff for j in range(n))
def check(who, addrs, e):
    maps = open("/proc/self/maps").read().splitlines()
    for (k, n, m, dest), i, a in zip(SEGS, ids, addrs):
        if k and not dest and libc.shmget(k, 0, 0) != i: e.append("%s: key %#x now gives shmid %d, not %d" % (who, k, libc.shmget(k, 0, 0), i))
        line = [l for l in maps if l.startswith("%x-" % a)]
        if not line or ("/SYSV%08x (deleted)" % k) not in line[0]: e.append("%s: maps at %#x: %r" % (who, a, line))
        want = (0, m | SHM_DEST, n, 2) if dest else (k, m, n, 2)
        s = stat(i)
        if s != want: e.append("%s: IPC_STAT of %d: %r, expected %r" % (who, i, s, want))
addrs = [libc.shmat(i, None, 0) for i in ids]
for (k, n, m, _), a, s in zip(SEGS, addrs, (1, 2, 3)): ctypes.memmove(a, pattern(n, s), n)
pid = os.fork()
if pid == 0:
    mine = [libc.shmat(i, None, 0) for i in ids]   # another address
    for a in addrs: libc.shmdt(a)
    wait_go()
    e = []
    if any(a == b for a, b in zip(mine, addrs)): e.append("child: same address")
    for (k, n, m, _), a, s in zip(SEGS, mine, (1, 2, 3)):
        if ctypes.string_at(a, n) != pattern(n, s): e.append("child: content of %#x differs" % a)
    check("child", mine, e)
    for a in mine: ctypes.memmove(a + 100, b"child", 5)
    open(D + "/child.tmp", "w").write("\n".join(e)); os.rename(D + "/child.tmp", D + "/child")
    while not os.path.exists(D + "/parent"): time.sleep(0.01)
    os._exit(0)
while any(stat(i)[3] != 2 for i in ids): time.sleep(0.01)
libc.shmctl(ids[2], IPC_RMID, None)
ready(); wait_go()
while not os.path.exists(D + "/child"): time.sleep(0.01)
e = [l for l in open(D + "/child").read().splitlines() if l]
check("parent", addrs, e)
for a in addrs:
    if ctypes.string_at(a + 100, 5) != b"child": e.append("parent does not see the child's write at %#x: %r" % (a, ctypes.string_at(a + 100, 5)))
open(D + "/parent", "w").write("")
_, st = os.waitpid(pid, 0)
for i in ids[:2]: libc.shmctl(i, IPC_RMID, None)
for a in addrs: libc.shmdt(a)
if stat(ids[2]) is not None: e.append("the segment marked for removal outlived its attaches")
if os.waitstatus_to_exitcode(st) != 0: e.append("child status %d" % st)
result(e)
"#;
    Workload::start_python("py-sysv-shm", &script(body)).cycle();
}

/// A named FIFO with bytes in flight, held by a parent and its child.
#[test]
fn fifo_with_data_in_flight() {
    let body = r#"
path = D + "/data.fifo"
os.mkfifo(path)
fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
os.write(fd, bytes(range(256)) * 4 + b"END")
pid = os.fork()
if pid == 0:
    wait_go(); time.sleep(0.2)
    os.write(fd, b"more")
    os._exit(0)
ready(); wait_go()
e = []
import fcntl, termios, struct
got = os.read(fd, 2000)
if got != bytes(range(256)) * 4 + b"END": e.append("bytes in flight: %d %r" % (len(got), got[-8:]))
os.waitpid(pid, 0)
if os.read(fd, 100) != b"more": e.append("no data from the child after the restore")
if os.path.realpath("/proc/self/fd/%d" % fd) != os.path.realpath(path): e.append("fd no longer on the FIFO")
result(e)
"#;
    let w = Workload::start_python("py-fifo", &script(body));
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}", stdout(&o));
    w.cycle();
}

/// Signals a process leaves at their default action stay so after the
/// restore: it does not inherit crest's own actions (the Rust runtime
/// ignores SIGPIPE and catches SIGSEGV and SIGBUS).
#[test]
fn default_signal_actions_stay_default() {
    let body = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
default = ctypes.create_string_buffer(32)       # struct sigaction: SIG_DFL, no flags, empty mask
for s in (7, 11, 13):                           # SIGBUS, SIGSEGV, SIGPIPE
    if libc.syscall(ctypes.c_long(13), ctypes.c_long(s), default, None, ctypes.c_long(8)) != 0:
        raise SystemExit("rt_sigaction(%d) failed" % s)
def masks():
    st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
    return int(st["SigIgn"], 16), int(st["SigCgt"], 16)
before = masks()
ready(); wait_go()
after = masks()
e = []
if after != before: e.append("SigIgn/SigCgt %x/%x, before %x/%x" % (after + before))
result(e)
"#;
    Workload::start_python("py-default-actions", &script(body)).cycle();
}

/// A child that forks and reaps short-lived children all the time: a dump
/// often meets one that exits while it is being frozen, which must not
/// fail the dump (it is a zombie child like any other, or gone).  (A
/// short pause between forks: this machine's pid_max is 32768, and pids
/// that wrap around within the test would be taken by others.)
#[test]
fn a_tree_whose_children_come_and_go() {
    let body = r#"
c = os.fork()
if c == 0:
    while True:
        g = os.fork()
        if g == 0: os._exit(0)
        os.waitpid(g, 0)
        time.sleep(0.002)
ready(); wait_go()
os.kill(c, 9)
p, st = os.waitpid(c, 0)
result([] if p == c else ["child %d not reaped" % c])
"#;
    let w = Workload::start_python("py-churn", &script(body));
    for i in 0..20 {
        let o = w.dump(&["--leave-running"]);
        assert!(
            o.status.success(),
            "leave-running dump {i} of a tree whose children come and go: {}",
            stderr(&o)
        );
    }
    // The tree ran on through every dump and checks itself.  (No restore
    // here: with pid_max 32768 the churn wraps pids around within seconds,
    // so the image's pids can be taken by the time it is restored.)
    w.go();
    w.expect_pass();
}
