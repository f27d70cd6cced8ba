//! The `crest` command: argument parsing and output; the work is in the
//! `crest` library.

#![deny(clippy::undocumented_unsafe_blocks)]

mod migrate;
mod output;
mod sink;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Transparent checkpoint/restart of Linux processes.
#[derive(Parser)]
#[command(name = "crest", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a process into an image (the process is killed unless --leave-running)
    Dump {
        /// The process to checkpoint
        #[arg(short, long)]
        pid: i32,
        /// Where to write the image ("-" for standard output)
        #[arg(short, long)]
        output: String,
        /// Let the process continue after the checkpoint
        #[arg(long)]
        leave_running: bool,
        /// Print the result as JSON (on standard error when the image goes to standard output)
        #[arg(long)]
        json: bool,
        /// No progress bar
        #[arg(short, long)]
        quiet: bool,
        /// With --leave-running, copy all memory while the process is
        /// stopped instead of copying it first while it runs (by default
        /// it is stopped only for the pages it writes meanwhile)
        #[arg(long)]
        no_pre_copy: bool,
        /// Do not fsync the image before stopping the process (faster; a
        /// crash of the machine right after the dump can then lose both)
        #[arg(long)]
        no_sync: bool,
        /// Compress memory pages (LZ4, per chunk, only where it pays)
        #[arg(long)]
        compress: bool,
        /// Also checkpoint TCP connections whose peer is outside the tree:
        /// their packets are dropped (an nftables table of crest's own)
        /// from the dump until the restore, which needs the same addresses
        #[arg(long)]
        tcp_established: bool,
        /// Also checkpoint UNIX sockets connected to a named socket outside
        /// the tree (/dev/log, a bus): the restore connects them to that
        /// name again (restore needs --ext-unix-sk too)
        #[arg(long)]
        ext_unix_sk: bool,
        /// The program has no AIO (io_setup) requests in flight: crest
        /// cannot see them, and refuses AIO contexts without this
        #[arg(long)]
        aio_idle: bool,
        /// Record a digest of every saved page, so that the image can be
        /// the parent of an incremental dump (memory is copied while the
        /// process is stopped)
        #[arg(long)]
        digests: bool,
        /// Incremental dump: write only the pages changed since image
        /// PREV (dumped with --digests or --parent); a restore reads PREV
        /// for the others
        #[arg(long, value_name = "PREV")]
        parent: Option<PathBuf>,
        /// With --leave-running: leave the tree's private memory
        /// write-tracked by a small process of crest's, so that the next
        /// `dump --parent` of this image reads only the pages written
        /// since (implies --digests)
        #[arg(long, requires = "leave_running")]
        track: bool,
    },
    /// Restore a process from an image, with its original PID
    Restore {
        /// The image to read ("-" for standard input)
        #[arg(
            short,
            long,
            required_unless_present = "listen",
            conflicts_with = "listen"
        )]
        input: Option<String>,
        /// Receive a migration (`crest migrate`) on ADDR:PORT, or on
        /// standard input ("-", replies on standard output), and restore it
        #[arg(long, value_name = "ADDR:PORT|-")]
        listen: Option<String>,
        /// Pre-shared key file authenticating the migration (required with
        /// a TCP --listen)
        #[arg(long, value_name = "FILE")]
        psk: Option<PathBuf>,
        /// Return once the process runs instead of waiting for it to exit
        #[arg(short, long)]
        detach: bool,
        /// Write the restored process's PID into this file
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
        /// Restore into a new PID namespace where every process keeps its
        /// PID (for PIDs taken here), under a small init of crest's; the
        /// PID printed is that init's
        #[arg(long)]
        new_pidns: bool,
        /// The outer end of veth INSIDE of the tree's network namespace is
        /// made in crest's namespace as OUTSIDE (repeatable; a veth
        /// without one is refused)
        #[arg(long, value_name = "INSIDE=OUTSIDE")]
        veth: Vec<String>,
        /// Restore the tree into this existing network namespace (e.g.
        /// /run/netns/NAME) instead of a new one, used as it is
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        /// The container's root directory here (a mount namespace
        /// recreated whole), instead of where it was at the dump
        #[arg(long, value_name = "DIR")]
        root: Option<String>,
        /// Where a mount from outside the container (named by its mount
        /// point inside, as `crest inspect` shows) is here
        #[arg(long, value_name = "NAME=PATH")]
        ext_mount: Vec<String>,
        /// Connect the UNIX sockets that were connected outside the tree
        /// (dumped with --ext-unix-sk) to their peers' names again
        #[arg(long)]
        ext_unix_sk: bool,
        /// Resume the tree before its private memory is in: each page is
        /// filled when first touched, the rest in the background (crest
        /// stays until every page is in; with --detach it returns then)
        #[arg(long)]
        lazy: bool,
        /// Look for the parent images of an incremental image (and theirs)
        /// in DIR, by file name, instead of where the image records them
        /// (relative to the image's directory)
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<PathBuf>,
    },
    /// Say whether a process can be checkpointed now, and what stops it
    Check {
        #[arg(short, long)]
        pid: i32,
        #[arg(long)]
        json: bool,
        /// Check as for `dump --tcp-established` (connections to peers
        /// outside the tree are then not obstacles)
        #[arg(long)]
        tcp_established: bool,
        /// Check as for `dump --ext-unix-sk`
        #[arg(long)]
        ext_unix_sk: bool,
        /// Check as for `dump --aio-idle`
        #[arg(long)]
        aio_idle: bool,
    },
    /// Show what an image holds
    Inspect {
        /// The image ("-" for standard input)
        #[arg(required_unless_present = "schema")]
        image: Option<String>,
        /// Print the whole model as JSON (its schema: --schema)
        #[arg(long)]
        json: bool,
        /// Print the JSON Schema of the --json document (docs/image-schema.json)
        #[arg(long, conflicts_with_all = ["image", "json"])]
        schema: bool,
    },
    /// Rewrite an image of an older format version in the current one
    Convert {
        /// The image to read ("-" for standard input)
        input: String,
        /// Where to write the converted image ("-" for standard output)
        output: String,
        /// Print the result as JSON (on standard error when the image goes to standard output)
        #[arg(long)]
        json: bool,
    },
    /// Make container runtimes use crest: create DIR/criu, a symlink to
    /// this binary, which then serves CRIU's swrk RPC (put DIR first in PATH)
    InstallCriuShim {
        /// The directory for the `criu` link
        dir: PathBuf,
    },
    /// Move a running process tree to `crest restore --listen` elsewhere;
    /// it is killed here only once it runs there, else it resumes here
    Migrate {
        /// The process (tree) to migrate
        #[arg(short, long)]
        pid: i32,
        /// The destination: HOST:PORT, or "-" (stream on standard output,
        /// replies from standard input)
        #[arg(long, value_name = "HOST:PORT|-")]
        to: String,
        /// Pre-shared key file (required for a TCP destination)
        #[arg(long, value_name = "FILE")]
        psk: Option<PathBuf>,
        /// With --to -: there is no reply channel; the tree is killed
        /// once the stream is written (it cannot resume if the
        /// destination fails)
        #[arg(long)]
        one_way: bool,
        /// Seconds to wait for each answer of the destination (TCP)
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Seconds to keep trying to connect
        #[arg(long, default_value_t = 10)]
        connect_wait: u64,
        /// Compress memory pages (LZ4, per chunk, only where it pays; only
        /// without pre-copy)
        #[arg(long)]
        compress: bool,
        /// Send all memory while the tree is frozen instead of copying it
        /// in rounds while it runs first
        #[arg(long)]
        no_pre_copy: bool,
        /// Post-copy: the destination (`restore --listen --lazy`, in
        /// another PID space) runs the tree at once and gets its memory
        /// afterwards; the tree here stays frozen until every page is there
        #[arg(long, conflicts_with_all = ["one_way", "compress", "no_pre_copy"])]
        lazy: bool,
        /// With --lazy: if the lazy phase fails, resume the tree here (by
        /// default it is killed: the destination's copy may have run)
        #[arg(long, requires = "lazy")]
        lazy_resume_on_failure: bool,
        /// Print the result as JSON (on standard error)
        #[arg(long)]
        json: bool,
        /// No progress bar
        #[arg(short, long)]
        quiet: bool,
    },
    /// Start a program detached from the terminal (so it can be checkpointed) and print its PID
    Run {
        /// Send the program's stdout and stderr to this file (default /dev/null)
        #[arg(long)]
        log: Option<PathBuf>,
        /// The program and its arguments
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
}

