//! Medians and the machine description.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The median (the mean of the middle two for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[derive(Serialize, Debug)]
pub struct Machine {
    pub kernel: String,
    pub arch: String,
    pub nproc: i64,
    pub mem_total_kib: u64,
    pub cpu_model: String,
    pub transparent_hugepage: String,
}

fn field(s: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = s
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn machine() -> Machine {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname to fill.
    let ok = unsafe { libc::uname(&mut u) } == 0;
    let (kernel, arch) = if ok {
        (field(&u.release), field(&u.machine))
    } else {
        ("?".into(), "?".into())
    };
    // SAFETY: sysconf has no preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|r| r.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let transparent_hugepage =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
    Machine {
        kernel,
        arch,
        nproc,
        mem_total_kib,
        cpu_model,
        transparent_hugepage,
    }
}

#[derive(Serialize, Debug)]
pub struct CrestInfo {
    pub path: String,
    /// `crest --version`.
    pub version: String,
    /// The commit of the source tree crest-bench was built from (with
    /// `-dirty` if tracked files differ from it): crest's own source when
    /// both come from one `benches/run.sh`.
    pub bench_source_git: Option<String>,
}

pub fn crest_info(crest: &Path) -> CrestInfo {
    let version = Command::new(crest)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let bench_source_git = git(&["rev-parse", "HEAD"]).map(|head| {
        match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{head}-dirty"),
            _ => head,
        }
    });
    CrestInfo {
        path: crest.display().to_string(),
        version,
        bench_source_git,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }
}
