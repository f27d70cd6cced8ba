//! Kinds of memory beyond plain pages (issue 16): hugetlbfs memory
//! (private and shared MAP_HUGETLB mappings, MFD_HUGETLB memfds mapped
//! and held as descriptors, in every huge page size the machine has) and
//! AIO contexts with completed events not yet reaped.  The workloads
//! check themselves after the restore; their selftests (in
//! tests/workloads) show the checkers see a wrong restore.
//!
//! Huge pages come from pools the tests size through
//! /sys/kernel/mm/hugepages/*/nr_hugepages: each test that needs them
//! holds [`Pools`], which raises the pools and puts the old sizes back
//! when dropped (also when the test fails).

mod common;
use common::*;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const POOLS: &str = "/sys/kernel/mm/hugepages";
static POOL_LOCK: Mutex<()> = Mutex::new(());

/// The huge page sizes of this machine in kB (2048 first).
fn sizes() -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(POOLS)
        .expect("this kernel has hugetlbfs")
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    assert!(v.contains(&2048), "no 2 MiB huge pages here: {v:?}");
    v
}

fn pool_path(kb: u64, file: &str) -> String {
    format!("{POOLS}/hugepages-{kb}kB/{file}")
}

fn read_num(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Raised huge page pools, put back as they were when dropped.
struct Pools {
    old: Vec<(u64, u64)>,
    _lock: MutexGuard<'static, ()>,
}

impl Pools {
    /// Makes `n` more pages free in each pool (kB, n).
    fn reserve(want: &[(u64, u64)]) -> Pools {
        let lock = POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = Pools {
            old: Vec::new(),
            _lock: lock,
        };
        for &(kb, n) in want {
            let old = read_num(&pool_path(kb, "nr_hugepages"));
            p.old.push((kb, old));
            // Free pages first (.ci/run reserves the large sizes while
            // memory is not fragmented yet); the pool grows by what is missing.
            let free = read_num(&pool_path(kb, "free_hugepages"));
            if free < n {
                p.set(kb, old + n - free);
            }
            let free = read_num(&pool_path(kb, "free_hugepages"));
            assert!(
                free >= n,
                "could not get {n} free huge pages of {kb} kB (pool {}, free {free}): pages \
                 larger than 2 MiB need contiguous free memory; reserve them early \
                 (.ci/hugepages.sh reserve) or after a reboot",
                read_num(&pool_path(kb, "nr_hugepages"))
            );
        }
        p
    }

    fn set(&self, kb: u64, n: u64) {
        std::fs::write(pool_path(kb, "nr_hugepages"), format!("{n}\n"))
            .unwrap_or_else(|e| panic!("sizing the {kb} kB pool to {n}: {e}"));
    }

    fn original(&self, kb: u64) -> u64 {
        self.old.iter().find(|o| o.0 == kb).map_or(0, |o| o.1)
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        for &(kb, n) in &self.old {
            let _ = std::fs::write(pool_path(kb, "nr_hugepages"), format!("{n}\n"));
        }
    }
}

/// Each huge page size larger than the first is tested in two cycles, one
/// kind of region at a time (`A`: private MAP_HUGETLB, then `C`: an
/// MFD_HUGETLB memfd mapped shared and held as a descriptor), so that one
/// free page of each size is enough: a machine seldom has two contiguous
/// free GiB once it has been running for a while (CI's has one).  The
/// first size (2 MiB) has every kind in the first cycle and `A` in the
/// second.  The restore takes the pages again once the dump has killed
/// the original, so a cycle needs no more than the workload itself.
#[test]
fn hugetlb_mappings_and_memfds_in_every_page_size() {
    let sizes = sizes();
    for (cycle, large) in [(0, "A"), (1, "C")] {
        let mut args = vec![if cycle == 0 {
            "2048".to_string()
        } else {
            "2048:A".to_string()
        }];
        // Pages per size (see the workload's module comment).
        let mut need = vec![(2048, if cycle == 0 { 6 } else { 2 })];
        for &kb in sizes.iter().filter(|&&kb| kb != 2048) {
            args.push(format!("{kb}:{large}"));
            need.push((kb, 1));
        }
        let _pools = Pools::reserve(&need);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Workload::start("hugetlb", &args).cycle();
    }
}

/// Too few free huge pages on the restoring side: the restore fails
/// before it creates anything, saying what it needs; with the pages back
/// it succeeds.
#[test]
fn hugetlb_restore_refuses_without_free_huge_pages() {
    let pools = Pools::reserve(&[(2048, 6)]);
    let w = Workload::start("hugetlb", &["2048"]);
    w.dump_ok();
    // Only 3 of the 6 pages the image needs.
    pools.set(2048, pools.original(2048) + 3);
    let before = read_num(&pool_path(2048, "free_hugepages"));
    let img = w.image();
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(
        !o.status.success(),
        "restore with too few huge pages succeeded"
    );
    let err = stderr(&o);
    assert!(
        err.contains("needs 6 free huge pages of 2048 kB") && err.contains("nr_hugepages"),
        "unclear refusal: {err}"
    );
    assert!(!alive(w.pid), "a failed restore left pid {} behind", w.pid);
    assert_eq!(
        read_num(&pool_path(2048, "free_hugepages")),
        before,
        "a failed restore kept huge pages"
    );
    pools.set(2048, pools.original(2048) + 6);
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// A file of a hugetlbfs mount (not a memfd) is refused by name, and the
/// tree runs on.
#[test]
fn hugetlbfs_mount_file_is_refused() {
    let _pools = Pools::reserve(&[(2048, 1)]);
    let mnt = temp_dir("hugetlbfs-mnt");
    let st = std::process::Command::new("mount")
        .args(["-t", "hugetlbfs", "none"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(st.success(), "mounting hugetlbfs");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Umount(mnt.clone());
    let script = format!(
        r#"
import mmap, os, sys, time
D = sys.argv[1]
fd = os.open("{m}/f", os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 2 << 20)
m = mmap.mmap(fd, 2 << 20)
m[0:5] = b"hello"
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
ok = m[0:5] == b"hello"
open(D + "/result.tmp", "w").write("PASS\n" if ok else "FAIL\ncontent\n"); os.rename(D + "/result.tmp", D + "/result")
m.close(); os.close(fd); os.unlink("{m}/f")
sys.exit(0 if ok else 1)
"#,
        m = mnt.display()
    );
    let w = Workload::start_python("hugetlbfs-file", &script);
    let o = w.dump(&[]);
    assert!(
        !o.status.success(),
        "dump of a hugetlbfs file mapping succeeded"
    );
    let err = stderr(&o);
    assert!(
        err.contains("a file of a hugetlbfs mount")
            && err.contains(&format!("{}/f", mnt.display())),
        "refusal does not name the file: {err}"
    );
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(
        stdout(&o).contains("a file of a hugetlbfs mount")
            || stderr(&o).contains("a file of a hugetlbfs mount"),
        "check does not name it: {} {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(alive(w.pid), "the refused tree must run on");
    w.go();
    w.expect_pass();
}

#[test]
fn aio_contexts_with_unreaped_events() {
    let w = Workload::start("aio", &[]);
    let o = w.dump(&["--aio-idle"]);
    assert!(o.status.success(), "dump --aio-idle failed: {}", stderr(&o));
    assert_eq!(
        reap(w.pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// Without --aio-idle, dump and check refuse AIO contexts by name (crest
/// cannot see requests in flight) and the tree runs on.
#[test]
fn aio_contexts_are_refused_without_aio_idle() {
    let w = Workload::start("aio", &[]);
    let o = w.dump(&[]);
    assert!(!o.status.success(), "dump without --aio-idle succeeded");
    let err = stderr(&o);
    assert!(
        err.contains("AIO context 0x") && err.contains("in flight"),
        "refusal does not name the context: {err}"
    );
    assert!(!w.image().exists(), "a refused dump left an image");
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(!o.status.success() || stdout(&o).contains("AIO context"));
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("AIO context"),
        "check does not name the AIO context"
    );
    assert!(alive(w.pid), "the refused tree must run on");
    w.go();
    w.expect_pass();
}

/// System V shared memory in huge pages is refused by name, and the tree
/// runs on.
#[test]
fn sysv_hugetlb_segment_is_refused() {
    let _pools = Pools::reserve(&[(2048, 1)]);
    let script = r#"
import ctypes, os, sys, time
D = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
SHM_HUGETLB = 0o4000
i = libc.shmget(0, 2 << 20, 0o1000 | 0o600 | SHM_HUGETLB)
if i < 0: sys.exit("shmget: errno %d" % ctypes.get_errno())
a = libc.shmat(i, None, 0)
libc.shmctl(i, 0, None)  # IPC_RMID: gone with the process
ctypes.memmove(a, b"hello", 5)
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
ok = ctypes.string_at(a, 5) == b"hello"
open(D + "/result.tmp", "w").write("PASS\n" if ok else "FAIL\ncontent\n"); os.rename(D + "/result.tmp", D + "/result")
sys.exit(0 if ok else 1)
"#;
    let w = Workload::start_python("sysv-hugetlb", script);
    let o = w.dump(&[]);
    assert!(
        !o.status.success(),
        "dump of a SHM_HUGETLB segment succeeded"
    );
    let err = stderr(&o);
    assert!(
        err.contains("SHM_HUGETLB") && err.contains("/SYSV"),
        "refusal does not name the segment: {err}"
    );
    assert!(alive(w.pid), "the refused tree must run on");
    w.go();
    w.expect_pass();
}
