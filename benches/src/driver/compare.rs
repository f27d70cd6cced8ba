//! What the targets compare, derived from the cases of one run:
//! frozen time with `--leave-running` against copying the memory once,
//! `--compress` against the same workload dumped plain, twice the tasks
//! against once; then each target with its figure and whether it was met.
//! Everything here is computed from the run's medians; nothing is assumed.

use serde::Serialize;

use crate::baseline::Baseline;
use crate::report::{format_rows, num, num_ms, short, Case, Status, Summary};
use crate::run::{Mode, Sink};
use crate::stats::median;

const MIB: f64 = (1u64 << 20) as f64;

/// A `--leave-running` case against copying its memory once.
#[derive(Serialize, Clone, Debug)]
pub struct LeaveRunning {
    pub workload: String,
    pub sink: Sink,
    pub mib: u64,
    pub dump_wall_ms: f64,
    pub frozen_ms: f64,
    pub restore_wall_ms: f64,
    /// Frozen time of the same workload dumped plain (killed) to the same
    /// sink, if measured.
    pub plain_frozen_ms: Option<f64>,
    /// memcpy of `mib` MiB between faulted buffers (this run's median).
    pub memcpy_ms: f64,
    /// process_vm_readv of `mib` MiB (this run's median).
    pub vm_readv_ms: f64,
    pub frozen_over_memcpy: f64,
    pub frozen_over_vm_readv: f64,
    /// Runs whose process verified its memory right after the dump (still
    /// running) and whose restored copy verified it again.
    pub runs_verified: usize,
    /// From crest's report, if it has them (medians): MiB of pages copied
    /// while the process ran (pre-copy) and while it was frozen.
    pub precopied_mib: Option<f64>,
    pub frozen_copied_mib: Option<f64>,
    /// From crest's report: why it did not pre-copy (last run).
    pub precopy_skipped: Option<String>,
}

/// The median of a page count in crest's dump reports, in MiB; None if
/// no report has it.
fn report_mib(c: &Case, key: &str) -> Option<f64> {
    let v: Vec<f64> = c
        .runs
        .iter()
        .filter_map(|r| r.dump_report[key].as_u64())
        .map(|pages| (pages * crest_bench::page_size() as u64) as f64 / MIB)
        .collect();
    (!v.is_empty()).then(|| median(&v))
}

/// The medians compared between a plain and a compressed dump.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Side {
    pub image_bytes: f64,
    pub dump_wall_ms: f64,
    pub restore_wall_ms: f64,
    pub dump_cpu_ms: f64,
    pub restore_cpu_ms: f64,
}

impl From<Summary> for Side {
    fn from(s: Summary) -> Side {
        Side {
            image_bytes: s.image_bytes,
            dump_wall_ms: s.dump_wall_ms,
            restore_wall_ms: s.restore_wall_ms,
            dump_cpu_ms: s.dump_cpu_ms,
            restore_cpu_ms: s.restore_cpu_ms,
        }
    }
}

/// One workload and sink dumped with `--compress` and plain.
#[derive(Serialize, Clone, Debug)]
pub struct Compression {
    pub workload: String,
    /// What its pages hold: `random`, `half-zero` or `text`.
    pub fill: String,
    pub sink: Sink,
    pub mib: u64,
    pub plain: Side,
    pub compressed: Side,
    /// compressed / plain.
    pub image_ratio: f64,
    pub dump_ratio: f64,
    pub restore_ratio: f64,
    pub dump_cpu_ratio: f64,
}