/// A panic ends crest at once, printing only what needs no allocation:
/// the standard hook takes a lock and formats, and a panic for want of
/// memory there (crest under a small RLIMIT_AS) deadlocked crest with the
/// tree still frozen.  Aborting lets the tree go (its tasks unwind by
/// themselves) and a restore's stubs die with crest.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let write = |b: &[u8]| {
            // SAFETY: write(2) of a borrowed buffer to stderr.
            unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        };
        write(b"crest: internal error: ");
        if let Some(m) = info.payload().downcast_ref::<&str>() {
            write(m.as_bytes());
        } else if let Some(m) = info.payload().downcast_ref::<String>() {
            write(m.as_bytes());
        } else {
            write(b"panic");
        }
        if let Some(l) = info.location() {
            write(b" at ");
            write(l.file().as_bytes());
        }
        write(b"; crest stops here (a dumped tree runs on as it was, a restore leaves nothing)\n");
        std::process::abort();
    }));
}

fn main() {
    abort_on_panic();
    // Invoked as `criu` (the shim), crest is the criu-compatible front
    // container runtimes drive.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    if name == Some("criu") {
        std::process::exit(crest_criu_compat::cli::main(&args));
    }
    // The write tracker a `dump --track` leaves (crest::memory::track).
    if args.get(1).and_then(|a| a.to_str()) == Some("__track") {
        let root = args.get(2).and_then(|a| a.to_str()?.parse().ok());
        let code = match root.map(crest::memory::track::serve) {
            Some(Ok(())) => 0,
            _ => 1,
        };
        std::process::exit(code);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("crest: error: {}", one_line(&msg));
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Dump {
            pid,
            output,
            leave_running,
            json,
            quiet,
            no_sync,
            compress,
            no_pre_copy,
            tcp_established,
            ext_unix_sk,
            aio_idle,
            digests,
            parent,
            track,
        } => {
            let parent = match parent {
                None => None,
                Some(path) => {
                    if output == "-" {
                        bail!("--parent needs -o FILE (the image records where its parent is, relative to it)");
                    }
                    let dir = Path::new(&output)
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
                    if same(&path, Path::new(&output)) {
                        bail!(
                            "--parent {} is the output: an incremental image cannot replace its own parent",
                            path.display()
                        );
                    }
                    let recorded = crest::memory::incremental::relative_to(&path, dir)
                        .with_context(|| format!("parent image {}", path.display()))?;
                    Some(crest::dump::ParentImage { path, recorded })
                }
            };
            let opts = crest::DumpOptions {
                digests,
                parent,
                track,
                leave_running,
                compress,
                no_precopy: no_pre_copy,
                external_pipes: false,
                tcp_established,
                ext_unix_sk,
                aio_idle,
                ..Default::default()
            };
            cmd_dump(pid, &output, &opts, json, quiet, !no_sync)
        }
        Cmd::Restore {
            input,
            listen,
            psk,
            detach,
            pidfile,
            json,
            new_pidns,
            veth,
            netns,
            root,
            ext_mount,
            ext_unix_sk,
            lazy,
            parent_dir,
        } => match (input, listen) {
            (Some(input), None) => {
                if psk.is_some() {
                    bail!("--psk goes with --listen");
                }
                let mut pairs = Vec::new();
                for v in &veth {
                    match v.split_once('=') {
                        Some((i, o)) if !i.is_empty() && !o.is_empty() => {
                            pairs.push((i.to_string(), o.to_string()))
                        }
                        _ => bail!("--veth {v:?}: give INSIDE=OUTSIDE"),
                    }
                }
                let mut mounts = crest::MountMapping {
                    root,
                    ..Default::default()
                };
                for m in &ext_mount {
                    let Some((name, path)) = m.split_once('=') else {
                        bail!("--ext-mount {m}: expected NAME=PATH");
                    };
                    mounts.ext.insert(name.to_string(), path.to_string());
                }
                let opts = crest::RestoreOptions {
                    new_pidns,
                    veth: pairs,
                    existing_ns: netns
                        .into_iter()
                        .map(|path| crest::ExistingNs {
                            kind: "net".into(),
                            ino: None,
                            path,
                        })
                        .collect(),
                    mounts,
                    ext_unix_sk,
                    lazy,
                    parents: crest::memory::incremental::ParentLookup {
                        image_dir: (input != "-").then(|| {
                            Path::new(&input)
                                .parent()
                                .filter(|d| !d.as_os_str().is_empty())
                                .unwrap_or(Path::new("."))
                                .to_path_buf()
                        }),
                        parent_dir,
                    },
                    ..Default::default()
                };
                cmd_restore(&input, detach, pidfile.as_deref(), json, &opts)
            }
            (_, Some(_)) if new_pidns => {
                bail!("--new-pidns does not go with --listen (yet)")
            }
            (_, Some(listen)) => migrate::cmd_listen(
                &listen,
                psk.as_deref(),
                detach,
                pidfile.as_deref(),
                json,
                lazy,
            ),
            (None, None) => bail!("give --input or --listen"),
        },
        Cmd::Migrate {
            pid,
            to,
            psk,
            one_way,
            timeout,
            connect_wait,
            compress,
            no_pre_copy,
            lazy,
            lazy_resume_on_failure,
            json,
            quiet,
        } => migrate::cmd_migrate(&migrate::Args {
            lazy,
            lazy_resume_on_failure,
            pid,
            to: &to,
            psk: psk.as_deref(),
            one_way,
            timeout,
            connect_wait,
            compress,
            no_pre_copy,
            json,
            quiet,
        }),
        Cmd::Check {
            pid,
            json,
            tcp_established,
            ext_unix_sk,
            aio_idle,
        } => cmd_check(pid, json, tcp_established, ext_unix_sk, aio_idle),
        Cmd::Inspect { schema: true, .. } => {
            print!("{}", crest::codec::inspect::json_schema());
            Ok(0)
        }
        Cmd::Inspect { image, json, .. } => cmd_inspect(&image.unwrap_or_default(), json),
        Cmd::Convert {
            input,
            output,
            json,
        } => cmd_convert(&input, &output, json),
        Cmd::Run { log, cmd } => cmd_run(log.as_deref(), &cmd),
        Cmd::InstallCriuShim { dir } => cmd_install_criu_shim(&dir),
    }
}

