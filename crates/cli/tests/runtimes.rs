//! The real container runtimes from Debian (runc, podman with runc as its
//! OCI runtime) checkpoint and restore a container through crest's criu
//! front: `crest install-criu-shim DIR` and DIR first in PATH, nothing
//! else changed.  The container is a busybox shell loop counting in a
//! shell variable and in a file, checking on every round that the file
//! still holds what it wrote last: restored from scratch instead of from
//! its checkpoint, it would find them apart and write a verdict.
//!
//! crest refuses processes in other namespaces than its own (the
//! namespace work lands separately): until then a checkpoint must fail
//! cleanly, with crest's refusal in the log the runtime names, and the
//! container running on untouched.  The full round trips are written and
//! marked ignored until then.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNC: &str = "/usr/sbin/runc";

/// The container's program: counts in `$i` and in CHECK/count, stops
/// with a verdict in OUT/verdict if the two ever disagree, and publishes
/// the count in OUT/count for the test to watch.  CHECK is a tmpfs of the
/// container (saved in the image with the memory), OUT a directory of the
/// host: after a `--leave-running` checkpoint the original goes on writing
/// OUT while the image keeps the count of its CHECK.
fn counter_script(check: &str, out: &str) -> String {
    format!(
        "i=0; while true; do \
           if [ -f {check}/count ]; then read c < {check}/count; \
             if [ \"$c\" != \"$i\" ]; then echo \"BAD memory $i file $c\" > {out}/verdict; exit 1; fi; \
           fi; \
           i=$((i+1)); echo $i > {check}/count.new; mv {check}/count.new {check}/count; \
           echo $i > {out}/count.new; mv {out}/count.new {out}/count; sleep 0.1; \
         done"
    )
}

/// A root filesystem of busybox and its applet links.
fn busybox_rootfs(root: &Path) {
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
}