/// A tree or threads workload against the one with twice its tasks.
#[derive(Serialize, Clone, Debug)]
pub struct Scaling {
    pub kind: String,
    pub sink: Sink,
    pub workload: String,
    pub workload_2x: String,
    pub tasks: u64,
    pub tasks_2x: u64,
    pub dump_wall_ms: f64,
    pub dump_wall_ms_2x: f64,
    pub restore_wall_ms: f64,
    pub restore_wall_ms_2x: f64,
    /// time(2×) / time(1×).
    pub dump_ratio: f64,
    pub restore_ratio: f64,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    NotMet,
    /// The case failed, was refused, or its counterpart did not run.
    NotMeasured,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One target of the issue on one case, as measured.
#[derive(Serialize, Clone, Debug)]
pub struct Target {
    /// The target, in the words.
    pub target: &'static str,
    /// Which workload, mode and sink.
    pub case: String,
    /// The measured figures, for people.
    pub figure: String,
    /// The figure compared with `limit` (a ratio; NaN if not measured).
    pub value: f64,
    pub limit: f64,
    /// Whether `value` must be strictly below `limit` (else at most).
    pub strict: bool,
    pub verdict: Verdict,
}

const T_CONNS: &str =
    "1,000 established loopback TCP connections (500 pairs) dump and restore in under 2 s";
const T_VERIFIED: &str = "Restored memory verified (every run, every workload)";
const T_FROZEN: &str =
    "Frozen time with --leave-running no larger than the time to copy the memory once (memcpy)";
const T_SCALING: &str =
    "100 -> 200 -> 400 processes and 400 -> 800 -> 1,600 threads: each doubling at most 2.0x the time";
const T_INCR_BYTES: &str =
    "Incremental dump (5 % rewritten since the parent) writes at most 6 % of the first dump's bytes";
const T_INCR_TIME: &str =
    "Incremental dump (5 % rewritten since the parent) takes at most 0.15x the first dump's time";
const T_SMALLER: &str = "--compress makes compressible memory (half-zero pages, text) smaller";
const T_FASTER: &str =
    "--compress makes compressible memory faster on this disk (dump to a file in the work directory)";
const T_RANDOM: &str = "Random memory not slower than 1.1x with --compress (dump and restore)";

/// The targets in the order they are printed.
const ORDER: [&str; 9] = [
    T_VERIFIED,
    T_FROZEN,
    T_SCALING,
    T_INCR_BYTES,
    T_INCR_TIME,
    T_SMALLER,
    T_FASTER,
    T_RANDOM,
    T_CONNS,
];

/// The two incremental targets of each size the incremental case ran.
pub fn incremental_targets(rows: &[crate::incr::Incremental]) -> Vec<Target> {
    let mut out = Vec::new();
    for r in rows {
        let case = format!("mem-{} steps, file", r.mib);
        if let Some(e) = &r.error {
            out.push(not_measured(T_INCR_BYTES, case.clone(), e.clone()));
            out.push(not_measured(T_INCR_TIME, case, e.clone()));
            continue;
        }
        out.push(judge(
            T_INCR_BYTES,
            case.clone(),
            format!(
                "{} of {} bytes: {:.2} %",
                r.second_bytes,
                r.first_bytes,
                r.byte_ratio * 100.0
            ),
            r.byte_ratio,
            0.06,
            false,
        ));
        out.push(judge(
            T_INCR_TIME,
            case,
            format!(
                "{} vs {}: {}",
                ms(r.second_s * 1e3),
                ms(r.first_s * 1e3),
                x(r.time_ratio)
            ),
            r.time_ratio,
            0.15,
            false,
        ));
    }
    out
}

fn is_compressible(fill: Option<&str>) -> bool {
    matches!(fill, Some("half-zero" | "text"))
}

fn find<'a>(cases: &'a [Case], workload: &str, mode: Mode, sink: Sink) -> Option<&'a Case> {
    cases
        .iter()
        .find(|c| c.workload == workload && c.mode == mode && c.sink == sink)
}

fn ok_median(c: &Case) -> Option<Summary> {
    match c.status {
        Status::Ok => c.median,
        _ => None,
    }
}

/// Why a case has no figures, for a "not measured" line.
fn why_not(c: &Case) -> String {
    match c.status {
        Status::Ok => "no runs".into(),
        Status::Refused => format!("refused: {}", short(c.error.as_deref())),
        Status::Failed => format!("FAILED: {}", short(c.error.as_deref())),
    }
}

fn case_name(c: &Case) -> String {
    format!("{} {} {}", c.workload, c.mode.name(), c.sink.name())
}

