//! The cgroup freezer before seizing: trees alone in a cgroup the test
//! creates (v2 in the unified hierarchy, or the v1 freezer) are frozen at
//! once, seized, thawed into their ptrace stops, dumped and restored.
//! `CREST_CGROUP_FREEZE=1` makes crest fail when it cannot freeze, so a
//! passing dump went through the freezer.  A vfork parent waiting for
//! its child is seized after the thaw (seizing the child while frozen
//! would leave the parent unable to stop: a deadlock).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A cgroup this test creates and removes once empty.
struct Cg(PathBuf);

impl Cg {
    fn new(hierarchy: &str, tag: &str) -> Cg {
        let d = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(format!("crest-test-freeze-{}-{tag}", std::process::id()));
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", d.display()));
        Cg(d)
    }

    fn state(&self) -> String {
        let f = if self.0.join("cgroup.freeze").exists() {
            "cgroup.freeze"
        } else {
            "freezer.state"
        };
        std::fs::read_to_string(self.0.join(f))
            .unwrap()
            .trim()
            .into()
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        for _ in 0..500 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `n` shell processes that loop forking `sleep` until DIR/go, then each
/// writes DIR/ok-PID; their parent waits for them all and writes the
/// verdict.
const MANY: &str = r#"
d="$1"; n="$2"
i=0
while [ $i -lt $n ]; do
    sh -c 'c=0; while [ ! -e "$1/go" ]; do c=$((c+1)); sleep 0.1; done; [ $c -gt 0 ] && touch "$1/ok-$$"' sh "$d" &
    i=$((i+1))
done
touch "$d/ready"
wait
k=$(ls "$d" | grep -c '^ok-')
if [ "$k" = "$n" ]; then echo "PASS $k" > "$d/result"; else echo "FAIL $k of $n" > "$d/result"; fi
"#;

struct Tree {
    dir: PathBuf,
    pid: i32,
}

impl Tree {
    /// `sh -c SCRIPT` in cgroup `cg` (its own), its arguments `args`.
    fn start(tag: &str, cg: &Path, script: &str, args: &[&str]) -> Tree {
        init();
        let dir = temp_dir(tag);
        let join = format!(
            "echo $$ > {}/cgroup.procs && exec sh -c \"$0\" sh \"$@\"",
            cg.display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &join, script, dir.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only close_range (async-signal-safe) between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        std::mem::forget(child);
        let start = Instant::now();
        while !dir.join("ready").exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "not ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        Tree { dir, pid }
    }

    fn dump(&self, env: &[(&str, &str)]) -> std::process::Output {
        let img = self.dir.join("img");
        let o = Command::new(crest_bin())
            .args(["dump", "-p", &self.pid.to_string(), "-o"])
            .arg(&img)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        if o.status.success() {
            reap_children();
        }
        o
    }

    fn restore(&mut self) {
        let img = self.dir.join("img");
        let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
        assert!(o.status.success(), "restore failed: {}", stderr(&o));
        self.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    }

    fn verdict(&self) -> String {
        std::fs::write(self.dir.join("go"), "").unwrap();
        let res = self.dir.join("result");
        let start = Instant::now();
        while !res.exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let text = std::fs::read_to_string(&res).unwrap_or_default();
        reap(self.pid, Duration::from_secs(10));
        text
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for p in descendants(self.pid) {
            // SAFETY: plain kill of processes this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        reap(self.pid, Duration::from_secs(5));
        reap_children();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reaps every child of the test (the dumped tree's processes come to it,
/// the subreaper) until it has none, so their pids are free for restore.
fn reap_children() {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        // SAFETY: plain waitpid of any child, not blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        if r < 0 {
            return;
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn many_frozen(hierarchy: &str, n: &str) {
    let _g = serial();
    let cg = Cg::new(hierarchy, &format!("many-{n}"));
    let mut t = Tree::start(&format!("freeze-{n}"), &cg.0, MANY, &[n]);
    let o = t.dump(&[("CREST_CGROUP_FREEZE", "1")]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    assert_eq!(
        cg.state(),
        if hierarchy == "unified" {
            "0"
        } else {
            "THAWED"
        }
    );
    t.restore();
    let v = t.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// 200 processes forking all the time, in a v2 cgroup of their own.
#[test]
fn a_big_tree_is_frozen_in_its_v2_cgroup() {
    many_frozen("unified", "200");
}

/// 20 in a v1 freezer cgroup.
#[test]
fn a_tree_is_frozen_in_its_v1_freezer_cgroup() {
    many_frozen("freezer", "20");
}

/// A cgroup that holds a process outside the tree is not frozen: with
/// the freezer required the dump fails and the tree runs on.
#[test]
fn a_shared_cgroup_is_not_frozen() {
    let _g = serial();
    let cg = Cg::new("unified", "shared");
    let t = Tree::start("freeze-shared", &cg.0, MANY, &["3"]);
    let mut other = Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {}/cgroup.procs && exec sleep 60", cg.0.display()),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let o = t.dump(&[("CREST_CGROUP_FREEZE", "1")]);
    assert!(!o.status.success(), "the dump froze a shared cgroup");
    assert!(
        stderr(&o).contains("no cgroup of its own"),
        "{}",
        stderr(&o)
    );
    assert_eq!(cg.state(), "0");
    assert!(alive(t.pid), "the tree was harmed");
    let _ = other.kill();
    let _ = other.wait();
    let v = t.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// A C program: vforks a child that creates DIR/ready and waits for
/// DIR/exec before exec'ing `sleep 0.3`; the parent then checks the
/// child's exit and writes DIR/result.
const VFORK_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char ready[4096], ex[4096], res[4096];
    snprintf(ready, sizeof ready, "%s/ready", argv[1]);
    snprintf(ex, sizeof ex, "%s/exec", argv[1]);
    snprintf(res, sizeof res, "%s/result", argv[1]);
    pid_t c = vfork();
    if (c == 0) {
        struct timespec ts = {0, 10000000};
        close(open(ready, O_CREAT | O_WRONLY, 0644));
        while (access(ex, F_OK) != 0)
            nanosleep(&ts, 0);
        execl("/bin/sleep", "sleep", "0.3", (char *)0);
        _exit(127);
    }
    int st = 0;
    pid_t w = waitpid(c, &st, 0);
    FILE *f = fopen(res, "w");
    if (w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        fprintf(f, "PASS\n");
    else
        fprintf(f, "FAIL child %d status %#x\n", (int)w, st);
    fclose(f);
    return 0;
}
"#;

#[test]
fn a_vfork_parent_in_a_frozen_cgroup_does_not_deadlock() {
    let _g = serial();
    let build = temp_dir("vfork-build");
    std::fs::write(build.join("vf.c"), VFORK_C).unwrap();
    let st = Command::new("cc")
        .arg("-O")
        .arg("-o")
        .arg(build.join("vf"))
        .arg(build.join("vf.c"))
        .status()
        .unwrap();
    assert!(st.success(), "cc");
    let cg = Cg::new("unified", "vfork");
    let script = format!("exec {} \"$@\"", build.join("vf").display());
    let mut t = Tree::start("freeze-vfork", &cg.0, &script, &[]);
    // The child waits for DIR/exec: written a second into the dump,
    // which finishes only once the parent could stop.
    let ex = t.dir.join("exec");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        std::fs::write(ex, "").unwrap();
    });
    let started = Instant::now();
    let o = t.dump(&[("CREST_CGROUP_FREEZE", "1")]);
    writer.join().unwrap();
    assert!(o.status.success(), "dump: {}", stderr(&o));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(cg.state(), "0");
    t.restore();
    let v = t.verdict();
    assert!(v.starts_with("PASS"), "{v}");
    let _ = std::fs::remove_dir_all(&build);
}
