//! Containers' mount trees beyond binds and tmpfs: mount propagation
//! (peer groups and slaves inside the namespace), a root that is an
//! overlayfs mounted in the container's namespace, and sysfs showing the
//! devices of the container's own network namespace.  Each container is
//! a busybox shell made with `unshare` that checks itself after restore;
//! each has a sabotaged twin whose verdict must be FAIL.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every script starts with this: `fail` writes the verdict.
const PRELUDE: &str = r#"
fail() { echo "FAIL $*" > /data/result; exit 1; }
"#;

struct Container {
    dir: PathBuf,
    /// The container's init (the unshare's child), in crest's namespace.
    pid: i32,
    unshare: std::process::Child,
}

impl Container {
    /// `root` mounts the container's root on DIR/root (the script is
    /// DIR/root/w.sh once mounted) and anything else before the pivot;
    /// `script` runs as the container's PID 1 and writes /data/ready.
    fn start(tag: &str, ns: &[&str], root: impl FnOnce(&Path) -> String) -> Self {
        init();
        let dir = temp_dir(tag);
        let data = dir.join("data");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let mount_root = root(&dir);
        let (r, d) = (dir.join("root"), data.display());
        let r = r.display();
        let setup = format!(
            "set -e; {mount_root}; \
             mount --bind {d} {r}/data; \
             mount -t proc proc {r}/proc; \
             cd {r}; mkdir -p old; pivot_root . old; \
             exec /bin/busybox sh -c 'umount -l /old && rmdir /old && \
             exec /bin/sh /w.sh </w.sh >/data/log 2>&1'"
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--pid", "--fork", "--propagation", "private"])
            .args(ns)
            .args(["sh", "-c", &setup])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
        let mut pid = 0;
        while pid == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the container did not start"
            );
            let u = unshare.id();
            let kids =
                std::fs::read_to_string(format!("/proc/{u}/task/{u}/children")).unwrap_or_default();
            pid = kids
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(10));
        }
        Container { dir, pid, unshare }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while !self.data().join("ready").exists() {
            let log = std::fs::read_to_string(self.data().join("log")).unwrap_or_default();
            let res = std::fs::read_to_string(self.data().join("result")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(20) && res.is_empty(),
                "the container did not get ready: {res} {log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Dumps into DIR/img; the container is gone after.
    fn dump(&mut self) {
        self.wait_ready();
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

    /// Runs `args` in the container's mount namespace (only).
    fn in_mnt(&self, args: &[&str]) {
        let p = self.pid.to_string();
        let o = Command::new("nsenter")
            .args(["-t", &p, "-m", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: plain kill of the container this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        reap(self.pid, Duration::from_secs(5));
        let _ = Command::new("umount")
            .args(["-l", self.dir.join("merged").to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A busybox root on DIR/root (a bind of itself) with `script`.
fn bind_root(dir: &Path, script: &str) -> String {
    let r = dir.join("root");
    busybox_rootfs(&r);
    std::fs::write(r.join("w.sh"), format!("{PRELUDE}{script}")).unwrap();
    format!("mount --bind {0} {0}", r.display())
}

// ---- mount propagation ----

/// /pa and /pb: peers (a shared tmpfs and a bind of it); /sl: a slave of
/// them; /pr: a private tmpfs.  Before the dump and after restore the
/// shell checks the relations in mountinfo; after restore also that
/// mounts propagate: from either peer to the other and the slave, never
/// from the slave back.
const PROPAGATION: &str = r#"
opt() { awk -v m="$1" '$5 == m { s = ""; for (i = 7; $i != "-"; i++) s = s " " $i; print s }' /proc/self/mountinfo; }
num() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1://p"; }
relations() {
    a="$(opt /pa)"; b="$(opt /pb)"; s="$(opt /sl)"; p="$(opt /pr)"
    ga="$(num shared "$a")"
    [ -n "$ga" ] || fail "/pa is not shared: '$a'"
    [ "$(num shared "$b")" = "$ga" ] || fail "/pa and /pb are not peers: '$a' '$b'"
    [ "$(num master "$s")" = "$ga" ] || fail "/sl is not a slave of /pa's group: '$s' '$a'"
    [ -z "$(num shared "$s")" ] || fail "/sl is shared: '$s'"
    [ -z "$(echo $p)" ] || fail "/pr is not private: '$p'"
    [ "$(cat /pb/f)" = peer ] || fail "content of /pb/f"
}
echo peer > /pa/f
relations
touch /data/ready
while [ ! -e /data/go ]; do sleep 0.05; done
relations
has() { grep -q " $1 " /proc/mounts; }
mkdir /pa/m1 /pa/m2 /pa/m3
mount -t tmpfs m1 /pa/m1 || fail "mount on /pa/m1"
has /pb/m1 || fail "a mount on /pa does not reach its peer /pb"
has /sl/m1 || fail "a mount on /pa does not reach the slave /sl"
mount -t tmpfs m2 /pb/m2 || fail "mount on /pb/m2"
has /pa/m2 || fail "a mount on /pb does not reach its peer /pa"
has /sl/m2 || fail "a mount on /pb does not reach the slave /sl"
mount -t tmpfs m3 /sl/m3 || fail "mount on /sl/m3"
has /pa/m3 && fail "a mount on the slave /sl reaches its master /pa"
has /pb/m3 && fail "a mount on the slave /sl reaches /pb"
mkdir /pr/q
echo PASS > /data/result
"#;

fn propagation_container(tag: &str) -> Container {
    Container::start(tag, &[], |dir| {
        let root = bind_root(dir, PROPAGATION);
        let r = dir.join("root");
        for d in ["pa", "pb", "sl", "pr"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let r = r.display();
        format!(
            "{root}; mount -t tmpfs -o size=1m crest-peer {r}/pa; mount --make-shared {r}/pa; \
                 mount --bind {r}/pa {r}/pb; mount --bind {r}/pa {r}/sl; \
                 mount --make-slave {r}/sl; mount -t tmpfs -o size=1m crest-priv {r}/pr"
        )
    })
}

#[test]
fn peer_groups_and_slaves_are_recreated() {
    let _g = serial();
    let mut c = propagation_container("prop");
    c.dump();
    c.restore(&[]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// Sabotage: /pb made private after restore; the shell must see it.
#[test]
fn propagation_checker_detects_a_lost_peer() {
    let _g = serial();
    let mut c = propagation_container("prop-neg");
    c.dump();
    c.restore(&[]);
    c.in_mnt(&["mount", "--make-private", "/pb"]);
    let v = c.verdict();
    assert!(v.starts_with("FAIL") && v.contains("peers"), "{v}");
}

// ---- an overlayfs root ----

/// The root is an overlay of DIR/lower (busybox) with DIR/upper: before
/// the dump the shell changes a lower file (copied up), deletes one (a
/// whiteout), makes one and keeps it open; after restore it checks all
/// of them through the overlay.
const OVERLAY: &str = r#"
grep -q '^[^ ]* / overlay ' /proc/mounts || fail "the root is not an overlay: $(cat /proc/mounts)"
echo changed > /lowfile
rm /gone
echo new > /newfile
exec 3< /newfile
touch /data/ready
while [ ! -e /data/go ]; do sleep 0.05; done
grep -q '^[^ ]* / overlay ' /proc/mounts || fail "the restored root is not an overlay: $(cat /proc/mounts)"
[ "$(cat /lowfile)" = changed ] || fail "content of /lowfile: $(cat /lowfile)"
[ -e /gone ] && fail "/gone is back"
[ "$(cat /newfile)" = new ] || fail "content of /newfile: $(cat /newfile)"
read -r line <&3
[ "$line" = new ] || fail "the open /newfile reads '$line'"
[ "$(cat /keep)" = lower ] || fail "content of /keep: $(cat /keep)"
echo PASS > /data/result
"#;

/// DIR/lower, DIR/upper, DIR/work; the overlay's mount options.
fn layers(dir: &Path) -> String {
    let lower = dir.join("lower");
    busybox_rootfs(&lower);
    std::fs::write(lower.join("w.sh"), format!("{PRELUDE}{OVERLAY}")).unwrap();
    for (f, t) in [("lowfile", "low"), ("gone", "x"), ("keep", "lower")] {
        std::fs::write(lower.join(f), t).unwrap();
    }
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    )
}

fn overlay_container(tag: &str) -> Container {
    Container::start(tag, &[], |dir| {
        let o = layers(dir);
        format!(
            "mount -t overlay crest-ovl -o {o} {}",
            dir.join("root").display()
        )
    })
}

/// The overlay is mounted again by restore from its recorded layers.
#[test]
fn overlay_root_is_recreated() {
    let _g = serial();
    let mut c = overlay_container("ovl");
    c.dump();
    assert_eq!(
        std::fs::read_to_string(c.dir.join("lower/lowfile")).unwrap(),
        "low",
        "the lower layer is untouched"
    );
    c.restore(&[]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// `--root DIR`: the root is a bind of an overlay of the same layers the
/// test mounted itself.
#[test]
fn overlay_root_is_replaced_with_root() {
    let _g = serial();
    let mut c = overlay_container("ovl-root");
    c.dump();
    let merged = c.dir.join("merged");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        c.dir.join("lower").display(),
        c.dir.join("upper").display(),
        c.dir.join("work").display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "crest-ovl2", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success());
    c.restore(&["--root", merged.to_str().unwrap()]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// Sabotage: the upper layer's copy of /lowfile changed behind the
/// container's back.
#[test]
fn overlay_checker_detects_a_changed_upper_file() {
    let _g = serial();
    let mut c = overlay_container("ovl-neg");
    c.dump();
    std::fs::write(c.dir.join("upper/lowfile"), "other\n").unwrap();
    c.restore(&[]);
    let v = c.verdict();
    assert!(v.starts_with("FAIL") && v.contains("lowfile"), "{v}");
}

// ---- sysfs of the container's network namespace ----

/// /sys is a sysfs mounted in the container's network namespace, which
/// has lo and one end of a veth: the shell lists /sys/class/net before
/// the dump and checks it lists the same (not crest's devices) after.
const SYSFS: &str = r#"
while [ ! -e /data/netup ]; do sleep 0.05; done
inner="$(cat /data/inner)"; outer="$(cat /data/outer)"
devs="$(ls /sys/class/net | tr '\n' ' ')"
[ "$devs" = "$inner lo " ] || [ "$devs" = "lo $inner " ] || fail "devices before: $devs"
grep -q ' /sys sysfs ' /proc/mounts || fail "no sysfs"
touch /data/ready
while [ ! -e /data/go ]; do sleep 0.05; done
now="$(ls /sys/class/net | tr '\n' ' ')"
[ "$now" = "$devs" ] || fail "devices of /sys/class/net: '$now', were '$devs'"
[ -e "/sys/class/net/$outer" ] && fail "crest's device $outer is in the container's /sys"
[ "$(cat /sys/class/net/$inner/mtu)" = 1400 ] || fail "mtu of $inner: $(cat /sys/class/net/$inner/mtu)"
echo PASS > /data/result
"#;

fn sysfs_container(tag: &str) -> (Container, String) {
    let c = Container::start(tag, &["--net"], |dir| {
        let root = bind_root(dir, SYSFS);
        format!(
            "{root}; mount -t sysfs crest-sys {}/sys",
            dir.join("root").display()
        )
    });
    static K: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = K.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = std::process::id() % 100_000;
    let (inner, outer) = (format!("cfs{n}{k}i"), format!("cfs{n}{k}o"));
    let p = c.pid.to_string();
    let _ = Command::new("ip").args(["link", "del", &outer]).output();
    let o = Command::new("ip")
        .args([
            "link", "add", &inner, "netns", &p, "mtu", "1400", "type", "veth",
        ])
        .args(["peer", "name", &outer, "mtu", "1400"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ip link add: {}", stderr(&o));
    std::fs::write(c.data().join("inner"), &inner).unwrap();
    std::fs::write(c.data().join("outer"), &outer).unwrap();
    std::fs::write(c.data().join("netup"), "").unwrap();
    (c, format!("{inner}={outer}"))
}

/// After the dump: until the veth went with the dumped namespace (its
/// cleanup is asynchronous), so restore can make it again.
fn veth_gone(veth: &str) {
    let outer = veth.split('=').nth(1).unwrap();
    let start = Instant::now();
    while std::path::Path::new("/sys/class/net").join(outer).exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{outer} stays");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sysfs_shows_the_restored_network_namespace() {
    let _g = serial();
    let (mut c, veth) = sysfs_container("sysfs");
    c.dump();
    veth_gone(&veth);
    c.restore(&["--veth", &veth]);
    let v = c.verdict();
    assert!(v.starts_with("PASS"), "{v}");
}

/// Sabotage: a sysfs mounted over /sys from crest's network namespace
/// (what restore used to do) lists crest's devices.
#[test]
fn sysfs_checker_detects_the_hosts_devices() {
    let _g = serial();
    let (mut c, veth) = sysfs_container("sysfs-neg");
    c.dump();
    veth_gone(&veth);
    c.restore(&["--veth", &veth]);
    c.in_mnt(&["mount", "-t", "sysfs", "crest-host-sys", "/sys"]);
    let v = c.verdict();
    assert!(v.starts_with("FAIL") && v.contains("devices"), "{v}");
}
