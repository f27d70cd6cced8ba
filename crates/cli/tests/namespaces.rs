//! Namespaces: trees that live in PID, UTS and IPC namespaces of their
//! own are checkpointed and restored into new ones; each process checks
//! its own PIDs, names and IPC objects afterwards.

mod common;
use common::*;

/// A container init (PID 1 of its own PID, UTS and IPC namespaces) with
/// three descendants and a thread: dumped, restored twice in a row.
#[test]
fn pid_uts_ipc_namespaces() {
    let _g = serial();
    let mut w = Workload::start_handover("pidns", &[]);
    for _ in 0..2 {
        w.dump_ok();
        w.restore_moved(&[]);
    }
    w.go();
    w.expect_pass();
}

/// A PID namespace inside the container's PID namespace.
#[test]
fn nested_pid_namespaces() {
    let _g = serial();
    let mut w = Workload::start_handover("pidns", &["nested"]);
    w.dump_ok();
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// The checker sees a wrong host name: changed from outside before go,
/// the container must fail its own check.
#[test]
fn pidns_checker_detects_a_wrong_hostname() {
    let _g = serial();
    let w = Workload::start_handover("pidns", &[]);
    let ns = format!("/proc/{}/ns/uts", w.pid);
    let f = std::fs::File::open(&ns).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this helper thread only; sethostname with a
            // valid buffer.
            unsafe {
                assert_eq!(libc::setns(f.as_raw_fd(), libc::CLONE_NEWUTS), 0);
                assert_eq!(libc::sethostname(b"wrong".as_ptr().cast(), 5), 0);
            }
        });
    });
    w.go();
    let text = verdict(&w);
    assert!(
        text.starts_with("FAIL") && text.contains("hostname"),
        "{text}"
    );
}

/// The workload's result file, once written (within a minute).
fn verdict(w: &Workload) -> String {
    let res = w.dir.join("result");
    let start = std::time::Instant::now();
    while !res.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::read_to_string(&res).unwrap_or_default()
}

