//! `crest migrate` and `crest restore --listen`.

use crate::{grow_pipe, lib_err, output};
use anyhow::{bail, Result};
use crest::migrate::{Channel, ListenOptions, MigrateOptions, Psk};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

pub struct Args<'a> {
    pub pid: i32,
    pub to: &'a str,
    pub psk: Option<&'a Path>,
    pub one_way: bool,
    pub timeout: u64,
    pub connect_wait: u64,
    pub compress: bool,
    pub no_pre_copy: bool,
    pub lazy: bool,
    pub lazy_resume_on_failure: bool,
    pub json: bool,
    pub quiet: bool,
}

fn read_psk(p: Option<&Path>) -> Result<Option<Psk>> {
    p.map(|p| Psk::read(p).map_err(lib_err)).transpose()
}

pub fn cmd_migrate(a: &Args) -> Result<i32> {
    let psk = read_psk(a.psk)?;
    let ch = if a.to == "-" {
        if std::io::stdout().is_terminal() {
            bail!("refusing to send a migration stream to a terminal");
        }
        if !a.one_way && std::io::stdin().is_terminal() {
            bail!(
                "--to - needs the destination's replies on standard input \
                 (a duplex channel); with a plain pipe give --one-way"
            );
        }
        grow_pipe(1);
        Channel::stdio().map_err(lib_err)?
    } else {
        if a.one_way {
            bail!("--one-way is for --to - only: a TCP connection carries the replies");
        }
        if psk.is_none() {
            bail!("a TCP destination needs --psk FILE (the key both sides hold)");
        }
        Channel::connect(a.to, Duration::from_secs(a.connect_wait)).map_err(lib_err)?
    };
    let opts = MigrateOptions {
        psk,
        one_way: a.one_way,
        compress: a.compress,
        no_precopy: a.no_pre_copy,
        timeout: Some(Duration::from_secs(a.timeout.max(1))),
        lazy: a.lazy,
        lazy_resume_on_failure: a.lazy_resume_on_failure,
    };
    let mut progress = output::Progress::new("migrate", a.quiet || a.json);
    let r = crest::migrate::migrate(a.pid, ch, &opts, &mut |d, t| progress.update(d, t));
    progress.finish();
    let r = r.map_err(lib_err)?;
    if a.json {
        eprintln!("{}", serde_json::to_string(&r)?);
    } else if !a.quiet {
        let there = match r.restored_pid {
            Some(p) => format!("it runs there as pid {p}"),
            None => "no reply channel: it is assumed to run there".into(),
        };
        eprintln!(
            "crest: migrated pid {} ({}, downtime {:.1} ms, total {:.1} ms{}); {there}",
            r.pid,
            output::bytes(r.bytes_sent),
            r.downtime_ms,
            r.total_ms,
            if r.handover { ", PIDs handed over" } else { "" }
        );
    }
    Ok(0)
}

pub fn cmd_listen(
    listen: &str,
    psk: Option<&Path>,
    detach: bool,
    pidfile: Option<&Path>,
    json: bool,
    lazy: bool,
) -> Result<i32> {
    let psk = read_psk(psk)?;
    let ch = if listen == "-" {
        if std::io::stdin().is_terminal() {
            bail!("--listen -: standard input is a terminal, not a migration stream");
        }
        grow_pipe(0);
        Channel::stdio().map_err(lib_err)?
    } else {
        if psk.is_none() {
            bail!("refusing to listen on a TCP port without --psk FILE: anyone could send a tree");
        }
        Channel::accept(listen, &mut |a| {
            eprintln!("crest: listening on {a}");
        })
        .map_err(lib_err)?
    };
    let mut progress = output::Progress::new("receive", json || listen == "-");
    let r = crest::migrate::receive(ch, &ListenOptions { psk, lazy }, &mut |n| progress.add(n));
    progress.finish();
    let r = r.map_err(lib_err)?;
    let pid = r.restore.pid;
    if let Some(p) = pidfile {
        std::fs::write(p, format!("{pid}\n"))?;
    }
    if json {
        eprintln!("{}", serde_json::to_string(&r)?);
    } else {
        eprintln!(
            "crest: restored pid {pid} from a migration (received {} in {:.1} ms, restored in {:.1} ms{})",
            output::bytes(r.bytes_received),
            r.receive_ms,
            r.restore_ms,
            if r.handover { ", PIDs handed over" } else { "" }
        );
    }
    if let Some(phase) = r.restore.lazy.clone() {
        let v = serde_json::to_value(&r)?;
        return crate::finish_lazy(pid, &phase, detach, json, true, v);
    }
    if detach {
        return Ok(0);
    }
    Ok(output::wait_forwarding_signals(pid))
}
