//! User namespaces (issue 12): containers in user namespaces of their
//! own are dumped and restored, and every process inside checks, after
//! restore, that its ids, supplementary groups, capability sets, PIDs,
//! uid/gid maps and setgroups are those it had, that it shares (or not)
//! its user namespace with the same processes, and that a file owned by a
//! mapped id still is, and is writable by it.
//!
//! - root: a container with a multi-line-free but non-identity map
//!   (0..65536 onto host 100000..), setgroups allowed, a process running
//!   as uid 5, one with a reduced bounding set, and a nested user
//!   namespace (uid 1000 inside = the container's root = host 100000).
//! - rootless: `nobody` makes a container with `unshare --user
//!   --map-root-user --pid --fork --mount-proc`, dumps and restores it
//!   itself, without root.
//!
//! (What a non-root user can and cannot do: `crest::ns::user` and
//! docs/containers.md.)

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Each process of the container runs this: `check.sh NAME DIR`.
const CHECK: &str = r#"#!/bin/sh
n=$1; D=$2
state() {
  grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NSpid):' /proc/$$/status
  echo "uid_map: $(tr -s ' ' < /proc/$$/uid_map)"
  echo "gid_map: $(tr -s ' ' < /proc/$$/gid_map)"
  echo "setgroups: $(cat /proc/$$/setgroups)"
  if [ -n "$OWNED" ]; then echo "owned: $(stat -c %u:%g "$OWNED")"; fi
  mine=$(readlink /proc/$$/ns/user)
  for p in $SAME; do
    [ "$(readlink /proc/$p/ns/user)" = "$mine" ] && echo "$p: same" || echo "$p: other"
  done
}
# The processes of SAME are named by PID, which is only theirs while they
# are alive, and means what the check expects only once each is in its
# user namespace: they are looked at once ready (the nested one has
# unshared by then), and each stays alive until the looker's verdict
# (SEENBY), after it looked again.  Else a checker may be gone, its PID
# reaped by the looker's shell, and given to the looker's next command:
# restore leaves a PID namespace handing out its lowest free PIDs (the
# kernel moves its cursor for no PID chosen with set_tid), so a PID
# freed after restore comes back at once.
for x in $WAITFOR; do
  while [ ! -e $D/ready.$x ]; do sleep 0.05; done
done
before=$(state)
if [ -n "$OWNED" ] && [ -n "$WRITE" ]; then echo before >> "$OWNED" || exit 3; fi
echo "$before" > $D/state.$n
: > $D/ready.$n
# A process in a nested user namespace that shares its parent's PID
# namespace may not have children when dumped (crest::ns::user): it
# waits on a FIFO without forking.
if [ -n "$NOFORK" ]; then read _ < $D/fifo; fi
while [ ! -e $D/go ]; do sleep 0.05; done
after=$(state)
ok=yes
if [ -n "$OWNED" ] && [ -n "$WRITE" ]; then echo after >> "$OWNED" || ok=no; fi
# The verdict appears whole (renamed into place): the test and the
# waiting checkers take the file's existence for its being written.
if [ "$before" = "$after" ] && [ $ok = yes ]; then
  echo PASS > $D/result.$n.tmp
else
  printf 'FAIL (write %s)\nbefore:\n%s\nafter:\n%s\n' "$ok" "$before" "$after" > $D/result.$n.tmp
fi
mv $D/result.$n.tmp $D/result.$n
# A PID namespace's init outlives the checkers it waits for: its exit
# would kill them before they wrote their verdicts.
for x in $WAITFOR $SEENBY; do
  while [ ! -e $D/result.$x ]; do sleep 0.05; done
done
"#;

/// The container's init when root made it (as host uid 100000; its maps
/// are written from outside by the test).
const INIT: &str = r#"#!/bin/sh
D=$1; S=$D/check.sh
while [ -z "$(cat /proc/self/uid_map)" ]; do sleep 0.01; done
# It started before uid 0 was mapped: again, as the namespace's root.
[ -n "$MAPPED" ] || MAPPED=1 exec sh "$0" "$@"
touch $D/owned && chown 5:7 $D/owned || exit 2
OWNED=$D/owned WRITE=1 SEENBY=init setpriv --reuid=5 --regid=7 --groups=7,9 sh $S uid5 $D &
a=$!
SEENBY=init setpriv --bounding-set=-sys_admin,-net_raw sh $S bounded $D &
b=$!
unshare --user --map-user=1000 --map-group=1000 env NOFORK=1 SEENBY=init sh $S nested $D &
c=$!
OWNED=$D/owned SAME="$a $b $c" WAITFOR="uid5 bounded nested" exec sh $S init $D
"#;

