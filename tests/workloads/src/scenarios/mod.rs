//! One module per scenario. Each `run` sets its state up, writes `ready`,
//! waits for go, and returns the failed checks.

use crate::checks::Checks;
use crate::proto::Proto;

mod attrs;
mod events;
mod files;
mod idle;
mod many;
mod memory;
mod mm;
mod mutator;
mod pidns;
mod pipes;
mod posix_timers;
mod pty;
mod read;
mod regs;
mod regs_asm;
mod shared_fd;
mod signals;
mod sleep;
mod threads;
mod timers;
mod tree;
mod unix_sockets;
mod unsupported;

pub type Run = fn(&Proto, &[String]) -> Checks;

const TABLE: &[(&str, Run)] = &[
    ("regs", regs::run),
    ("sleep", sleep::run),
    ("read", read::run),
    ("memory", memory::run),
    ("mm", mm::run),
    ("signals", signals::run),
    ("timers", timers::run),
    ("alarm", timers::run_alarm),
    ("files", files::run),
    ("attrs", attrs::run),
    ("threads", threads::run),
    ("tree", tree::run),
    ("shared-fd", shared_fd::run),
    ("pipes", pipes::run),
    ("many", many::run),
    ("mutator", mutator::run),
    ("events", events::run),
    ("posix-timers", posix_timers::run),
    ("pty", pty::run),
    ("idle", idle::run),
    ("unix-sockets", unix_sockets::run),
    ("unsupported", unsupported::run),
    ("pidns", pidns::run),
];

pub const NAMES: &[&str] = &[
    "regs <busy|sleep>",
    "sleep",
    "read",
    "memory [MiB]",
    "mm [args...]",
    "signals",
    "timers [itimer|alarm]",
    "alarm",
    "files",
    "attrs",
    "threads [N]",
    "tree [sibling-pgrp]",
    "shared-fd",
    "pipes",
    "many [children] [threads-per-child] [MiB-per-child]",
    "mutator [MiB] [no-churn]",
    "events [queued-inotify]",
    "posix-timers",
    "pty [unread]",
    "idle",
    "unix-sockets",
    "unsupported <thread|child|socket|netlink>",
    "pidns [nested] [inside]",
];

pub fn lookup(name: &str) -> Option<Run> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}
