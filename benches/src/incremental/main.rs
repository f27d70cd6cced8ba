//! `crest-bench-incremental`: incremental dumps and huge-page restores.
//!
//! ```text
//! crest-bench-incremental [--sizes 1024,4096] [--reps N] [--workdir DIR] [--crest PATH] [--smoke]
//!                         [--incremental-only] [--machine]
//! ```
//!
//! Incremental: a `mem MIB steps` workload (random pages) is dumped with
//! `--leave-running --digests --track` (the first dump, which leaves its
//! memory write-tracked), rewrites 5 % of its pages, is dumped with
//! `--parent --track` (the second dump, reading only the pages the
//! tracker reports written), rewrites another 5 % and is
//! dumped against the second (a chain of three); then it is killed, the
//! last image restored and the restored process verifies every byte.
//! Printed: bytes and wall time of the first and the second dump, their
//! ratios against the targets (at most 6 % of the bytes, 0.15x the time),
//! and the restore.  `--machine` prints instead one line per size,
//! `incr MIB plain_s first_s first_bytes second_s second_bytes third_bytes
//! restore_s` (or `incr MIB FAILED why`), for `crest-bench`, and
//! `--incremental-only` leaves out the huge pages.
//!
//! Huge pages: a `mem MIB thp` workload (MADV_HUGEPAGE) and a plain one
//! (4 KiB pages, THP "madvise") are dumped and restored; printed: their
//! AnonHugePages before and after and the restore times.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Cfg {
    sizes: Vec<u64>,
    reps: usize,
    work: PathBuf,
    crest: PathBuf,
    workload: PathBuf,
}

fn die(msg: String) -> ! {
    eprintln!("crest-bench-incremental: {msg}");
    std::process::exit(1)
}