/// An error message as one printable line: names taken from an image may
/// hold newlines, escapes or NUL bytes, which must not reach a terminal.
/// Multi-line lists (several obstacles) are joined with "; ".
fn one_line(msg: &str) -> String {
    let mut joined = String::new();
    for l in msg.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !joined.is_empty() {
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(l);
    }
    joined
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The library's error, kept whole (its text says everything, and it has
/// no `source()`, so `main`'s chain adds nothing twice).
pub(crate) fn lib_err(e: crest::Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

/// SIGINT, SIGTERM or SIGHUP during a dump or restore: the run stops at
/// its next step and unwinds as after any error (the tree left running as
/// it was, nothing half-restored left).  A second one ends crest at once,
/// which is safe too: the tree's tasks then unwind by themselves and the
/// restored stubs die with crest.
fn stop_on_signals() {
    extern "C" fn on_signal(sig: libc::c_int) {
        if crest::fault::stop_requested().is_some() {
            // SAFETY: signal() and raise() are async-signal-safe.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
        crest::fault::request_stop(sig);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores an atomic, or re-raises with the
        // default action.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// An error of a run stopped by a signal says what was left.
fn stopped_err(e: crest::Error, what: &str) -> anyhow::Error {
    match crest::fault::stop_requested() {
        Some(_) => anyhow::anyhow!("{e} ({what})"),
        None => lib_err(e),
    }
}

/// Standard output, for an image: refused when it is a terminal (`hint`
/// says what to give instead); the pipe is grown, and the image goes
/// straight to (a duplicate of) the descriptor, since std's stdout would
/// look for line ends in every byte of it.
fn image_stdout(hint: &str) -> Result<File> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        bail!("refusing to write an image to a terminal: {hint}");
    }
    grow_pipe(1);
    use std::os::fd::AsFd;
    Ok(File::from(stdout.as_fd().try_clone_to_owned()?))
}

fn cmd_dump(
    pid: i32,
    output: &str,
    opts: &crest::DumpOptions,
    json: bool,
    quiet: bool,
    sync: bool,
) -> Result<i32> {
    stop_on_signals();
    let abandoned = format!("dump abandoned: pid {pid} runs on as it was");
    let lib_err = |e| stopped_err(e, &abandoned);
    let mut progress = output::Progress::new("dump", quiet);
    let report = if output == "-" {
        let out = sink::Gather::new(image_stdout("use -o FILE or a pipe")?);
        crest::dump(
            pid,
            out,
            opts,
            &mut crest::dump::Flush,
            &mut |done, total| progress.update(done, total),
        )
        .map_err(lib_err)?
    } else {
        let final_path = Path::new(output);
        let tmp = temp_name(final_path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let out = sink::Gather::new(SyncingFile {
            file,
            written: 0,
            started: 0,
            sync,
        });
        let r = crest::dump(
            pid,
            out,
            opts,
            &mut FileSink {
                tmp: tmp.clone(),
                path: final_path.to_path_buf(),
                committed: false,
                sync,
            },
            &mut |done, total| progress.update(done, total),
        );
        match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(lib_err(e));
            }
        }
    };
    progress.finish();
    if json {
        let s = serde_json::to_string(&report)?;
        if output == "-" {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    } else if !quiet {
        eprintln!(
            "crest: checkpointed pid {} into {} ({}, {} pages, frozen {:.1} ms){}",
            report.pid,
            if output == "-" {
                "standard output"
            } else {
                output
            },
            output::bytes(report.image_bytes),
            report.pages_written,
            report.frozen_ms,
            if report.left_running {
                "; it keeps running"
            } else {
                "; the process was stopped"
            }
        );
    }
    Ok(0)
}

/// An image file being written: disk writeback of what is written is
/// started every 32 MiB (sync_file_range), so the fsync at the end has
/// little left to wait for.
struct SyncingFile {
    file: File,
    written: u64,
    started: u64,
    sync: bool,
}

const WRITEBACK_STEP: u64 = 32 << 20;

impl SyncingFile {
    /// Counts `n` bytes written, starting writeback every
    /// [`WRITEBACK_STEP`].
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.sync && self.written - self.started >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on a descriptor we own; it only
            // starts writeback of the given range and does not wait.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as i64,
                    (self.written - self.started) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.started = self.written;
        }
    }
}

impl std::io::Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::Write::write(&mut self.file, buf)?;
        self.wrote(n);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let n = std::io::Write::write_vectored(&mut self.file, bufs)?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.file)
    }
}