pub fn leave_running(cases: &[Case], bases: &[Baseline]) -> Vec<LeaveRunning> {
    let mut out = Vec::new();
    for c in cases.iter().filter(|c| c.mode == Mode::LeaveRunning) {
        let (Some(s), Some(r)) = (ok_median(c), c.ratios) else {
            continue;
        };
        let base = bases.iter().find(|b| b.mib == c.mib);
        let plain_frozen_ms = find(cases, &c.workload, Mode::Plain, c.sink)
            .and_then(ok_median)
            .map(|p| p.frozen_ms);
        out.push(LeaveRunning {
            workload: c.workload.clone(),
            sink: c.sink,
            mib: c.mib,
            dump_wall_ms: s.dump_wall_ms,
            frozen_ms: s.frozen_ms,
            restore_wall_ms: s.restore_wall_ms,
            plain_frozen_ms,
            memcpy_ms: base.map_or(f64::NAN, |b| b.median.memcpy_ms),
            vm_readv_ms: base.map_or(f64::NAN, |b| b.median.vm_readv_ms),
            frozen_over_memcpy: r.frozen_over_memcpy,
            frozen_over_vm_readv: r.frozen_over_vm_readv,
            runs_verified: c
                .runs
                .iter()
                .filter(|r| {
                    r.result.starts_with("PASS")
                        && r.live_result
                            .as_deref()
                            .is_some_and(|l| l.starts_with("PASS"))
                })
                .count(),
            precopied_mib: report_mib(c, "precopied_pages"),
            frozen_copied_mib: report_mib(c, "frozen_copied_pages"),
            precopy_skipped: c
                .runs
                .last()
                .and_then(|r| r.dump_report["precopy_skipped"].as_str())
                .map(String::from),
        });
    }
    out
}

pub fn compression(cases: &[Case]) -> Vec<Compression> {
    let mut out = Vec::new();
    for c in cases.iter().filter(|c| c.mode == Mode::Compress) {
        let Some(comp) = ok_median(c) else { continue };
        let Some(plain) = find(cases, &c.workload, Mode::Plain, c.sink).and_then(ok_median) else {
            continue;
        };
        out.push(Compression {
            workload: c.workload.clone(),
            fill: c.fill.clone().unwrap_or_default(),
            sink: c.sink,
            mib: c.mib,
            plain: plain.into(),
            compressed: comp.into(),
            image_ratio: comp.image_bytes / plain.image_bytes,
            dump_ratio: comp.dump_wall_ms / plain.dump_wall_ms,
            restore_ratio: comp.restore_wall_ms / plain.restore_wall_ms,
            dump_cpu_ratio: comp.dump_cpu_ms / plain.dump_cpu_ms,
        });
    }
    out
}

/// Pairs of plain cases of one kind and sink where one has twice the
/// tasks of the other: (1×, 2×).
fn scaling_pairs(cases: &[Case]) -> Vec<(&Case, &Case)> {
    let mut out = Vec::new();
    for a in cases.iter().filter(|c| c.mode == Mode::Plain) {
        let Some(t) = a.tasks else { continue };
        if let Some(b) = cases.iter().find(|b| {
            b.mode == Mode::Plain && b.kind == a.kind && b.sink == a.sink && b.tasks == Some(2 * t)
        }) {
            out.push((a, b));
        }
    }
    out
}

pub fn scaling(cases: &[Case]) -> Vec<Scaling> {
    let mut out = Vec::new();
    for (a, b) in scaling_pairs(cases) {
        let (Some(x), Some(y)) = (ok_median(a), ok_median(b)) else {
            continue;
        };
        out.push(Scaling {
            kind: a.kind.clone(),
            sink: a.sink,
            workload: a.workload.clone(),
            workload_2x: b.workload.clone(),
            tasks: a.tasks.unwrap_or(0),
            tasks_2x: b.tasks.unwrap_or(0),
            dump_wall_ms: x.dump_wall_ms,
            dump_wall_ms_2x: y.dump_wall_ms,
            restore_wall_ms: x.restore_wall_ms,
            restore_wall_ms_2x: y.restore_wall_ms,
            dump_ratio: y.dump_wall_ms / x.dump_wall_ms,
            restore_ratio: y.restore_wall_ms / x.restore_wall_ms,
        });
    }
    out
}

fn judge(
    target: &'static str,
    case: String,
    figure: String,
    value: f64,
    limit: f64,
    strict: bool,
) -> Target {
    let verdict = if !value.is_finite() {
        Verdict::NotMeasured
    } else if (strict && value < limit) || (!strict && value <= limit) {
        Verdict::Met
    } else {
        Verdict::NotMet
    };
    Target {
        target,
        case,
        figure,
        value,
        limit,
        strict,
        verdict,
    }
}

fn not_measured(target: &'static str, case: String, why: String) -> Target {
    Target {
        target,
        case,
        figure: why,
        value: f64::NAN,
        limit: f64::NAN,
        strict: false,
        verdict: Verdict::NotMeasured,
    }
}

