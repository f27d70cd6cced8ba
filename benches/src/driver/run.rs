//! One measured checkpoint/restore cycle of one workload through one sink.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procs::{self, out_file, Ended, Spawned};

/// Where the image goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// `crest dump -o /tmp/…/img` (written, fsynced, renamed), then
    /// `crest restore -i /tmp/…/img -d` (read back from the page cache).
    File,
    /// `crest dump -o -` into a pipe read at memory speed by a relay
    /// process; then `crest restore -i - -d` from a pipe the relay fills
    /// at memory speed. Each side is measured on its own.
    Pipe,
    /// `crest dump -o - | crest restore -i - -d`, started together: the
    /// restore's time is the whole move.
    Live,
}

impl Sink {
    pub fn name(self) -> &'static str {
        match self {
            Sink::File => "file",
            Sink::Pipe => "pipe",
            Sink::Live => "live",
        }
    }

    pub fn parse(s: &str) -> Option<Sink> {
        match s {
            "file" => Some(Sink::File),
            "pipe" => Some(Sink::Pipe),
            "live" => Some(Sink::Live),
            _ => None,
        }
    }
}

/// How crest dumps: the options of `crest dump` a case measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `crest dump` (the process is killed after the dump).
    Plain,
    /// `crest dump --compress`.
    Compress,
    /// `crest dump --leave-running`: the process goes on; it verifies its
    /// memory right after the dump, then ends, and the image is restored
    /// and verified as in the other modes.
    LeaveRunning,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Plain, Mode::Compress, Mode::LeaveRunning];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Compress => "compress",
            Mode::LeaveRunning => "leave-running",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The options this mode adds to `crest dump`.
    fn dump_flags(self) -> &'static [&'static str] {
        match self {
            Mode::Plain => &[],
            Mode::Compress => &["--compress"],
            Mode::LeaveRunning => &["--leave-running"],
        }
    }

    /// Whether this mode is measured with `sink`. A process left running
    /// keeps its PID, so it cannot be restored while the dump still runs
    /// (live); compression is measured on a file (the disk) and a pipe
    /// (memory speed) only, to keep the run short.
    pub fn runs_on(self, sink: Sink) -> bool {
        self == Mode::Plain || sink != Sink::Live
    }
}

/// A workload program and its arguments.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Name in the table, e.g. `mem-256-half0`.
    pub name: String,
    /// `mem`, `maps`, `tree` or `threads`.
    pub kind: &'static str,
    pub args: Vec<String>,
    /// Memory it touches, rounded up to MiB: the size of its baselines.
    pub mib: u64,
    /// mem: what its pages hold (`random`, `half-zero`, `text`, or `busy`:
    /// random pages it keeps rewriting).
    pub fill: Option<&'static str>,
    /// tree and threads: how many processes or threads (scaling pairs).
    pub tasks: Option<u64>,
    /// crest may not support this workload (yet): a dump refused with
    /// "… not supported …" is recorded as refused, not as a failure.
    pub may_refuse: bool,
    /// The dump modes measured on it.
    pub modes: Vec<Mode>,
}

/// Everything measured in one cycle.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Run {
    pub rep: usize,
    pub pid: i32,
    pub touched_bytes: u64,
    pub nonzero_bytes: u64,
    /// Wall time of `crest dump`, from spawning it to reaping it.
    pub dump_wall_ms: f64,
    /// From crest's report: how long the process was stopped.
    pub frozen_ms: f64,
    /// From crest's report: the process was left running.
    pub left_running: bool,
    /// From crest's report: its own idea of the dump's duration.
    pub dump_crest_total_ms: f64,
    pub image_bytes: u64,
    pub pages_written: u64,
    pub zero_pages_skipped: u64,
    pub mappings: u64,
    pub fds: u64,
    pub dump_user_ms: f64,
    pub dump_sys_ms: f64,
    pub dump_cpu_ms: f64,
    pub dump_maxrss_kib: u64,
    /// Wall time of `crest restore -d`, from spawning it until it returns
    /// (the process runs again).
    pub restore_wall_ms: f64,
    pub restore_crest_total_ms: f64,
    pub restore_pages: u64,
    pub restore_user_ms: f64,
    pub restore_sys_ms: f64,
    pub restore_cpu_ms: f64,
    pub restore_maxrss_kib: u64,
    /// From the first crest spawned to the restored process running.
    pub end_to_end_ms: f64,
    /// Bytes that went through the pipe (pipe sink).
    pub pipe_bytes: Option<u64>,
    /// Leave-running: what the process that went on after the dump said
    /// when it verified its memory (before the image was restored).
    pub live_result: Option<String>,
    /// What the workload said after the restore.
    pub result: String,
    /// crest's whole JSON reports, fields the driver does not know included.
    pub dump_report: serde_json::Value,
    pub restore_report: serde_json::Value,
}

