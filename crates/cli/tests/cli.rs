//! The command line contract: refusals leave the process untouched,
//! images stream through pipes, corrupted or foreign images are refused
//! and leave nothing behind, `check` and `inspect` speak JSON.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// A dump that is refused names the obstacle and leaves the process
/// running undisturbed (it verifies itself afterwards).
fn refused(kind: &str, expect: &str) {
    let w = Workload::start("unsupported", &[kind]);
    let o = w.dump(&[]);
    assert!(
        !o.status.success(),
        "dump of a process with a {kind} must fail"
    );
    let err = stderr(&o);
    assert!(err.starts_with("crest: error: "), "one error line: {err}");
    assert!(
        err.contains(expect),
        "error names the obstacle ({expect}): {err}"
    );
    assert!(
        !w.image().exists(),
        "no image may be left under the output name"
    );
    assert!(alive(w.pid));
    let c = crest(&["check", "-p", &w.pid.to_string(), "--json"]);
    assert_eq!(c.status.code(), Some(1), "check agrees with dump");
    let v: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["obstacles"].to_string().contains(expect), "{v}");
    w.go();
    w.expect_pass();
}

#[test]
fn refuses_packet_socket() {
    refused(
        "packet",
        "AF_PACKET socket (a raw link-layer capture) is not supported",
    );
}

#[test]
fn refuses_raw_socket() {
    refused("raw", "AF_INET raw socket (protocol 1) is not supported");
}

#[test]
fn refuses_io_uring_with_the_reason() {
    refused(
        "uring",
        "io_uring instance (4 SQ / 8 CQ entries, 0 requests taken, 0 completions unread) \
         cannot be checkpointed: the kernel exposes neither a ring's setup flags",
    );
    refused(
        "uring",
        "the rings of an io_uring instance (refused with its descriptor)",
    );
}

