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
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
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
            Error::Context { source, .. } => source.errno(),
            _ => None,
        }
    }

    /// The obstacles, if this error is a refusal to checkpoint.
    pub fn obstacles(&self) -> Option<&[Obstacle]> {
        match self {
            Error::Unsupported(o) => Some(o),
            Error::Context { source, .. } => source.obstacles(),
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
            source: Box::new(e.into()),
        })
    }
}
