//! crest's error type: every error says what crest was doing.

use std::fmt;

/// Something in the tree that crest cannot checkpoint, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Obstacle {
    /// The task (pid or tid) the object belongs to.
    pub pid: i32,
    /// The object: "fd 7", "mapping 7f00..-7f10..", "thread 1234", …
    pub object: String,
    pub reason: String,
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}: {}: {}", self.pid, self.object, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sys(#[from] crest_sys::Error),
    #[error(transparent)]
    Image(#[from] crest_image::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The tree holds things crest cannot checkpoint.
    #[error("{}", obstacles_text(.0))]
    Unsupported(Vec<Obstacle>),
    /// The image cannot be restored on this machine.
    #[error("{0}")]
    Incompatible(String),
    /// The image decodes but says something impossible.
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("{0}")]
    Msg(String),
    /// What crest was doing, then the error that stopped it.  Its text
    /// holds both, and it has no `source()` (as every error of crest's and
    /// its crates: see `crest_sys::Error`), so a report that prints the
    /// chain says each part once.
    #[error("{context}: {inner}")]
    Context { context: String, inner: Box<Error> },
}

fn obstacles_text(obs: &[Obstacle]) -> String {
    match obs {
        [one] => one.to_string(),
        _ => {
            let mut s = format!("{} things cannot be checkpointed:", obs.len());
            for o in obs {
                s.push_str("\n  ");
                s.push_str(&o.to_string());
            }
            s
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What crest refuses to checkpoint about one object: the reason, in words
/// for the user (the caller makes it an [`Obstacle`] naming the task and
/// the object).
pub(crate) type Refusal<T> = std::result::Result<T, String>;

/// A copy of descriptor `fd` of `pid` (the same open file description),
/// or why it cannot be had, as a refusal's reason.
pub(crate) fn steal(pid: i32, fd: i32) -> Refusal<std::os::fd::OwnedFd> {
    crest_sys::pidfd::copy_fd(pid, fd).map_err(|e| e.to_string())
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }

    /// The errno, if this error is a failed system call (in crest or run
    /// in a task).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Sys(e) => e.errno(),
            Error::Io(e) => e.raw_os_error(),
            Error::Context { inner, .. } => inner.errno(),
            _ => None,
        }
    }

    /// The obstacles, if this error is a refusal to checkpoint.
    pub fn obstacles(&self) -> Option<&[Obstacle]> {
        match self {
            Error::Unsupported(o) => Some(o),
            Error::Context { inner, .. } => inner.obstacles(),
            _ => None,
        }
    }
}

/// Adds what crest was doing to an error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: what(),
            inner: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that prints an error and then its sources says each part
    /// once: the text holds the whole chain, and there is no source.
    #[test]
    fn context_text_holds_the_chain_and_no_source_repeats_it() {
        let os = crest_sys::Error::io(
            "reading /proc/7/maps",
            std::io::Error::from_raw_os_error(libc::ESRCH),
        );
        let e: Result<()> = Err::<(), _>(os).context(|| "dumping pid 7".into());
        let e = e.context(|| "checkpoint".to_string()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("checkpoint: dumping pid 7: reading /proc/7/maps: "),
            "{text}"
        );
        assert_eq!(text.matches("reading /proc/7/maps").count(), 1, "{text}");
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.errno(), Some(libc::ESRCH));
        let img = Error::from(crest_image::Error::from(std::io::Error::from_raw_os_error(
            libc::EIO,
        )));
        assert!(std::error::Error::source(&img).is_none(), "{img}");
    }
}