/// An image file: written under a temporary name, made durable and
/// renamed into place only when complete.
struct FileSink {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
    sync: bool,
}

impl crest::dump::ImageSink<sink::Gather<SyncingFile>> for FileSink {
    fn commit(&mut self, w: sink::Gather<SyncingFile>) -> crest::Result<()> {
        let f = w.into_inner()?.file;
        if self.sync {
            f.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }

    fn rollback(&mut self) {
        if self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// If `fd` is a pipe, makes its buffer as large as an unprivileged
/// process may (fewer context switches when an image streams through).
pub(crate) fn grow_pipe(fd: i32) {
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(1 << 20);
    // SAFETY: fcntl on a standard descriptor; failure (not a pipe) is fine.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, max) };
}

/// A name next to `path` for writing the image before it is complete.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Read buffer of a restore.  Small on purpose: the records' headers and
/// metadata come from it, while the image reader takes the large page
/// chunks straight from the file or pipe (a read at least this large into
/// an empty buffer bypasses it), so pages are not copied twice.
const READ_BUF: usize = 64 << 10;

fn cmd_restore(
    input: &str,
    detach: bool,
    pidfile: Option<&Path>,
    json: bool,
    opts: &crest::RestoreOptions,
) -> Result<i32> {
    stop_on_signals();
    let lib_err = |e| stopped_err(e, "restore abandoned: nothing of it is left");
    let mut progress = output::Progress::new("restore", json);
    let report = if input == "-" {
        grow_pipe(0);
        let stdin = std::io::stdin();
        crest::restore_with(
            BufReader::with_capacity(READ_BUF, stdin.lock()),
            opts,
            &mut |n| progress.add(n),
        )
    } else {
        let f = File::open(input).with_context(|| format!("opening image {input}"))?;
        crest::restore_with(BufReader::with_capacity(READ_BUF, f), opts, &mut |n| {
            progress.add(n)
        })
    }
    .map_err(lib_err)?;
    progress.finish();
    if let Some(p) = pidfile {
        std::fs::write(p, format!("{}\n", report.pid))
            .with_context(|| format!("writing pid file {}", p.display()))?;
    }
    // Detached, a lazy restore reports once every page is in.
    let lazy_detached = detach && report.lazy.is_some();
    if json && !lazy_detached {
        println!("{}", serde_json::to_string(&report)?);
    } else if detach && report.lazy.is_none() {
        println!("{}", report.pid);
    } else if !detach {
        eprintln!("crest: restored pid {}", report.pid);
    }
    match report.lazy.clone() {
        Some(phase) => {
            let r = serde_json::to_value(&report)?;
            finish_lazy(report.pid, &phase, detach, json, false, r)
        }
        None if detach => Ok(0),
        None => Ok(output::wait_forwarding_signals(report.pid)),
    }
}

/// After a lazy restore (`report`, printed already unless `detach`):
/// crest serves the pages until every one is in.  Detached, it returns
/// then (printing the report with the lazy phase's); else it waits for
/// the root as usual while the pages come.  A failed phase has killed the
/// tree: its error is crest's.  `stderr_only`: standard output is not
/// crest's to print on (a migration's reply channel).
pub(crate) fn finish_lazy(
    pid: i32,
    phase: &crest::memory::lazy::Phase,
    detach: bool,
    json: bool,
    stderr_only: bool,
    mut report: serde_json::Value,
) -> Result<i32> {
    use std::io::Write;
    let say = move |line: String| {
        if stderr_only {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    if detach {
        let stats = phase.wait().map_err(lib_err)?;
        if json {
            report["lazy"] = serde_json::to_value(&stats)?;
            say(report.to_string());
        } else {
            say(pid.to_string());
            eprintln!(
                "crest: restored pid {pid}; all pages in after {:.1} ms",
                stats.all_pages_ms
            );
        }
        return Ok(0);
    }
    let _ = std::io::stdout().flush();
    let phase = phase.clone();
    let waiter = std::thread::spawn(move || {
        let r = phase.wait();
        match &r {
            Ok(stats) if json => say(serde_json::json!({ "lazy": stats }).to_string()),
            Ok(stats) => eprintln!(
                "crest: all pages of pid {pid} in after {:.1} ms",
                stats.all_pages_ms
            ),
            Err(_) => {}
        }
        r
    });
    let code = output::wait_forwarding_signals(pid);
    match waiter.join() {
        Ok(Ok(_)) => Ok(code),
        Ok(Err(e)) => Err(lib_err(e)),
        Err(_) => bail!("the lazy page thread panicked"),
    }
}

fn cmd_check(
    pid: i32,
    json: bool,
    tcp_established: bool,
    ext_unix_sk: bool,
    aio_idle: bool,
) -> Result<i32> {
    let opts = crest::DumpOptions {
        tcp_established,
        ext_unix_sk,
        aio_idle,
        ..Default::default()
    };
    let obstacles = crest::check_with(pid, &opts).map_err(lib_err)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "pid": pid, "ok": obstacles.is_empty(), "obstacles": obstacles })
        );
    } else if obstacles.is_empty() {
        println!("pid {pid} can be checkpointed");
    } else {
        println!("pid {pid} cannot be checkpointed now:");
        for o in &obstacles {
            println!("  {o}");
        }
    }
    Ok(if obstacles.is_empty() { 0 } else { 1 })
}

fn cmd_inspect(image: &str, json: bool) -> Result<i32> {
    // Like other filters, end quietly when the reader goes away
    // (`crest inspect IMAGE | head`) instead of failing on EPIPE.
    // SAFETY: restores the default action of one signal; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let ins = if image == "-" {
        crest::codec::inspect::inspect(BufReader::with_capacity(1 << 20, std::io::stdin().lock()))
    } else {
        let f = File::open(image).with_context(|| format!("opening image {image}"))?;
        crest::codec::inspect::inspect(BufReader::with_capacity(1 << 20, f))
    }
    .map_err(lib_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
    } else {
        output::print_inspection(&ins);
    }
    Ok(0)
}

