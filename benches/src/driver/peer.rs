//! CRIU as a peer: whether a `criu` on PATH can checkpoint on this
//! machine (`criu check`), said in a notice at the start of the run.
//!
//! Only the check is here: the side-by-side dump and restore of the same
//! workloads (`criu dump -t PID -D DIR --shell-job`, `criu restore -D DIR
//! --shell-job -d`) is not written yet, since no criu that works on this
//! machine's kernel was at hand to test it (Debian 12's criu 3.17.1 fails
//! `criu check` on Linux 6.18: "vdso: Unexpected rt vDSO area bounds").

use std::process::Command;

/// One line about the CRIU peer, for the start of the run.
pub fn criu_notice() -> String {
    let Some(path) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("criu"))
            .find(|c| c.is_file())
    }) else {
        return "CRIU peer: no criu on PATH, skipped (crest/CRIU ratios not measured)".into();
    };
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', " "))
        .unwrap_or_default();
    match Command::new(&path).arg("check").output() {
        Ok(o) if o.status.success() => format!(
            "CRIU peer: {} ({version}) passes `criu check`, but the side-by-side measurement is not implemented yet: skipped",
            path.display()
        ),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let first = err
                .lines()
                .find(|l| l.starts_with("Error"))
                .unwrap_or(err.trim());
            format!(
                "CRIU peer: {} ({version}) does not work on this kernel (`criu check`: {first}): skipped",
                path.display()
            )
        }
        Err(e) => format!("CRIU peer: running {}: {e}: skipped", path.display()),
    }
}