fn ms(v: f64) -> String {
    format!("{} ms", num_ms(v))
}

fn x(v: f64) -> String {
    format!("x{}", num(v, 2))
}

/// The targets, each judged on every case that measures it.
pub fn targets(
    cases: &[Case],
    lr: &[LeaveRunning],
    comp: &[Compression],
    scal: &[Scaling],
) -> Vec<Target> {
    let mut out = Vec::new();

    // Every run of every case verified its memory.
    let runs: usize = cases.iter().map(|c| c.runs.len()).sum();
    let bad: Vec<String> = cases
        .iter()
        .filter(|c| c.status != Status::Ok)
        .map(|c| format!("{} ({:?})", case_name(c), c.status).to_lowercase())
        .collect();
    let figure = if bad.is_empty() {
        format!("all {runs} runs of {} cases verified", cases.len())
    } else {
        const SHOWN: usize = 6;
        let more = match bad.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        format!(
            "{runs} runs verified; {} of {} cases not: {}{more}",
            bad.len(),
            cases.len(),
            bad[..bad.len().min(SHOWN)].join(", ")
        )
    };
    out.push(Target {
        target: T_VERIFIED,
        case: "every case".into(),
        figure,
        value: bad.len() as f64,
        limit: 0.0,
        strict: false,
        verdict: if cases.is_empty() {
            Verdict::NotMeasured
        } else if bad.is_empty() {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    });

    // Many established connections: dump and restore each under 2 s.
    for c in cases.iter().filter(|c| c.kind == "conns") {
        let name = format!("{} {}", c.workload, c.sink.name());
        match (&c.median, c.status == Status::Ok) {
            (Some(m), true) => out.push(judge(
                T_CONNS,
                name,
                format!(
                    "dump {}, restore {}",
                    ms(m.dump_wall_ms),
                    ms(m.restore_wall_ms)
                ),
                m.dump_wall_ms.max(m.restore_wall_ms),
                2000.0,
                true,
            )),
            _ => out.push(not_measured(T_CONNS, name, why_not(c))),
        }
    }

    // Frozen time with --leave-running against one copy of the memory.
    for c in cases.iter().filter(|c| c.mode == Mode::LeaveRunning) {
        let name = format!("{} {}", c.workload, c.sink.name());
        match lr
            .iter()
            .find(|l| l.workload == c.workload && l.sink == c.sink)
        {
            Some(l) => {
                let mut figure = format!(
                    "frozen {} vs memcpy {}: {}; vs process_vm_readv {}: {}",
                    ms(l.frozen_ms),
                    ms(l.memcpy_ms),
                    x(l.frozen_over_memcpy),
                    ms(l.vm_readv_ms),
                    x(l.frozen_over_vm_readv)
                );
                if let Some(p) = l.plain_frozen_ms {
                    figure.push_str(&format!(" (plain dump frozen {})", ms(p)));
                }
                out.push(judge(
                    T_FROZEN,
                    name,
                    figure,
                    l.frozen_over_memcpy,
                    1.0,
                    false,
                ));
            }
            None => out.push(not_measured(T_FROZEN, name, why_not(c))),
        }
    }

    // Twice the tasks, at most twice the time.
    for (a, b) in scaling_pairs(cases) {
        let name = format!("{} -> {} {}", a.workload, b.workload, a.sink.name());
        match scal
            .iter()
            .find(|s| s.workload == a.workload && s.sink == a.sink)
        {
            Some(s) => out.push(judge(
                T_SCALING,
                name,
                format!(
                    "dump {} -> {}: {}; restore {} -> {}: {}",
                    ms(s.dump_wall_ms),
                    ms(s.dump_wall_ms_2x),
                    x(s.dump_ratio),
                    ms(s.restore_wall_ms),
                    ms(s.restore_wall_ms_2x),
                    x(s.restore_ratio)
                ),
                s.dump_ratio.max(s.restore_ratio),
                2.0,
                false,
            )),
            None => {
                let bad = if a.status != Status::Ok { a } else { b };
                out.push(not_measured(
                    T_SCALING,
                    name,
                    format!("{}: {}", bad.workload, why_not(bad)),
                ));
            }
        }
    }

    // Compression: compressible memory smaller (once per workload: the
    // image does not depend on the sink) and faster to a file; random
    // memory not slower.
    let mut sized: Vec<&str> = Vec::new();
    for c in cases.iter().filter(|c| c.mode == Mode::Compress) {
        let compressible = is_compressible(c.fill.as_deref());
        let pair = comp
            .iter()
            .find(|p| p.workload == c.workload && p.sink == c.sink);
        let name = format!("{} {}", c.workload, c.sink.name());
        let missing = || match find(cases, &c.workload, Mode::Plain, c.sink) {
            _ if c.status != Status::Ok => why_not(c),
            Some(p) if p.status != Status::Ok => format!("plain: {}", why_not(p)),
            Some(_) => "no runs".into(),
            None => "no plain dump to compare with (run --modes plain,compress)".into(),
        };
        if compressible && !sized.contains(&c.workload.as_str()) {
            if let Some(p) = pair {
                sized.push(&c.workload);
                out.push(judge(
                    T_SMALLER,
                    c.workload.clone(),
                    format!(
                        "image {} -> {} MiB: x{} (memory {} MiB, non-zero {} MiB)",
                        num(p.plain.image_bytes / MIB, 1),
                        num(p.compressed.image_bytes / MIB, 1),
                        num(p.image_ratio, 3),
                        num(c.touched_bytes as f64 / MIB, 1),
                        num(c.nonzero_bytes as f64 / MIB, 1)
                    ),
                    p.image_ratio,
                    1.0,
                    true,
                ));
            } else if c.sink == Sink::File {
                out.push(not_measured(T_SMALLER, c.workload.clone(), missing()));
            }
        }
        if compressible && c.sink == Sink::File {
            match pair {
                Some(p) => out.push(judge(
                    T_FASTER,
                    name,
                    format!(
                        "dump {} -> {}: {}; (restore {} -> {}: {})",
                        ms(p.plain.dump_wall_ms),
                        ms(p.compressed.dump_wall_ms),
                        x(p.dump_ratio),
                        ms(p.plain.restore_wall_ms),
                        ms(p.compressed.restore_wall_ms),
                        x(p.restore_ratio)
                    ),
                    p.dump_ratio,
                    1.0,
                    true,
                )),
                None => out.push(not_measured(T_FASTER, name, missing())),
            }
        } else if c.fill.as_deref() == Some("random") {
            match pair {
                Some(p) => out.push(judge(
                    T_RANDOM,
                    name,
                    format!(
                        "dump {} -> {}: {}; restore {} -> {}: {}",
                        ms(p.plain.dump_wall_ms),
                        ms(p.compressed.dump_wall_ms),
                        x(p.dump_ratio),
                        ms(p.plain.restore_wall_ms),
                        ms(p.compressed.restore_wall_ms),
                        x(p.restore_ratio)
                    ),
                    p.dump_ratio.max(p.restore_ratio),
                    1.1,
                    false,
                )),
                None => out.push(not_measured(T_RANDOM, name, missing())),
            }
        }
    }
    out.sort_by_key(|t| order_of(t.target));
    out
}

/// Where target `t` is printed.
pub fn order_of(t: &str) -> Option<usize> {
    ORDER.iter().position(|&o| o == t)
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|s| s.to_string()).collect()
}