/// The commands this test runs and waits for itself (see [`run`]).
static SPAWNED: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Reaps the runtimes' orphans (the container's init after `runc run
/// -d`, conmon): this test is their subreaper.  Commands the test waits
/// for itself are registered in [`SPAWNED`] as they are spawned (under
/// the lock the reaper takes), and left alone.
fn start_reaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        init();
        std::thread::spawn(|| loop {
            {
                let mine = SPAWNED.lock().unwrap();
                for pid in direct_children() {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let zombie = stat.rsplit(") ").next().unwrap_or("").starts_with('Z');
                    if zombie && !mine.contains(&pid) {
                        // SAFETY: reaps one zombie child that no one waits for.
                        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    });
}

/// Direct children of this process.
fn direct_children() -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// PATH with the shim directory first.
fn shim_path(dir: &Path) -> String {
    let o = run(Command::new(crest_bin()).arg("install-criu-shim").arg(dir));
    assert!(o.status.success(), "{}", stderr(&o));
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs `cmd` to its end, its output captured.
fn run(cmd: &mut Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    run_with(cmd)
}

/// Runs `cmd` (stdio as set by the caller, stdin null) to its end; it is
/// registered for the reaper to leave alone from before it can exit.
fn run_with(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    let child = {
        let mut mine = SPAWNED.lock().unwrap();
        let c = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        mine.insert(c.id() as i32);
        c
    };
    let pid = child.id() as i32;
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    SPAWNED.lock().unwrap().remove(&pid);
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn read_count(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("count"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until the counter in `dir` passes `above`.
fn wait_count_above(dir: &Path, above: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(v) = read_count(dir).filter(|v| *v > above) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the counter in {} did not pass {above} (verdict: {:?})",
            dir.display(),
            std::fs::read_to_string(dir.join("verdict")).ok()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_verdict(dir: &Path) {
    assert!(
        !dir.join("verdict").exists(),
        "the container found its state wrong: {}",
        std::fs::read_to_string(dir.join("verdict")).unwrap_or_default()
    );
}

/// The status of process `pid`: running or sleeping, traced by no one.
fn assert_untraced(pid: i32) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let tracer = st
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .unwrap()
        .trim();
    assert_eq!(tracer, "0", "pid {pid} is still traced:\n{st}");
}

/// A runc container on a busybox bundle, with its own state directory.
struct Runc {
    id: String,
    base: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    path: String,
}

impl Runc {
    fn new(tag: &str) -> Runc {
        Runc::with_mounts(tag, &[])
    }

    /// With these OCI mounts added to runc's default spec.
    fn with_mounts(tag: &str, extra: &[serde_json::Value]) -> Runc {
        start_reaper();
        let base = temp_dir(tag);
        let bundle = base.join("bundle");
        let rootfs = bundle.join("rootfs");
        busybox_rootfs(&rootfs);
        let o = run(Command::new(RUNC).arg("spec").current_dir(&bundle));
        assert!(o.status.success(), "runc spec: {}", text(&o));
        let cfg_path = bundle.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["sh", "-c", counter_script("/tmp", "/data")]);
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"]
            }));
        for m in extra {
            cfg["mounts"].as_array_mut().unwrap().push(m.clone());
        }
        cfg["root"]["readonly"] = false.into();
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let state = base.join("state");
        let path = shim_path(&base.join("shim"));
        Runc {
            id: format!("crest-{}-{tag}", std::process::id()),
            base,
            bundle,
            state,
            path,
        }
    }

    fn data(&self) -> PathBuf {
        self.bundle.join("rootfs/data")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(RUNC);
        c.env("PATH", &self.path).arg("--root").arg(&self.state);
        c
    }

    fn start(&self) {
        let o = run_with(
            self.cmd()
                .args(["run", "-d", "--bundle"])
                .arg(&self.bundle)
                .arg(&self.id)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        assert!(o.status.success(), "runc run: {}", text(&o));
        wait_count_above(&self.data(), 2);
    }

    /// `(status, pid)` from `runc state`, or None if runc has no such
    /// container.
    fn state(&self) -> Option<(String, i32)> {
        let o = run(self.cmd().arg("state").arg(&self.id));
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        Some((
            v["status"].as_str().unwrap().to_string(),
            v["pid"].as_i64().unwrap() as i32,
        ))
    }

    fn checkpoint(&self, extra: &[&str]) -> Output {
        run(self
            .cmd()
            .arg("checkpoint")
            .arg("--image-path")
            .arg(self.base.join("images"))
            .arg("--work-path")
            .arg(self.base.join("work"))
            .args(extra)
            .arg(&self.id))
    }

    fn restore(&self) -> Output {
        run_with(
            self.cmd()
                .args(["restore", "-d", "--image-path"])
                .arg(self.base.join("images"))
                .arg("--work-path")
                .arg(self.base.join("work"))
                .arg("--bundle")
                .arg(&self.bundle)
                .arg(&self.id)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    fn work_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.base.join("work").join(name)).unwrap_or_default()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = run(self.cmd().args(["delete", "-f"]).arg(&self.id));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

#[test]
fn runc_checkpoint_of_an_unsupported_mount_fails_cleanly() {
    // A ramfs crest cannot recreate: the checkpoint fails naming its
    // mount point and type, and the container runs on untouched.
    let ramfs = serde_json::json!({
        "destination": "/scratch", "type": "ramfs", "source": "ramfs", "options": ["nosuid"]
    });
    let c = Runc::with_mounts("runc-refused", &[ramfs]);
    c.start();
    let (status, pid) = c.state().expect("runc knows the container");
    assert_eq!(status, "running");
    let o = c.checkpoint(&[]);
    assert!(!o.status.success(), "crest must refuse: {}", text(&o));
    let err = text(&o);
    // runc names the type of the last request it sent: the DUMP, or the
    // answer to a notification (crest refuses after network-lock).
    assert!(
        err.contains("criu failed: type DUMP") || err.contains("criu failed: type NOTIFY"),
        "{err}"
    );
    let log_path = c.base.join("work/dump.log");
    assert!(
        err.contains(log_path.to_str().unwrap()),
        "runc names the log: {err}"
    );
    let log = c.work_log("dump.log");
    assert!(
        log.contains("mount /scratch") && log.contains("ramfs"),
        "crest's refusal names the mount and its type:\n{log}"
    );
    assert!(!c.base.join("images/crest.img").exists());
    // The container runs on, untouched, and still agrees with itself.
    assert_eq!(c.state(), Some(("running".to_string(), pid)));
    assert_untraced(pid);
    let now = read_count(&c.data()).unwrap();
    wait_count_above(&c.data(), now + 3);
    assert_no_verdict(&c.data());
}

#[test]
fn the_container_detects_a_wrong_state() {
    // The self-check the restore tests rely on: a counter file that no
    // longer matches the shell's count makes the container write its
    // verdict and stop.
    let c = Runc::new("runc-selftest");
    c.start();
    let (_, pid) = c.state().unwrap();
    let checked = PathBuf::from(format!("/proc/{pid}/root/tmp/count"));
    let t0 = Instant::now();
    while !c.data().join("verdict").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the container did not notice a wrong count"
        );
        std::fs::write(&checked, "999999\n").unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let v = std::fs::read_to_string(c.data().join("verdict")).unwrap();
    assert!(v.starts_with("BAD"), "{v}");
}

#[test]
fn runc_checkpoint_and_restore() {
    let c = Runc::new("runc-cycle");
    c.start();
    let (_, pid) = c.state().unwrap();
    let mounts_before = container_mounts(pid);
    let hostname = uts_name(pid);
    // Checkpoint: the container stops; its image is in the images dir.
    let o = c.checkpoint(&[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("dump.log")
    );
    assert!(
        c.state().is_none(),
        "runc removed the checkpointed container"
    );
    assert!(c.base.join("images/crest.img").exists());
    let at_dump = read_count(&c.data()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_count(&c.data()),
        Some(at_dump),
        "nothing runs meanwhile"
    );
    // Restore: the same pid, counting on from where it stopped.
    let o = c.restore();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("restore.log")
    );
    assert_eq!(c.state(), Some(("running".to_string(), pid)));
    wait_count_above(&c.data(), at_dump + 3);
    assert_no_verdict(&c.data());
    // The container's mount tree is rebuilt: every mount point with its
    // type and per-mount flags; and its hostname.
    assert_eq!(container_mounts(pid), mounts_before);
    assert_eq!(uts_name(pid), hostname);
    // Its proc is of its PID namespace: the init is 1 there.
    let st = std::fs::read_to_string(format!("/proc/{pid}/root/proc/1/status"))
        .expect("the container's /proc reads");
    assert!(st.contains("NSpid:\t1"), "{st}");
    // Again with --leave-running: it keeps counting; the copy restores
    // once the original is gone.
    let o = c.checkpoint(&["--leave-running"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("dump.log")
    );
    assert_eq!(c.state(), Some(("running".to_string(), pid)));
    let n = read_count(&c.data()).unwrap();
    wait_count_above(&c.data(), n + 2);
    let _ = run(c.cmd().args(["delete", "-f"]).arg(&c.id));
    let o = c.restore();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("restore.log")
    );
    let n = read_count(&c.data()).unwrap();
    wait_count_above(&c.data(), n + 3);
    assert_no_verdict(&c.data());
}

/// The mounts of process `pid` as its mountinfo shows them: mount
/// point, filesystem type and per-mount options, sorted (the mounts
/// proc and mqueue are made last at restore, which mountinfo's order
/// shows).
fn container_mounts(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            // runc names masked files external mounts of "/dev/null" and
            // maps that to the host's at restore (as with CRIU): a bind
            // of another /dev/null, the type aside.
            let masked = ["/proc/keys", "/proc/timer_list"].contains(&f[4]);
            let fstype = if masked { "(null device)" } else { f[sep + 1] };
            // Known gap: crest creates sysfs in its own network namespace
            // (the host's superblock, read-write), not the container's.
            let sb_ro = f[sep + 1] != "sysfs" && f[sep + 3].split(',').any(|o| o == "ro");
            format!("{} {fstype} {} sb-ro={sb_ro}", f[4], f[5])
        })
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect()
}

/// The host name in the UTS namespace of `pid`.
fn uts_name(pid: i32) -> String {
    let o = run(Command::new("nsenter")
        .arg("-t")
        .arg(pid.to_string())
        .args(["-u", "hostname"]));
    assert!(o.status.success(), "nsenter: {}", text(&o));
    stdout(&o).trim().to_string()
}

/// The mount points of this process's mount namespace (crest's, at
/// restore), as a sorted list.
fn my_mounts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn runc_restore_failing_in_its_hook_leaves_nothing() {
    // The container's OCI prestart hook fails at restore (runc runs it on
    // crest's setup-namespaces notification, the restored tree built but
    // not running): the restore fails, and no process, mount or
    // namespace of it is left.
    let c = Runc::new("runc-hook");
    c.start();
    let o = c.checkpoint(&[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("dump.log")
    );
    let at_dump = read_count(&c.data()).unwrap();
    let cfg_path = c.bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]});
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let before = my_mounts();
    let o = c.restore();
    assert!(!o.status.success(), "the hook failed: {}", text(&o));
    let log = c.work_log("restore.log");
    assert!(log.contains("setup-namespaces"), "{log}");
    assert_eq!(my_mounts(), before, "no mount of the restore is left");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_count(&c.data()), Some(at_dump), "nothing runs");
    let busy: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| {
            std::fs::read_link(format!("/proc/{p}/cwd"))
                .is_ok_and(|d| d.starts_with(c.bundle.join("rootfs")))
                || std::fs::read_link(format!("/proc/{p}/root"))
                    .is_ok_and(|d| d.starts_with(&c.base))
        })
        .collect();
    assert!(busy.is_empty(), "processes of the failed restore: {busy:?}");
    // Without the failing hook the same image restores.
    cfg.as_object_mut().unwrap().remove("hooks");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let _ = run(c.cmd().args(["delete", "-f"]).arg(&c.id));
    let o = c.restore();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.work_log("restore.log")
    );
    wait_count_above(&c.data(), at_dump + 3);
    assert_no_verdict(&c.data());
}

