//! This machine's own limits, measured in the same run as crest:
//! `dd bs=1M` into a new file (the page-cache write bound for a dump; with
//! `conv=fsync` the disk bound), and first-touching fresh anonymous memory
//! by copying into it (the bound for a restore), plus a plain memcpy
//! between two faulted buffers and a process_vm_readv copy (the two
//! measures of "copying the memory once" that frozen time is held to).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::procs::Spawned;
use crate::stats::median;

#[derive(Serialize, Clone, Debug)]
pub struct Baseline {
    pub mib: u64,
    /// `dd if=/dev/zero of=FILE bs=1M count=MIB` (page cache).
    pub dd_ms: Vec<f64>,
    /// The same with `conv=fsync` (to the disk).
    pub dd_fsync_ms: Vec<f64>,
    /// Copy MIB MiB into fresh anonymous memory, 1 MiB at a time.
    pub first_touch_ms: Vec<f64>,
    /// The same copy into the now faulted memory.
    pub memcpy_ms: Vec<f64>,
    /// The same copy with process_vm_readv (as a dumper reads memory).
    pub vm_readv_ms: Vec<f64>,
    pub median: BaselineMedian,
}

#[derive(Serialize, Clone, Copy, Debug)]
pub struct BaselineMedian {
    pub dd_ms: f64,
    pub dd_fsync_ms: f64,
    pub first_touch_ms: f64,
    pub memcpy_ms: f64,
    pub vm_readv_ms: f64,
}

fn dd(file: &Path, mib: u64, fsync: bool) -> Result<f64, String> {
    let _ = std::fs::remove_file(file);
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("status=none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if fsync {
        cmd.arg("conv=fsync");
    }
    let t = Instant::now();
    let out = cmd.output().map_err(|e| format!("running dd: {e}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(file);
    if !out.status.success() {
        return Err(format!(
            "dd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(ms)
}

/// Runs `crest-bench-workload touch MIB REPS` and reads its JSON.
/// The touch helper's times: first-touch, memcpy, process_vm_readv.
type TouchTimes = (Vec<f64>, Vec<f64>, Vec<f64>);

fn touch(workload: &Path, mib: u64, reps: usize) -> Result<TouchTimes, String> {
    let mut cmd = Command::new(workload);
    cmd.arg("touch")
        .arg(mib.to_string())
        .arg(reps.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut s = Spawned::spawn(&mut cmd).map_err(|e| format!("running the touch baseline: {e}"))?;
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(o) = s.child.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = s.child.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    let end = s
        .wait()
        .map_err(|e| format!("waiting for the touch baseline: {e}"))?;
    if !end.success() {
        return Err(format!(
            "touch baseline: {}: {}",
            end.describe(),
            err.trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("touch baseline output: {e}"))?;
    let list = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    Ok((
        list("first_touch_ms"),
        list("memcpy_ms"),
        list("vm_readv_ms"),
    ))
}

impl Baseline {
    pub fn new(mib: u64) -> Baseline {
        let nan = f64::NAN;
        Baseline {
            mib,
            dd_ms: Vec::new(),
            dd_fsync_ms: Vec::new(),
            first_touch_ms: Vec::new(),
            memcpy_ms: Vec::new(),
            vm_readv_ms: Vec::new(),
            median: BaselineMedian {
                dd_ms: nan,
                dd_fsync_ms: nan,
                first_touch_ms: nan,
                memcpy_ms: nan,
                vm_readv_ms: nan,
            },
        }
    }

    /// How many times each bound has been measured.
    pub fn samples(&self) -> usize {
        self.first_touch_ms.len()
    }

    /// Measures each bound once more. The driver takes one sample per
    /// repetition, next to crest's runs of the same size, so that each
    /// ratio compares measurements taken close together in time.
    pub fn sample(&mut self, workdir: &Path, workload: &Path) -> Result<(), String> {
        let file = workdir.join("dd.out");
        self.dd_ms.push(dd(&file, self.mib, false)?);
        self.dd_fsync_ms.push(dd(&file, self.mib, true)?);
        let (touch, copy, readv) = touch(workload, self.mib, 1)?;
        match (touch.first(), copy.first(), readv.first()) {
            (Some(&t), Some(&c), Some(&r)) => {
                self.first_touch_ms.push(t);
                self.memcpy_ms.push(c);
                self.vm_readv_ms.push(r);
            }
            _ => return Err("the touch baseline printed no times".into()),
        }
        self.finish();
        Ok(())
    }

    fn finish(&mut self) {
        self.median = BaselineMedian {
            dd_ms: median(&self.dd_ms),
            dd_fsync_ms: median(&self.dd_fsync_ms),
            first_touch_ms: median(&self.first_touch_ms),
            memcpy_ms: median(&self.memcpy_ms),
            vm_readv_ms: median(&self.vm_readv_ms),
        };
    }

    /// The last sample, for progress output.
    pub fn last(&self) -> String {
        let l = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        format!(
            "dd {:.1} ms, dd+fsync {:.1} ms, first-touch {:.1} ms, memcpy {:.1} ms, \
             process_vm_readv {:.1} ms",
            l(&self.dd_ms),
            l(&self.dd_fsync_ms),
            l(&self.first_touch_ms),
            l(&self.memcpy_ms),
            l(&self.vm_readv_ms)
        )
    }
}
