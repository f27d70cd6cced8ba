//! System V shared memory in a container's private IPC namespace: every
//! segment (one nobody attaches, one marked for removal while attached,
//! one attached read-only, one shared by two processes) comes back with
//! its id, key, size, mode, owner, creator, SHM_LOCK and content, attached where
//! it was (the `ipcshm` workload checks all of it itself); a restore
//! failed or killed at any point leaves nothing behind; a segment in huge
//! pages, or one attached from outside the tree, is refused.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The lines of crest's /proc/sysvipc/shm (its own IPC namespace).
fn own_segments() -> Vec<String> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// The IPC namespaces any process is in.
fn ipc_namespaces() -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<i32>().is_ok() {
            if let Ok(l) = std::fs::read_link(format!("/proc/{name}/ns/ipc")) {
                out.insert(l.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Two dump/restore cycles of the container, restored into new PID and
/// IPC namespaces each time.
#[test]
fn private_namespace_segments_two_cycles() {
    let _g = serial();
    let before = own_segments();
    let mut w = Workload::start_handover("ipcshm", &[]);
    for _ in 0..2 {
        w.dump_ok();
        w.restore_moved(&[]);
    }
    w.go();
    w.expect_pass();
    assert_eq!(
        own_segments(),
        before,
        "crest's own IPC namespace gained or lost segments"
    );
}

/// The image holds all four segments, the unattached one included, and
/// a dump that leaves the tree running leaves its segments alone.
#[test]
fn image_lists_every_segment_and_leave_running_keeps_them() {
    let _g = serial();
    let w = Workload::start_handover("ipcshm", &[]);
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = crest(&["inspect", "--json", w.image().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["checkpoint"];
    let ipc: Vec<&serde_json::Value> = c["namespaces"]["table"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["state"].get("Ipc"))
        .collect();
    assert_eq!(ipc.len(), 1, "one IPC namespace: {}", c["namespaces"]);
    let listed: Vec<u64> = ipc[0]["shm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    let mut segs: Vec<(i64, bool, bool, u64)> = listed
        .iter()
        .map(|&id| {
            let o = c["objects"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["id"].as_u64() == Some(id))
                .unwrap_or_else(|| panic!("no object {id}"));
            let s = &o["kind"]["Shmem"]["kind"]["SysV"];
            (
                s["key"].as_i64().unwrap() as i32 as u32 as i64,
                s["destroyed"].as_bool().unwrap(),
                s["locked"].as_bool().unwrap(),
                s["uid"].as_u64().unwrap(),
            )
        })
        .collect();
    segs.sort();
    assert_eq!(
        segs,
        vec![
            (0, true, false, 0),
            (0xc15a_0001, false, false, 0),
            (0xc15a_0002, false, true, 4321),
            (0xc15a_0004, false, false, 0),
        ],
        "the namespace's segments in the image"
    );
    w.go();
    w.expect_pass();
}

/// Fails (or, with `kill`, SIGKILLs) the restore of the container at
/// every fault point from just before its IPC namespace is filled to the
/// end: afterwards no IPC namespace of it is left (it goes with its
/// processes, and its segments with it) and crest's own namespace has
/// the segments it had; the image then restores and passes.
fn fault_from_the_ipc_namespace_on(kill: bool) {
    let _g = serial();
    let mut w = Workload::start_handover("ipcshm", &[]);
    w.dump_ok();
    let img = w.image();
    let run = |at: usize| {
        let mut c = Command::new(crest_bin());
        c.args(["restore", "-i", img.to_str().unwrap(), "-d"])
            .env("CREST_FAULT_TRACE", "1")
            .stdin(Stdio::null());
        if at > 0 {
            c.env("CREST_FAULT_AT", at.to_string());
        }
        if kill {
            c.env("CREST_FAULT_MODE", "kill");
        }
        c.output().unwrap()
    };
    // A traced restore that succeeds: the points to fail at.
    let o = run(0);
    assert!(o.status.success(), "{}", stderr(&o));
    w.pid = stdout(&o).trim().parse().unwrap();
    let points: Vec<String> = stderr(&o)
        .lines()
        .filter_map(|l| l.strip_prefix("crest-fault-point "))
        .map(|r| r.split_once(' ').map_or("", |x| x.1).to_string())
        .collect();
    let ipc = points
        .iter()
        .position(|p| p == "restore: ipc namespace")
        .expect("the restore passes the IPC namespace point")
        + 1;
    assert!(
        points[ipc..].iter().any(|p| p == "restore: memory mapped"),
        "no memory mapped point after the IPC namespace: {points:?}"
    );
    w.dump_ok();
    let segs = own_segments();
    let namespaces = ipc_namespaces();
    for at in ipc.saturating_sub(2).max(1)..=points.len() {
        let o = run(at);
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "the restore with a fault at point {at} ({}) succeeded",
            points[at - 1]
        );
        let start = std::time::Instant::now();
        let extra = loop {
            reap_all();
            let extra: Vec<String> = ipc_namespaces().difference(&namespaces).cloned().collect();
            if extra.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break extra;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            extra.is_empty(),
            "fault at point {at} ({}) left IPC namespaces {extra:?}: {err}",
            points[at - 1]
        );
        assert_eq!(
            own_segments(),
            segs,
            "fault at point {at} ({}) changed crest's segments",
            points[at - 1]
        );
    }
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

#[test]
fn restore_error_from_the_ipc_namespace_on_leaves_nothing() {
    fault_from_the_ipc_namespace_on(false);
}

#[test]
fn restore_killed_from_the_ipc_namespace_on_leaves_nothing() {
    fault_from_the_ipc_namespace_on(true);
}

/// A segment in huge pages that nobody attaches, in a private IPC
/// namespace, is refused by check and by dump with its id and SHM_HUGETLB,
/// and the process runs on.
#[test]
fn unattached_hugetlb_segment_is_refused() {
    let _g = serial();
    init();
    let pool = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    let num = |f: &str| -> u64 {
        std::fs::read_to_string(format!("{pool}/{f}"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let old = num("nr_hugepages");
    if num("free_hugepages") < 1 {
        std::fs::write(format!("{pool}/nr_hugepages"), (old + 1).to_string()).unwrap();
    }
    assert!(num("free_hugepages") >= 1, "no free 2 MiB huge page");
    let dir = temp_dir("ipc-shm-huge");
    let script = format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
i = libc.shmget(0x4352ee01, 2 << 20, 0o1000 | 0o600 | 0o4000)
if i < 0: raise SystemExit("shmget: errno %d" % ctypes.get_errno())
open("{d}/id", "w").write("%d" % i)
time.sleep(120)
"#,
        d = dir.display()
    );
    let mut child = Command::new("unshare")
        .args(["--ipc", "python3", "-c", &script])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    while !dir.join("id").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the segment was not made"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let id = std::fs::read_to_string(dir.join("id")).unwrap();
    for args in [
        vec!["check", "-p", &pid.to_string()],
        vec![
            "dump",
            "-p",
            &pid.to_string(),
            "-o",
            dir.join("img").to_str().unwrap(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        let o = crest(&args);
        let text = stdout(&o) + &stderr(&o);
        assert!(!o.status.success(), "{} succeeded: {text}", args[0]);
        assert!(
            text.contains("SHM_HUGETLB") && text.contains(&format!("shmid {id}")),
            "{} does not name the segment: {text}",
            args[0]
        );
        assert!(alive(pid), "the refused process must keep running");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if num("nr_hugepages") != old {
        let _ = std::fs::write(format!("{pool}/nr_hugepages"), old.to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A segment of the namespace attached by a process outside the tree
/// (this test, from a thread that joined the namespace) is refused by
/// check naming it: that attach would not come back.  Once detached, the
/// tree dumps and restores.
#[test]
fn segment_attached_from_outside_the_tree_is_refused() {
    let _g = serial();
    let mut w = Workload::start_handover("ipcshm", &[]);
    let ns = std::fs::File::open(format!("/proc/{}/ns/ipc", w.pid)).unwrap();
    let (id, addr) = std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this helper thread only; shmat where the
            // kernel chooses.
            unsafe {
                assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC), 0);
                let id = libc::shmget(0xc15a_0002_u32 as i32, 0, 0);
                assert!(id >= 0, "the unattached segment is not there");
                let a = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
                assert_ne!(a as isize, -1);
                (id, a as usize)
            }
        })
        .join()
        .unwrap()
    });
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    let text = stdout(&o) + &stderr(&o);
    assert!(!o.status.success(), "check succeeded: {text}");
    assert!(
        text.contains(&format!("shmid {id} (key 0xc15a0002)")) && text.contains("outside the tree"),
        "check does not name the segment: {text}"
    );
    // SAFETY: detaching this process's own attach made above.
    unsafe { libc::shmdt(addr as *const libc::c_void) };
    w.dump_ok();
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// An IPC namespace owned by a user namespace of the tree (`unshare
/// --user --map-root-user --ipc`): a segment attached and one nobody
/// attaches come back with their ids, keys, modes, owner (root inside)
/// and content, twice.
#[test]
fn segments_of_an_ipc_namespace_owned_by_a_user_namespace() {
    let _g = serial();
    init();
    let script = r#"
import ctypes, os, struct, sys, time
D = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
def stat(i):
    b = ctypes.create_string_buffer(256)
    if libc.shmctl(i, 2, b) != 0: return None
    u = lambda f, o: struct.unpack_from(f, b, o)[0]
    return (u("i", 0), u("I", 4), u("I", 8), u("H", 20) & 0o777, u("Q", 48))   # key, uid, gid, mode, size
a_id = libc.shmget(0x4352aa01, 8192, 0o1000 | 0o600)
b_id = libc.shmget(0x4352aa02, 3 * 4096, 0o1000 | 0o640)
if min(a_id, b_id) < 0: raise SystemExit("shmget: errno %d" % ctypes.get_errno())
a = libc.shmat(a_id, None, 0)
ctypes.memmove(a + 5000, b"attached", 8)
b = libc.shmat(b_id, None, 0); ctypes.memmove(b + 9000, b"lonely", 6); libc.shmdt(b)
before = (stat(a_id), stat(b_id))
open(D + "/ready.tmp", "w").write("%d\n" % os.getpid()); os.rename(D + "/ready.tmp", D + "/ready")
while not os.path.exists(D + "/go"): time.sleep(0.01)
e = []
if (stat(a_id), stat(b_id)) != before: e.append("IPC_STAT %r, was %r" % ((stat(a_id), stat(b_id)), before))
if before[0][1:3] != (0, 0): e.append("owner inside %r" % (before[0][1:3],))
if (libc.shmget(0x4352aa01, 0, 0), libc.shmget(0x4352aa02, 0, 0)) != (a_id, b_id): e.append("ids by key")
if ctypes.string_at(a + 5000, 8) != b"attached": e.append("attached content %r" % ctypes.string_at(a + 5000, 8))
b = libc.shmat(b_id, None, 0)
if ctypes.string_at(b + 9000, 6) != b"lonely": e.append("unattached content %r" % ctypes.string_at(b + 9000, 6))
open(D + "/result.tmp", "w").write("PASS\n" if not e else "FAIL\n" + "\n".join(e) + "\n")
os.rename(D + "/result.tmp", D + "/result"); os._exit(0 if not e else 1)
"#;
    let dir = temp_dir("ipc-shm-userns");
    let o = Command::new(crest_bin())
        .arg("run")
        .arg("--log")
        .arg(dir.join("log"))
        .args(["--", "unshare", "--user", "--map-root-user", "--ipc"])
        .args(["python3", "-c", script])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "crest run: {}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    let start = std::time::Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30) && alive(pid),
            "not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let w = Workload::adopt(pid, dir, "ipc-shm-userns");
    w.cycle_twice();
}
