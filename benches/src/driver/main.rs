//! `crest-bench`: crest's dump and restore measured against this machine's
//! own limits, in one run.
//!
//! For each workload and sink it starts a self-verifying workload with
//! `crest run`, dumps it, restores it, tells it to verify its memory and
//! records crest's wall time, frozen time, CPU time and peak RSS (from
//! `wait4`) and the image size. In the same run it measures `dd` into the
//! page cache and first-touch copies of the same sizes, and reports crest's
//! times as ratios to those. Prints tables and writes everything as JSON.
//!
//! Besides plain dumps it measures `--compress` (against the same workload
//! dumped plain) and `--leave-running` (frozen time against copying the
//! memory once), runs the tree and threads workloads at their size,
//! twice and four times it (the scaling curve), and the incremental case
//! (`incr.rs`). It ends with the targets, each with
//! its measured figure and whether this run met it.

mod baseline;
mod compare;
mod incr;
mod peer;
mod procs;
mod report;
mod run;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use baseline::Baseline;
use report::{Case, Status};
use run::{Ctx, Failure, Mode, Sink, Workload};

const USAGE: &str = "\
usage: crest-bench [--smoke] [--sizes 1,256,1024,4096] [--only mem,maps,tree,threads,conns,incr]
                   [--sinks file,pipe,live] [--modes plain,compress,leave-running] [--reps N]
                   [--maps COUNT] [--tree PROCS,MIB] [--threads COUNT] [--conns PAIRS]
                   [--json-out PATH]
                   [--workdir DIR] [--crest PATH]

Benchmarks crest (dump and restore wall time, frozen time, peak RSS, CPU time, image size)
on self-verifying workloads, against this machine's dd, first-touch, memcpy and
process_vm_readv bounds measured in the same run. Prints tables, then the issue's targets
with the measured figures and met / NOT MET, and writes JSON (default target/bench.json).
Must run as root.

  --smoke       size 2, 1000 mappings, a 2-, 4- and 8-process tree of 1 MiB, 4, 8 and 16
                threads, a 4 MiB incremental case, 1 repetition (CI: checks that every code path works; no timing is judged)
  --sizes       MiB of the mem workloads (each with random pages, half its pages zero,
                text-like pages, and random pages it keeps rewriting while dumped with
                --leave-running)
  --only        workload kinds to run (default all; incr = the incremental case at 1024
                and 4096 MiB: first dump, then one with --parent, write-tracked)
  --sinks       where images go (default all three: file, pipe, live)
  --modes       dump modes (default all): plain; compress = --compress on the random,
                half-zero and text mem workloads (file and pipe); leave-running =
                --leave-running on the random and busy mem workloads (file and pipe)
  --tree        processes and MiB each of the tree (default 100,4); twice and four times
                the processes too (the scaling curve)
  --threads     threads of the threads workload (default 400); twice and four times as
                many too
  --conns       established loopback TCP connections (both ends in the workload) of the
                conns workload (default 500 pairs: 1,000 sockets; --smoke 20)
  --reps        repetitions of each measurement, medians reported (default 3; --smoke 1)
  --workdir     where images and workload files go (default /tmp)
  --crest       the crest binary (default: next to crest-bench)";

struct Config {
    smoke: bool,
    sizes: Vec<u64>,
    only: Vec<String>,
    sinks: Vec<Sink>,
    modes: Vec<Mode>,
    reps: usize,
    maps: usize,
    tree: (usize, usize),
    threads: usize,
    conns: usize,
    json_out: PathBuf,
    workdir: PathBuf,
    crest: Option<PathBuf>,
}

