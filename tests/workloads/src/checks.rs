//! Collects failed checks; every failure becomes one line of the result file.

use std::fmt::Debug;

#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failed check.
    pub fn fail(&mut self, msg: impl Into<String>) {
        let msg: String = msg.into();
        // One line per failure: the result file is line-oriented.
        self.failures.push(msg.replace('\n', "\\n"));
    }

    /// Records a failure unless `cond` holds; `msg` is only built on failure.
    pub fn ensure(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(msg());
        }
    }

    /// Records a failure unless `expected == got`.
    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, expected: T, got: T) {
        if expected != got {
            self.fail(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}
