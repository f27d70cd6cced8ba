//! crest: transparent checkpoint/restart of Linux processes.
//!
//! `dump` freezes a process, collects its [`model`] and writes it as one
//! image stream; `restore` reads an image and rebuilds the process with
//! the same PID.  One module per kernel concept owns both directions:
//! [`memory`], [`files`], [`signals`], [`timers`], [`creds`], [`tasks`].

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod codec;
pub mod creds;
pub mod dump;
pub mod error;
pub mod events;
pub mod fault;
pub mod files;
pub mod freeze;
pub mod inspect;
pub mod memory;
pub mod migrate;
pub mod model;
pub mod objects;
pub mod pipeline;
pub mod precopy;
pub mod restore;
pub mod signals;
pub mod sockets;
pub mod stub;
pub mod sysv;
pub mod tasks;
pub mod timers;
pub mod tty;

pub use dump::{check, dump, DumpOptions, DumpReport};
pub use error::{Error, Obstacle, Result};
pub use restore::{restore, RestoreReport};
