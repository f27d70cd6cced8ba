//! The log file a runtime names (`log_file` in the work directory, at
//! `log_level`): crest's messages about the request, nothing else.
//!
//! Levels as CRIU numbers them: 0 only fatal messages, 1 errors,
//! 2 warnings (the default), 3 information, 4 debugging.  Each line starts
//! with the time since the request began, `(SS.ffffff)`.

use std::fs::File;
use std::io::Write;
use std::time::Instant;

pub const ERROR: i32 = 1;
pub const WARN: i32 = 2;
pub const INFO: i32 = 3;
pub const DEBUG: i32 = 4;

/// Where the messages of one request go.
pub struct Log {
    file: Option<File>,
    stderr: bool,
    level: i32,
    t0: Instant,
}

impl Log {
    /// A log that drops everything (before the options are known).
    pub fn none() -> Log {
        Log {
            file: None,
            stderr: false,
            level: 0,
            t0: Instant::now(),
        }
    }

    pub fn new(file: Option<File>, stderr: bool, level: i32) -> Log {
        Log {
            file,
            stderr,
            level,
            t0: Instant::now(),
        }
    }

    /// Writes `msg` if `level` is within the log's level.
    pub fn at(&mut self, level: i32, msg: &str) {
        if level > self.level.max(ERROR) || (self.file.is_none() && !self.stderr) {
            return;
        }
        let t = self.t0.elapsed();
        let prefix = match level {
            ERROR => "Error: ",
            WARN => "Warn: ",
            _ => "",
        };
        let mut line = String::new();
        for l in msg.lines() {
            line.push_str(&format!(
                "({:02}.{:06}) {prefix}{l}\n",
                t.as_secs(),
                t.subsec_micros()
            ));
        }
        if let Some(f) = &mut self.file {
            let _ = f.write_all(line.as_bytes());
        }
        if self.stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    pub fn error(&mut self, msg: &str) {
        self.at(ERROR, msg)
    }

    pub fn info(&mut self, msg: &str) {
        self.at(INFO, msg)
    }

    pub fn debug(&mut self, msg: &str) {
        self.at(DEBUG, msg)
    }
}