/// A podman container (runc as its OCI runtime) of a busybox image
/// imported from a rootfs tarball; the counter writes into a host
/// directory bound at /data.
struct Podman {
    name: String,
    image: String,
    base: PathBuf,
    path: String,
}

impl Podman {
    fn new(tag: &str) -> Podman {
        start_reaper();
        let base = temp_dir(tag);
        let rootfs = base.join("rootfs");
        busybox_rootfs(&rootfs);
        let tar = base.join("rootfs.tar");
        let o = run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        assert!(o.status.success(), "tar: {}", text(&o));
        let image = format!("localhost/crest-test-busybox-{}-{tag}", std::process::id());
        let o = run(Command::new("podman").arg("import").arg(&tar).arg(&image));
        assert!(o.status.success(), "podman import: {}", text(&o));
        std::fs::create_dir_all(base.join("data")).unwrap();
        let path = shim_path(&base.join("shim"));
        Podman {
            name: format!("crest-{}-{tag}", std::process::id()),
            image,
            base,
            path,
        }
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("PATH", &self.path);
        c
    }

    fn start(&self) {
        self.start_with(&[], "")
    }

    /// `podman run` with these options added, the container running
    /// shell command `first` before counting.
    fn start_with(&self, extra: &[&str], first: &str) {
        let o = run(self.cmd().args(["run"]).args(extra).args([
            "-d",
            "--name",
            &self.name,
            "--runtime",
            RUNC,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--tmpfs",
            "/tmp",
            "-v",
            &format!("{}:/data", self.data().display()),
            &self.image,
            "sh",
            "-c",
            &format!("{first}{}", counter_script("/tmp", "/data")),
        ]));
        assert!(o.status.success(), "podman run: {}", text(&o));
        wait_count_above(&self.data(), 2);
    }