pub fn print_leave_running(rows: &[LeaveRunning]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let mut t = vec![header(&[
        "workload",
        "sink",
        "MiB",
        "dump ms",
        "frozen ms",
        "plain frozen ms",
        "memcpy ms",
        "frozen/memcpy",
        "vm_readv ms",
        "frozen/vm_readv",
        "restore ms",
        "verified runs",
        "pre-copied MiB",
        "copied frozen MiB",
    ])];
    for l in rows {
        t.push(vec![
            l.workload.clone(),
            l.sink.name().into(),
            l.mib.to_string(),
            num(l.dump_wall_ms, 1),
            num_ms(l.frozen_ms),
            l.plain_frozen_ms.map_or("-".into(), num_ms),
            num_ms(l.memcpy_ms),
            num(l.frozen_over_memcpy, 2),
            num_ms(l.vm_readv_ms),
            num(l.frozen_over_vm_readv, 2),
            num(l.restore_wall_ms, 1),
            l.runs_verified.to_string(),
            l.precopied_mib.map_or("-".into(), |m| num(m, 1)),
            l.frozen_copied_mib.map_or("-".into(), |m| num(m, 1)),
        ]);
        if let Some(why) = &l.precopy_skipped {
            t.push(vec![String::new(), format!("  not pre-copied: {why}")]);
        }
    }
    Some(format!(
        "crest dump --leave-running (target: frozen ms <= memcpy ms of the same MiB):\n{}",
        format_rows(&t, 2)
    ))
}

