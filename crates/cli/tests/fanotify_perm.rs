//! fanotify permission events, through the `crest` binary: a group of
//! class FAN_CLASS_CONTENT with a FAN_OPEN_PERM mark on a file.  With no
//! event pending, the group and its mark are restored and the workload
//! checks after the restore that an open of the file by a child waits for
//! its answer (the child's open succeeds once it allows it, fails with
//! EPERM once it denies it).  With a permission event queued and not read
//! yet (a child of the tree waits in open, in the kernel, where it cannot
//! be stopped), the dump is refused by name and the tree keeps running:
//! the event is answered after the refusal.

mod common;
mod netkit;
use common::*;
use netkit::*;

const PERM: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_CLASS_CONTENT, FAN_NONBLOCK, FAN_OPEN_PERM, FAN_MARK_ADD, FAN_ALLOW, FAN_DENY = 0x4, 0x2, 0x10000, 0x1, 0x1, 0x2
target = D + "/f"
open(target, "w").write("data")
g = libc.fanotify_init(FAN_CLASS_CONTENT | FAN_NONBLOCK, os.O_RDONLY)
if g < 0: print("fanotify_init: %s" % os.strerror(ctypes.get_errno()), file=sys.stderr); sys.exit(2)
if libc.fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN_PERM, -100, target.encode()) != 0:
    print("fanotify_mark: %s" % os.strerror(ctypes.get_errno()), file=sys.stderr); sys.exit(2)
def opener():
    k = os.fork()
    if k == 0:
        try: os.close(os.open(target, os.O_RDONLY)); os._exit(0)
        except PermissionError: os._exit(1)
        except OSError: os._exit(2)
    return k
def answer(verdict):
    r, _, _ = select.select([g], [], [], 10)
    if not r: return None
    b = os.read(g, 4096)
    _, _, _, _, mask, fd, pid = struct.unpack("IBBHQii", b[:24])
    os.write(g, struct.pack("iI", fd, verdict)); os.close(fd)
    return (mask, pid)
e = []
if "queued" in ARGS:
    k0 = opener()
    time.sleep(0.3)
ready(); wait_go()
if "queued" in ARGS:
    got = answer(FAN_ALLOW)
    if got != (FAN_OPEN_PERM, k0): e.append("the queued event: %r" % (got,))
    if os.waitpid(k0, 0)[1] != 0: e.append("the waiting open failed")
else:
    for verdict, want in ((FAN_ALLOW, 0), (FAN_DENY, 1)):
        k = opener()
        got = answer(verdict if not SABOTAGE else FAN_ALLOW + FAN_DENY - verdict)
        if got != (FAN_OPEN_PERM, k): e.append("event %r, want FAN_OPEN_PERM from %d" % (got, k))
        st = os.waitpid(k, 0)[1]
        if os.WEXITSTATUS(st) != want: e.append("the child's open answered %d ended %d, want %d" % (verdict, os.WEXITSTATUS(st), want))
result(e)
"#;

#[test]
fn fanotify_permission_mark_is_restored_and_answers_opens() {
    start("fanotify-perm", PERM).cycle();
}

#[test]
fn fanotify_permission_checker_detects_a_wrong_answer() {
    let w = start(
        "fanotify-perm-sabotage",
        &format!("SABOTAGE = True\n{PERM}"),
    );
    w.dump_ok();
    w.restore_ok();
    w.go();
    expect_fail(w);
}

#[test]
fn fanotify_with_a_permission_event_queued_is_refused() {
    let w = start(
        "fanotify-perm-queued",
        &format!("ARGS.append('queued')\n{PERM}"),
    );
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    // The child waiting for the answer cannot be stopped, and the group
    // has the event queued: either is named.
    assert!(
        (err.contains("does not stop") && err.contains("fanotify"))
            || (err.contains("fanotify group has") && err.contains("queued")),
        "unexpected refusal: {err}"
    );
    assert!(alive(w.pid), "the process must keep running");
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
}
