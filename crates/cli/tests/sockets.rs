//! AF_UNIX sockets between the processes of a tree (socketpairs, a
//! listener with connections waiting, an abstract server with an
//! accepted connection, data queued both ways), dumped and restored
//! through the `crest` binary: every process checks its sockets itself.

mod common;
use common::*;

#[test]
fn unix_sockets() {
    Workload::start("unix-sockets", &[]).cycle();
}

#[test]
fn unix_sockets_twice() {
    // A restored tree's sockets can be checkpointed again.
    Workload::start("unix-sockets", &[]).cycle_twice();
}

#[test]
fn unix_sockets_leave_running_and_inspect() {
    // The dump reads the queues without consuming them and puts the
    // peek offset back: the tree runs on exactly as before.
    Workload::start("unix-sockets", &[]).leave_running_and_inspect(&[
        "AF_UNIX stream socket",
        "AF_UNIX datagram socket",
        "3 messages / 318 bytes queued",
        "AF_UNIX seqpacket socket",
        "listen.sock, listening (backlog 5, 2 waiting)",
        "@crest-wl-",
    ]);
}
