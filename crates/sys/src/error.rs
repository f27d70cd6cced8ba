//! The error type shared by all wrappers.

use std::io;

/// An error from a Linux interface, with what crest was doing at the time.
///
/// Its text is the whole story (what crest was doing, then the kernel's
/// error), and it has no `source()`: a report that prints the chain says
/// each part once.  Code that needs the cause matches the fields.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{context}: {cause}")]
    Os { context: String, cause: io::Error },
    /// Text or binary data from the kernel (usually under /proc) did not
    /// have the expected form.
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps the current `errno` with a description of the failed action.
    pub fn last_os(context: impl Into<String>) -> Self {
        Error::Os {
            context: context.into(),
            cause: io::Error::last_os_error(),
        }
    }

    /// Wraps an `io::Error` with a description of the failed action.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            context: context.into(),
            cause: source,
        }
    }

    /// A parse error for the data read from `path`.
    pub fn parse(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// The errno of an OS error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { cause, .. } => cause.raw_os_error(),
            Error::Parse { .. } => None,
        }
    }
}
