//! `crest-bench-workload`: the programs crest-bench checkpoints and
//! restores, plus two helpers of the driver.
//!
//! ```text
//! crest-bench-workload mem DIR MIB [half-zero|text|busy]
//! crest-bench-workload maps DIR COUNT
//! crest-bench-workload tree DIR PROCS MIB
//! crest-bench-workload threads DIR COUNT
//! crest-bench-workload conns DIR PAIRS
//! crest-bench-workload touch MIB REPS      (baseline: first-touch, memcpy, process_vm_readv)
//! crest-bench-workload relay CAPACITY      (memory-speed pipe endpoint)
//! ```
//!
//! The workloads speak the file protocol in `proto`: set up, write
//! `DIR/ready`, wait for `DIR/go`, verify, write `DIR/result`, exit 0 or 1.

mod conns;
mod maps;
mod mem;
mod proto;
mod region;
mod relay;
mod threads;
mod touch;
mod tree;

use std::path::PathBuf;

const USAGE: &str = "usage: crest-bench-workload mem|maps|tree|threads|conns DIR ARGS... | touch MIB REPS | relay CAPACITY";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(kind) = args.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let helper = match kind.as_str() {
        "touch" => Some(touch::run(&args[1..])),
        "relay" => Some(relay::run(&args[1..])),
        _ => None,
    };
    if let Some(r) = helper {
        if let Err(e) = r {
            eprintln!("crest-bench-workload {kind}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let Some(dir) = args.get(1) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let p = proto::Proto::new(PathBuf::from(dir));
    let rest = &args[2..];
    match kind.as_str() {
        "mem" => mem::run(&p, rest),
        "maps" => maps::run(&p, rest),
        "tree" => tree::run(&p, rest),
        "threads" => threads::run(&p, rest),
        "conns" => conns::run(&p, rest),
        other => p.finish(Err(format!("unknown workload {other:?}; {USAGE}"))),
    }
}
