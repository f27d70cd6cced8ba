//! One module per scenario. Each `run` sets its state up, writes `ready`,
//! waits for go, and returns the failed checks.

use crate::checks::Checks;
use crate::proto::Proto;

mod aio;
mod attrs;
mod cgroupns;
mod cgroups;
mod deleted;
mod events;
mod fdstate;
mod files;
mod hugetlb;
mod idle;
mod ipcshm;
mod lazy;
mod locks;
mod many;
mod mem_state;
mod memory;
mod mm;
mod mqueue;
mod mutator;
mod notify;
mod opath_links;
mod pidfd;
mod pidns;
mod pipes;
mod posix_timers;
mod procfiles;
mod pty;
mod read;
mod regs;
mod regs_asm;
mod seccomp;
mod shared_fd;
mod sigcount;
mod signals;
mod sleep;
mod task_state;
mod terminals;
mod thp;
mod threads;
mod timens;
mod timers;
mod tree;
mod unix_sockets;
mod unixnames;
mod unlinked_maps;
mod unsupported;

pub type Run = fn(&Proto, &[String]) -> Checks;

const TABLE: &[(&str, Run)] = &[
    ("regs", regs::run),
    ("sleep", sleep::run),
    ("read", read::run),
    ("memory", memory::run),
    ("thp", thp::run),
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
    ("sigcount", sigcount::run),
    ("locks", locks::run),
    ("fdstate", fdstate::run),
    ("deleted", deleted::run),
    ("procfiles", procfiles::run),
    ("unixnames", unixnames::run),
    ("task-state", task_state::run),
    ("cgroups", cgroups::run),
    ("mem-state", mem_state::run),
    ("seccomp", seccomp::run),
    ("pidfd", pidfd::run),
    ("pidns", pidns::run),
    ("ipcshm", ipcshm::run),
    ("unlinked-maps", unlinked_maps::run),
    ("opath-links", opath_links::run),
    ("timens", timens::run),
    ("cgroupns", cgroupns::run),
    ("hugetlb", hugetlb::run),
    ("aio", aio::run),
    ("fanotify", notify::run_fanotify),
    ("inotify-deleted", notify::run_inotify_deleted),
    ("terminals", terminals::run),
    ("lazy", lazy::run),
    ("mqueue", mqueue::run),
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
    "unsupported <thread|child|socket|netlink|packet|raw|uring>",
    "sigcount",
    "locks",
    "fdstate",
    "deleted",
    "procfiles",
    "unixnames",
    "task-state",
    "cgroups <v1-dir> <v1-child-dir> <v2-dir> <v1-thread-dir>",
    "mem-state",
    "seccomp [hostile]",
    "pidfd",
    "pidns [nested] [inside]",
    "ipcshm",
    "unlinked-maps",
    "opath-links",
    "timens <min-seconds>",
    "cgroupns",
    "hugetlb <kB>...",
    "aio",
    "fanotify <tmpfs-dir> [queued]",
    "inotify-deleted [mapped]",
    "terminals <A> <B> | alias",
    "lazy [MiB] [fork] [spin]",
    "thp [MiB]",
    "mqueue [inside] [host] [notify] [unlinked] [nofds] [unowned]",
];

pub fn lookup(name: &str) -> Option<Run> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}
