//! Human output: progress bars, sizes, the inspect view, waiting on the
//! restored process.

use crest::codec::inspect::Inspection;
use crest::model::Backing;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A progress line on stderr, shown only on a terminal and only once an
/// operation has taken more than a second.
pub struct Progress {
    what: &'static str,
    enabled: bool,
    start: Instant,
    last: Instant,
    done: u64,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str, quiet: bool) -> Self {
        let now = Instant::now();
        Progress {
            what,
            enabled: !quiet && std::io::stderr().is_terminal(),
            start: now,
            last: now,
            done: 0,
            shown: false,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.update(self.done + n, 0);
    }

    pub fn update(&mut self, done: u64, total: u64) {
        self.done = done;
        if !self.enabled || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.last.elapsed() < Duration::from_millis(100) && self.shown {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let rate = done as f64 / self.start.elapsed().as_secs_f64();
        let line = if total > 0 {
            let pct = done as f64 * 100.0 / total as f64;
            let w = 30usize;
            let filled = ((pct / 100.0) * w as f64) as usize;
            format!(
                "\r{} [{}{}] {:5.1}% {} / {} ({}/s)",
                self.what,
                "#".repeat(filled.min(w)),
                "-".repeat(w - filled.min(w)),
                pct,
                bytes(done),
                bytes(total),
                bytes(rate as u64)
            )
        } else {
            format!("\r{} {} ({}/s)", self.what, bytes(done), bytes(rate as u64))
        };
        let mut e = std::io::stderr();
        let _ = e.write_all(line.as_bytes());
        let _ = e.flush();
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}

pub fn print_inspection(ins: &Inspection) {
    let h = &ins.header;
    println!(
        "image: {} in {} records, written by {} (format version {})",
        bytes(ins.image_bytes),
        ins.records,
        h.producer,
        h.format_version
    );
    println!(
        "  source: {} on {} ({}), {} XSAVE {} bytes features {}",
        h.kernel, h.nodename, h.arch, h.cpu_vendor, h.xsave_size, h.xsave_features
    );
    for (i, p) in ins.checkpoint.processes.iter().enumerate() {
        let comm = p.threads.first().map(|t| t.comm.as_str()).unwrap_or("?");
        println!(
            "process {} \"{}\": ppid {} pgid {} sid {}, uid {} gid {}, {} thread(s)",
            p.pid,
            comm,
            p.ppid,
            p.pgid,
            p.sid,
            p.creds.uids[0],
            p.creds.gids[0],
            p.threads.len()
        );
        if let Some(exe) = p.mm.exe {
            println!("  exe: {}", ins.describe_object(exe));
        }
        println!("  cwd: {}  root: {}", p.fs.cwd, p.fs.root);
        println!("  mappings ({}):", p.mm.vmas.len());
        let mut total = 0;
        for v in &p.mm.vmas {
            let n = ins.pages_of(i, v.start);
            total += n;
            let prot = format!(
                "{}{}{}{}",
                if v.prot & 1 != 0 { 'r' } else { '-' },
                if v.prot & 2 != 0 { 'w' } else { '-' },
                if v.prot & 4 != 0 { 'x' } else { '-' },
                if v.shared { 's' } else { 'p' }
            );
            let backing = match v.backing {
                Backing::File(id) => ins.describe_object(id),
                _ => v.name.clone(),
            };
            println!(
                "    {:012x}-{:012x} {} {:>10} {:>8} pages saved  {}",
                v.start,
                v.end,
                prot,
                bytes(v.end - v.start),
                n,
                backing
            );
        }
        println!("  memory saved: {} pages ({})", total, bytes(total * 4096));
        println!("  descriptors ({}):", p.fds.len());
        for fd in &p.fds {
            println!(
                "    {:>5}{} {}",
                fd.fd,
                if fd.cloexec { " (cloexec)" } else { "" },
                ins.describe_object(fd.file)
            );
        }
        let th = &p.threads[0];
        println!(
            "  signals: {} handlers, {} pending (process), {} pending (thread), blocked {:#x}",
            p.signals.actions.len(),
            p.signals.shared_pending.len(),
            th.pending.len(),
            th.sigmask
        );
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for the restored process (crest's child), passing on the
/// signals a user sends crest; returns an exit code like a shell's.
pub fn wait_forwarding_signals(pid: i32) -> i32 {
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls kill().
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
}