/// Why a cycle gave no numbers.
#[derive(Debug)]
pub enum Failure {
    /// The dump was refused as not supported (allowed for trees and threads).
    Refused(String),
    Failed(String),
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure::Failed(msg.into())
}

pub struct Ctx {
    pub crest: PathBuf,
    pub workload: PathBuf,
}

const READY_TIMEOUT: Duration = Duration::from_secs(600);
const RESULT_TIMEOUT: Duration = Duration::from_secs(600);

/// crest's error line from a stderr file (`crest: error: ` removed), or
/// its panic message.
fn crest_error(path: &Path, end: &Ended) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if let Some((i, at)) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| l.split_once("panicked at ").map(|(_, at)| (i, at)))
    {
        let why = lines.get(i + 1).map_or("", |l| l.trim());
        return format!("crest panicked at {} {why}", at.trim());
    }
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    let line = line.trim().trim_start_matches("crest: error: ");
    if line.is_empty() {
        format!("crest {} with no message", end.describe())
    } else {
        line.to_string()
    }
}

/// The last line of a file that parses as a JSON object.
fn json_from(path: &Path) -> Result<serde_json::Value, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.is_object())
        .ok_or_else(|| failed(format!("no JSON report in {}: {text:?}", path.display())))
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn crest_cmd(ctx: &Ctx, args: &[&str]) -> Command {
    let mut c = Command::new(&ctx.crest);
    c.args(args).stdin(Stdio::null());
    c
}

/// Starts `crest dump` of `pid` in `mode` into `out` (a pipe), its
/// report and errors going to `dir/dump.err`.
fn spawn_dump_to(
    ctx: &Ctx,
    pid: i32,
    mode: Mode,
    out: OwnedFd,
    dir: &Path,
) -> Result<Spawned, Failure> {
    let p = pid.to_string();
    let mut cmd = crest_cmd(ctx, &["dump", "-p", &p, "-o", "-", "--json", "--quiet"]);
    cmd.args(mode.dump_flags())
        .stdout(Stdio::from(out))
        .stderr(out_file(&dir.join("dump.err")).map_err(io_fail("dump.err"))?);
    Spawned::spawn(&mut cmd).map_err(io_fail("spawning crest dump"))
}

/// Starts the workload with `crest run` and waits until it is ready.
fn start(ctx: &Ctx, wl: &Workload, dir: &Path, run: &mut Run) -> Result<i32, Failure> {
    let out = crest_cmd(ctx, &["run", "--log"])
        .arg(dir.join("log"))
        .arg("--")
        .arg(&ctx.workload)
        .arg(wl.kind)
        .arg(dir)
        .args(&wl.args)
        .output()
        .map_err(|e| failed(format!("running crest run: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = match text.trim().parse() {
        Ok(p) if out.status.success() => p,
        _ => {
            return Err(failed(format!(
                "crest run failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                text.trim()
            )))
        }
    };
    procs::register(pid);
    let t = Instant::now();
    let ready = dir.join("ready");
    while !ready.exists() {
        if let Some(st) = procs::try_reap(pid).map_err(|e| failed(format!("waitpid: {e}")))? {
            let res = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
            return Err(failed(format!(
                "workload ended before it was ready ({}): {} {}",
                procs::describe_status(st),
                res.trim(),
                tail(&dir.join("log"), 5)
            )));
        }
        if t.elapsed() > READY_TIMEOUT {
            return Err(failed("workload not ready after 600 s"));
        }
        crest_bench::sleep_ns(2_000_000);
    }
    let said = std::fs::read_to_string(&ready).unwrap_or_default();
    if said.trim().parse::<i32>().ok() != Some(pid) {
        return Err(failed(format!(
            "ready says pid {:?}, crest run said {pid}",
            said.trim()
        )));
    }
    let info = std::fs::read_to_string(dir.join("info")).unwrap_or_default();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().parse().unwrap_or(0);
            match k {
                "touched_bytes" => run.touched_bytes = v,
                "nonzero_bytes" => run.nonzero_bytes = v,
                _ => {}
            }
        }
    }
    run.pid = pid;
    Ok(pid)
}

