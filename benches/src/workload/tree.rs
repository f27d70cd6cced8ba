//! `tree PROCS MIB`: a process tree of PROCS processes (this one and
//! PROCS-1 children), each with MIB MiB of pattern memory. Each child says
//! ready with `<dir>/child.<i>.ready`, waits for go, verifies its memory and
//! exits 0 or 1; the root says ready once all children are, verifies its
//! own memory after go and passes only if every child exited 0.

use crest_bench::{sleep_ns, write_atomic, MIB};

use crate::mem::{Fill, Filled};
use crate::proto::{wait_file, Proto};

fn seed(i: usize) -> u64 {
    0x7472_6565_0000 + i as u64
}

/// The body of child `i`; never returns.
fn child(p: &Proto, i: usize, bytes: usize) -> ! {
    let verdict = (|| {
        let mem = Filled::new(bytes, seed(i), Fill::Random)?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        write_atomic(
            p.dir(),
            &format!("child.{i}.ready"),
            format!("{pid}\n").as_bytes(),
        )
        .map_err(|e| format!("writing ready: {e}"))?;
        wait_file(&p.dir().join("go"))?;
        mem.verify()
    })();
    let code = match verdict {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_atomic(
                p.dir(),
                &format!("child.{i}.result"),
                format!("FAIL {e}\n").as_bytes(),
            );
            1
        }
    };
    // SAFETY: _exit ends this forked child without running the parent's
    // exit handlers or flushing buffers it shares with the parent.
    unsafe { libc::_exit(code) }
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let parse = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let (Some(procs), Some(mib)) = (parse(0), parse(1)) else {
        p.finish(Err("usage: tree PROCS MIB".into()))
    };
    if procs == 0 || mib == 0 {
        p.finish(Err("tree: PROCS and MIB must be positive".into()));
    }
    let bytes = mib * MIB as usize;
    let mut kids = Vec::new();
    for i in 1..procs {
        // SAFETY: this program is single-threaded, so the child may run any
        // code; it leaves through `child`, which never returns.
        match unsafe { libc::fork() } {
            0 => child(p, i, bytes),
            pid if pid > 0 => kids.push(pid),
            _ => p.finish(Err(format!(
                "fork of child {i}: {}",
                std::io::Error::last_os_error()
            ))),
        }
    }
    let mem = match Filled::new(bytes, seed(0), Fill::Random) {
        Ok(m) => m,
        Err(e) => p.finish(Err(e)),
    };
    for i in 1..procs {
        let f = p.dir().join(format!("child.{i}.ready"));
        while !f.exists() {
            let mut st = 0;
            // SAFETY: non-blocking waitpid on our own child.
            if unsafe { libc::waitpid(kids[i - 1], &mut st, libc::WNOHANG) } != 0 {
                p.finish(Err(format!(
                    "child {i} ended before it was ready (status {st:#x})"
                )));
            }
            sleep_ns(2_000_000);
        }
    }
    p.info((procs * bytes) as u64, procs as u64 * mem.nonzero_bytes());
    p.ready();
    if let Err(e) = p.wait_go() {
        p.finish(Err(e));
    }
    let mut errors = Vec::new();
    if let Err(e) = mem.verify() {
        errors.push(format!("root: {e}"));
    }
    for (i, &pid) in kids.iter().enumerate() {
        let mut st = 0;
        // SAFETY: blocking waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        let ok = r == pid && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0;
        if !ok {
            let why = std::fs::read_to_string(p.dir().join(format!("child.{}.result", i + 1)))
                .unwrap_or_else(|_| format!("status {st:#x}"));
            errors.push(format!("child {} (pid {pid}): {}", i + 1, why.trim()));
        }
    }
    if errors.is_empty() {
        p.finish(Ok(()))
    }
    let n = errors.len();
    errors.truncate(5);
    p.finish(Err(format!(
        "{n} process(es) failed: {}",
        errors.join("; ")
    )))
}