fn wait_file(p: &Path, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    while !p.exists() {
        if t.elapsed() > timeout {
            return Err(format!("timed out waiting for {}", p.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn start(cfg: &Cfg, dir: &Path, args: &[&str]) -> Result<i32, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&cfg.workload);
    // SAFETY: only close_range (async-signal-safe) between fork and exec:
    // the workload inherits no descriptor of ours but stdio.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd
        .arg("mem")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the workload: {e}"))?;
    wait_file(&dir.join("ready"), Duration::from_secs(600))?;
    Ok(child.id() as i32)
}

/// Runs crest with `args`; returns its wall time in seconds.
fn crest(cfg: &Cfg, args: &[&str]) -> Result<f64, String> {
    let t = Instant::now();
    let o = Command::new(&cfg.crest)
        .args(args)
        .output()
        .map_err(|e| format!("running crest: {e}"))?;
    let s = t.elapsed().as_secs_f64();
    if !o.status.success() {
        return Err(format!(
            "crest {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(s)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn kill_reap(pid: i32) {
    // SAFETY: kill and waitpid of our own workload's pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

/// Tells the restored workload `pid` to verify itself; its verdict.
fn verify(dir: &Path, pid: i32) -> Result<(), String> {
    std::fs::write(dir.join("go"), b"go\n").map_err(|e| e.to_string())?;
    wait_file(&dir.join("result"), Duration::from_secs(600))?;
    // SAFETY: reaping our (subreaped) workload.
    unsafe {
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
    let r = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
    if r.starts_with("PASS") {
        Ok(())
    } else {
        Err(format!("workload: {}", r.trim()))
    }
}

fn restore(cfg: &Cfg, img: &Path) -> Result<f64, String> {
    crest(cfg, &["restore", "-d", "-i", img.to_str().unwrap()])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Incr {
    first_s: f64,
    first_b: u64,
    second_s: f64,
    second_b: u64,
    third_b: u64,
    plain_s: f64,
    restore_s: f64,
}

fn incremental(cfg: &Cfg, mib: u64) -> Result<Incr, String> {
    let dir = cfg.work.join(format!("incr-{mib}"));
    let pid = start(cfg, &dir, &[&mib.to_string(), "steps"])?;
    let p = pid.to_string();
    let img = |i: usize| dir.join(format!("img{i}"));
    let dump = |out: &Path, extra: &[&str]| -> Result<f64, String> {
        let _ = std::fs::remove_file(out);
        let mut a = vec![
            "dump",
            "-q",
            "--leave-running",
            "-p",
            &p,
            "-o",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        crest(cfg, &a)
    };
    let step = |n: usize| -> Result<(), String> {
        let _ = std::fs::remove_file(dir.join("stepped"));
        std::fs::write(dir.join("step"), b"").map_err(|e| e.to_string())?;
        wait_file(&dir.join("stepped"), Duration::from_secs(600))?;
        let got = std::fs::read_to_string(dir.join("stepped")).unwrap_or_default();
        if got.trim() != n.to_string() {
            return Err(format!("step {n}: the workload says {got:?}"));
        }
        Ok(())
    };
    let (mut first, mut second, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first_b, mut second_b) = (0, 0);
    // The reference: a plain --leave-running dump copying while frozen.
    for _ in 0..cfg.reps {
        plain.push(dump(&dir.join("plain"), &["--no-pre-copy"])?);
    }
    let _ = std::fs::remove_file(dir.join("plain"));
    let mut steps = 0;
    for _ in 0..cfg.reps {
        first.push(dump(&img(0), &["--digests", "--track"])?);
        first_b = size(&img(0));
        steps += 1;
        step(steps)?;
        second.push(dump(
            &img(1),
            &["--parent", img(0).to_str().unwrap(), "--track"],
        )?);
        second_b = size(&img(1));
    }
    steps += 1;
    step(steps)?;
    dump(&img(2), &["--parent", img(1).to_str().unwrap()])?;
    let third_b = size(&img(2));
    kill_reap(pid);
    let restore_s = restore(cfg, &img(2))?;
    verify(&dir, pid)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Incr {
        first_s: median(first),
        first_b,
        second_s: median(second),
        second_b,
        third_b,
        plain_s: median(plain),
        restore_s,
    })
}

/// AnonHugePages of `pid` in kB.
fn anon_huge_kb(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (AnonHugePages before, after, restore seconds) of a `mem MIB [thp]`.
fn thp_case(cfg: &Cfg, mib: u64, thp: bool) -> Result<(u64, u64, f64), String> {
    let dir = cfg.work.join(format!("thp-{mib}-{thp}"));
    let mut args = vec![mib.to_string()];
    if thp {
        args.push("thp".into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut times = Vec::new();
    let (mut before, mut after) = (0, 0);
    for _ in 0..cfg.reps {
        let pid = start(cfg, &dir, &a)?;
        before = anon_huge_kb(pid);
        let img = dir.join("img");
        let p = pid.to_string();
        crest(cfg, &["dump", "-q", "-p", &p, "-o", img.to_str().unwrap()])?;
        // SAFETY: reaping the killed workload.
        unsafe {
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
        }
        times.push(restore(cfg, &img)?);
        after = anon_huge_kb(pid);
        verify(&dir, pid)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((before, after, median(times)))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let me = std::env::current_exe().unwrap_or_default();
    let bin = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cfg = Cfg {
        sizes: vec![1024, 4096],
        reps: 3,
        work: PathBuf::from("/tmp"),
        crest: bin.join("crest"),
        workload: bin.join("crest-bench-workload"),
    };
    let (mut only_incr, mut machine) = (false, false);
    let mut i = 0;
    while i < args.len() {
        let val = || {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| die(format!("{} needs a value", args[i])))
        };
        match args[i].as_str() {
            "--incremental-only" | "--machine" => {
                if args[i] == "--machine" {
                    machine = true;
                } else {
                    only_incr = true;
                }
                i += 1;
                continue;
            }
            "--smoke" => {
                cfg.sizes = vec![16];
                cfg.reps = 1;
                i += 1;
                continue;
            }
            "--sizes" => {
                cfg.sizes = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| die(format!("bad size {s}"))))
                    .collect()
            }
            "--reps" => cfg.reps = val().parse().unwrap_or_else(|_| die("bad --reps".into())),
            "--workdir" => cfg.work = PathBuf::from(val()),
            "--crest" => cfg.crest = PathBuf::from(val()),
            a => die(format!("unknown argument {a}")),
        }
        i += 2;
    }
    cfg.work = cfg
        .work
        .join(format!("crest-bench-incr-{}", std::process::id()));
    // SAFETY: prctl with no pointers: restored workloads come back to us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if machine {
        let mut failed = false;
        for &mib in &cfg.sizes {
            match incremental(&cfg, mib) {
                Ok(r) => println!(
                    "incr {mib} {} {} {} {} {} {} {}",
                    r.plain_s, r.first_s, r.first_b, r.second_s, r.second_b, r.third_b, r.restore_s
                ),
                Err(e) => {
                    failed = true;
                    println!("incr {mib} FAILED {}", e.replace('\n', " "));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&cfg.work);
        std::process::exit(i32::from(failed));
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    println!("THP: {}   reps: {} (medians)", thp.trim(), cfg.reps);
    println!();
    println!(
        "incremental dump (--leave-running; the workload rewrites 5 % of its pages between dumps)"
    );
    println!("MiB   | plain s | 1st (--digests) s  bytes | 2nd (--parent) s  bytes | bytes 2nd/1st | time 2nd/1st | 3rd bytes | restore of 3rd s | verdict");
    let mut failed = false;
    for &mib in &cfg.sizes {
        match incremental(&cfg, mib) {
            Ok(r) => {
                let rb = r.second_b as f64 / r.first_b as f64;
                let rt = r.second_s / r.first_s;
                let ok = rb <= 0.06 && rt <= 0.15;
                println!(
                    "{mib:5} | {:7.3} | {:8.3} {:13} | {:8.3} {:13} | {:12.2}% | {:11.3}x | {:9} | {:16.3} | bytes {} time {}",
                    r.plain_s, r.first_s, r.first_b, r.second_s, r.second_b, rb * 100.0, rt, r.third_b, r.restore_s,
                    if rb <= 0.06 { "met" } else { "NOT met" },
                    if rt <= 0.15 { "met" } else { "NOT met" },
                );
                let _ = ok;
            }
            Err(e) => {
                failed = true;
                println!("{mib:5} | FAILED: {e}");
            }
        }
    }
    if only_incr {
        let _ = std::fs::remove_dir_all(&cfg.work);
        std::process::exit(i32::from(failed));
    }
    println!();
    println!("transparent huge pages (dump, kill, restore)");
    println!("MiB   | THP AnonHugePages before -> after kB | restore s | 4 KiB restore s | THP/4K | verdict");
    for &mib in &cfg.sizes {
        match (thp_case(&cfg, mib, true), thp_case(&cfg, mib, false)) {
            (Ok((b, a, t)), Ok((_, _, t4))) => {
                let kept = a * 10 >= b * 9 && b > 0;
                println!(
                    "{mib:5} | {b:>12} -> {a:<12} | {t:9.3} | {t4:15.3} | {:6.2} | huge pages kept: {} ; not slower: {}",
                    t / t4,
                    if kept { "met" } else { "NOT met" },
                    if t <= t4 { "met" } else { "NOT met" },
                );
            }
            (a, b) => {
                failed = true;
                println!("{mib:5} | FAILED: {:?} {:?}", a.err(), b.err());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cfg.work);
    std::process::exit(i32::from(failed));
}
