//! Results: medians, ratios to the baselines, the table and the JSON.

use serde::Serialize;

use crate::baseline::Baseline;
use crate::run::{Mode, Run, Sink};
use crate::stats::median;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// crest refused the dump (a workload it does not support yet).
    Refused,
    Failed,
}

/// Medians over the repetitions.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Summary {
    pub dump_wall_ms: f64,
    pub frozen_ms: f64,
    pub restore_wall_ms: f64,
    pub end_to_end_ms: f64,
    pub image_bytes: f64,
    pub dump_maxrss_kib: f64,
    pub restore_maxrss_kib: f64,
    pub dump_cpu_ms: f64,
    pub restore_cpu_ms: f64,
}

/// crest against this run's bounds (medians over medians).
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Ratios {
    /// dump wall / `dd bs=1M` of the workload's MiB into the page cache.
    pub dump_over_dd: f64,
    /// dump wall / the same dd with `conv=fsync`.
    pub dump_over_dd_fsync: f64,
    /// restore wall / first-touch copy of the workload's MiB.
    pub restore_over_first_touch: f64,
    /// restore wall / memcpy of the workload's MiB between faulted buffers.
    pub restore_over_memcpy: f64,
    /// frozen / memcpy of the workload's MiB ("copying the memory once").
    pub frozen_over_memcpy: f64,
    /// frozen / process_vm_readv of the workload's MiB.
    pub frozen_over_vm_readv: f64,
    /// image bytes / non-zero bytes the workload touched.
    pub image_over_nonzero: f64,
    /// image bytes / dump wall, in GB/s (1e9 B/s).
    pub dump_gbps: f64,
    /// image bytes / restore wall, in GB/s.
    pub restore_gbps: f64,
}

#[derive(Serialize, Debug)]
pub struct Case {
    pub workload: String,
    pub kind: String,
    pub args: Vec<String>,
    /// mem: what its pages hold (`random`, `half-zero`, `text`, `busy`).
    pub fill: Option<String>,
    /// tree and threads: how many processes or threads.
    pub tasks: Option<u64>,
    pub mode: Mode,
    pub sink: Sink,
    /// The workload's memory rounded up to MiB (its baselines' size).
    pub mib: u64,
    pub touched_bytes: u64,
    pub nonzero_bytes: u64,
    pub status: Status,
    pub error: Option<String>,
    /// Where the failed run's files were kept.
    pub kept_dir: Option<String>,
    pub runs: Vec<Run>,
    pub median: Option<Summary>,
    pub ratios: Option<Ratios>,
}

impl Case {
    pub fn finish(&mut self, base: Option<&Baseline>) {
        if self.runs.is_empty() {
            return;
        }
        let m = |g: fn(&Run) -> f64| median(&self.runs.iter().map(g).collect::<Vec<_>>());
        let s = Summary {
            dump_wall_ms: m(|r| r.dump_wall_ms),
            frozen_ms: m(|r| r.frozen_ms),
            restore_wall_ms: m(|r| r.restore_wall_ms),
            end_to_end_ms: m(|r| r.end_to_end_ms),
            image_bytes: m(|r| r.image_bytes as f64),
            dump_maxrss_kib: m(|r| r.dump_maxrss_kib as f64),
            restore_maxrss_kib: m(|r| r.restore_maxrss_kib as f64),
            dump_cpu_ms: m(|r| r.dump_cpu_ms),
            restore_cpu_ms: m(|r| r.restore_cpu_ms),
        };
        let last = &self.runs[self.runs.len() - 1];
        self.touched_bytes = last.touched_bytes;
        self.nonzero_bytes = last.nonzero_bytes;
        let nan = f64::NAN;
        let (dd, dds, ft, mc, rv) = base
            .map(|b| {
                (
                    b.median.dd_ms,
                    b.median.dd_fsync_ms,
                    b.median.first_touch_ms,
                    b.median.memcpy_ms,
                    b.median.vm_readv_ms,
                )
            })
            .unwrap_or((nan, nan, nan, nan, nan));
        self.ratios = Some(Ratios {
            dump_over_dd: s.dump_wall_ms / dd,
            dump_over_dd_fsync: s.dump_wall_ms / dds,
            restore_over_first_touch: s.restore_wall_ms / ft,
            restore_over_memcpy: s.restore_wall_ms / mc,
            frozen_over_memcpy: s.frozen_ms / mc,
            frozen_over_vm_readv: s.frozen_ms / rv,
            image_over_nonzero: s.image_bytes / self.nonzero_bytes as f64,
            dump_gbps: s.image_bytes / s.dump_wall_ms / 1e6,
            restore_gbps: s.image_bytes / s.restore_wall_ms / 1e6,
        });
        self.median = Some(s);
    }
}

pub fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// Milliseconds with enough decimals to show a small time (0.021, 3.14,
/// 123.4).
pub fn num_ms(v: f64) -> String {
    let d = if v.abs() < 1.0 {
        3
    } else if v.abs() < 10.0 {
        2
    } else {
        1
    };
    num(v, d)
}

/// An error message cut to fit a table row (the JSON has all of it).
pub fn short(msg: Option<&str>) -> String {
    const MAX: usize = 120;
    let m = msg.unwrap_or("?");
    if m.chars().count() <= MAX {
        return m.to_string();
    }
    let cut: String = m.chars().take(MAX).collect();
    format!("{cut}…")
}

/// Prints rows with the first `left` columns left-aligned, the rest right.
pub fn print_rows(rows: &[Vec<String>], left: usize) {
    print!("{}", format_rows(rows, left));
}

