//! crest's `criu`-compatible front.
//!
//! Container runtimes (runc through go-criu, crun through libcriu, podman
//! through both) checkpoint containers by starting `criu swrk FD` and
//! talking the RPC of CRIU's `rpc.proto` over the inherited SOCK_SEQPACKET
//! socket. The `crest` binary, invoked under the name `criu`, serves that
//! protocol here with crest's own dump and restore behind it:
//!
//! - [`rpc`]: the messages (schema in `proto/rpc.proto`);
//! - [`wire`]: a raw look at a message, to refuse fields this schema does
//!   not know instead of dropping them;
//! - [`transport`]: one message per packet on the socket;
//! - [`options`]: what each option of a request means for crest, and the
//!   refusal of those crest does not implement, by name;
//! - [`server`]: the request loop (VERSION, CHECK, FEATURE_CHECK, DUMP,
//!   RESTORE, notifications);
//! - [`stats`]: the `stats-dump`/`stats-restore` files runtimes read back;
//! - [`cgroup`]: the cgroup checks behind `freeze_cgroup` and `cg_root`;
//! - [`cli`]: `criu --version`, `criu check`, `criu swrk FD`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cgroup;
pub mod cli;
pub mod inventory;
pub mod log;
pub mod options;
pub mod rpc;
pub mod server;
pub mod stats;
pub mod transport;
pub mod wire;

/// The CRIU version the front reports (VERSION request, `criu --version`).
/// Runtimes gate features on it: podman needs 3.11 (3.16 to restore into
/// pods), runc 3.0 (3.16 for an LSM profile on restore), crun's libcriu
/// 3.15.  Options those versions unlock that crest does not implement are
/// refused by name.
pub const CRIU_VERSION: (i32, i32, i32) = (3, 19, 0);

/// Name of the image crest writes inside the runtime's images directory.
pub const IMAGE_NAME: &str = "crest.img";