fn list<T>(s: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| parse(x.trim()).ok_or_else(|| format!("bad list item {x:?}")))
        .collect()
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut smoke = false;
    let mut sizes = None;
    let mut only: Option<Vec<String>> = None;
    let mut sinks = None;
    let mut modes = None;
    let mut reps = None;
    let mut maps = None;
    let mut tree = None;
    let mut threads = None;
    let mut conns = None;
    let mut json_out = PathBuf::from("target/bench.json");
    let mut workdir = PathBuf::from("/tmp");
    let mut crest = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let pos = |s: &str| s.parse::<usize>().ok().filter(|&n| n > 0);
        match a.as_str() {
            "--smoke" => smoke = true,
            "--sizes" => sizes = Some(list(&val()?, |s| s.parse::<u64>().ok().filter(|&n| n > 0))?),
            "--only" => {
                only = Some(list(&val()?, |s| {
                    ["mem", "maps", "tree", "threads", "conns", "incr"]
                        .contains(&s)
                        .then(|| s.to_string())
                })?)
            }
            "--sinks" => sinks = Some(list(&val()?, Sink::parse)?),
            "--modes" => modes = Some(list(&val()?, Mode::parse)?),
            "--reps" => reps = Some(pos(&val()?).ok_or("--reps needs a positive number")?),
            "--maps" => maps = Some(pos(&val()?).ok_or("--maps needs a positive number")?),
            "--tree" => {
                let v = list(&val()?, pos)?;
                match v[..] {
                    [p, m] => tree = Some((p, m)),
                    _ => return Err("--tree needs PROCS,MIB".into()),
                }
            }
            "--threads" => threads = Some(pos(&val()?).ok_or("--threads needs a positive number")?),
            "--conns" => conns = Some(pos(&val()?).ok_or("--conns needs a positive number")?),
            "--json-out" => json_out = PathBuf::from(val()?),
            "--workdir" => workdir = PathBuf::from(val()?),
            "--crest" => crest = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let all = ["mem", "maps", "tree", "threads", "conns", "incr"];
    Ok(Config {
        smoke,
        sizes: sizes.unwrap_or(if smoke {
            vec![2]
        } else {
            vec![1, 256, 1024, 4096]
        }),
        only: only.unwrap_or_else(|| all.iter().map(|s| s.to_string()).collect()),
        sinks: sinks.unwrap_or(vec![Sink::File, Sink::Pipe, Sink::Live]),
        modes: modes.unwrap_or(Mode::ALL.to_vec()),
        reps: reps.unwrap_or(if smoke { 1 } else { 3 }),
        maps: maps.unwrap_or(if smoke { 1000 } else { 10_000 }),
        tree: tree.unwrap_or(if smoke { (2, 1) } else { (100, 4) }),
        threads: threads.unwrap_or(if smoke { 4 } else { 400 }),
        conns: conns.unwrap_or(if smoke { 20 } else { 500 }),
        json_out,
        workdir,
        crest,
    })
}

