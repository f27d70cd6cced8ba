//! Fault injection for tests: make crest fail, or die, at the Nth
//! numbered point of a dump or restore.
//!
//! `CREST_FAULT_AT=N` makes the Nth call of [`point`] in the process fail
//! with an error naming the point (`CREST_FAULT_AT=NAME`: every call of
//! the point of that name); with `CREST_FAULT_MODE=kill` crest
//! SIGKILLs itself there instead.  Without the variable a point costs one
//! relaxed atomic load.  `CREST_FAULT_TRACE=1` prints every point passed
//! (to stderr) so tests can count them.
//!
//! The same points are where a dump or restore stops when asked to
//! ([`request_stop`], from a SIGINT or SIGTERM handler): the point fails
//! with an error naming the signal, and the run unwinds as for any error.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;

static HITS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicI32 = AtomicI32::new(0);

/// Asks the dump or restore under way to stop at its next point and
/// unwind, because of signal `sig`.  Async-signal-safe (one atomic store).
pub fn request_stop(sig: i32) {
    STOP.store(sig, Ordering::Relaxed);
}

/// The signal a stop was requested for, if one was.
pub fn stop_requested() -> Option<i32> {
    Some(STOP.load(Ordering::Relaxed)).filter(|&s| s != 0)
}

struct Config {
    at: u64,
    name: Option<String>,
    kill: bool,
    trace: bool,
}

fn config() -> &'static Option<Config> {
    static C: OnceLock<Option<Config>> = OnceLock::new();
    C.get_or_init(|| {
        let v = std::env::var("CREST_FAULT_AT").ok();
        let at = v.as_deref().and_then(|v| v.parse().ok());
        let name = v.filter(|_| at.is_none());
        let trace = std::env::var_os("CREST_FAULT_TRACE").is_some();
        if at.is_none() && name.is_none() && !trace {
            return None;
        }
        Some(Config {
            at: at.unwrap_or(0),
            name,
            kill: std::env::var("CREST_FAULT_MODE").as_deref() == Ok("kill"),
            trace,
        })
    })
}

/// A place where a test may make crest fail.
pub fn point(name: &str) -> Result<()> {
    if let Some(sig) = stop_requested() {
        let what = match sig {
            libc::SIGINT => "SIGINT".to_string(),
            libc::SIGTERM => "SIGTERM".to_string(),
            libc::SIGHUP => "SIGHUP".to_string(),
            s => format!("signal {s}"),
        };
        return Err(Error::msg(format!("interrupted by {what}")));
    }
    let Some(c) = config() else {
        return Ok(());
    };
    let n = HITS.fetch_add(1, Ordering::Relaxed) + 1;
    if c.trace {
        eprintln!("crest-fault-point {n} {name}");
    }
    if n == c.at || c.name.as_deref() == Some(name) {
        if c.kill {
            // SAFETY: plain kill of ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        return Err(Error::msg(format!("injected fault at point {n} ({name})")));
    }
    Ok(())
}