pub fn print_compression(rows: &[Compression]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let mut t = vec![header(&[
        "workload",
        "sink",
        "MiB",
        "image MiB",
        "compressed",
        "image x",
        "dump ms",
        "compressed",
        "dump x",
        "restore ms",
        "compressed",
        "restore x",
        "dump CPU x",
    ])];
    for c in rows {
        t.push(vec![
            c.workload.clone(),
            c.sink.name().into(),
            c.mib.to_string(),
            num(c.plain.image_bytes / MIB, 1),
            num(c.compressed.image_bytes / MIB, 1),
            num(c.image_ratio, 3),
            num(c.plain.dump_wall_ms, 1),
            num(c.compressed.dump_wall_ms, 1),
            num(c.dump_ratio, 2),
            num(c.plain.restore_wall_ms, 1),
            num(c.compressed.restore_wall_ms, 1),
            num(c.restore_ratio, 2),
            num(c.dump_cpu_ratio, 2),
        ]);
    }
    Some(format!(
        "crest dump --compress against plain (x = compressed / plain; targets: compressible \
         smaller and dump faster to a file, random x <= 1.1):\n{}",
        format_rows(&t, 2)
    ))
}

pub fn print_scaling(rows: &[Scaling]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let mut t = vec![header(&[
        "workload",
        "2x workload",
        "sink",
        "dump ms",
        "2x dump ms",
        "dump x",
        "restore ms",
        "2x restore ms",
        "restore x",
    ])];
    for s in rows {
        t.push(vec![
            s.workload.clone(),
            s.workload_2x.clone(),
            s.sink.name().into(),
            num(s.dump_wall_ms, 1),
            num(s.dump_wall_ms_2x, 1),
            num(s.dump_ratio, 2),
            num(s.restore_wall_ms, 1),
            num(s.restore_wall_ms_2x, 1),
            num(s.restore_ratio, 2),
        ]);
    }
    Some(format!(
        "Scaling: twice the tasks (x = time(2x) / time(1x); target <= 2):\n{}",
        format_rows(&t, 3)
    ))
}