#[test]
fn check_says_ok_for_a_plain_process() {
    let w = Workload::start("idle", &[]);
    let c = crest(&["check", "-p", &w.pid.to_string(), "--json"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let v: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    w.go();
    w.expect_pass();
}

#[test]
fn dump_to_pipe_and_restore_from_pipe() {
    let w = Workload::start("memory", &["32"]);
    let pid = w.pid.to_string();
    let mut dump = Command::new(crest_bin())
        .args(["dump", "-p", &pid, "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Reap the dumped process as soon as the dump kills it, as its parent
    // would: the restore waits for its pid.
    let pid_n = w.pid;
    let reaper = std::thread::spawn(move || reap(pid_n, std::time::Duration::from_secs(60)));
    let restore = Command::new(crest_bin())
        .args(["restore", "-i", "-", "-d"])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    assert!(restore.status.success(), "{}", stderr(&restore));
    assert_eq!(reaper.join().unwrap(), Some(Exit::Signal(libc::SIGKILL)));
    assert_eq!(stdout(&restore).trim(), pid);
    w.go();
    w.expect_pass();
}

#[test]
fn inspect_shows_the_image() {
    let w = Workload::start("files", &[]);
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = w.image();
    let i = crest(&["inspect", img.to_str().unwrap(), "--json"]);
    assert!(i.status.success(), "{}", stderr(&i));
    let v: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    let p = &v["checkpoint"]["processes"][0];
    assert_eq!(p["pid"], w.pid);
    assert!(p["mm"]["vmas"].as_array().unwrap().len() > 5);
    assert!(p["fds"].as_array().unwrap().iter().any(|f| f["fd"] == 4321));
    let h = crest(&["inspect", img.to_str().unwrap()]);
    let text = stdout(&h);
    assert!(
        text.contains(&format!("process {}", w.pid)) && text.contains("[stack]"),
        "{text}"
    );
    // A reader that stops early (`crest inspect IMAGE | head -1`): crest
    // ends quietly, by SIGPIPE like other filters, not with a panic.
    // A one-page pipe, so that the output does not fit in it.
    let (mut r, w_end) = std::io::pipe().unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe descriptor this test owns.
    unsafe { libc::fcntl(w_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let child = std::process::Command::new(crest_bin())
        .args(["inspect", img.to_str().unwrap(), "--json"])
        .stdout(w_end)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    use std::io::Read;
    r.read_exact(&mut first).unwrap();
    drop(r);
    let o = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
        "inspect into a closed pipe: {:?} {}",
        o.status,
        stderr(&o)
    );
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let mode = std::fs::metadata(&img).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o600,
        "images are private"
    );
    w.go();
    w.expect_pass();
}

/// Every kind of damage to a real image is refused with a clear error and
/// no process is left behind.
#[test]
fn corrupted_images_are_refused() {
    let w = Workload::start("idle", &[]);
    let pid = w.pid;
    w.dump_ok();
    let good = std::fs::read(w.image()).unwrap();
    let bad = w.dir.join("bad");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("truncated to half".into(), good[..good.len() / 2].to_vec()),
        (
            "truncated before the tail".into(),
            good[..good.len() - 8].to_vec(),
        ),
        ("wrong magic".into(), {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
        ("future version".into(), {
            let mut b = good.clone();
            b[8] = 99;
            b
        }),
    ];
    // Flip bytes spread over the whole image (metadata and pages).
    for k in 1..40 {
        let at = (good.len() / 40) * k + k;
        let mut b = good.clone();
        b[at] ^= 0x10;
        cases.push((format!("byte {at} flipped"), b));
    }
    for (what, bytes) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        let o = crest(&["restore", "-i", bad.to_str().unwrap(), "-d"]);
        assert!(!o.status.success(), "{what}: restore must fail");
        let err = stderr(&o);
        assert!(
            err.starts_with("crest: error: ") && err.lines().count() == 1,
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{what}: a process was left behind"
        );
    }
    // The good image still restores.
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// An image whose CPU had register state this one lacks is refused.
#[test]
fn foreign_cpu_image_is_refused() {
    let w = Workload::start("idle", &[]);
    w.dump_ok();
    let good = std::fs::read(w.image()).unwrap();
    let mut reader = crest_image::Reader::new(&good[..]).unwrap();
    let mut h = reader.header().clone();
    h.xsave_features |= 1 << 18; // AMX tile data
    let mut out = crest_image::Writer::new(Vec::new(), &h).unwrap();
    while let Some(r) = reader.next_record().unwrap() {
        out.write_record(r.kind, r.flags, r.payload).unwrap();
    }
    let bad = w.dir.join("amx");
    std::fs::write(&bad, out.finish().unwrap()).unwrap();
    let o = crest(&["restore", "-i", bad.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("AMX TILEDATA"), "{}", stderr(&o));
    w.restore_ok();
    w.go();
    w.expect_pass();
}

#[test]
fn pid_in_use_is_refused() {
    let w = Workload::start("idle", &[]);
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = crest(&["restore", "-i", w.image().to_str().unwrap(), "-d"]);
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(
        err.contains(&format!("pid {} is in use", w.pid)) && err.contains("crest-workload"),
        "{err}"
    );
    w.go();
    w.expect_pass();
}

#[test]
fn nonexistent_pid() {
    let o = crest(&["dump", "-p", "999999", "-o", "/tmp/crest-never"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no process with pid 999999"),
        "{}",
        stderr(&o)
    );
}

/// The library API, without the binary: dump into memory, restore from it.
#[test]
fn library_round_trip() {
    let w = Workload::start("memory", &["8"]);
    let mut image = Vec::new();
    crest::dump(
        w.pid,
        &mut image,
        &crest::DumpOptions::default(),
        &mut crest::dump::Flush,
        &mut |_, _| {},
    )
    .unwrap();
    // crest, the tracer, collected the exit already: the pid is free.
    reap(w.pid, std::time::Duration::from_millis(100));
    assert!(!std::path::Path::new(&format!("/proc/{}", w.pid)).exists());
    let ins = crest::codec::inspect::inspect(&image[..]).unwrap();
    assert_eq!(ins.checkpoint.processes[0].pid, w.pid);
    let r = crest::restore(&image[..], &mut |_| {}).unwrap();
    assert_eq!(r.pid, w.pid);
    // This test is the restored process's parent.
    w.go();
    w.expect_pass();
}

/// `check` says yes exactly when `dump` succeeds, on every workload.
#[test]
fn check_agrees_with_dump_on_every_workload() {
    let cases: &[(&str, &[&str])] = &[
        ("idle", &[]),
        ("regs", &["sleep"]),
        ("sleep", &[]),
        ("read", &[]),
        ("memory", &["16"]),
        ("mm", &["x"]),
        ("signals", &[]),
        ("timers", &[]),
        ("alarm", &[]),
        ("files", &[]),
        ("attrs", &[]),
        ("threads", &["4"]),
        ("tree", &[]),
        ("shared-fd", &[]),
        ("pipes", &[]),
        ("unsupported", &["packet"]),
        ("unsupported", &["raw"]),
        ("unsupported", &["uring"]),
    ];
    for (scenario, args) in cases {
        let w = Workload::start(scenario, args);
        let c = crest(&["check", "-p", &w.pid.to_string(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&c.stdout)
            .unwrap_or_else(|_| panic!("{scenario}: check output: {}", stderr(&c)));
        let d = w.dump(&["--leave-running"]);
        assert_eq!(
            c.status.success(),
            d.status.success(),
            "{scenario} {args:?}: check said {v} but dump said: {}",
            stderr(&d)
        );
        assert_eq!(v["ok"], c.status.success());
        w.go();
        w.expect_pass();
    }
}

/// --compress makes compressible memory smaller and restores the same.
#[test]
fn compressed_images() {
    let w = Workload::start("files", &[]);
    let plain = w.dir.join("plain");
    let o = crest(&[
        "dump",
        "-p",
        &w.pid.to_string(),
        "-o",
        plain.to_str().unwrap(),
        "--leave-running",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = w.dump(&["--compress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        std::fs::metadata(&plain).unwrap().len(),
        std::fs::metadata(w.image()).unwrap().len(),
    );
    assert!(b < a, "compressed image {b} bytes, plain {a}");
    let tree = descendants(w.pid);
    assert!(tree.is_empty());
    reap(w.pid, std::time::Duration::from_secs(10));
    w.restore_ok();
    w.go();
    w.expect_pass();
}
