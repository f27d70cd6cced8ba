//! Incremental checkpoints (`dump --digests`, `dump --parent PREV`,
//! `restore` reading the parent chain).  The `mutator` workload never
//! stops rewriting its memory, and also unmaps, maps, remaps and
//! discards ranges between the dumps: a restored process with one page
//! from the wrong dump fails its own checks (every page is a function of
//! the iteration it was written in, recorded in tables that are
//! themselves in memory).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: &str = "64";
/// How long the mutator runs between dumps.
const RUN: Duration = Duration::from_millis(300);

/// `crest dump --leave-running --json -q -p PID -o IMG EXTRA…`; returns
/// the report.
fn dump_to(w: &Workload, img: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let pid = w.pid.to_string();
    let mut args = vec![
        "dump",
        "--leave-running",
        "--json",
        "-q",
        "-p",
        &pid,
        "-o",
        img.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let o = std::process::Command::new(crest_bin())
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "dump {extra:?} failed: {}", stderr(&o));
    let r: Value = serde_json::from_str(stdout(&o).trim()).expect("dump --json prints JSON");
    eprintln!("dump {extra:?} took {:?}: {r}", t.elapsed());
    assert!(alive(w.pid), "the process must keep running");
    r
}

fn num(r: &Value, key: &str) -> u64 {
    r[key].as_u64().unwrap_or_else(|| panic!("no {key} in {r}"))
}

fn kill_and_reap(pid: i32) {
    // SAFETY: plain kill of a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert_eq!(
        reap(pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
}

fn restore(img: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "-d", "-i", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    crest(&args)
}

fn restore_ok(w: &Workload, img: &Path, extra: &[&str]) {
    let o = restore(img, extra);
    assert!(o.status.success(), "restore failed: {}", stderr(&o));
    assert_eq!(stdout(&o).trim().parse::<i32>().ok(), Some(w.pid));
}

/// A full dump with digests, then `n - 1` incremental ones, each against
/// the one before; returns the images, oldest first.
fn chain(w: &Workload, n: usize, env: &[(&str, &str)]) -> Vec<PathBuf> {
    let mut imgs: Vec<PathBuf> = Vec::new();
    for i in 0..n {
        std::thread::sleep(RUN);
        let img = w.dir.join(format!("img{i}"));
        let r = match imgs.last() {
            None => dump_to(w, &img, &["--digests"], &[]),
            Some(prev) => {
                let r = dump_to(w, &img, &["--parent", prev.to_str().unwrap()], env);
                assert!(num(&r, "kept_pages") > 0, "nothing kept: {r}");
                assert!(r["parent"].is_string(), "no parent reported: {r}");
                r
            }
        };
        assert!(num(&r, "pages_written") > 0, "{r}");
        imgs.push(img);
    }
    imgs
}

/// Waits for the verdict of a workload (whose `expect_pass` consumes it).
fn verdict(w: &Workload) -> String {
    let res = w.dir.join("result");
    let t = Instant::now();
    while !res.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    reap(w.pid, Duration::from_secs(30));
    std::fs::read_to_string(&res).unwrap_or_default()
}

/// Two images: the incremental one restores to a process whose every
/// page is right.
#[test]
fn incremental_image_restores_every_byte() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs = chain(&w, 2, &[]);
    let full = std::fs::metadata(&imgs[0]).unwrap().len();
    let incr = std::fs::metadata(&imgs[1]).unwrap().len();
    eprintln!("full image {full} bytes, incremental {incr} bytes");
    assert!(incr < full, "the incremental image is not smaller");
    kill_and_reap(w.pid);
    restore_ok(&w, &imgs[1], &[]);
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
}

/// An incremental image restored lazily: the pages kept from the parent
/// go to the lazy phase like the image's own, so every page is right.
#[test]
fn incremental_image_restores_lazily() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs = chain(&w, 2, &[]);
    kill_and_reap(w.pid);
    restore_ok(&w, &imgs[1], &["--lazy"]);
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
}

/// A chain of three (the last one's parent is itself incremental), the
/// images moved to another directory and found with --parent-dir; the
/// original process, dumped three times, is unharmed.
#[test]
fn chain_of_three() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs = chain(&w, 3, &[]);
    let moved = w.dir.join("moved");
    std::fs::create_dir(&moved).unwrap();
    for i in &imgs {
        std::fs::rename(i, moved.join(i.file_name().unwrap())).unwrap();
    }
    // The original first: it checks itself after go, then exits.
    w.go();
    let text = verdict(&w);
    assert!(
        text.starts_with("PASS"),
        "the original after the dumps:\n{text}\n{}",
        w.log()
    );
    std::fs::remove_file(w.dir.join("result")).unwrap();
    std::fs::remove_file(w.dir.join("go")).unwrap();
    // Where the image records its parents (its own directory) they are
    // no longer: refused, naming the parent.
    let last = moved.join("img2");
    let o = restore(&last, &["--parent-dir", w.dir.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("img1"), "the missing parent is not named: {e}");
    restore_ok(&w, &last, &[]);
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
}

