//! `mm [args...]`: the mm-level layout the kernel reports: command line,
//! environment, auxv, exe link, comm and the code/data/brk/arg/env bounds of
//! /proc/self/stat, plus getauxval(AT_RANDOM) bytes and AT_PAGESZ. The
//! harness passes arbitrary extra args and environment; all must survive.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::show;

/// /proc/self/stat fields (1-based) describing the mm layout.
const STAT_FIELDS: [(usize, &str); 10] = [
    (26, "start_code"),
    (27, "end_code"),
    (28, "start_stack"),
    (45, "start_data"),
    (46, "end_data"),
    (47, "start_brk"),
    (48, "arg_start"),
    (49, "arg_end"),
    (50, "env_start"),
    (51, "env_end"),
];

struct Snapshot {
    files: Vec<(&'static str, Vec<u8>)>,
    exe: Option<String>,
    stat: Vec<u64>,
    at_random: usize,
    random_bytes: [u8; 16],
    pagesz: u64,
}

fn stat_fields() -> Result<Vec<u64>, String> {
    let s = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // Field 2 (comm) may contain spaces or parens: split after the last ')'.
    let rest = &s[s.rfind(')').ok_or("no ')' in stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3.
    STAT_FIELDS
        .iter()
        .map(|&(n, name)| {
            f.get(n - 3)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("stat field {n} ({name}) missing"))
        })
        .collect()
}

fn snapshot() -> Result<Snapshot, String> {
    let mut files = Vec::new();
    for name in ["cmdline", "environ", "auxv", "comm"] {
        let data = std::fs::read(format!("/proc/self/{name}"))
            .map_err(|e| format!("read /proc/self/{name}: {e}"))?;
        files.push((name, data));
    }
    // SAFETY: getauxval has no preconditions.
    let at_random = unsafe { libc::getauxval(libc::AT_RANDOM) } as usize;
    let mut random_bytes = [0u8; 16];
    if at_random != 0 {
        // SAFETY: AT_RANDOM points at 16 bytes on the initial stack, which
        // stays mapped for the life of the process.
        random_bytes = unsafe { *(at_random as *const [u8; 16]) };
    }
    Ok(Snapshot {
        files,
        exe: crate::util::readlink("/proc/self/exe"),
        stat: stat_fields()?,
        at_random,
        random_bytes,
        // SAFETY: getauxval has no preconditions.
        pagesz: unsafe { libc::getauxval(libc::AT_PAGESZ) },
    })
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let before = snapshot().unwrap_or_else(|e| p.bail(&format!("setup: {e}")));
    // Sanity: the snapshot describes this process, so the checks can fail.
    let argv: Vec<u8> = std::env::args_os()
        .flat_map(|a| {
            let mut v = std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()).to_vec();
            v.push(0);
            v
        })
        .collect();
    if before.files[0].1 != argv {
        p.bail(&format!(
            "setup: /proc/self/cmdline {} does not match argv {}",
            show(&before.files[0].1),
            show(&argv)
        ));
    }
    if before.at_random == 0 || before.pagesz == 0 || before.stat.contains(&0) {
        p.bail(&format!(
            "setup: zero values: AT_RANDOM={:#x} AT_PAGESZ={} stat fields={:?}",
            before.at_random, before.pagesz, before.stat
        ));
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    let after = match snapshot() {
        Ok(s) => s,
        Err(e) => {
            c.fail(format!("after go: {e}"));
            return c;
        }
    };
    for ((name, a), (_, b)) in before.files.iter().zip(&after.files) {
        c.ensure(a == b, || {
            format!(
                "/proc/self/{name}: expected \"{}\", got \"{}\"",
                show(a),
                show(b)
            )
        });
    }
    c.eq("readlink /proc/self/exe", &before.exe, &after.exe);
    for (i, &(n, name)) in STAT_FIELDS.iter().enumerate() {
        c.ensure(before.stat[i] == after.stat[i], || {
            format!(
                "/proc/self/stat field {n} ({name}): expected {:#x}, got {:#x}",
                before.stat[i], after.stat[i]
            )
        });
    }
    c.ensure(before.at_random == after.at_random, || {
        format!(
            "getauxval(AT_RANDOM): expected {:#x}, got {:#x}",
            before.at_random, after.at_random
        )
    });
    c.eq(
        "16 bytes at AT_RANDOM",
        before.random_bytes,
        after.random_bytes,
    );
    c.eq("getauxval(AT_PAGESZ)", before.pagesz, after.pagesz);
    base.verify(p, &mut c);
    c
}