fn workloads(cfg: &Config) -> Vec<Workload> {
    let ps = crest_bench::page_size() as u64;
    let mib_of = |bytes: u64| bytes.div_ceil(crest_bench::MIB);
    let on = |k: &str| cfg.only.iter().any(|o| o == k);
    let mut v = Vec::new();
    if on("mem") {
        for &n in &cfg.sizes {
            // (fill, name suffix, workload option, dump modes)
            let both = &[Mode::Plain, Mode::Compress];
            let fills: [(&str, &str, Option<&str>, &[Mode]); 4] = [
                ("random", "", None, &Mode::ALL),
                ("half-zero", "-half0", Some("half-zero"), both),
                ("text", "-text", Some("text"), both),
                ("busy", "-busy", Some("busy"), &[Mode::LeaveRunning]),
            ];
            for (fill, suffix, opt, modes) in fills {
                let mut args = vec![n.to_string()];
                args.extend(opt.map(String::from));
                v.push(Workload {
                    name: format!("mem-{n}{suffix}"),
                    kind: "mem",
                    args,
                    mib: n,
                    fill: Some(fill),
                    tasks: None,
                    may_refuse: false,
                    modes: modes.to_vec(),
                });
            }
        }
    }
    if on("maps") {
        v.push(Workload {
            name: format!("maps-{}", cfg.maps),
            kind: "maps",
            args: vec![cfg.maps.to_string()],
            mib: mib_of(cfg.maps as u64 * ps),
            fill: None,
            tasks: None,
            may_refuse: false,
            modes: vec![Mode::Plain],
        });
    }
    if on("tree") {
        let (p, m) = cfg.tree;
        for p in [p, 2 * p, 4 * p] {
            v.push(Workload {
                name: format!("tree-{p}x{m}"),
                kind: "tree",
                args: vec![p.to_string(), m.to_string()],
                mib: (p * m) as u64,
                fill: None,
                tasks: Some(p as u64),
                may_refuse: true,
                modes: vec![Mode::Plain],
            });
        }
    }
    if on("threads") {
        for t in [cfg.threads, 2 * cfg.threads, 4 * cfg.threads] {
            v.push(Workload {
                name: format!("threads-{t}"),
                kind: "threads",
                args: vec![t.to_string()],
                mib: mib_of((t as u64 - 1) * 72 * 1024),
                fill: None,
                tasks: Some(t as u64),
                may_refuse: true,
                modes: vec![Mode::Plain],
            });
        }
    }
    if on("conns") {
        v.push(Workload {
            name: format!("conns-{}", 2 * cfg.conns),
            kind: "conns",
            args: vec![cfg.conns.to_string()],
            mib: 1,
            fill: None,
            tasks: Some(2 * cfg.conns as u64),
            may_refuse: false,
            modes: vec![Mode::Plain],
        });
    }
    for w in &mut v {
        w.modes.retain(|m| cfg.modes.contains(m));
    }
    v.retain(|w| !w.modes.is_empty());
    v
}

#[derive(Serialize)]
struct Output<'a> {
    benchmark: &'static str,
    schema: u32,
    mode: &'static str,
    reps: usize,
    sizes: &'a [u64],
    sinks: &'a [Sink],
    modes: &'a [Mode],
    started_unix: u64,
    elapsed_s: f64,
    machine: stats::Machine,
    crest: stats::CrestInfo,
    /// Peak RSS of `crest --version`: a spawned child's ru_maxrss is never
    /// below its parent's RSS at the spawn, so this is the floor.
    crest_idle_maxrss_kib: u64,
    driver_maxrss_kib: u64,
    workdir: String,
    baselines: Vec<Baseline>,
    cases: &'a [Case],
    /// Leave-running cases: frozen time against copying the memory once.
    leave_running: &'a [compare::LeaveRunning],
    /// Each workload dumped with --compress against the same dumped plain.
    compression: &'a [compare::Compression],
    /// Twice the processes or threads against once.
    scaling: &'a [compare::Scaling],
    /// The incremental case (`incr`).
    incremental: &'a [incr::Incremental],
    /// The targets with the measured figures.
    targets: &'a [compare::Target],
    failures: usize,
    legend: &'static str,
}

fn self_maxrss_kib() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64
}

fn idle_maxrss(crest: &Path) -> u64 {
    let mut cmd = std::process::Command::new(crest);
    cmd.arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    procs::Spawned::spawn(&mut cmd)
        .and_then(|mut s| s.wait())
        .map(|e| e.maxrss_kib)
        .unwrap_or(0)
}

fn locate(name: &str, explicit: Option<&PathBuf>) -> Result<PathBuf, String> {
    let p = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("locating myself: {e}"))?
            .with_file_name(name),
    };
    if !p.is_file() {
        return Err(format!(
            "{} not found (build it: cargo build --release -p crest-cli -p crest-bench, or pass --crest)",
            p.display()
        ));
    }
    Ok(p)
}

fn progress(msg: &str) {
    eprintln!("crest-bench: {msg}");
}