/// A mount crest cannot recreate yet (a tmpfs mounted only inside the
/// process's mount namespace) is refused by check and dump with its
/// mount point and type, and the process keeps running.
#[test]
fn mount_only_in_the_namespace_is_refused() {
    let _g = serial();
    init();
    let dir = temp_dir("mnt-refused");
    let at = dir.join("m");
    std::fs::create_dir_all(&at).unwrap();
    let script = format!(
        "mount -t ramfs crest-test-ramfs {} && touch {}/ok && exec sleep 60",
        at.display(),
        dir.display()
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    while !dir.join("ok").exists() && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let o = crest(&["check", "-p", &pid.to_string()]);
    let text = stdout(&o) + &stderr(&o);
    assert!(!o.status.success(), "{text}");
    let want = format!("mount {}", at.display());
    assert!(text.contains(&want) && text.contains("ramfs"), "{text}");
    let img = dir.join("img");
    let o = crest(&["dump", "-p", &pid.to_string(), "-o", img.to_str().unwrap()]);
    let text = stderr(&o);
    assert!(!o.status.success() && text.contains(&want), "{text}");
    assert!(alive(pid), "the refused process must keep running");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `sleep` with PID `pid` (that of the tree just dumped), so that
/// a plain restore cannot have it.
fn occupy(pid: i32) {
    let prog = std::ffi::CString::new("/bin/sleep").unwrap();
    let arg = std::ffi::CString::new("60").unwrap();
    let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
    // SAFETY: the child only calls execv and _exit (async-signal-safe) on
    // data prepared before the fork.
    match unsafe { crest_sys::process::clone_with_pid(pid, 0) }.expect("clone3 set_tid") {
        // SAFETY: as above.
        crest_sys::process::Forked::Child => unsafe {
            libc::execv(prog.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        },
        crest_sys::process::Forked::Parent(_) => {}
    }
}

/// `restore --new-pidns`: the tree's PIDs are taken here, so it is
/// restored into a new PID namespace where every process (and thread)
/// keeps its PID.
#[test]
fn new_pidns_when_the_pids_are_taken() {
    let _g = serial();
    let mut w = Workload::start("threads", &["4"]);
    let old = w.pid;
    w.dump_ok();
    occupy(old);
    assert!(alive(old), "pid {old} is taken again");
    w.restore_moved(&["--new-pidns"]);
    assert_ne!(w.pid, old, "the init crest made has a pid of its own");
    w.go();
    w.expect_pass();
    // SAFETY: plain kill of the placeholder this test started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    reap(old, std::time::Duration::from_secs(5));
}

/// Processes (other than those in `before`) in a PID namespace below
/// ours, after reaping whatever came to us.
fn nested_processes(before: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let levels = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .map(|l| l.split_whitespace().count() - 1)
            .unwrap_or(0);
        if levels > 1 && !before.contains(&pid) && descends_from_us(pid) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is a descendant of this test process.
fn descends_from_us(mut pid: i32) -> bool {
    let me = std::process::id() as i32;
    for _ in 0..64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(pp) = st
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return false;
        };
        if pp == me {
            return true;
        }
        if pp <= 1 {
            return false;
        }
        pid = pp;
    }
    false
}

fn errors_only(o: &std::process::Output) -> String {
    stderr(o)
        .lines()
        .filter(|l| !l.starts_with("crest-fault-point "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails (or kills) the restore of a container at each of its fault
/// points in turn: afterwards no process of it is left, so none of the
/// namespaces it made (they go with their last process).
fn fault_every_point(kill: bool, new_pidns: bool) {
    let _g = serial();
    let w = if new_pidns {
        Workload::start("threads", &["2"])
    } else {
        Workload::start_handover("pidns", &[])
    };
    let extra: &[&str] = if new_pidns { &["--new-pidns"] } else { &[] };
    w.dump_ok();
    let img = w.image();
    let mut args = vec!["restore", "-i", img.to_str().unwrap(), "-d"];
    args.extend_from_slice(extra);
    let before = nested_processes(&[]);
    let run = |at: usize| {
        let mut c = std::process::Command::new(crest_bin());
        c.args(&args)
            .env("CREST_FAULT_TRACE", "1")
            .stdin(std::process::Stdio::null());
        if at > 0 {
            c.env("CREST_FAULT_AT", at.to_string());
        }
        if kill {
            c.env("CREST_FAULT_MODE", "kill");
        }
        c.output().unwrap()
    };
    let o = run(0);
    assert!(o.status.success(), "{}", stderr(&o));
    let points = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("crest-fault-point "))
        .count();
    assert!(points > 10, "{points} fault points");
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    // SAFETY: plain kill of the tree this test restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, std::time::Duration::from_secs(10));
    // Every point near the start and the end, and a sample between.
    let step = (points / 40).max(1);
    let picks: Vec<usize> = (1..=points)
        .filter(|n| *n <= 30 || *n + 30 > points || n % step == 0)
        .collect();
    for n in picks {
        let o = run(n);
        assert!(!o.status.success(), "restore with a fault at {n} succeeded");
        let start = std::time::Instant::now();
        let left = loop {
            reap_all();
            let left = nested_processes(&before);
            if left.is_empty() || start.elapsed().as_secs() > 10 {
                break left;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let show: Vec<String> = left
            .iter()
            .map(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let pick = |k: &str| {
                    st.lines()
                        .find(|l| l.starts_with(k))
                        .unwrap_or("")
                        .to_string()
                };
                format!(
                    "{p}: {} {} {} {}",
                    pick("Name"),
                    pick("State"),
                    pick("PPid"),
                    pick("NSpid")
                )
            })
            .collect();
        assert!(
            left.is_empty(),
            "fault at point {n} of {points} left processes {show:?}: {}",
            errors_only(&o)
        );
    }
}

#[test]
fn container_restore_error_at_every_point_leaves_nothing() {
    fault_every_point(false, false);
}

#[test]
fn container_restore_killed_at_every_point_leaves_nothing() {
    fault_every_point(true, false);
}

#[test]
fn new_pidns_restore_error_at_every_point_leaves_nothing() {
    fault_every_point(false, true);
}

#[test]
fn new_pidns_restore_killed_at_every_point_leaves_nothing() {
    fault_every_point(true, true);
}

/// A container made by util-linux: `unshare --pid --fork --mount-proc
/// --uts --ipc`, whose init checks after restore that /proc (mounted
/// again in the recreated mount namespace) shows its PID namespace.
#[test]
fn unshare_made_container() {
    let _g = serial();
    let wrapper = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--uts",
        "--ipc",
    ];
    let mut w = Workload::start_wrapped("pidns", &wrapper, &["inside"], "inner-ready");
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // unshare waits for its child: it reaps the dumped init and exits.
    let o = w.dump(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = std::time::Instant::now();
    while alive(w.pid) && start.elapsed().as_secs() < 10 {
        reap_all();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!alive(w.pid), "the dumped init is still there");
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// The PID namespace a process's children are created in: that of its
/// child, read through /proc.
fn kids_ns_of(pid: i32) -> (String, String) {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child: i32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    let link = |p: String| std::fs::read_link(p).unwrap().display().to_string();
    (
        link(format!("/proc/{pid}/ns/pid_for_children")),
        link(format!("/proc/{child}/ns/pid")),
    )
}

/// `unshare --pid --fork` inside a container made by `unshare`: the
/// container's init unshared a PID namespace for its children and forked
/// the inner init, which sees the container's /proc.  Dumped with it;
/// after each restore its children go into the inner namespace again, as
/// they did.
#[test]
fn unshare_inside_an_unshare_made_container() {
    let _g = serial();
    let outer = ["unshare", "--pid", "--fork", "--mount-proc"];
    let inner = ["unshare", "--pid", "--fork"];
    let wrapper: Vec<&str> = outer.iter().chain(&inner).copied().collect();
    let args = ["inside", "shared-proc"];
    let mut w = Workload::start_wrapped("pidns", &wrapper, &args, "inner-ready");
    let (kids, child) = kids_ns_of(w.pid);
    assert_eq!(
        kids, child,
        "the set-up: the outer init forks into the inner namespace"
    );
    for round in 0..2 {
        let o = w.dump(&[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let old = w.pid;
        let start = std::time::Instant::now();
        while alive(old) && start.elapsed().as_secs() < 10 {
            reap_all();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        w.restore_moved(&[]);
        let (kids, child) = kids_ns_of(w.pid);
        assert_eq!(
            kids, child,
            "round {round}: pid_for_children after the restore"
        );
    }
    w.go();
    w.expect_pass();
}

/// The same with `--mount-proc` inside too: the inner init mounted a
/// proc of its PID namespace in the mount namespace it shares with the
/// outer init, which restore cannot make yet; dump refuses, naming it,
/// and the container keeps running.
#[test]
fn inner_proc_in_a_shared_mount_namespace_is_refused() {
    let _g = serial();
    let level = ["unshare", "--pid", "--fork", "--mount-proc"];
    let wrapper: Vec<&str> = level.iter().chain(&level).copied().collect();
    let w = Workload::start_wrapped("pidns", &wrapper, &["inside"], "inner-ready");
    let o = w.dump(&[]);
    let text = stderr(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("mount /proc") && text.contains("another PID namespace"),
        "{text}"
    );
    assert!(alive(w.pid), "the refused container must keep running");
    // Not the harness's child: its own verdict, from the result file.
    w.go();
    let text = verdict(&w);
    assert!(text.starts_with("PASS"), "{text}");
    reap_all();
}

/// A process that unshared a PID namespace for its children but has no
/// child in it (`unshare --pid` without `--fork`) is refused, by name.
#[test]
fn pid_namespace_unshared_without_its_init_is_refused() {
    let _g = serial();
    init();
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let ns = |n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).ok();
    let start = std::time::Instant::now();
    while ns("pid") == ns("pid_for_children") && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dir = temp_dir("pidns-unshared-alone");
    let img = dir.join("img");
    let o = crest(&["dump", "-p", &pid.to_string(), "-o", img.to_str().unwrap()]);
    let text = stderr(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("unshared a new PID namespace") && text.contains(&format!("pid {pid}")),
        "{text}"
    );
    assert!(alive(pid), "the refused process must keep running");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next PID of a PID namespace is kept: a container whose init made
/// 40 processes (its cursor well past its live PIDs) forks one after the
/// restore and it gets the PID the next one would have got without the
/// dump, not the lowest free one.  The script forks nothing while it
/// waits (builtins only).
#[test]
fn next_pid_of_a_pid_namespace_is_kept() {
    let _g = serial();
    init();
    let dir = temp_dir("pidns-next-pid");
    let script = r#"D=$1
i=0; while [ $i -lt 40 ]; do sh -c 'exit 0'; i=$((i+1)); done
sh -c 'echo $$' > $D/before
: > $D/ready
while [ ! -e $D/go ]; do :; done
sh -c 'echo $$' > $D/after.tmp && mv $D/after.tmp $D/after
while [ ! -e $D/done ]; do :; done
"#;
    let out = std::process::Command::new(crest_bin())
        .args(["run", "--", "unshare", "--pid", "--fork", "--mount-proc"])
        .args(["sh", "-c", script, "sh"])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let wrapper: i32 = stdout(&out).trim().parse().unwrap();
    let wait = |f: &str| {
        let start = std::time::Instant::now();
        while !dir.join(f).exists() {
            assert!(start.elapsed().as_secs() < 30, "no {f}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::read_to_string(dir.join(f)).unwrap()
    };
    wait("ready");
    let kids = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).unwrap();
    let init: i32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    let before: i32 = wait("before").trim().parse().unwrap();
    assert!(before > 40, "the set-up: {before}");
    let img = dir.join("img");
    let o = crest(&["dump", "-p", &init.to_string(), "-o", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    reap(wrapper, std::time::Duration::from_secs(10));
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let restored: i32 = stdout(&o).trim().parse().unwrap();
    std::fs::write(dir.join("go"), "").unwrap();
    let after: i32 = wait("after").trim().parse().unwrap();
    std::fs::write(dir.join("done"), "").unwrap();
    reap(restored, std::time::Duration::from_secs(10));
    assert_eq!(after, before + 1, "the first process after the restore");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A container moved through a pipe, `crest dump -o - | crest restore -i
/// -`, into a fresh set of namespaces while the dumped one is still going
/// away.
#[test]
fn container_through_a_pipe() {
    use std::process::{Command, Stdio};
    let _g = serial();
    let mut w = Workload::start_handover("pidns", &["nested"]);
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
    let old = w.pid;
    reap(old, std::time::Duration::from_secs(10));
    w.pid = stdout(&restore).trim().parse().unwrap();
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}

/// A busybox container of 20 processes made by `unshare`: a shell whose
/// counter goes through a pipe to a reader that checks every number
/// follows the last (a restart or a lost byte shows), a writer that
/// checks the host name, and 17 sleeping members.  Dumped, restored,
/// and the counting must go on where it was.
#[test]
fn busybox_container_keeps_counting() {
    let _g = serial();
    init();
    let dir = temp_dir("busybox");
    let d = dir.display();
    let script = format!(
        "hostname bbx; \
         (i=0; while :; do [ \"$(hostname)\" = bbx ] || echo badhost >> {d}/bad; \
           echo $i; i=$((i+1)); sleep 0.02; done) | \
         (prev=-1; while read n; do \
           [ $prev -lt 0 ] || [ $n -eq $((prev+1)) ] || echo \"bad $prev $n\" >> {d}/bad; \
           prev=$n; echo $n > {d}/count.tmp; mv {d}/count.tmp {d}/count; done) & \
         for k in $(seq 17); do sleep 1000 & done; wait"
    );
    let bb = "/usr/bin/busybox";
    // Only busybox's applets.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for applet in ["sh", "hostname", "sleep", "seq", "mv"] {
        std::os::unix::fs::symlink(bb, bin.join(applet)).unwrap();
    }
    let out = std::process::Command::new(crest_bin())
        .args([
            "run",
            "--",
            "/usr/bin/unshare",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .args(["--uts", "--ipc", bb, "sh", "-c", &script])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let wrapper: i32 = stdout(&out).trim().parse().unwrap();
    let count = || -> i64 {
        std::fs::read_to_string(dir.join("count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1)
    };
    let start = std::time::Instant::now();
    while count() < 5 && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kids = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
        .unwrap_or_default();
    let root: i32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    let members = 1 + descendants(root).len();
    assert!(members >= 20, "{members} processes in the container");
    let img = dir.join("img");
    let o = crest(&["dump", "-p", &root.to_string(), "-o", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let at_dump = count();
    reap(wrapper, std::time::Duration::from_secs(10));
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let restored: i32 = stdout(&o).trim().parse().unwrap();
    let start = std::time::Instant::now();
    while count() < at_dump + 20 && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after = count();
    let bad = std::fs::read_to_string(dir.join("bad")).unwrap_or_default();
    // SAFETY: plain kill of the container this test restored (its init:
    // the whole namespace goes).
    unsafe { libc::kill(restored, libc::SIGKILL) };
    reap(restored, std::time::Duration::from_secs(10));
    assert!(bad.is_empty(), "the container saw: {bad}");
    assert!(
        after >= at_dump + 20,
        "counting did not go on: {at_dump} at the dump, {after} after"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