/// A missing parent, a parent replaced by another image, and a modified
/// parent are refused by name, leaving nothing running; the right parent
/// found with --parent-dir restores.
#[test]
fn wrong_or_missing_parent_refused() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs = chain(&w, 2, &[]);
    kill_and_reap(w.pid);
    let keep = w.dir.join("img0.keep");
    std::fs::rename(&imgs[0], &keep).unwrap();
    let o = restore(&imgs[1], &[]);
    assert!(!o.status.success(), "restored without its parent");
    let e = stderr(&o);
    assert!(e.contains("img0") && e.contains("--parent-dir"), "{e}");
    assert!(!alive(w.pid), "a failed restore left pid {} running", w.pid);
    // Another image (of another process) where the parent was.
    let other = Workload::start("mutator", &["8"]);
    dump_to(&other, &imgs[0], &["--digests"], &[]);
    let o = restore(&imgs[1], &[]);
    assert!(!o.status.success(), "restored from a wrong parent");
    let e = stderr(&o);
    assert!(e.contains("img0") && e.contains("not the one"), "{e}");
    assert!(!alive(w.pid));
    // The right parent, modified in one byte (in its pages).
    std::fs::rename(&keep, &imgs[0]).unwrap();
    let good = std::fs::read(&imgs[0]).unwrap();
    let mut b = good.clone();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    std::fs::write(&imgs[0], &b).unwrap();
    let o = restore(&imgs[1], &[]);
    assert!(!o.status.success(), "restored from a modified parent");
    let e = stderr(&o);
    assert!(e.contains("img0"), "{e}");
    assert!(!alive(w.pid));
    other.go();
    other.expect_pass();
    // The good parent, in another directory given with --parent-dir.
    let pd = w.dir.join("parents");
    std::fs::create_dir(&pd).unwrap();
    std::fs::write(pd.join("img0"), &good).unwrap();
    restore_ok(&w, &imgs[1], &["--parent-dir", pd.to_str().unwrap()]);
    std::thread::sleep(RUN);
    w.go();
    w.expect_pass();
}

/// Negative selftest: an incremental dump sabotaged to take changed
/// pages for unchanged (CREST_TEST_INCR_KEEP_CHANGED) restores a process
/// whose checks fail.
#[test]
fn sabotaged_incremental_dump_is_caught() {
    let w = Workload::start("mutator", &[MIB]);
    let imgs = chain(&w, 1, &[]);
    // The sabotage needs pages of the largest mapping that changed since
    // the parent: on a loaded machine the mutator may not have written
    // enough yet, so dump again until crest says it took some.
    let next = w.dir.join("img1");
    let pid = w.pid.to_string();
    let mut done = false;
    for _ in 0..20 {
        std::thread::sleep(RUN);
        let o = std::process::Command::new(crest_bin())
            .args(["dump", "--leave-running", "-q", "-p", &pid, "-o"])
            .arg(&next)
            .arg("--parent")
            .arg(&imgs[0])
            .env("CREST_TEST_INCR_KEEP_CHANGED", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "dump failed: {}", stderr(&o));
        // A few pages at least: the process may finish rewriting the one
        // it was in the middle of, and rewrite more before it checks.
        let taken = stderr(&o)
            .split("test sabotage: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if taken >= 8 {
            done = true;
            break;
        }
    }
    assert!(done, "no changed page of the largest mapping to sabotage");
    kill_and_reap(w.pid);
    restore_ok(&w, &next, &[]);
    w.go();
    let text = verdict(&w);
    assert!(
        !text.starts_with("PASS"),
        "the workload missed a page from the wrong dump:\n{text}"
    );
    eprintln!("verdict as expected:\n{text}");
}

/// Without --digests an image cannot be a parent, and no image can be
/// its own parent: refused, naming it.
#[test]
fn parent_without_digests_refused() {
    let w = Workload::start("mutator", &["8"]);
    let a = w.dir.join("a");
    dump_to(&w, &a, &["--no-pre-copy"], &[]);
    let pid = w.pid.to_string();
    let b = w.dir.join("b");
    let o = crest(&[
        "dump",
        "--leave-running",
        "-q",
        "-p",
        &pid,
        "-o",
        b.to_str().unwrap(),
        "--parent",
        a.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--digests") && e.contains(a.to_str().unwrap()),
        "{e}"
    );
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}
