//! crest: transparent checkpoint/restart of Linux processes.
//!
//! `dump` freezes a process, collects its [`model`] and writes it as one
//! image stream; `restore` reads an image and rebuilds the process with
//! the same PID.  One module per kernel concept owns both directions:
//! [`memory`], [`files`], [`signals`], [`timers`], [`creds`], [`tasks`].

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cgroups;
pub mod codec;
pub mod convert;
pub mod cow;
pub mod creds;
pub mod deleted;
pub mod dump;
pub mod error;
pub mod events;
pub mod fault;
pub mod filedata;
pub mod files;
pub mod fown;
pub mod freeze;
pub mod inspect;
pub mod jobctl;
pub mod lock;
pub mod locks;
pub mod memory;
pub mod migrate;
pub mod mmstate;
pub mod model;
pub mod net;
pub mod ns;
pub mod objects;
pub mod pidfd;
pub mod pipeline;
pub mod plan;
pub mod precopy;
pub mod procfiles;
pub mod restore;
pub mod seccomp;
pub mod signals;
pub mod sockets;
pub mod sockname;
pub mod stub;
pub mod sysv;
pub mod tasks;
pub mod timers;
pub mod tty;
pub mod ttydata;
pub mod unlinked;
pub mod unwind;

pub use dump::{check, check_with, dump, DumpOptions, DumpReport};
pub use error::{Error, Obstacle, Result};
pub use ns::mnt::Mapping as MountMapping;
pub use restore::{restore, restore_with, RestoreOptions, RestoreReport};