/// After a successful dump: reaps the killed workload at once (its PID must
/// be free for the restore), then waits until every other process of its
/// tree (reparented to us when the root died) is gone and reaped: the
/// restore needs their PIDs too. Children in `except` are left alone.
fn reap_dumped(pid: i32, except: &[i32]) -> Result<(), Failure> {
    match procs::reap(pid, Duration::from_secs(10)) {
        Ok(Some(st)) if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL => {}
        Ok(Some(st)) => {
            return Err(failed(format!(
                "the dumped process ended with {}, expected SIGKILL",
                procs::describe_status(st)
            )))
        }
        Ok(None) => return Err(failed("the dumped process still runs 10 s after the dump")),
        Err(e) => return Err(failed(format!("reaping the dumped process: {e}"))),
    }
    procs::reap_others(except, Duration::from_secs(10))
        .map_err(|left| failed(format!("processes still alive after the dump: {left:?}")))
}

fn dump_failed(wl: &Workload, err_file: &Path, end: &Ended) -> Failure {
    let msg = crest_error(err_file, end);
    if wl.may_refuse && msg.contains("not supported") {
        Failure::Refused(msg)
    } else {
        failed(format!("dump failed ({}): {msg}", end.describe()))
    }
}

fn take_dump(
    run: &mut Run,
    mode: Mode,
    end: &Ended,
    report: serde_json::Value,
) -> Result<(), Failure> {
    run.dump_wall_ms = end.wall_ms();
    run.dump_user_ms = end.user_ms;
    run.dump_sys_ms = end.sys_ms;
    run.dump_cpu_ms = end.cpu_ms();
    run.dump_maxrss_kib = end.maxrss_kib;
    run.frozen_ms = f(&report, "frozen_ms");
    run.dump_crest_total_ms = f(&report, "total_ms");
    run.image_bytes = u(&report, "image_bytes");
    run.pages_written = u(&report, "pages_written");
    run.zero_pages_skipped = u(&report, "zero_pages_skipped");
    run.mappings = u(&report, "mappings");
    run.fds = u(&report, "fds");
    run.left_running = report["left_running"].as_bool().unwrap_or(false);
    if run.left_running != (mode == Mode::LeaveRunning) {
        return Err(failed(format!(
            "crest dump ({} mode) reports left_running {}",
            mode.name(),
            report["left_running"]
        )));
    }
    run.dump_report = report;
    Ok(())
}

/// The state letter of `pid` in /proc (R, S, D, T, t, Z, …).
fn proc_state(pid: i32) -> Result<char, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat:?}"))
}

