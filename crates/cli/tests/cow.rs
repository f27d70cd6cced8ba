//! Pages shared copy-on-write after fork come back shared: a Python
//! parent with 64 MiB of data forks ten children; after the restore the
//! tree's total Pss and the image stay within 5 % of the original and of
//! the distinct data, and a write by one process is seen by no other.

mod common;
use common::*;

const SCRIPT: &str = r#"
import os, sys, time, hashlib
D = sys.argv[1]
def ready():
    open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
def wait_go():
    while not os.path.exists(D + "/go"): time.sleep(0.01)
def result(errors):
    open(D + "/result.tmp", "w").write("PASS\n" if not errors else "FAIL\n" + "\n".join(errors) + "\n")
    os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not errors else 1)
MIB = 64
buf = bytearray(os.urandom(MIB << 20))      # 64 MiB of incompressible data
digest = hashlib.sha256(buf).hexdigest()
kids = []
for i in range(10):
    pid = os.fork()
    if pid == 0:
        buf[i * 4096] = (buf[i * 4096] + 1) % 256     # one page of its own
        mine = hashlib.sha256(buf).hexdigest()
        open(D + "/kid-%d" % i, "w").write("ok")
        wait_go()
        time.sleep(0.2)                                 # the parent writes meanwhile
        e = []
        if hashlib.sha256(buf).hexdigest() != mine: e.append("child %d sees other data" % i)
        open(D + "/kid-%d.result" % i, "w").write("\n".join(e))
        os._exit(0 if not e else 1)
    kids.append(pid)
while not all(os.path.exists(D + "/kid-%d" % i) for i in range(10)): time.sleep(0.01)
ready(); wait_go()
e = []
if hashlib.sha256(buf).hexdigest() != digest: e.append("parent data changed")
buf[100 * 4096] ^= 0xff                                  # not seen by the children
for i, k in enumerate(kids):
    _, st = os.waitpid(k, 0)
    if os.waitstatus_to_exitcode(st) != 0:
        e.append("child %d: %s" % (i, open(D + "/kid-%d.result" % i).read()))
result(e)
"#;

/// Total Pss (KiB) of `pid` and its descendants.
fn tree_pss(pid: i32) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn fork_shared_pages_stay_shared() {
    let w = Workload::start_python("py-cow", SCRIPT);
    let before = tree_pss(w.pid);
    w.dump_ok();
    let image = std::fs::metadata(w.image()).unwrap().len();
    w.restore_ok();
    let after = tree_pss(w.pid);
    eprintln!(
        "tree Pss: {before} KiB before, {after} KiB after ({:.3}x); image {} KiB",
        after as f64 / before as f64,
        image / 1024
    );
    assert!(
        after as f64 <= before as f64 * 1.05,
        "Pss after restore {after} KiB > 1.05 x {before} KiB"
    );
    // 64 MiB of distinct data plus the ten children's own pages and the
    // interpreter's: the image must not hold the data more than once.
    assert!(
        (image as f64)
            <= (64u64 << 20) as f64 * 1.05
                + (before as f64 * 1024.0 - (64u64 << 20) as f64).max(0.0),
        "image {image} bytes holds the shared data more than once"
    );
    w.go();
    w.expect_pass();
}
