//! `crest-workload`: self-verifying programs for crest's checkpoint/restore
//! tests.
//!
//! Usage: `crest-workload <scenario> <dir> [extra args...]`. See README.md for
//! the protocol spoken with the test harness and the list of scenarios.

mod checks;
mod common;
mod family;
mod probe;
mod proto;
mod scenarios;
mod util;

use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: crest-workload <scenario> <dir> [extra args...]");
    eprintln!("scenarios: {}", scenarios::NAMES.join(", "));
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.len() < 3 {
        usage();
    }
    let Some(run) = scenarios::lookup(&args[1]) else {
        eprintln!("crest-workload: unknown scenario {:?}", args[1]);
        usage();
    };
    let proto = proto::Proto::new(PathBuf::from(&args[2]));
    proto.install_panic_hook();
    let checks = run(&proto, &args[3..]);
    proto.finish(&checks)
}