fn cmd_convert(input: &str, output: &str, json: bool) -> Result<i32> {
    let reader: Box<dyn std::io::Read> = if input == "-" {
        grow_pipe(0);
        Box::new(BufReader::with_capacity(READ_BUF, std::io::stdin().lock()))
    } else {
        let f = File::open(input).with_context(|| format!("opening image {input}"))?;
        Box::new(BufReader::with_capacity(READ_BUF, f))
    };
    let report = if output == "-" {
        let fd = image_stdout("give OUTPUT a file or a pipe")?;
        // On an error no tail is written: what went out is no image.
        let (w, report) =
            crest::codec::convert::convert(reader, sink::Gather::new(fd)).map_err(lib_err)?;
        w.into_inner()?;
        report
    } else {
        let final_path = Path::new(output);
        let tmp = temp_name(final_path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let done = crest::codec::convert::convert(reader, sink::Gather::new(file))
            .map_err(lib_err)
            .and_then(|(w, report)| {
                let f = w.into_inner()?;
                f.sync_all()?;
                std::fs::rename(&tmp, final_path)
                    .with_context(|| format!("renaming {} to {output}", tmp.display()))?;
                Ok(report)
            });
        match done {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    };
    if json {
        let s = serde_json::to_string(&report)?;
        if output == "-" {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    } else {
        eprintln!(
            "crest: converted {} (format {}) into {} (format {}, {})",
            if input == "-" {
                "standard input"
            } else {
                input
            },
            report.from_version,
            if output == "-" {
                "standard output"
            } else {
                output
            },
            report.to_version,
            output::bytes(report.output_bytes),
        );
    }
    Ok(0)
}

fn cmd_run(log: Option<&Path>, cmd: &[String]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening log {}", p.display()))?,
        None => File::options().write(true).open("/dev/null")?,
    };
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(File::open("/dev/null")?)
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid and close_range are async-signal-safe and touch no
    // Rust state.  Closing every inherited descriptor above stderr keeps
    // the caller's pipes and sockets (a build jobserver, say) out of the
    // program, so nothing of the caller's stays attached to it.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = c.spawn().with_context(|| format!("starting {}", cmd[0]))?;
    println!("{}", child.id());
    Ok(0)
}

fn cmd_install_criu_shim(dir: &Path) -> Result<i32> {
    let exe = std::env::current_exe().context("finding the crest binary")?;
    let exe = exe
        .canonicalize()
        .with_context(|| format!("resolving {}", exe.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("criu");
    match std::fs::read_link(&link) {
        Ok(t) if t == exe => {}
        Ok(_) => {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?
        }
        Err(_) if link.symlink_metadata().is_ok() => bail!(
            "{} exists and is not a symlink: remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("creating {}", link.display()))?;
    }
    println!("{}", link.display());
    eprintln!(
        "crest: {} -> {}; put {} first in PATH for runc, crun and podman",
        link.display(),
        exe.display(),
        dir.display()
    );
    Ok(0)
}
