//! crest: transparent checkpoint/restart of Linux processes.
//!
//! `dump` freezes a process tree, collects its [`model`] and writes it as
//! one image stream; `restore` reads an image and rebuilds the tree with
//! the same PIDs.  One module per kernel concept owns both directions
//! (collect and restore, check, image record), grouped by concern:
//!
//! - [`model`], [`objects`], [`error`]: the central data structure, its
//!   table of shared objects, and errors;
//! - [`codec`]: the image records, old-format readers, `convert`, `inspect`;
//! - [`dump`]: seize, collect, write, pre-copy for `--leave-running`, the
//!   dump lock and unwinding on signals;
//! - [`restore`]: the plan and the stub processes the tree is built from;
//! - [`task`]: seizing and injecting syscalls, the tree, credentials,
//!   signals, timers, job control, seccomp, cgroup membership;
//! - [`memory`]: mappings, mm state, copy-on-write sharing, SysV segments;
//! - [`files`]: descriptors and what they open (files, pipes, event fds,
//!   ptys, locks, pidfds, unlinked and deleted files);
//! - [`net`]: sockets (UNIX, TCP, UDP, netlink) and the network lock;
//! - [`ns`]: namespaces; [`migrate`]: live migration between hosts.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod codec;
pub mod dump;
pub(crate) mod error;
pub mod fault;
pub(crate) mod files;
pub mod memory;
pub mod migrate;
pub mod model;
pub(crate) mod net;
pub mod ns;
pub(crate) mod objects;
pub mod restore;
pub(crate) mod task;

pub use dump::{check, check_with, dump, DumpOptions, DumpReport};
pub use error::{Error, Obstacle, Result};
pub use ns::mnt::Mapping as MountMapping;
pub use restore::NamespacesHook;
pub use restore::{restore, restore_with, ExistingNs, RestoreOptions, RestoreReport};