pub fn print_targets(targets: &[Target]) -> String {
    let count = |v: Verdict| targets.iter().filter(|t| t.verdict == v).count();
    let mut out = format!(
        "Issue targets, judged on this run's medians ({} met, {} NOT MET, {} not measured):\n",
        count(Verdict::Met),
        count(Verdict::NotMet),
        count(Verdict::NotMeasured)
    );
    for group in ORDER {
        let rows: Vec<Vec<String>> = targets
            .iter()
            .filter(|t| t.target == group)
            .map(|t| {
                vec![
                    format!("  {}", t.verdict.label()),
                    t.case.clone(),
                    t.figure.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(group);
        out.push('\n');
        out.push_str(&format_rows(&rows, 3));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Ratios;

    fn case(workload: &str, mode: Mode, sink: Sink, s: Option<Summary>) -> Case {
        let (kind, fill, tasks) = if let Some(t) = workload.strip_prefix("threads-") {
            ("threads", None, t.parse().ok())
        } else if workload.ends_with("-half0") {
            ("mem", Some("half-zero"), None)
        } else if workload.ends_with("-text") {
            ("mem", Some("text"), None)
        } else {
            ("mem", Some("random"), None)
        };
        let nan = f64::NAN;
        Case {
            workload: workload.into(),
            kind: kind.into(),
            args: Vec::new(),
            fill: fill.map(String::from),
            tasks,
            mode,
            sink,
            mib: 16,
            touched_bytes: 16 << 20,
            nonzero_bytes: 16 << 20,
            status: if s.is_some() {
                Status::Ok
            } else {
                Status::Failed
            },
            error: s.is_none().then(|| "boom".into()),
            kept_dir: None,
            runs: Vec::new(),
            median: s,
            ratios: s.map(|s| Ratios {
                dump_over_dd: nan,
                dump_over_dd_fsync: nan,
                restore_over_first_touch: nan,
                restore_over_memcpy: nan,
                frozen_over_memcpy: s.frozen_ms / 10.0,
                frozen_over_vm_readv: s.frozen_ms / 20.0,
                image_over_nonzero: nan,
                dump_gbps: nan,
                restore_gbps: nan,
            }),
        }
    }

    fn summary(dump: f64, restore: f64, frozen: f64, image: f64) -> Option<Summary> {
        Some(Summary {
            dump_wall_ms: dump,
            frozen_ms: frozen,
            restore_wall_ms: restore,
            end_to_end_ms: dump + restore,
            image_bytes: image,
            dump_maxrss_kib: 1.0,
            restore_maxrss_kib: 1.0,
            dump_cpu_ms: dump,
            restore_cpu_ms: restore,
        })
    }

    fn verdicts(t: &[Target], target: &str) -> Vec<(String, Verdict)> {
        t.iter()
            .filter(|t| t.target == target)
            .map(|t| (t.case.clone(), t.verdict))
            .collect()
    }

    #[test]
    fn targets_are_judged_from_the_figures() {
        use Mode::*;
        use Sink::*;
        let cases = vec![
            case("mem-16", Plain, File, summary(100.0, 50.0, 90.0, 16.0)),
            case("mem-16", Compress, File, summary(105.0, 60.0, 90.0, 16.1)),
            case("mem-16", Compress, Pipe, summary(100.0, 50.0, 90.0, 16.1)),
            case("mem-16", Plain, Pipe, summary(80.0, 40.0, 70.0, 16.0)),
            case(
                "mem-16",
                LeaveRunning,
                File,
                summary(100.0, 50.0, 8.0, 16.0),
            ),
            case(
                "mem-16",
                LeaveRunning,
                Pipe,
                summary(100.0, 50.0, 12.0, 16.0),
            ),
            case("mem-16-text", Plain, File, summary(100.0, 50.0, 90.0, 16.0)),
            case(
                "mem-16-text",
                Compress,
                File,
                summary(70.0, 45.0, 60.0, 6.0),
            ),
            case("mem-16-half0", Plain, File, summary(60.0, 30.0, 50.0, 8.0)),
            case("mem-16-half0", Compress, File, None),
            case("threads-4", Plain, File, summary(10.0, 10.0, 5.0, 1.0)),
            case("threads-8", Plain, File, summary(19.0, 21.0, 5.0, 1.0)),
        ];
        let lr = leave_running(&cases, &[]);
        let comp = compression(&cases);
        let scal = scaling(&cases);
        assert_eq!(lr.len(), 2);
        assert_eq!(comp.len(), 3);
        assert_eq!(scal.len(), 1);
        assert!((scal[0].restore_ratio - 2.1).abs() < 1e-9);
        let t = targets(&cases, &lr, &comp, &scal);
        assert_eq!(t[0].target, T_VERIFIED);
        assert_eq!(t[0].verdict, Verdict::NotMet);
        let met = Verdict::Met;
        let not = Verdict::NotMet;
        let nm = Verdict::NotMeasured;
        assert_eq!(
            verdicts(&t, T_FROZEN),
            [("mem-16 file".into(), met), ("mem-16 pipe".into(), not)]
        );
        assert_eq!(
            verdicts(&t, T_SCALING),
            [("threads-4 -> threads-8 file".into(), not)]
        );
        assert_eq!(
            verdicts(&t, T_SMALLER),
            [("mem-16-text".into(), met), ("mem-16-half0".into(), nm)]
        );
        assert_eq!(
            verdicts(&t, T_FASTER),
            [
                ("mem-16-text file".into(), met),
                ("mem-16-half0 file".into(), nm)
            ]
        );
        // file: restore 60/50 = 1.2 > 1.1; pipe: 50/40 = 1.25.
        assert_eq!(
            verdicts(&t, T_RANDOM),
            [("mem-16 file".into(), not), ("mem-16 pipe".into(), not)]
        );
        let text = print_targets(&t);
        assert!(
            text.contains("NOT MET") && text.contains(T_RANDOM),
            "{text}"
        );
        assert!(print_compression(&comp).is_some());
        assert!(print_scaling(&scal).is_some());
        assert!(print_leave_running(&lr).is_some());
    }

    #[test]
    fn all_verified_is_met() {
        let cases = vec![case(
            "mem-16",
            Mode::Plain,
            Sink::File,
            summary(1.0, 1.0, 1.0, 1.0),
        )];
        let t = targets(&cases, &[], &[], &[]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].verdict, Verdict::Met);
    }
}
