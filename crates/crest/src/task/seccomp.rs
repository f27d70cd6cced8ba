//! seccomp filters (mode 2), per thread.
//!
//! Dump reads each thread's filters with PTRACE_SECCOMP_GET_FILTER (and
//! their flags with PTRACE_SECCOMP_GET_METADATA).  A thread running under
//! a filter is traced with PTRACE_O_SUSPEND_SECCOMP, which needs
//! CAP_SYS_ADMIN, so that crest's injected calls are never judged by the
//! filter (one that kills or fails them cannot harm the dump); without
//! that privilege the dump fails before anything is injected, naming the
//! thread.  Strict mode (mode 1) is refused.
//!
//! Restore installs the filters in each thread, oldest first, once its
//! threads exist and before its credentials drop (installing needs
//! no_new_privs or CAP_SYS_ADMIN); the filters the threads have in common
//! (the oldest ones, as a SECCOMP_FILTER_FLAG_TSYNC made them) are
//! installed once with TSYNC, so that the threads share them again.  The
//! stub threads are traced with PTRACE_O_SUSPEND_SECCOMP too: every call
//! crest injects after the filters are in place bypasses them, and the
//! filters apply from the moment the threads are let go.

use crate::error::{Error, Result};
use crate::model::{SeccompFilter, Thread};
use crate::task::freeze::Inject;
use crest_sys::ptrace;

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// Reads the filters of stopped thread `tid`, oldest first (`mode`: its
/// seccomp mode, from its status).
pub fn collect(tid: i32, mode: u32) -> Result<Vec<SeccompFilter>> {
    let mut out = Vec::new();
    // Reading filters needs CAP_SYS_ADMIN: only ask for a filtered thread.
    if mode != 2 {
        return Ok(out);
    }
    for index in 0.. {
        match ptrace::seccomp_filter(tid, index) {
            Ok(Some((prog, flags))) => out.push(SeccompFilter {
                prog,
                log: flags & ptrace::SECCOMP_FILTER_FLAG_LOG != 0,
            }),
            Ok(None) => break,
            // No filter at all: the kernel says EINVAL (or EMEDIUMTYPE
            // for a strict-mode task, refused earlier).
            Err(e) if index == 0 && e.errno() == Some(libc::EINVAL) => break,
            Err(e) => {
                return Err(Error::msg(format!(
                    "thread {tid}: reading its seccomp filter {index}: {e}"
                )))
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// Makes crest's calls in a frozen thread that runs under a seccomp
/// filter (`mode`, from its status) bypass it (`options`: the ones it
/// was seized with).
pub fn suspend(tid: i32, mode: u32, options: u32) -> Result<()> {
    if mode != 2 {
        return Ok(());
    }
    ptrace::set_options(tid, options | ptrace::O_SUSPEND_SECCOMP).map_err(|e| {
        Error::msg(format!(
            "thread {tid} runs under a seccomp filter, and crest needs CAP_SYS_ADMIN \
             to suspend it while it works: {e}"
        ))
    })
}

/// The number of filters, oldest first, that every thread has (the same
/// programs and flags).
fn common_prefix(threads: &[Thread]) -> usize {
    let first = &threads[0].seccomp;
    (0..first.len())
        .take_while(|&i| threads.iter().all(|t| t.seccomp.get(i) == Some(&first[i])))
        .count()
}

/// Installs one filter in thread `t`; with `tsync` in every thread.
fn install(t: &impl Inject, f: &SeccompFilter, tsync: bool, what: &str) -> Result<()> {
    if f.prog.is_empty() || f.prog.len() > 4096 {
        return Err(Error::Invalid(format!(
            "{what}: a seccomp filter of {} instructions",
            f.prog.len()
        )));
    }
    let prog: Vec<u8> = f.prog.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let s = t.scratch();
    let mut fprog = [0u8; 16];
    fprog[0..2].copy_from_slice(&(f.prog.len() as u16).to_ne_bytes());
    fprog[8..16].copy_from_slice(&(s + 16).to_ne_bytes());
    t.write_scratch(0, &fprog)?;
    t.write_scratch(16, &prog)?;
    let mut flags = 0;
    if tsync {
        flags |= SECCOMP_FILTER_FLAG_TSYNC;
    }
    if f.log {
        flags |= ptrace::SECCOMP_FILTER_FLAG_LOG;
    }
    let r = t.call(
        libc::SYS_seccomp,
        &[SECCOMP_SET_MODE_FILTER, flags, s],
        &format!("{what}: installing its seccomp filter"),
    )?;
    if r != 0 {
        return Err(Error::msg(format!(
            "{what}: thread {r} could not take its seccomp filter (TSYNC)"
        )));
    }
    Ok(())
}

/// Installs every thread's filters (`threads[i]` runs as `view(i)`);
/// `tids` are the stub's threads, which must be traced with
/// PTRACE_O_SUSPEND_SECCOMP from here on (`options`: their others).
pub fn restore<T: Inject>(
    pid: i32,
    threads: &[Thread],
    view: &dyn Fn(usize) -> T,
    options: u32,
) -> Result<()> {
    if threads.iter().all(|t| t.seccomp.is_empty()) {
        return Ok(());
    }
    for t in threads {
        ptrace::set_options(t.tid, options | ptrace::O_SUSPEND_SECCOMP).map_err(|e| {
            Error::msg(format!(
                "pid {pid}: restoring seccomp filters needs CAP_SYS_ADMIN: {e}"
            ))
        })?;
    }
    let common = common_prefix(threads);
    let shared = threads.len() > 1;
    for f in &threads[0].seccomp[..common] {
        install(&view(0), f, shared, &format!("pid {pid}"))?;
    }
    for (i, t) in threads.iter().enumerate() {
        for f in &t.seccomp[common..] {
            install(&view(i), f, false, &format!("pid {pid} thread {}", t.tid))?;
        }
    }
    Ok(())
}