fn bench(cfg: &Config, work: &Path) -> Result<usize, String> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ctx = Ctx {
        crest: locate("crest", cfg.crest.as_ref())?,
        workload: locate("crest-bench-workload", None)?,
    };
    let machine = stats::machine();
    let crest = stats::crest_info(&ctx.crest);
    progress(&peer::criu_notice());
    progress(&format!(
        "{} on Linux {} ({} CPUs, {} MiB), {} repetition(s); work directory {}",
        if crest.version.is_empty() {
            "crest"
        } else {
            &crest.version
        },
        machine.kernel,
        machine.nproc,
        machine.mem_total_kib / 1024,
        cfg.reps,
        work.display()
    ));
    let crest_idle_maxrss_kib = idle_maxrss(&ctx.crest);

    let mut bases: BTreeMap<u64, Baseline> = BTreeMap::new();
    let mut cases: Vec<Case> = Vec::new();
    let mut last_image: HashMap<String, u64> = HashMap::new();
    let mut seq = 0usize;
    for wl in workloads(cfg) {
        let first = cases.len();
        let combos = wl.modes.iter().flat_map(|&m| {
            cfg.sinks
                .iter()
                .filter(move |&&s| m.runs_on(s))
                .map(move |&s| (m, s))
        });
        for (mode, sink) in combos {
            cases.push(Case {
                workload: wl.name.clone(),
                kind: wl.kind.to_string(),
                args: wl.args.clone(),
                fill: wl.fill.map(String::from),
                tasks: wl.tasks,
                mode,
                sink,
                mib: wl.mib,
                touched_bytes: 0,
                nonzero_bytes: 0,
                status: Status::Ok,
                error: None,
                kept_dir: None,
                runs: Vec::new(),
                median: None,
                ratios: None,
            });
        }
        if cases.len() == first {
            continue;
        }
        for rep in 0..cfg.reps {
            if cases[first..].iter().all(|c| c.status != Status::Ok) {
                break;
            }
            let base = bases.entry(wl.mib).or_insert_with(|| Baseline::new(wl.mib));
            if base.samples() <= rep {
                base.sample(work, &ctx.workload)?;
                progress(&format!(
                    "baseline {} MiB rep {}/{}: {}",
                    wl.mib,
                    rep + 1,
                    cfg.reps,
                    base.last()
                ));
            }
            for case in cases[first..].iter_mut() {
                if case.status != Status::Ok {
                    continue;
                }
                seq += 1;
                let dir = work.join(format!(
                    "{seq:03}-{}-{}-{}-{rep}",
                    wl.name,
                    case.mode.name(),
                    case.sink.name()
                ));
                let key = format!("{} {}", wl.name, case.mode.name());
                let cap = last_image.get(&key).map(|b| b + b / 8 + (1 << 20));
                let tag = format!(
                    "{} {} {} rep {}/{}",
                    wl.name,
                    case.mode.name(),
                    case.sink.name(),
                    rep + 1,
                    cfg.reps
                );
                let r = run::run_once(&ctx, &wl, case.mode, case.sink, rep, &dir, cap);
                let strays = procs::settle();
                match r {
                    Ok(run) => {
                        progress(&format!(
                            "{tag}: dump {:.1} ms (frozen {:.1}), restore {:.1} ms, image {:.1} MiB, {}",
                            run.dump_wall_ms,
                            run.frozen_ms,
                            run.restore_wall_ms,
                            run.image_bytes as f64 / crest_bench::MIB as f64,
                            run.result
                        ));
                        last_image.insert(key, run.image_bytes);
                        case.runs.push(run);
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Err(Failure::Refused(m)) => {
                        progress(&format!("{tag}: refused: {m}"));
                        case.status = Status::Refused;
                        case.error = Some(m);
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Err(Failure::Failed(m)) => {
                        progress(&format!(
                            "{tag}: FAILED: {m} (files kept in {})",
                            dir.display()
                        ));
                        case.status = Status::Failed;
                        case.error = Some(m);
                        case.kept_dir = Some(dir.display().to_string());
                        // Keep a small image for a post-mortem; a big one would
                        // fill the disk over a long run.
                        let img = dir.join("img");
                        if std::fs::metadata(&img).is_ok_and(|m| m.len() > 256 << 20) {
                            let _ = std::fs::remove_file(img);
                        }
                    }
                }
                if strays > 0 {
                    progress(&format!(
                        "{tag}: warning: killed {strays} stray process(es)"
                    ));
                }
            }
        }
        for case in cases[first..].iter_mut() {
            case.finish(bases.get(&wl.mib));
        }
    }

    let bases: Vec<Baseline> = bases.into_values().collect();
    let failures = cases.iter().filter(|c| c.status == Status::Failed).count();
    let leave_running = compare::leave_running(&cases, &bases);
    let compression = compare::compression(&cases);
    let scaling = compare::scaling(&cases);
    let mut targets = compare::targets(&cases, &leave_running, &compression, &scaling);
    let incremental = if cfg.only.iter().any(|o| o == "incr") {
        let sizes: Vec<u64> = if cfg.smoke { vec![4] } else { vec![1024, 4096] };
        progress(&format!("incremental case at {sizes:?} MiB"));
        let bin = locate("crest-bench-incremental", None)?;
        incr::run(&bin, &ctx.crest, work, &sizes, cfg.reps)
    } else {
        Vec::new()
    };
    targets.extend(compare::incremental_targets(&incremental));
    targets.sort_by_key(|t| compare::order_of(t.target));
    println!();
    report::print_baselines(&bases, cfg.reps);
    println!();
    report::print_cases(&cases, cfg.reps);
    let tables = [
        compare::print_leave_running(&leave_running),
        compare::print_compression(&compression),
        compare::print_scaling(&scaling),
        incr::print(&incremental),
    ];
    for t in tables.into_iter().flatten() {
        println!();
        print!("{t}");
    }
    println!();
    println!("{}", report::LEGEND);
    println!();
    print!("{}", compare::print_targets(&targets));
    let out = Output {
        benchmark: "crest-bench",
        schema: 2,
        mode: if cfg.smoke { "smoke" } else { "full" },
        reps: cfg.reps,
        sizes: &cfg.sizes,
        sinks: &cfg.sinks,
        modes: &cfg.modes,
        started_unix,
        elapsed_s: started.elapsed().as_secs_f64(),
        machine,
        crest,
        crest_idle_maxrss_kib,
        driver_maxrss_kib: self_maxrss_kib(),
        workdir: work.display().to_string(),
        baselines: bases,
        cases: &cases,
        leave_running: &leave_running,
        compression: &compression,
        scaling: &scaling,
        incremental: &incremental,
        targets: &targets,
        failures,
        legend: report::LEGEND,
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| format!("JSON: {e}"))?;
    if let Some(parent) = cfg.json_out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(&cfg.json_out, json + "\n")
        .map_err(|e| format!("writing {}: {e}", cfg.json_out.display()))?;
    println!();
    println!(
        "JSON written to {} ({:.0} s in all)",
        cfg.json_out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(failures)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crest-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "crest-bench: must run as root (crest checkpoints with ptrace and restores PIDs)"
        );
        std::process::exit(2);
    }
    if let Err(e) = procs::init() {
        eprintln!("crest-bench: PR_SET_CHILD_SUBREAPER: {e}");
        std::process::exit(2);
    }
    let work = cfg
        .workdir
        .join(format!("crest-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("crest-bench: creating {}: {e}", work.display());
        std::process::exit(2);
    }
    let r = bench(&cfg, &work);
    procs::settle();
    let code = match r {
        Ok(0) => {
            let _ = std::fs::remove_dir_all(&work);
            0
        }
        Ok(n) => {
            eprintln!(
                "crest-bench: {n} case(s) FAILED (see above; their files are kept under {})",
                work.display()
            );
            1
        }
        Err(e) => {
            eprintln!("crest-bench: error: {e}");
            1
        }
    };
    std::process::exit(code);
}
