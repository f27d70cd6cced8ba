//! Test harness: runs self-verifying workloads, checkpoints and restores
//! them through the `crest` binary and collects their verdicts.
//!
//! The test process makes itself a child subreaper, so every workload
//! (started by `crest run`, restored by `crest restore -d`) becomes its
//! child and is reaped at once: a killed workload's PID is free again
//! immediately, which restore needs.  Every process a test started is
//! killed and reaped when its `Workload` is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn crest_bin() -> &'static str {
    env!("CARGO_BIN_EXE_crest")
}

/// The workload binary, built by the crest-workloads package next to crest.
pub fn workload_bin() -> PathBuf {
    let p = Path::new(crest_bin()).with_file_name("crest-workload");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo test --workspace)",
        p.display()
    );
    p
}

static SUBREAPER: Once = Once::new();

pub fn init() {
    SUBREAPER.call_once(|| {
        crest_sys::process::set_child_subreaper().expect("PR_SET_CHILD_SUBREAPER");
    });
}

pub fn crest(args: &[&str]) -> Output {
    Command::new(crest_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running crest")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// How a reaped process ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Waits for our child `pid` to end, with a timeout.
pub fn reap(pid: i32, timeout: Duration) -> Option<Exit> {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: plain waitpid on a pid we own.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            if libc::WIFEXITED(st) {
                return Some(Exit::Code(libc::WEXITSTATUS(st)));
            }
            if libc::WIFSIGNALED(st) {
                return Some(Exit::Signal(libc::WTERMSIG(st)));
            }
            continue;
        }
        // ECHILD while the process still exists: it is not ours yet (a
        // tracer is still handing it over); keep trying.
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if (r < 0 && gone) || start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still has /proc/PID; look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(") ").next().unwrap_or("").starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    wait_for_while(path, timeout, || true)
}

/// Waits for `path` to appear while `ok()` holds.
fn wait_for_while(path: &Path, timeout: Duration, ok: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        if !ok() {
            return path.exists();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Every descendant process of `pid` (not `pid` itself).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            for c in std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(c) = c.parse::<i32>() {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// A workload process and its directory.
pub struct Workload {
    pub pid: i32,
    pub dir: PathBuf,
    pub scenario: String,
    done: bool,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("crest-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Workload {
    /// Starts `crest-workload SCENARIO DIR ARGS…` with `crest run` and
    /// waits until it is ready.
    pub fn start(scenario: &str, args: &[&str]) -> Workload {
        Self::start_env(scenario, args, &[])
    }

    pub fn start_env(scenario: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let wl = workload_bin();
        Self::start_program(scenario, wl.to_str().unwrap(), &[scenario], args, env)
    }

    /// A Python workload: `script` gets the directory as `sys.argv[1]` and
    /// follows the same protocol (ready, go, result).
    /// A workload the test started itself: root `pid`, directory `dir`.
    pub fn adopt(pid: i32, dir: PathBuf, scenario: &str) -> Workload {
        Workload {
            pid,
            dir,
            scenario: scenario.into(),
            done: false,
        }
    }

    pub fn start_python(name: &str, script: &str) -> Workload {
        Self::start_program(name, "python3", &["-c", script], &[], &[])
    }

    fn start_program(
        scenario: &str,
        program: &str,
        before_dir: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Workload {
        init();
        let dir = temp_dir(scenario);
        let mut cmd = Command::new(crest_bin());
        cmd.arg("run")
            .arg("--log")
            .arg(dir.join("log"))
            .arg("--")
            .arg(program)
            .args(before_dir)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("crest run");
        assert!(out.status.success(), "crest run failed: {}", stderr(&out));
        let pid: i32 = stdout(&out).trim().parse().expect("crest run prints a pid");
        let w = Workload {
            pid,
            dir,
            scenario: scenario.into(),
            done: false,
        };
        if !wait_for_while(&w.dir.join("ready"), Duration::from_secs(60), || alive(pid)) {
            panic!("workload {scenario} did not get ready; log:\n{}", w.log());
        }
        let ready = std::fs::read_to_string(w.dir.join("ready")).unwrap();
        assert_eq!(
            ready.trim().parse::<i32>().ok(),
            Some(pid),
            "ready file pid"
        );
        w
    }

    /// A workload whose checkpointed root is not the process `crest run`
    /// started (a launcher that hands over, say, a container's init):
    /// `ready` holds the root's pid.
    pub fn start_handover(scenario: &str, args: &[&str]) -> Workload {
        init();
        let dir = temp_dir(scenario);
        let wl = workload_bin();
        let out = Command::new(crest_bin())
            .arg("run")
            .arg("--log")
            .arg(dir.join("log"))
            .arg("--")
            .arg(wl)
            .arg(scenario)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("crest run");
        assert!(out.status.success(), "crest run failed: {}", stderr(&out));
        let launcher: i32 = stdout(&out).trim().parse().expect("crest run prints a pid");
        let mut w = Workload {
            pid: launcher,
            dir,
            scenario: scenario.into(),
            done: false,
        };
        if !wait_for_while(&w.dir.join("ready"), Duration::from_secs(60), || {
            alive(launcher)
        }) {
            panic!("workload {scenario} did not get ready; log:\n{}", w.log());
        }
        reap(launcher, Duration::from_secs(10));
        let ready = std::fs::read_to_string(w.dir.join("ready")).unwrap();
        w.pid = ready.trim().parse().expect("ready holds a pid");
        w
    }

    /// A workload started by a wrapper (`unshare … crest-workload …`):
    /// the checkpointed root is the wrapper's only child, found once
    /// `DIR/<marker>` exists.
    pub fn start_wrapped(
        scenario: &str,
        wrapper: &[&str],
        args: &[&str],
        marker: &str,
    ) -> Workload {
        init();
        let dir = temp_dir(scenario);
        let wl = workload_bin();
        let out = Command::new(crest_bin())
            .arg("run")
            .arg("--log")
            .arg(dir.join("log"))
            .arg("--")
            .args(wrapper)
            .arg(wl)
            .arg(scenario)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("crest run");
        assert!(out.status.success(), "crest run failed: {}", stderr(&out));
        let wrapper_pid: i32 = stdout(&out).trim().parse().expect("crest run prints a pid");
        let mut w = Workload {
            pid: wrapper_pid,
            dir,
            scenario: scenario.into(),
            done: false,
        };
        if !wait_for_while(&w.dir.join(marker), Duration::from_secs(60), || {
            alive(wrapper_pid)
        }) {
            panic!("workload {scenario} did not get ready; log:\n{}", w.log());
        }
        let kids =
            std::fs::read_to_string(format!("/proc/{wrapper_pid}/task/{wrapper_pid}/children"))
                .unwrap_or_default();
        w.pid = kids
            .split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .expect("the wrapper has a child");
        w
    }

    /// `crest restore -i DIR/img -d EXTRA…`, expects success; the root's
    /// new pid (which may differ from the old one) becomes the workload's.
    pub fn restore_moved(&mut self, extra: &[&str]) {
        let img = self.image();
        let mut args = vec!["restore", "-i", img.to_str().unwrap(), "-d"];
        args.extend_from_slice(extra);
        let o = crest(&args);
        assert!(
            o.status.success(),
            "restore of {} failed: {}",
            self.scenario,
            stderr(&o)
        );
        self.pid = stdout(&o).trim().parse().expect("restore prints a pid");
        assert!(alive(self.pid), "restored process is not running");
    }

    pub fn image(&self) -> PathBuf {
        self.dir.join("img")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `crest dump -p PID -o DIR/img EXTRA…`
    pub fn dump(&self, extra: &[&str]) -> Output {
        let img = self.image();
        let mut args = vec!["dump", "-p"];
        let pid = self.pid.to_string();
        args.push(&pid);
        args.push("-o");
        args.push(img.to_str().unwrap());
        args.extend_from_slice(extra);
        crest(&args)
    }

    /// Dumps, expects success, and reaps the killed process.
    pub fn dump_ok(&self) {
        let tree = descendants(self.pid);
        let o = self.dump(&[]);
        assert!(
            o.status.success(),
            "dump of {} failed: {}",
            self.scenario,
            stderr(&o)
        );
        // Descendants first: orphans come to the subreaper (this process).
        for &pid in tree.iter().rev() {
            reap(pid, Duration::from_secs(10));
            assert!(
                !alive(pid),
                "process {pid} of the dumped tree is still running"
            );
        }
        let e = reap(self.pid, Duration::from_secs(10));
        assert_eq!(
            e,
            Some(Exit::Signal(libc::SIGKILL)),
            "the dumped process must be gone"
        );
    }

    /// `crest restore -i DIR/img -d`, expects success and the same pid.
    pub fn restore_ok(&self) {
        let img = self.image();
        let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
        assert!(
            o.status.success(),
            "restore of {} failed: {}",
            self.scenario,
            stderr(&o)
        );
        assert_eq!(
            stdout(&o).trim().parse::<i32>().ok(),
            Some(self.pid),
            "restored pid"
        );
        assert!(alive(self.pid), "restored process is not running");
    }

    /// Tells the workload to verify itself.
    pub fn go(&self) {
        let fifo = self.dir.join("fifo");
        std::fs::write(self.dir.join("go"), b"go\n").unwrap();
        if fifo.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            {
                let _ = f.write_all(b"go\n");
            }
        }
    }

    /// Waits for the verdict and the exit; panics with details unless PASS.
    pub fn expect_pass(mut self) {
        let res = self.dir.join("result");
        let ok = wait_for(&res, Duration::from_secs(120));
        let exit = reap(self.pid, Duration::from_secs(30));
        self.done = exit.is_some();
        let text = std::fs::read_to_string(&res).unwrap_or_default();
        assert!(
            ok && text.starts_with("PASS"),
            "workload {} did not pass (exit {exit:?}):\n{text}\nlog:\n{}",
            self.scenario,
            self.log()
        );
        assert_eq!(exit, Some(Exit::Code(0)), "workload exit status");
    }

    /// Two cycles in a row (a restored tree can be checkpointed again),
    /// then verify.
    pub fn cycle_twice(self) {
        for _ in 0..2 {
            self.dump_ok();
            self.restore_ok();
        }
        self.go();
        self.expect_pass();
    }

    /// `dump --leave-running`, then `inspect` must mention every `want`;
    /// the tree runs on and verifies itself.
    pub fn leave_running_and_inspect(self, wants: &[&str]) {
        let o = self.dump(&["--leave-running"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(alive(self.pid));
        let o = crest(&["inspect", self.image().to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        for want in wants {
            assert!(text.contains(want), "inspect lacks {want:?}:\n{text}");
        }
        self.go();
        self.expect_pass();
    }

    /// The full cycle: dump (process killed), restore (same pid), verify.
    pub fn cycle(self) {
        self.dump_ok();
        self.restore_ok();
        self.go();
        self.expect_pass();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: plain kill of a pid this test started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            reap(self.pid, Duration::from_secs(5));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A root filesystem of busybox and its applet links in `root`, with the
/// directories containers mount on.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
}

/// Tests of one file that reap any child or look at every process of a
/// namespace take this first: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reaps every child that has exited, without blocking.
pub fn reap_all() {
    loop {
        // SAFETY: plain waitpid of any child, not blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        if r <= 0 {
            break;
        }
    }
}