fn write_script(dir: &Path, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn wait_files(dir: &Path, prefix: &str, names: &[&str], while_alive: i32) {
    let start = Instant::now();
    for n in names {
        let f = dir.join(format!("{prefix}.{n}"));
        while !f.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60) && alive(while_alive),
                "{} did not appear",
                f.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The only child of `pid`, once it has one.
fn child_of(pid: i32) -> i32 {
    let start = Instant::now();
    loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            return k.parse().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no child of {pid}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `crest ARGS` as `nobody` (or as root).
fn run_crest(nobody: bool, args: &[&str]) -> std::process::Output {
    let mut c = if nobody {
        let mut c = Command::new("setpriv");
        c.args(NOBODY).arg(crest_bin());
        c
    } else {
        Command::new(crest_bin())
    };
    c.args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Waits for every result and says which did not pass.
fn verdicts(dir: &Path, names: &[&str]) -> Vec<String> {
    let start = Instant::now();
    let mut bad = Vec::new();
    for n in names {
        let f = dir.join(format!("result.{n}"));
        while !f.exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&f).unwrap_or_else(|_| "no result".into());
        if !text.starts_with("PASS") {
            bad.push(format!("{n}: {text}"));
        }
    }
    bad
}

struct Container {
    dir: std::path::PathBuf,
    /// The container's init (host PID).
    init: i32,
    /// unshare, its parent at first (outside the container).
    wrapper: i32,
    nobody: bool,
}

impl Container {
    fn dump_and_restore(&mut self) {
        let img = self.dir.join("img");
        let pid = self.init.to_string();
        let tree = descendants(self.init);
        let o = run_crest(
            self.nobody,
            &["dump", "-p", &pid, "-o", img.to_str().unwrap()],
        );
        assert!(o.status.success(), "dump: {}", stderr(&o));
        for &p in tree.iter().rev() {
            reap(p, Duration::from_secs(10));
        }
        reap(self.init, Duration::from_secs(10));
        reap(self.wrapper, Duration::from_secs(10));
        let o = run_crest(self.nobody, &["restore", "-i", img.to_str().unwrap(), "-d"]);
        assert!(o.status.success(), "restore: {}", stderr(&o));
        self.init = stdout(&o).trim().parse().unwrap();
        assert!(alive(self.init));
    }

    fn go(&self) {
        std::fs::write(self.dir.join("go"), b"go").unwrap();
        // Read and write: the open never blocks nor fails for want of a
        // reader; held a moment so that every waiting reader sees it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("fifo"))
        {
            use std::io::Write;
            let _ = f.write_all(b"go\n");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn finish(&self) {
        reap(self.init, Duration::from_secs(20));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.wrapper > 0 {
            // SAFETY: plain kill of a pid this test started.
            unsafe { libc::kill(self.wrapper, libc::SIGKILL) };
            reap(self.wrapper, Duration::from_secs(5));
        }
        if self.init <= 0 {
            return;
        }
        for p in descendants(self.init).into_iter().rev() {
            // SAFETY: plain kill of a pid this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.init, libc::SIGKILL) };
        reap(self.init, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ROOT_NAMES: [&str; 4] = ["init", "uid5", "bounded", "nested"];

/// Root's container: its maps written by the test, four processes in
/// two user namespaces ready.
fn root_container() -> Container {
    let dir = temp_dir("userns-root");
    write_script(&dir, "check.sh", CHECK);
    write_script(&dir, "init.sh", INIT);
    let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    // The container's root (host 100000) writes there.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = dir.to_str().unwrap();
    let o = Command::new(crest_bin())
        .args(["run", "--log", &format!("{d}/log"), "--"])
        .args([
            "setpriv",
            "--reuid=100000",
            "--regid=100000",
            "--clear-groups",
        ])
        .args(["unshare", "--user", "--pid", "--fork", "--mount-proc"])
        .args(["sh", &format!("{d}/init.sh"), d])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let wrapper: i32 = stdout(&o).trim().parse().unwrap();
    let init = child_of(wrapper);
    std::fs::write(format!("/proc/{init}/uid_map"), "0 100000 65536\n").unwrap();
    std::fs::write(format!("/proc/{init}/gid_map"), "0 100000 65536\n").unwrap();
    wait_files(&dir, "ready", &ROOT_NAMES, init);
    Container {
        dir,
        init,
        wrapper,
        nobody: false,
    }
}

#[test]
fn root_container_with_nested_user_namespace() {
    let _g = serial();
    init();
    let mut c = root_container();
    c.dump_and_restore();
    // Seen from outside: the restored maps, in host terms.
    let map = std::fs::read_to_string(format!("/proc/{}/uid_map", c.init)).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    c.dump_and_restore();
    c.go();
    let bad = verdicts(&c.dir, &ROOT_NAMES);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    c.finish();
}

/// The checker is not blind: the file the container owns is given to
/// another mapped id from outside after restore; the owner's check fails.
#[test]
fn userns_checker_detects_a_wrong_file_owner() {
    let _g = serial();
    init();
    let mut c = root_container();
    c.dump_and_restore();
    let owned = c.dir.join("owned");
    std::os::unix::fs::chown(&owned, Some(100006), Some(100007)).unwrap();
    c.go();
    let bad = verdicts(&c.dir, &ROOT_NAMES);
    assert!(
        bad.iter()
            .any(|b| b.starts_with("uid5:") && b.contains("owned: 6:7")),
        "{bad:?}"
    );
    c.finish();
}

/// A rootless container made by `nobody`, dumped and restored by
/// `nobody`: its PIDs inside, maps, setgroups "deny" and root's full
/// capabilities inside are back.
#[test]
fn rootless_container_dumped_and_restored_by_nobody() {
    let _g = serial();
    init();
    let dir = temp_dir("userns-rootless");
    write_script(&dir, "check.sh", CHECK);
    write_script(
        &dir,
        "init.sh",
        "#!/bin/sh\nD=$1\nSEENBY=init sh $D/check.sh child $D &\nSAME=$! WAITFOR=child exec sh $D/check.sh init $D\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let d = dir.to_str().unwrap();
    let o = Command::new("setpriv")
        .args(NOBODY)
        .arg(crest_bin())
        .args(["run", "--log", &format!("{d}/log"), "--"])
        .args(["unshare", "--user", "--map-root-user", "--pid", "--fork"])
        .args(["--mount-proc", "sh", &format!("{d}/init.sh"), d])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let wrapper: i32 = stdout(&o).trim().parse().unwrap();
    let init = child_of(wrapper);
    wait_files(&dir, "ready", &["init", "child"], init);
    let mut c = Container {
        dir,
        init,
        wrapper,
        nobody: true,
    };
    let o = run_crest(true, &["check", "-p", &init.to_string()]);
    assert!(o.status.success(), "check: {}{}", stdout(&o), stderr(&o));
    c.dump_and_restore();
    let st = std::fs::read_to_string(format!("/proc/{}/status", c.init)).unwrap();
    assert!(
        st.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{st}"
    );
    c.go();
    let bad = verdicts(&c.dir, &["init", "child"]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    c.finish();
}

/// As `nobody`, a tree in a user namespace but in crest's PID namespace
/// cannot keep its PIDs: restore says so and what to do.
#[test]
fn rootless_tree_without_pid_namespace_needs_root_to_restore() {
    let _g = serial();
    init();
    let dir = temp_dir("userns-nopidns");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let d = dir.to_str().unwrap();
    let o = Command::new("setpriv")
        .args(NOBODY)
        .arg(crest_bin())
        .args([
            "run",
            "--",
            "unshare",
            "--user",
            "--map-root-user",
            "sleep",
            "100",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    let mut c = Container {
        dir: dir.clone(),
        init: pid,
        wrapper: pid,
        nobody: true,
    };
    // unshare execs sleep in place.
    let start = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    let img = format!("{d}/img");
    let o = run_crest(true, &["dump", "-p", &pid.to_string(), "-o", &img]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    reap(pid, Duration::from_secs(10));
    let o = run_crest(true, &["restore", "-i", &img, "-d"]);
    let text = stderr(&o);
    assert!(!o.status.success(), "restored as nobody: {text}");
    assert!(
        text.contains("CAP_CHECKPOINT_RESTORE") && text.contains(&pid.to_string()),
        "{text}"
    );
    assert!(!alive(pid));
    c.init = 0;
    c.wrapper = 0;
}

/// A process in a user namespace of its own but in a PID namespace its
/// user namespace does not own, with a child: restore could not give the
/// child its PID from inside; `check` and `dump` say so by name and the
/// tree runs on.
#[test]
fn unshared_user_namespace_with_children_in_the_parents_pidns_is_refused() {
    let _g = serial();
    init();
    let o = Command::new(crest_bin())
        .args(["run", "--", "unshare", "--user", "--map-root-user"])
        .args(["sh", "-c", "sleep 100 & wait"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pid: i32 = stdout(&o).trim().parse().unwrap();
    let c = Container {
        dir: temp_dir("userns-refused"),
        init: pid,
        wrapper: 0,
        nobody: false,
    };
    let start = Instant::now();
    while descendants(pid).is_empty()
        || std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .unwrap_or_default()
            .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    let img = c.dir.join("img");
    for args in [
        vec!["check", "-p"],
        vec!["dump", "-o", img.to_str().unwrap(), "-p"],
    ] {
        let mut a = args.clone();
        let p = pid.to_string();
        a.push(&p);
        let o = run_crest(false, &a);
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!o.status.success(), "{args:?} accepted it: {text}");
        assert!(
            text.contains(&format!("pid {pid}")) && text.contains("children or threads"),
            "{text}"
        );
        assert!(alive(pid), "the refused tree is gone");
    }
}