/// After a dump, makes the workload's PID (and those of its tree) free
/// for the restore. Plain and compressed dumps killed the process: it is
/// reaped. A process left running must still run, not stopped: it is told
/// to verify its memory now (what the dump must not have disturbed) and
/// end; its verdict is kept aside for the restored copy's own.
fn release_dumped(
    pid: i32,
    mode: Mode,
    dir: &Path,
    run: &mut Run,
    except: &[i32],
) -> Result<(), Failure> {
    if mode != Mode::LeaveRunning {
        return reap_dumped(pid, except);
    }
    if let Some(st) = procs::try_reap(pid).map_err(io_fail("waitpid on the dumped process"))? {
        return Err(failed(format!(
            "the process dumped with --leave-running has ended ({})",
            procs::describe_status(st)
        )));
    }
    let state = proc_state(pid).map_err(failed)?;
    if matches!(state, 'T' | 't') {
        return Err(failed(format!(
            "the process dumped with --leave-running is still stopped (state {state})"
        )));
    }
    let verdict = verdict_of(pid, dir, "after the --leave-running dump, still running")?;
    run.live_result = Some(verdict);
    std::fs::rename(dir.join("result"), dir.join("result.live"))
        .map_err(io_fail("renaming result to result.live"))?;
    std::fs::remove_file(dir.join("go")).map_err(io_fail("removing go"))?;
    procs::reap_others(except, Duration::from_secs(10)).map_err(|left| {
        failed(format!(
            "processes still alive after the verification: {left:?}"
        ))
    })
}

fn take_restore(
    run: &mut Run,
    pid: i32,
    end: &Ended,
    dir: &Path,
    out: &Path,
) -> Result<(), Failure> {
    if !end.success() {
        return Err(failed(format!(
            "restore failed ({}): {}",
            end.describe(),
            crest_error(&dir.join("restore.err"), end)
        )));
    }
    let report = json_from(out)?;
    if report["pid"].as_i64() != Some(pid as i64) {
        return Err(failed(format!(
            "restore reports pid {}, expected {pid}",
            report["pid"]
        )));
    }
    procs::register(pid);
    run.restore_wall_ms = end.wall_ms();
    run.restore_user_ms = end.user_ms;
    run.restore_sys_ms = end.sys_ms;
    run.restore_cpu_ms = end.cpu_ms();
    run.restore_maxrss_kib = end.maxrss_kib;
    run.restore_crest_total_ms = f(&report, "total_ms");
    run.restore_pages = u(&report, "pages");
    run.restore_report = report;
    Ok(())
}

fn io_fail(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| failed(format!("{what}: {e}"))
}

fn file_sink(
    ctx: &Ctx,
    wl: &Workload,
    mode: Mode,
    pid: i32,
    dir: &Path,
    run: &mut Run,
) -> Result<(), Failure> {
    let img = dir.join("img");
    let p = pid.to_string();
    let mut cmd = crest_cmd(ctx, &["dump", "-p", &p, "-o"]);
    cmd.arg(&img)
        .args(["--json", "--quiet"])
        .args(mode.dump_flags())
        .stdout(out_file(&dir.join("dump.out")).map_err(io_fail("dump.out"))?)
        .stderr(out_file(&dir.join("dump.err")).map_err(io_fail("dump.err"))?);
    let mut d = Spawned::spawn(&mut cmd).map_err(io_fail("spawning crest dump"))?;
    drop(cmd);
    let de = d.wait().map_err(io_fail("waiting for crest dump"))?;
    if !de.success() {
        return Err(dump_failed(wl, &dir.join("dump.err"), &de));
    }
    take_dump(run, mode, &de, json_from(&dir.join("dump.out"))?)?;
    let on_disk = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
    if on_disk != run.image_bytes {
        return Err(failed(format!(
            "image file has {on_disk} bytes, crest reports {}",
            run.image_bytes
        )));
    }
    release_dumped(pid, mode, dir, run, &[])?;

    let mut cmd = crest_cmd(ctx, &["restore", "-i"]);
    cmd.arg(&img)
        .args(["-d", "--json"])
        .stdout(out_file(&dir.join("restore.out")).map_err(io_fail("restore.out"))?)
        .stderr(out_file(&dir.join("restore.err")).map_err(io_fail("restore.err"))?);
    let mut r = Spawned::spawn(&mut cmd).map_err(io_fail("spawning crest restore"))?;
    drop(cmd);
    let re = r.wait().map_err(io_fail("waiting for crest restore"))?;
    run.end_to_end_ms = (r.started + re.wall - d.started).as_secs_f64() * 1e3;
    take_restore(run, pid, &re, dir, &dir.join("restore.out"))?;
    let _ = std::fs::remove_file(&img);
    Ok(())
}