    /// `(running, pid)` from `podman inspect`.
    fn state(&self) -> Option<(bool, i32)> {
        let o = run(self.cmd().args([
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.Pid}}",
            &self.name,
        ]));
        if !o.status.success() {
            return None;
        }
        let s = stdout(&o);
        let mut it = s.split_whitespace();
        Some((it.next()? == "true", it.next()?.parse().ok()?))
    }

    fn in_ps(&self) -> bool {
        let o = run(self.cmd().args(["ps", "--format", "{{.Names}}"]));
        stdout(&o).lines().any(|l| l.trim() == self.name)
    }

    fn userdata_log(&self, name: &str) -> String {
        let o = run(self
            .cmd()
            .args(["inspect", "-f", "{{.StaticDir}}", &self.name]));
        let dir = stdout(&o).trim().to_string();
        std::fs::read_to_string(Path::new(&dir).join(name)).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = run(self.cmd().args(["rm", "-f", "-t", "0", &self.name]));
        let _ = run(self.cmd().args(["rmi", "-f", &self.image]));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

#[test]
fn podman_checkpoint_of_an_unsupported_mount_fails_cleanly() {
    // A ramfs (the container mounts it) crest cannot recreate: refused
    // by mount point and type.
    let c = Podman::new("podman-refused");
    c.start_with(
        &["--cap-add", "SYS_ADMIN"],
        "mkdir -p /scratch && mount -t ramfs ramfs /scratch && ",
    );
    let (running, pid) = c.state().unwrap();
    assert!(running);
    let o = run(c.cmd().args(["container", "checkpoint", &c.name]));
    assert!(!o.status.success(), "crest must refuse: {}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("criu failed: type DUMP") || err.contains("criu failed: type NOTIFY"),
        "{err}"
    );
    assert!(err.contains("dump.log"), "the error names the log: {err}");
    let log = c.userdata_log("dump.log");
    assert!(
        log.contains("mount /scratch") && log.contains("ramfs"),
        "crest's refusal names the mount and its type:\n{log}"
    );
    assert_eq!(c.state(), Some((true, pid)), "still running, same pid");
    assert!(c.in_ps(), "podman ps shows it running");
    assert_untraced(pid);
    let now = read_count(&c.data()).unwrap();
    wait_count_above(&c.data(), now + 3);
    assert_no_verdict(&c.data());
}

#[test]
fn podman_checkpoint_restore_export_import() {
    let c = Podman::new("podman-cycle");
    c.start();
    // Checkpoint and restore in place, with podman's statistics.
    let o = run(c
        .cmd()
        .args(["container", "checkpoint", "--print-stats", &c.name]));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.userdata_log("dump.log")
    );
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("podman checkpoint --print-stats: {stats}");
    // podman read crest's stats-dump back.
    let criu = &stats["container_statistics"][0]["criu_statistics"];
    assert!(criu["frozen_time"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(criu["pages_written"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(!c.in_ps(), "checkpointed: not running");
    let at_dump = read_count(&c.data()).unwrap();
    let o = run(c
        .cmd()
        .args(["container", "restore", "--print-stats", &c.name]));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.userdata_log("restore.log")
    );
    eprintln!("podman restore --print-stats: {}", stdout(&o));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let criu = &stats["container_statistics"][0]["criu_statistics"];
    assert!(criu["restore_time"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(c.in_ps(), "podman ps shows it running again");
    wait_count_above(&c.data(), at_dump + 3);
    assert_no_verdict(&c.data());
    // Export, remove the container, import it back.
    let tarball = c.base.join("checkpoint.tar.gz");
    let o = run(c.cmd().args([
        "container",
        "checkpoint",
        &format!("--export={}", tarball.display()),
        &c.name,
    ]));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        c.userdata_log("dump.log")
    );
    let at_dump = read_count(&c.data()).unwrap();
    let o = run(c.cmd().args(["rm", "-f", &c.name]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(c.state().is_none());
    let o = run(c.cmd().args([
        "container",
        "restore",
        &format!("--import={}", tarball.display()),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(c.in_ps(), "podman ps shows the imported container running");
    wait_count_above(&c.data(), at_dump + 3);
    assert_no_verdict(&c.data());
}
