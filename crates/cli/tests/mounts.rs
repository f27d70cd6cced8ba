//! Mount namespaces recreated whole: a container made with `unshare`
//! over a busybox root (a bind mount, pivoted into), with a tmpfs full of
//! files, a bind mount from outside with a file open through it, proc,
//! devpts, mqueue and a read-only bind.  Its shell keeps state in memory
//! (a counter, expected times, an open descriptor) and checks its mounts
//! and files itself after restore.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The unshare options of the containers with a private mount tree.
const PRIVATE: [&str; 5] = ["--mount", "--pid", "--fork", "--propagation", "private"];

/// A root filesystem of busybox and its applet links.
fn busybox_rootfs(root: &Path) {
    for d in [
        "bin",
        "tmp",
        "proc",
        "dev/pts",
        "dev/mqueue",
        "sys",
        "etc",
        "data",
    ] {
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

/// What the container's shell does: sets up its state, waits for /data/go
/// counting, then checks everything and writes /data/result.
const SCRIPT: &str = r#"
fail() { echo "FAIL $*" > /data/result; exit 1; }
echo hello > /tmp/a
chown 12:34 /tmp/a
chmod 640 /tmp/a
touch -d '2020-01-02 03:04:05' /tmp/a
mkdir -p /tmp/d/e
ln -s ../a /tmp/d/l
echo x | dd of=/tmp/sparse bs=1 seek=1048576 2>/dev/null
meta="$(stat -c '%a %u %g %Y' /tmp/a)"
exec 3< /data/in
read -r first <&3
[ "$first" = line1 ] || fail "first line: $first"
n=0
touch /data/ready
while [ ! -e /data/go ]; do n=$((n+1)); sleep 0.05; done
[ "$(cat /tmp/a)" = hello ] || fail "content of /tmp/a: $(cat /tmp/a)"
[ "$(stat -c '%a %u %g %Y' /tmp/a)" = "$meta" ] || fail "meta $(stat -c '%a %u %g %Y' /tmp/a) want $meta"
[ "$(readlink /tmp/d/l)" = ../a ] || fail "symlink"
[ "$(cat /tmp/d/l)" = hello ] || fail "through symlink"
[ -d /tmp/d/e ] || fail "dir"
[ "$(stat -c %s /tmp/sparse)" = 1048578 ] || fail "sparse size $(stat -c %s /tmp/sparse)"
[ "$(stat -c %b /tmp/sparse)" -lt 64 ] || fail "sparse blocks $(stat -c %b /tmp/sparse)"
read -r second <&3
[ "$second" = line2 ] || fail "bind fd read: $second"
[ $$ = 1 ] || fail "pid $$"
grep -q ' /tmp tmpfs ' /proc/mounts || fail "no tmpfs: $(cat /proc/mounts)"
grep -q ' /proc proc ' /proc/mounts || fail "no proc"
grep -q ' /dev/pts devpts ' /proc/mounts || fail "no devpts"
grep -q ' /dev/mqueue mqueue ' /proc/mounts || fail "no mqueue"
grep ' /etc ' /proc/mounts | grep -q ' ro,' || fail "etc not ro: $(grep ' /etc ' /proc/mounts)"
touch /etc/x 2>/dev/null && fail "etc writable"
[ -e /old ] && fail "old root visible"
[ "$(ls /proc | grep -c '^[0-9]')" -lt 6 ] || fail "proc of another pid namespace"
[ $n -gt 0 ] || fail "counter $n"
echo "PASS $n" > /data/result
"#;

struct Container {
    dir: PathBuf,
    /// The container's init (the unshare's child), in crest's namespace.
    pid: i32,
    unshare: std::process::Child,
}

impl Container {
    fn start(tag: &str) -> Container {
        init();
        let dir = temp_dir(tag);
        let root = dir.join("root");
        let data = dir.join("data");
        busybox_rootfs(&root);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("in"), "line1\nline2\n").unwrap();
        std::fs::write(root.join("w.sh"), SCRIPT).unwrap();
        let (r, d) = (root.display(), data.display());
        let setup = format!(
            "set -e; mount --bind {r} {r}; \
             mount -t tmpfs -o size=4m,mode=755 crest-test-mount-tmp {r}/tmp; \
             mount --bind {d} {r}/data; \
             mount --bind {r}/etc {r}/etc; mount -o remount,bind,ro {r}/etc; \
             mount -t proc proc {r}/proc; \
             mount -t devpts -o newinstance,ptmxmode=0666 devpts {r}/dev/pts; \
             mount -t mqueue mqueue {r}/dev/mqueue; \
             cd {r}; mkdir -p old; pivot_root . old; \
             exec /bin/busybox sh -c 'umount -l /old && rmdir /old && exec /bin/sh /w.sh </data/in >/data/log 2>&1'"
        );
        Container::spawn(dir, &PRIVATE, &setup)
    }

    /// Runs `setup` (which ends in the container's program) under
    /// `unshare OPTS` (new namespaces; the init is the unshare's child);
    /// waits for DIR/data/ready, failing on an early DIR/data/result.
    fn spawn(dir: PathBuf, opts: &[&str], setup: &str) -> Container {
        let data = dir.join("data");
        let mut cmd = Command::new("unshare");
        cmd.args(opts)
            .args(["sh", "-c", setup])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only close_range (async-signal-safe) between fork and
        // exec: the container holds nothing of the test harness's.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let unshare = cmd.spawn().unwrap();
        let start = Instant::now();
        while !data.join("ready").exists() {
            let res = std::fs::read_to_string(data.join("result")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(20) && res.is_empty(),
                "the container did not start: {res}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let u = unshare.id();
        let kids = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children")).unwrap();
        let pid = kids.split_whitespace().next().unwrap().parse().unwrap();
        Container { dir, pid, unshare }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Dumps into DIR/img; the container is gone after.
    fn dump(&mut self) {
        let img = self.dir.join("img");
        let o = crest(&[
            "dump",
            "-p",
            &self.pid.to_string(),
            "-o",
            img.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "dump failed: {}", stderr(&o));
        let _ = self.unshare.wait();
    }

    fn restore(&mut self, extra: &[&str]) {
        let img = self.dir.join("img");
        let mut args = vec!["restore", "-i", img.to_str().unwrap(), "-d"];
        args.extend_from_slice(extra);
        let o = crest(&args);
        assert!(o.status.success(), "restore failed: {}", stderr(&o));
        self.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    }

    /// Tells the container to check itself; its verdict.
    fn verdict(&self) -> String {
        std::fs::write(self.data().join("go"), "go").unwrap();
        let res = self.data().join("result");
        let start = Instant::now();
        while !res.exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let text = std::fs::read_to_string(&res).unwrap_or_default();
        reap(self.pid, Duration::from_secs(10));
        text
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: plain kill of the container this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        reap(self.pid, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Dumped, restored into a fresh mount (and PID) namespace, checked.
#[test]
fn container_mount_tree_is_recreated() {
    let _g = serial();
    let mut c = Container::start("mount-tree");
    c.dump();
    c.restore(&[]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// `crest dump -o - | crest restore -i -`: the image streamed.
#[test]
fn container_mount_tree_through_a_pipe() {
    let _g = serial();
    let mut c = Container::start("mount-pipe");
    let pipe = format!(
        "{0} dump -p {1} -o - | {0} restore -i - -d",
        crest_bin(),
        c.pid
    );
    let o = Command::new("sh").args(["-c", &pipe]).output().unwrap();
    assert!(o.status.success(), "dump | restore: {}", stderr(&o));
    let _ = c.unshare.wait();
    c.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// The checker sees a tmpfs file changed after restore (from outside,
/// through the restored tree): the container must report it.
#[test]
fn mount_checker_detects_a_changed_tmpfs_file() {
    let _g = serial();
    let mut c = Container::start("mount-neg");
    c.dump();
    c.restore(&[]);
    std::fs::write(format!("/proc/{}/root/tmp/a", c.pid), "changed\n").unwrap();
    let v = c.verdict();
    assert!(v.starts_with("FAIL") && v.contains("content"), "{v}");
}

/// `--root DIR` relocates the container's root: restored over a copy.
#[test]
fn container_root_is_relocated() {
    let _g = serial();
    let mut c = Container::start("mount-root");
    c.dump();
    let moved = c.dir.join("moved");
    let o = Command::new("cp")
        .args([
            "-a",
            c.dir.join("root").to_str().unwrap(),
            moved.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::remove_dir_all(c.dir.join("root")).unwrap();
    let etc = format!("/etc={}", moved.join("etc").display());
    c.restore(&["--root", moved.to_str().unwrap(), "--ext-mount", &etc]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// A program of the container with a pty pair of the container's own
/// devpts instance (opened through /dev/ptmx -> pts/ptmx): after restore
/// the slave keeps its name, its node in the container's /dev/pts, its
/// line settings and the bytes in flight both ways.
const PTY_SCRIPT: &str = r#"
import os, termios, time
def fail(m):
    open('/data/result', 'w').write('FAIL ' + m + '\n')
    raise SystemExit(1)
m, s = os.openpty()
name = os.ttyname(s)
a = termios.tcgetattr(s)
a[3] &= ~termios.ECHO
termios.tcsetattr(s, termios.TCSANOW, a)
os.write(s, b'from-slave\n')
if os.fstat(s).st_dev != os.stat('/dev/pts').st_dev:
    fail('the pair is not on the container devpts before')
open('/data/ready', 'w').write(name)
while not os.path.exists('/data/go'):
    time.sleep(0.05)
if os.ttyname(s) != name:
    fail('name %s, was %s' % (os.ttyname(s), name))
if os.fstat(s).st_dev != os.stat('/dev/pts').st_dev:
    fail('the slave is not on the container devpts')
if os.stat(name).st_rdev != os.fstat(s).st_rdev:
    fail('%s is not the slave' % name)
if termios.tcgetattr(s)[3] & termios.ECHO:
    fail('echo is on again')
got = os.read(m, 100)
if got != b'from-slave\r\n':
    fail('unread output %r' % got)
os.write(m, b'to-slave\n')
got = os.read(s, 100)
if got != b'to-slave\n':
    fail('input %r' % got)
open('/data/result', 'w').write('PASS ' + name + '\n')
"#;

/// A container with its own devpts instance whose program holds a pty
/// pair; the host's /usr is bound read-only for python3.
fn start_pty(tag: &str) -> Container {
    init();
    let dir = temp_dir(tag);
    let root = dir.join("root");
    let data = dir.join("data");
    busybox_rootfs(&root);
    std::fs::create_dir_all(root.join("usr")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "").unwrap();
    for (link, to) in [
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    std::fs::write(root.join("p.py"), PTY_SCRIPT).unwrap();
    let (r, d) = (root.display(), data.display());
    let setup = format!(
        "set -e; mount --bind {r} {r}; mount --bind {d} {r}/data; \
         mount --bind /usr {r}/usr; mount -o remount,bind,ro {r}/usr; \
         mount -t proc proc {r}/proc; \
         mount -t devpts -o newinstance,ptmxmode=0666 devpts {r}/dev/pts; \
         cd {r}; mkdir -p old; pivot_root . old; \
         exec /bin/busybox sh -c 'umount -l /old && rmdir /old && exec /usr/bin/python3 /p.py </data/in >/data/log 2>&1'"
    );
    Container::spawn(dir, &PRIVATE, &setup)
}

/// The container's own ptys: dumped, restored twice into the container's
/// new devpts instance, checked by their holder.
#[test]
fn container_ptys_on_its_own_devpts() {
    let _g = serial();
    let mut c = start_pty("mount-pty");
    let name = std::fs::read_to_string(c.data().join("ready")).unwrap();
    assert_eq!(name, "/dev/pts/0", "the container's first pty");
    for _ in 0..2 {
        c.dump();
        c.restore(&[]);
    }
    let v = c.verdict();
    assert!(v.starts_with("PASS /dev/pts/0"), "{v}");
}

/// The pty checker is not blind: echo turned on again from outside after
/// the restore is reported.
#[test]
fn container_pty_checker_detects_changed_line_settings() {
    let _g = serial();
    let mut c = start_pty("mount-pty-neg");
    c.dump();
    c.restore(&[]);
    let node = format!("/proc/{}/root/dev/pts/0", c.pid);
    let o = Command::new("stty")
        .args(["-F", &node, "echo"])
        .output()
        .unwrap();
    assert!(o.status.success(), "stty: {}", stderr(&o));
    let v = c.verdict();
    assert!(v.starts_with("FAIL echo"), "{v}");
}

/// The checker of a mount that is a slave of a peer group outside the
/// container: after restore it must still be one (`master:` in
/// mountinfo), and a tmpfs the test mounts below the group's member
/// outside must appear inside.
const SLAVE_SCRIPT: &str = r#"
fail() { echo "FAIL $*" > /data/result; exit 1; }
grep ' /shared ' /proc/self/mountinfo | grep -q ' master:' || fail "not a slave before: $(grep ' /shared ' /proc/self/mountinfo)"
touch /data/ready
while [ ! -e /data/go ]; do sleep 0.05; done
grep ' /shared ' /proc/self/mountinfo | grep -q ' master:' || fail "not a slave after: $(grep ' /shared ' /proc/self/mountinfo)"
i=0
while ! grep -q ' /shared/sub ' /proc/self/mountinfo; do
  i=$((i+1)); [ $i -lt 100 ] || fail "the mount made outside did not propagate: $(grep shared /proc/self/mountinfo)"
  sleep 0.05
done
[ "$(cat /shared/sub/f)" = outside ] || fail "content of /shared/sub/f"
echo PASS > /data/result
"#;

/// A container made with `unshare --propagation slave` whose /shared is
/// a bind of a shared tmpfs of the test's namespace: a slave of its peer
/// group.  Returns the container and the host mount point.
fn start_slave(tag: &str) -> (Container, PathBuf) {
    start_slave_in(tag, false)
}

/// The same container, in a user namespace of its own (root mapped to
/// root) when `userns`.
fn start_slave_in(tag: &str, userns: bool) -> (Container, PathBuf) {
    init();
    let dir = temp_dir(tag);
    let root = dir.join("root");
    let data = dir.join("data");
    let shared = dir.join("shared");
    busybox_rootfs(&root);
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(data.join("in"), "").unwrap();
    std::fs::write(root.join("w.sh"), SLAVE_SCRIPT).unwrap();
    let s = shared.display();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mount -t tmpfs crest-test-shared {s} && mount --make-shared {s}"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (r, d) = (root.display(), data.display());
    let setup = format!(
        "set -e; mount --bind {r} {r}; mount --make-private {r}; \
         mount --bind {d} {r}/data; mount --make-private {r}/data; \
         mount --bind {s} {r}/shared; \
         mount -t proc proc {r}/proc; \
         cd {r}; mkdir -p old; pivot_root . old; \
         exec /bin/busybox sh -c 'umount -l /old && rmdir /old && exec /bin/sh /w.sh </data/in >/data/log 2>&1'"
    );
    let mut opts = vec!["--mount", "--pid", "--fork", "--propagation", "slave"];
    if userns {
        opts.splice(0..0, ["--user", "--map-user=0", "--map-group=0"]);
    }
    (Container::spawn(dir, &opts, &setup), shared)
}

/// After restore: a tmpfs mounted at SHARED/sub outside, with a file.
fn mount_below(shared: &Path) {
    let sub = shared.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "crest-test-sub"])
        .arg(&sub)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(sub.join("f"), "outside").unwrap();
}

fn unmount_all(shared: &Path) {
    let _ = Command::new("umount").arg("-R").arg(shared).output();
}

/// Unmounts the test's shared tmpfs however the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_all(&self.0);
    }
}

#[test]
fn slave_of_a_peer_group_outside_the_namespace() {
    let _g = serial();
    let (mut c, shared) = start_slave("mount-slave");
    let _u = Unmount(shared.clone());
    c.dump();
    c.restore(&[]);
    c.dump();
    c.restore(&[]);
    mount_below(&shared);
    let v = c.verdict();
    unmount_all(&shared);
    assert!(v.starts_with("PASS"), "{v}");
}

/// A container in a user namespace of its own may not join a peer group
/// of crest's namespace: its slave mount is restored private, and the
/// restore says so, naming it (never silently).
#[test]
fn slave_of_an_outside_group_in_a_user_namespace_is_restored_private_with_a_warning() {
    let _g = serial();
    let (mut c, shared) = start_slave_in("mount-slave-userns", true);
    let _u = Unmount(shared.clone());
    c.dump();
    let img = c.dir.join("img");
    let o = crest(&["restore", "-i", img.to_str().unwrap(), "-d"]);
    let err = stderr(&o);
    assert!(o.status.success(), "restore failed: {err}");
    c.pid = stdout(&o).trim().parse().expect("restore prints a pid");
    assert!(
        err.contains("warning: mounts /shared") && err.contains("restored private"),
        "no warning naming /shared: {err}"
    );
    mount_below(&shared);
    let v = c.verdict();
    unmount_all(&shared);
    // Private: the mount made outside does not reach the container.
    assert!(v.starts_with("FAIL"), "{v}");
}

/// The checker is not blind: the restored mount made private from outside
/// before the event no longer sees it.
#[test]
fn slave_checker_detects_a_private_mount() {
    let _g = serial();
    let (mut c, shared) = start_slave("mount-slave-sabotage");
    let _u = Unmount(shared.clone());
    c.dump();
    c.restore(&[]);
    let o = Command::new("nsenter")
        .args([
            "-t",
            &c.pid.to_string(),
            "-m",
            "mount",
            "--make-private",
            "/shared",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    mount_below(&shared);
    let v = c.verdict();
    unmount_all(&shared);
    assert!(v.starts_with("FAIL"), "{v}");
}
