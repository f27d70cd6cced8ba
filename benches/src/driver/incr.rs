//! The incremental case: `crest-bench-incremental --machine` (next to
//! this binary) dumps a `mem MIB steps` workload with `--leave-running
//! --digests --track`, lets it rewrite 5 % of its pages, dumps it with
//! `--parent --track`, and so on (see its module comment); here its
//! figures become a table and the two incremental targets.

use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// One size of the incremental case.
#[derive(Serialize, Clone, Debug)]
pub struct Incremental {
    pub mib: u64,
    /// A plain `--leave-running --no-pre-copy` dump, for reference.
    pub plain_s: f64,
    pub first_s: f64,
    pub first_bytes: u64,
    pub second_s: f64,
    pub second_bytes: u64,
    pub third_bytes: u64,
    /// Restore of the third image (reading the chain), verified.
    pub restore_s: f64,
    /// second_bytes / first_bytes and second_s / first_s.
    pub byte_ratio: f64,
    pub time_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the case at each size in `sizes` (MiB).
pub fn run(
    bin: &Path,
    crest: &Path,
    workdir: &Path,
    sizes: &[u64],
    reps: usize,
) -> Vec<Incremental> {
    let failed = |mib, e: String| Incremental {
        mib,
        plain_s: f64::NAN,
        first_s: f64::NAN,
        first_bytes: 0,
        second_s: f64::NAN,
        second_bytes: 0,
        third_bytes: 0,
        restore_s: f64::NAN,
        byte_ratio: f64::NAN,
        time_ratio: f64::NAN,
        error: Some(e),
    };
    let mut out = Vec::new();
    for &mib in sizes {
        let o = Command::new(bin)
            .arg("--machine")
            .args(["--sizes", &mib.to_string(), "--reps", &reps.to_string()])
            .arg("--crest")
            .arg(crest)
            .arg("--workdir")
            .arg(workdir)
            .output();
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                out.push(failed(mib, format!("running {}: {e}", bin.display())));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().find(|l| l.starts_with("incr "));
        let w: Vec<&str> = line.unwrap_or("").split(' ').collect();
        let f = |i: usize| w.get(i).and_then(|s| s.parse::<f64>().ok());
        let u = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
        match (f(2), f(3), u(4), f(5), u(6), u(7), f(8)) {
            (
                Some(plain_s),
                Some(first_s),
                Some(fb),
                Some(second_s),
                Some(sb),
                Some(tb),
                Some(rs),
            ) => out.push(Incremental {
                mib,
                plain_s,
                first_s,
                first_bytes: fb,
                second_s,
                second_bytes: sb,
                third_bytes: tb,
                restore_s: rs,
                byte_ratio: sb as f64 / fb.max(1) as f64,
                time_ratio: second_s / first_s,
                error: None,
            }),
            _ => out.push(failed(
                mib,
                format!(
                    "{} {}",
                    line.unwrap_or("no result"),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            )),
        }
    }
    out
}

/// The table, if the case ran.
pub fn print(rows: &[Incremental]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let mut s = String::from(
        "incremental dump (--leave-running; 5 % of the pages rewritten between dumps; 1st --digests --track, 2nd --parent --track)\n",
    );
    s.push_str("  MiB | plain s | 1st s   | 1st MiB  | 2nd s   | 2nd MiB | bytes 2nd/1st | time 2nd/1st | restore of 3rd s\n");
    for r in rows {
        match &r.error {
            Some(e) => s.push_str(&format!("{:5} | FAILED: {e}\n", r.mib)),
            None => s.push_str(&format!(
                "{:5} | {:7.3} | {:7.3} | {:8.1} | {:7.3} | {:7.1} | {:12.2}% | {:11.3}x | {:.3}\n",
                r.mib,
                r.plain_s,
                r.first_s,
                r.first_bytes as f64 / crest_bench::MIB as f64,
                r.second_s,
                r.second_bytes as f64 / crest_bench::MIB as f64,
                r.byte_ratio * 100.0,
                r.time_ratio,
                r.restore_s
            )),
        }
    }
    Some(s)
}
