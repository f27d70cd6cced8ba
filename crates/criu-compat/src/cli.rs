//! The command line of the `criu` name: what runtimes run.
//!
//! - `criu --version` (`-V`): `Version: 3.19` as CRIU prints it (old
//!   runtimes parsed that line; current ones ask with the VERSION request);
//! - `criu check [--feature NAME]…`: the same checks as the CHECK request,
//!   and an honest answer per feature;
//! - `criu swrk FD`: serve the RPC on inherited socket FD.
//!
//! Anything else (CRIU's own `dump`, `restore`… command lines) is refused
//! with a pointer to `crest dump`/`crest restore`.

use crate::{server, transport, CRIU_VERSION};
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};

/// The version as CRIU's `--version` prints it.
pub fn version_text() -> String {
    let (major, minor, sub) = CRIU_VERSION;
    let v = if sub != 0 {
        format!("{major}.{minor}.{sub}")
    } else {
        format!("{major}.{minor}")
    };
    format!(
        "Version: {v}\ncrest {} (criu-compatible front)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Features `criu check --feature` knows, and whether crest has them:
/// those crest itself relies on and restores (timerfd state, clone3 with
/// set_tid, mapping the vDSO), none of CRIU's optional features.
const FEATURES: &[(&str, bool)] = &[
    ("mnt_id", false),
    ("mem_dirty_track", false),
    ("aio_remap", false),
    ("timerfd", true),
    ("tun", false),
    ("tun_ns", false),
    ("userns", false),
    ("fdinfo_lock", false),
    ("seccomp_suspend", false),
    ("seccomp_filters", false),
    ("loginuid", false),
    ("cgroupns", false),
    ("autofs", false),
    ("tcp_half_closed", false),
    ("compat_cr", false),
    ("uffd", false),
    ("uffd-noncoop", false),
    ("can_map_vdso", true),
    ("sk_ns", false),
    ("sk_unix_file", false),
    ("net_diag_raw", false),
    ("nsid", false),
    ("link_nsid", false),
    ("kcmp_epoll", false),
    ("timens", false),
    ("external_net_ns", false),
    ("clone3_set_tid", true),
    ("newifindex", false),
    ("pidfd_store", false),
    ("ns_pid", false),
    ("apparmor_stacking", false),
    ("network_lock_nftables", false),
    ("sockopt_buf_lock", false),
    ("memfd_hugetlb", false),
    ("move_mount_set_group", false),
    ("get_rseq_conf", false),
    ("ipv6_freebind", false),
    ("lazy_pages", false),
];

/// Runs the `criu` command line `args` (argv[0] included); returns the
/// exit status.
pub fn main(args: &[OsString]) -> i32 {
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.iter().any(|a| a == "-V" || a == "--version") {
        print!("{}", version_text());
        return 0;
    }
    match args.first().map(String::as_str) {
        Some("swrk") => swrk(args.get(1).map(String::as_str)),
        Some("check") => check(&args[1..]),
        Some("-h") | Some("--help") | None => {
            println!(
                "usage: criu swrk FD | criu check [--feature NAME] | criu --version\n\
                 This is crest's criu-compatible front for container runtimes; use \
                 `crest dump`/`crest restore` directly otherwise."
            );
            i32::from(args.is_empty())
        }
        Some(cmd) => {
            eprintln!(
                "criu {cmd}: crest's criu front implements only `swrk` (the RPC container \
                 runtimes use), `check` and `--version`; use `crest dump`/`crest restore`"
            );
            1
        }
    }
}

fn swrk(fd: Option<&str>) -> i32 {
    let Some(fd) = fd.and_then(|s| s.parse::<i32>().ok()).filter(|n| *n >= 0) else {
        eprintln!("criu swrk: usage: criu swrk FD (an inherited SOCK_SEQPACKET socket)");
        return 1;
    };
    // SAFETY: F_GETFD only queries the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        eprintln!("criu swrk: descriptor {fd} is not open");
        return 1;
    }
    // SAFETY: the runtime handed this descriptor to us for the protocol;
    // nothing else in this process uses it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    {
        use std::os::fd::AsFd;
        if let Err(e) = transport::check_socket(sock.as_fd()) {
            eprintln!("criu swrk: {e}");
            return 1;
        }
    }
    // SAFETY: sets close-on-exec on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    server::serve(sock)
}

fn check(args: &[String]) -> i32 {
    let mut features = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--feature=") {
            features.push(v.to_string());
        } else if a == "--feature" {
            match it.next() {
                Some(v) => features.push(v.clone()),
                None => {
                    eprintln!("criu check: --feature needs a name");
                    return 1;
                }
            }
        } else if a == "--all" || a == "--extra" || a == "--experimental" {
        } else {
            eprintln!("criu check: unknown option {a}");
            return 1;
        }
    }
    if let Err(f) = server::check() {
        eprintln!("Error: {}", f.msg);
        return 1;
    }
    if features.is_empty() {
        println!("Looks good.");
        return 0;
    }
    let mut status = 0;
    for f in features {
        match FEATURES.iter().find(|(n, _)| *n == f) {
            Some((_, true)) => println!("{f} is supported"),
            Some((_, false)) => {
                println!("{f} is not supported by crest");
                status = 1;
            }
            None => {
                eprintln!("criu check: unknown feature {f}");
                status = 1;
            }
        }
    }
    status
}