/// Lays out rows with the first `left` columns left-aligned, the rest
/// right, one line each.
pub fn format_rows(rows: &[Vec<String>], left: usize) -> String {
    let mut out = String::new();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0usize; cols];
    for r in rows {
        // A row shorter than the header carries a message in its last cell:
        // it does not widen the column it starts in.
        let n = if r.len() < cols { r.len() - 1 } else { r.len() };
        for (i, c) in r.iter().take(n).enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let last_msg = r.len() < cols && i == r.len() - 1;
            if last_msg {
                line.push_str(c);
            } else if i < left {
                line.push_str(&format!("{c:<0$}", w[i]));
            } else {
                line.push_str(&format!("{c:>0$}", w[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn print_baselines(bases: &[Baseline], reps: usize) {
    println!("Baselines on this machine (median of {reps}):");
    let mut rows = vec![[
        "MiB",
        "dd ms",
        "dd+fsync ms",
        "first-touch ms",
        "memcpy ms",
        "vm_readv ms",
        "dd GB/s",
        "dd+fsync GB/s",
        "touch GB/s",
        "memcpy GB/s",
        "vm_readv GB/s",
    ]
    .map(String::from)
    .to_vec()];
    for b in bases {
        let m = b.median;
        let gbps = |ms: f64| num(b.mib as f64 * MIB / ms / 1e6, 2);
        rows.push(vec![
            b.mib.to_string(),
            num_ms(m.dd_ms),
            num_ms(m.dd_fsync_ms),
            num_ms(m.first_touch_ms),
            num_ms(m.memcpy_ms),
            num_ms(m.vm_readv_ms),
            gbps(m.dd_ms),
            gbps(m.dd_fsync_ms),
            gbps(m.first_touch_ms),
            gbps(m.memcpy_ms),
            gbps(m.vm_readv_ms),
        ]);
    }
    print_rows(&rows, 0);
}

pub fn print_cases(cases: &[Case], reps: usize) {
    println!("crest (median of {reps}):");
    let mut rows = vec![[
        "workload",
        "mode",
        "sink",
        "MiB",
        "dump ms",
        "frozen ms",
        "restore ms",
        "image MiB",
        "img/data",
        "dump RSS MiB",
        "restore RSS MiB",
        "dump CPU ms",
        "restore CPU ms",
        "dump/dd",
        "dump/dd+fsync",
        "restore/first-touch",
        "dump GB/s",
        "restore GB/s",
    ]
    .map(String::from)
    .to_vec()];
    for c in cases {
        let mut row = vec![
            c.workload.clone(),
            c.mode.name().to_string(),
            c.sink.name().to_string(),
            c.mib.to_string(),
        ];
        match (c.status, c.median, c.ratios) {
            (Status::Ok, Some(s), Some(r)) => {
                row.extend([
                    num(s.dump_wall_ms, 1),
                    num(s.frozen_ms, 1),
                    num(s.restore_wall_ms, 1),
                    num(s.image_bytes / MIB, 1),
                    num(r.image_over_nonzero, 3),
                    num(s.dump_maxrss_kib / 1024.0, 1),
                    num(s.restore_maxrss_kib / 1024.0, 1),
                    num(s.dump_cpu_ms, 1),
                    num(s.restore_cpu_ms, 1),
                    num(r.dump_over_dd, 2),
                    num(r.dump_over_dd_fsync, 2),
                    num(r.restore_over_first_touch, 2),
                    num(r.dump_gbps, 2),
                    num(r.restore_gbps, 2),
                ]);
            }
            (Status::Refused, ..) => {
                row.push(format!("refused: {}", short(c.error.as_deref())));
            }
            _ => {
                row.push(format!("FAILED: {}", short(c.error.as_deref())));
            }
        }
        rows.push(row);
    }
    print_rows(&rows, 3);
}

pub const LEGEND: &str = "\
dump ms: wall time of `crest dump` (file: written, fsynced and renamed); frozen ms: crest's own
  report of how long the process was stopped; restore ms: wall time of `crest restore -d` until the
  process runs again. img/data: image size / non-zero memory the workload touched.
RSS and CPU: crest's peak RSS and user+system time from wait4().
sinks: file = image on the work directory (restore reads it back from the page cache);
  pipe = dump into a pipe drained by a memory-speed reader, restore from a pipe a memory-speed
  writer fills (each side timed on its own); live = `crest dump -o - | crest restore -i - -d`
  started together, so restore ms is the whole move.
dump/dd: dump ms / `dd if=/dev/zero bs=1M count=MiB` into a new file (page cache);
  dump/dd+fsync: the same with conv=fsync; restore/first-touch: restore ms / copying MiB into fresh
  anonymous memory 1 MiB at a time. GB/s: image bytes / wall time (1 GB = 1e9 B).
memcpy: copying MiB between two faulted buffers; vm_readv: the same copy with process_vm_readv;
  either is the time to copy the memory once that frozen time with --leave-running is held to.
modes: plain = `crest dump`; compress = `crest dump --compress`; leave-running = `crest dump
  --leave-running`: the process goes on, verifies its memory right after the dump and ends, then
  the image is restored and verified again.
mem workloads: mem-N = N MiB of random (incompressible) pages; -half0 = every other page zero;
  -text = text-like pages (words of a 64-word dictionary, about 1.5 bits a byte of entropy);
  -busy = random pages, a sixteenth of which the process keeps rewriting (about 128 MiB/s) while
  it is dumped with --leave-running; the restored copy checks they were captured at one instant.
leave-running: pre-copied / copied frozen MiB come from crest's report when it has them. At small
  sizes frozen time is mostly the fixed cost of stopping and resuming the process, which a copy of
  a few MiB does not have.
Scaling: tree and threads also run with twice the processes / threads; x = time(2x)/time(1x).
Targets are judged on this run's medians; at small sizes and on a busy machine they are noisy.
Every run's restored workload verified all of its memory itself before the run counted.";
