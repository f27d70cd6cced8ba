//! Small safe wrappers over the Linux interfaces crest needs.
//!
//! Every `unsafe` block lives here, behind a function with a narrow, safe
//! signature, and carries a `// SAFETY:` line.  Errors name what was being
//! done (which pid, which file, which address), so callers can pass them on
//! to users without adding guesswork.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod actas;
pub mod agent;
pub mod arch;
pub mod error;
pub mod event;
pub mod fanotify;
pub mod fhandle;
pub mod inetdiag;
pub mod inject;
pub mod mem;
pub mod mount;
pub mod mqueue;
pub mod namelock;
pub mod net;
pub mod ns;
pub mod pidfd;
pub mod proc;
pub mod process;
pub mod ptrace;
pub mod sockdiag;
pub mod sysvipc;
pub mod trampoline;
pub mod tty;
pub mod uffd;
pub mod unixq;
pub mod unlinked;
pub mod userns_early;
pub mod watchdog;

pub use error::{Error, Result};