/// Reads the relay's next status line (`ready`, `read N`, `wrote N`).
fn relay_says(r: &mut impl BufRead, what: &str) -> Result<u64, Failure> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(io_fail("reading the relay"))?;
    let line = line.trim();
    let rest = line
        .strip_prefix(what)
        .ok_or_else(|| failed(format!("relay said {line:?}, expected {what}")))?;
    Ok(rest.trim().parse().unwrap_or(0))
}

fn pipe_sink(
    ctx: &Ctx,
    wl: &Workload,
    mode: Mode,
    pid: i32,
    dir: &Path,
    run: &mut Run,
    capacity: u64,
) -> Result<(), Failure> {
    let (a_r, a_w) = procs::pipe().map_err(io_fail("pipe"))?;
    let (b_r, b_w) = procs::pipe().map_err(io_fail("pipe"))?;
    let mut cmd = Command::new(&ctx.workload);
    cmd.arg("relay")
        .arg(capacity.to_string())
        .stdin(Stdio::from(a_r))
        .stdout(Stdio::from(b_w))
        .stderr(Stdio::piped());
    let mut relay = Spawned::spawn(&mut cmd).map_err(io_fail("spawning the relay"))?;
    drop(cmd);
    let mut says = BufReader::new(relay.child.stderr.take().expect("piped stderr"));
    relay_says(&mut says, "ready")?;

    let mut d = spawn_dump_to(ctx, pid, mode, a_w, dir)?;
    let de = d.wait().map_err(io_fail("waiting for crest dump"))?;
    let got = relay_says(&mut says, "read")?;
    if !de.success() {
        return Err(dump_failed(wl, &dir.join("dump.err"), &de));
    }
    take_dump(run, mode, &de, json_from(&dir.join("dump.err"))?)?;
    run.pipe_bytes = Some(got);
    if got != run.image_bytes {
        return Err(failed(format!(
            "{got} bytes came through the pipe, crest reports {}",
            run.image_bytes
        )));
    }
    release_dumped(pid, mode, dir, run, &[relay.pid])?;

    let mut cmd = crest_cmd(ctx, &["restore", "-i", "-", "-d", "--json"]);
    cmd.stdin(Stdio::from(b_r))
        .stdout(out_file(&dir.join("restore.out")).map_err(io_fail("restore.out"))?)
        .stderr(out_file(&dir.join("restore.err")).map_err(io_fail("restore.err"))?);
    let mut r = Spawned::spawn(&mut cmd).map_err(io_fail("spawning crest restore"))?;
    drop(cmd);
    let re = r.wait().map_err(io_fail("waiting for crest restore"))?;
    run.end_to_end_ms = (r.started + re.wall - d.started).as_secs_f64() * 1e3;
    take_restore(run, pid, &re, dir, &dir.join("restore.out"))?;
    relay_says(&mut says, "wrote")?;
    let e = relay.wait().map_err(io_fail("waiting for the relay"))?;
    if !e.success() {
        return Err(failed(format!("relay {}", e.describe())));
    }
    Ok(())
}

