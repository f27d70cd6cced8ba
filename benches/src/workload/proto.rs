//! The file protocol spoken with the driver.
//!
//! A workload sets itself up, writes `<dir>/info` (how much memory it
//! touched) and then `<dir>/ready` (its pid), both atomically; it then polls
//! for `<dir>/go` every 2 ms. When go appears — after the checkpoint and the
//! restore — it verifies its state and writes `<dir>/result` (`PASS` or
//! `FAIL reason`) and exits 0 or 1.

use std::path::{Path, PathBuf};

use crest_bench::{sleep_ns, write_atomic};

const GO_POLL_NS: u64 = 2_000_000;
/// Gives up after this much requested sleep (time frozen does not count),
/// so a workload left behind by a killed driver does not live forever.
const GO_TIMEOUT_NS: u64 = 900 * 1_000_000_000;

pub struct Proto {
    dir: PathBuf,
}

impl Proto {
    pub fn new(dir: PathBuf) -> Proto {
        Proto { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records how many bytes the workload touched and how many of them are
    /// non-zero (what an image has to carry).
    pub fn info(&self, touched: u64, nonzero: u64) {
        let text = format!("touched_bytes={touched}\nnonzero_bytes={nonzero}\n");
        if let Err(e) = write_atomic(&self.dir, "info", text.as_bytes()) {
            self.finish(Err(format!("writing info: {e}")));
        }
    }

    /// Writes `ready` with our pid.
    pub fn ready(&self) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if let Err(e) = write_atomic(&self.dir, "ready", format!("{pid}\n").as_bytes()) {
            self.finish(Err(format!("writing ready: {e}")));
        }
    }

    /// Waits for `<dir>/go`.
    pub fn wait_go(&self) -> Result<(), String> {
        wait_file(&self.dir.join("go"))
    }

    /// Waits for `<dir>/go`, calling `work` before each poll.
    pub fn wait_go_doing(&self, work: impl FnMut()) -> Result<(), String> {
        wait_file_doing(&self.dir.join("go"), work)
    }

    /// Writes the verdict and exits with 0 (pass) or 1.
    pub fn finish(&self, verdict: Result<(), String>) -> ! {
        let (text, code) = match &verdict {
            Ok(()) => ("PASS\n".to_string(), 0),
            Err(e) => (format!("FAIL {e}\n"), 1),
        };
        println!("{}", text.trim_end());
        if let Err(e) = write_atomic(&self.dir, "result", text.as_bytes()) {
            eprintln!("writing result: {e}");
            std::process::exit(2);
        }
        std::process::exit(code);
    }
}

/// Polls for `path` every 2 ms (`access` + a monotonic sleep).
pub fn wait_file(path: &Path) -> Result<(), String> {
    wait_file_doing(path, || {})
}

/// Polls for `path` every 2 ms, calling `work` before each poll.
pub fn wait_file_doing(path: &Path, mut work: impl FnMut()) -> Result<(), String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "path with NUL".to_string())?;
    let mut slept = 0u64;
    loop {
        work();
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::F_OK) } == 0 {
            return Ok(());
        }
        if slept >= GO_TIMEOUT_NS {
            return Err(format!("timed out waiting for {}", path.display()));
        }
        sleep_ns(GO_POLL_NS);
        slept += GO_POLL_NS;
    }
}