fn live_sink(
    ctx: &Ctx,
    wl: &Workload,
    mode: Mode,
    pid: i32,
    dir: &Path,
    run: &mut Run,
) -> Result<(), Failure> {
    if !mode.runs_on(Sink::Live) {
        return Err(failed(format!("mode {} does not run live", mode.name())));
    }
    let (a_r, a_w) = procs::pipe().map_err(io_fail("pipe"))?;
    let mut cmd = crest_cmd(ctx, &["restore", "-i", "-", "-d", "--json"]);
    cmd.stdin(Stdio::from(a_r))
        .stdout(out_file(&dir.join("restore.out")).map_err(io_fail("restore.out"))?)
        .stderr(out_file(&dir.join("restore.err")).map_err(io_fail("restore.err"))?);
    let mut r = Spawned::spawn(&mut cmd).map_err(io_fail("spawning crest restore"))?;
    drop(cmd);
    let mut d = spawn_dump_to(ctx, pid, mode, a_w, dir)?;
    let de = d.wait().map_err(io_fail("waiting for crest dump"))?;
    if !de.success() {
        let _ = r.wait();
        return Err(dump_failed(wl, &dir.join("dump.err"), &de));
    }
    take_dump(run, mode, &de, json_from(&dir.join("dump.err"))?)?;
    // The restore runs meanwhile: once it has returned, the restored root
    // (the same pid, reaped above in its old life) is our child too.
    reap_dumped(pid, &[r.pid, pid])?;
    let re = r.wait().map_err(io_fail("waiting for crest restore"))?;
    run.end_to_end_ms = re.wall_ms();
    take_restore(run, pid, &re, dir, &dir.join("restore.out"))
}

/// Tells the restored workload to verify itself and waits for its verdict.
fn verify(pid: i32, dir: &Path, run: &mut Run) -> Result<(), Failure> {
    run.result = verdict_of(pid, dir, "after the restore")?;
    Ok(())
}

/// Tells the workload `pid` to verify itself, waits for its verdict and
/// reaps it; `Ok` with the verdict only if it is PASS and it exited 0.
/// `when` says when this is, for messages.
fn verdict_of(pid: i32, dir: &Path, when: &str) -> Result<String, Failure> {
    std::fs::write(dir.join("go"), b"go\n").map_err(io_fail("writing go"))?;
    let res = dir.join("result");
    let t = Instant::now();
    let mut ended: Option<i32> = None;
    while !res.exists() {
        if let Some(st) =
            procs::try_reap(pid).map_err(io_fail("waitpid on the restored process"))?
        {
            ended = Some(st);
            break;
        }
        if t.elapsed() > RESULT_TIMEOUT {
            return Err(failed(format!(
                "no verdict from the workload {when} after 600 s"
            )));
        }
        crest_bench::sleep_ns(2_000_000);
    }
    let verdict = std::fs::read_to_string(&res).unwrap_or_default();
    let st = match ended {
        Some(st) => Some(st),
        None => procs::reap(pid, Duration::from_secs(60)).map_err(io_fail("waitpid"))?,
    };
    if !verdict.starts_with("PASS") {
        return Err(failed(format!(
            "VERIFICATION FAILED {when}: {:?} (workload {}); log: {}",
            verdict.trim(),
            st.map(procs::describe_status)
                .unwrap_or_else(|| "still running".into()),
            tail(&dir.join("log"), 5)
        )));
    }
    match st {
        Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {
            Ok(verdict.trim().to_string())
        }
        Some(st) => Err(failed(format!(
            "the workload said PASS {when} but ended with {}",
            procs::describe_status(st)
        ))),
        None => Err(failed(format!(
            "the workload said PASS {when} but did not exit"
        ))),
    }
}

/// One full cycle in `dir`: start, dump, reap (or, left running, verify),
/// restore, verify.
pub fn run_once(
    ctx: &Ctx,
    wl: &Workload,
    mode: Mode,
    sink: Sink,
    rep: usize,
    dir: &Path,
    relay_capacity: Option<u64>,
) -> Result<Run, Failure> {
    std::fs::create_dir_all(dir).map_err(io_fail("creating the run directory"))?;
    let mut run = Run {
        rep,
        ..Run::default()
    };
    let pid = start(ctx, wl, dir, &mut run)?;
    let r = match sink {
        Sink::File => file_sink(ctx, wl, mode, pid, dir, &mut run),
        Sink::Pipe => {
            let cap =
                relay_capacity.unwrap_or(run.nonzero_bytes + run.nonzero_bytes / 4 + (16 << 20));
            pipe_sink(ctx, wl, mode, pid, dir, &mut run, cap)
        }
        Sink::Live => live_sink(ctx, wl, mode, pid, dir, &mut run),
    };
    r?;
    verify(pid, dir, &mut run)?;
    Ok(run)
}
