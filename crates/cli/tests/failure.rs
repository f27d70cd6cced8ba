//! Failure safety: a dump or restore that fails — at any of crest's
//! numbered fault points, by error or by crest being SIGKILLed, on a full
//! disk or a closed pipe — leaves the checkpointed process running as it
//! was (not stopped, not traced, same mappings and signal mask), leaves
//! no image under the output name, and leaves no restored process or
//! temporary file behind.  Each workload verifies itself at the end.

mod common;
use common::*;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The point returns an error.
    Error,
    /// crest SIGKILLs itself at the point.
    Kill,
}

/// Runs `crest ARGS` with fault injection at point `at` (0: none) and the
/// trace of every point passed on stderr.
fn crest_fault(args: &[&str], at: usize, mode: Mode) -> Output {
    let mut c = Command::new(crest_bin());
    c.args(args)
        .env("CREST_FAULT_TRACE", "1")
        .env_remove("CREST_FAULT_AT")
        .env_remove("CREST_FAULT_MODE")
        .stdin(Stdio::null());
    if at > 0 {
        c.env("CREST_FAULT_AT", at.to_string());
    }
    if mode == Mode::Kill {
        c.env("CREST_FAULT_MODE", "kill");
    }
    c.output().expect("running crest")
}

/// The fault points a traced run passed, in order: names, point 1 first.
fn trace(o: &Output) -> Vec<String> {
    let mut names = Vec::new();
    for line in stderr(o).lines() {
        if let Some(rest) = line.strip_prefix("crest-fault-point ") {
            let (n, name) = rest.split_once(' ').expect("N NAME");
            assert_eq!(n.parse::<usize>().unwrap(), names.len() + 1, "{line}");
            names.push(name.to_string());
        }
    }
    names
}

/// stderr without the trace lines.
fn errors(o: &Output) -> String {
    stderr(o)
        .lines()
        .filter(|l| !l.starts_with("crest-fault-point "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Checks that a run with a fault at point `n` (expected to be `name`)
/// got there and failed the way `mode` says.
fn check_failed_at(o: &Output, n: usize, name: &str, mode: Mode, what: &str) {
    let names = trace(o);
    assert_eq!(
        names.len(),
        n,
        "{what}: crest must stop at point {n}; it passed {names:?}; stderr: {}",
        errors(o)
    );
    assert_eq!(
        names[n - 1],
        name,
        "{what}: point {n} is not the one counted"
    );
    let err = errors(o);
    match mode {
        Mode::Error => {
            assert_eq!(o.status.code(), Some(1), "{what}: status; stderr: {err}");
            assert!(
                err.starts_with("crest: error: ")
                    && err.lines().count() == 1
                    && err.contains(&format!("injected fault at point {n} ({name})")),
                "{what}: one error line naming the point: {err:?}"
            );
        }
        Mode::Kill => assert_eq!(
            o.status.signal(),
            Some(libc::SIGKILL),
            "{what}: crest must have been killed ({:?}); stderr: {err}",
            o.status
        ),
    }
}

/// A line of /proc/PID/status.
fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Waits (up to 5 s, for the kernel to detach a dead tracer's tracees)
/// until `pid` is neither stopped nor traced; says what is wrong if not.
fn wait_untraced(pid: i32) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let state = status_field(pid, "State").unwrap_or_default();
        let tracer = status_field(pid, "TracerPid").unwrap_or_default();
        let ok = !(state.starts_with('T')
            || state.starts_with('t')
            || state.starts_with('Z')
            || state.starts_with('X')
            || state.is_empty())
            && tracer == "0";
        if ok {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("State {state:?}, TracerPid {tracer:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a failed dump must not have changed in the process.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    maps: String,
    sigblk: String,
}

fn snapshot(pid: i32) -> Snapshot {
    Snapshot {
        maps: std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(),
        sigblk: status_field(pid, "SigBlk").unwrap(),
    }
}

/// Files in `dir` whose name starts with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name()
                .to_str()?
                .starts_with(prefix)
                .then(|| e.path())
        })
        .collect();
    v.sort();
    v
}

/// Waits until `pid` has gone to sleep and woken up again twice on its
/// own (the workloads sleep 2 ms at a time while they wait), so that a
/// process that was left in a state where it cannot run on has died by
/// then.  Up to 10 s.
fn wait_progress(pid: i32) -> Result<(), String> {
    let switches = || -> Option<u64> { status_field(pid, "voluntary_ctxt_switches")?.parse().ok() };
    let start = Instant::now();
    let first = switches().ok_or("no voluntary_ctxt_switches")?;
    loop {
        if !alive(pid) {
            return Err("the process died after crest let it go".into());
        }
        if switches().is_some_and(|n| n >= first + 2) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "the process does not run on (State {:?})",
                status_field(pid, "State")
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// After a failed dump: the process runs on as it was.  Returns what is
/// wrong, with details, instead of panicking, so callers can say which
/// point it was.
fn intact(w: &Workload, before: &Snapshot) -> Result<(), String> {
    wait_untraced(w.pid)?;
    wait_progress(w.pid)?;
    let now = snapshot(w.pid);
    if now.sigblk != before.sigblk {
        return Err(format!(
            "blocked signal mask changed: {} -> {}",
            before.sigblk, now.sigblk
        ));
    }
    if now.maps != before.maps {
        let extra: Vec<&str> = now
            .maps
            .lines()
            .filter(|l| !before.maps.lines().any(|b| b == *l))
            .collect();
        let lost: Vec<&str> = before
            .maps
            .lines()
            .filter(|l| !now.maps.lines().any(|b| b == *l))
            .collect();
        return Err(format!(
            "/proc/PID/maps changed: new lines {extra:?}, lost lines {lost:?}"
        ));
    }
    Ok(())
}

/// The fault points of a dump of `w` (run with --leave-running).
fn dump_points(w: &Workload) -> Vec<String> {
    let out = w.dir.join("counting.img");
    let pid = w.pid.to_string();
    let o = crest_fault(
        &[
            "dump",
            "-p",
            &pid,
            "-o",
            out.to_str().unwrap(),
            "--leave-running",
            // The same points as a dump that stops the process.
            "--no-pre-copy",
            "-q",
        ],
        0,
        Mode::Error,
    );
    assert!(o.status.success(), "traced dump: {}", errors(&o));
    std::fs::remove_file(&out).unwrap();
    let names = trace(&o);
    assert!(names.len() > 10, "too few fault points: {names:?}");
    names
}

/// Where a dump point lies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Before crest runs any syscall in the task.
    BeforeInjection,
    /// From the opening of the syscall-injection session (crest has
    /// single-stepped the task) until the image is committed.
    Injected,
    /// After the image was renamed to its final name.
    Committed,
}

fn phases(names: &[String]) -> Vec<Phase> {
    let opened = names
        .iter()
        .position(|n| n == "dump: session opened")
        .expect("a session-opened point");
    let committed = names
        .iter()
        .position(|n| n == "dump: image committed")
        .expect("an image-committed point");
    assert!(opened < committed);
    (0..names.len())
        .map(|i| {
            if i >= committed {
                Phase::Committed
            } else if i >= opened {
                Phase::Injected
            } else {
                Phase::BeforeInjection
            }
        })
        .collect()
}

/// Dumps `w` (no --leave-running) with a fault at each point of the
/// phases `which` in `mode`; after each, checks the outcome and that the
/// process is intact.  No file may be left under the output name, except
/// that a crest killed after the commit leaves the complete image.
/// Returns (points run, `.img.partial-*` files found after them).
fn fault_dumps(w: &Workload, mode: Mode, which: &[Phase]) -> (usize, usize) {
    let names = dump_points(w);
    let ph = phases(&names);
    let before = snapshot(w.pid);
    let img = w.image();
    let pid = w.pid.to_string();
    let mut run = 0;
    let mut partial_files = 0;
    for n in 1..=names.len() {
        if !which.contains(&ph[n - 1]) {
            continue;
        }
        run += 1;
        let what = format!("{mode:?} at dump point {n} ({})", names[n - 1]);
        let o = crest_fault(
            &["dump", "-p", &pid, "-o", img.to_str().unwrap(), "-q"],
            n,
            mode,
        );
        check_failed_at(&o, n, &names[n - 1], mode, &what);
        if let Err(e) = intact(w, &before) {
            let exit = if alive(w.pid) {
                None
            } else {
                reap(w.pid, Duration::from_secs(5))
            };
            panic!("{what}: the process was not left as it was: {e} (exit: {exit:?})");
        }
        if mode == Mode::Kill && ph[n - 1] == Phase::Committed {
            let i = crest(&["inspect", img.to_str().unwrap()]);
            assert!(
                i.status.success(),
                "{what}: the image under the output name must be complete: {}",
                stderr(&i)
            );
            std::fs::remove_file(&img).unwrap();
        }
        assert!(
            !img.exists(),
            "{what}: a file was left under the output name"
        );
        let partial = files_starting(&w.dir, ".img.partial-");
        match mode {
            Mode::Error => assert!(
                partial.is_empty(),
                "{what}: temporary files left: {partial:?}"
            ),
            Mode::Kill => {
                partial_files += partial.len();
                for p in partial {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
    }
    assert!(run > 0, "no {which:?} points in {names:?}");
    eprintln!(
        "{mode:?}: {run} of {} dump fault points run ({which:?}); \
         {partial_files} .img.partial-* files left",
        names.len()
    );
    (run, partial_files)
}

/// Every fault point before the image is committed, as an error: the
/// dump fails with one error line, no image or temporary file is left,
/// the process runs on untouched and passes its own checks.
#[test]
fn dump_error_at_every_point() {
    let w = Workload::start("memory", &["8"]);
    fault_dumps(&w, Mode::Error, &[Phase::BeforeInjection, Phase::Injected]);
    w.go();
    w.expect_pass();
}

#[test]
fn dump_error_after_commit() {
    let w = Workload::start("memory", &["8"]);
    fault_dumps(&w, Mode::Error, &[Phase::Committed]);
    w.go();
    w.expect_pass();
}

/// crest SIGKILLed at each point before it runs syscalls in the task:
/// the kernel detaches the process, which runs on untouched.  A killed
/// crest cannot remove its `.img.partial-*` file: it is reported and
/// removed.
#[test]
fn dump_killed_before_any_injected_syscall() {
    let w = Workload::start("memory", &["8"]);
    let (_, partial) = fault_dumps(&w, Mode::Kill, &[Phase::BeforeInjection]);
    assert!(
        partial > 0,
        "a killed dump leaves its .img.partial-* file (it cannot remove it): \
         if this changed, update this test"
    );
    w.go();
    w.expect_pass();
}

/// crest SIGKILLed at each point from the first injected syscall on
/// (after the commit, the complete image may stay).
#[test]
fn dump_killed_after_an_injected_syscall() {
    let w = Workload::start("memory", &["8"]);
    fault_dumps(&w, Mode::Kill, &[Phase::Injected, Phase::Committed]);
    w.go();
    w.expect_pass();
}

/// Waits (up to 2 s: a killed crest's descriptors are closed by the
/// kernel a moment after it dies) until no mapping of `pid` is registered
/// with a userfaultfd and no page is write-protected by one.
fn untracked(pid: i32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let registered = smaps
            .lines()
            .filter(|l| l.starts_with("VmFlags:"))
            .any(|l| l.split_whitespace().any(|f| f == "uw"));
        let protected = protected_pages(pid);
        if !registered && protected == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "write tracking left behind: registered mappings {registered}, \
                 write-protected pages {protected}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pages of `pid` whose pagemap entry has the userfaultfd write-protect
/// bit (57).
fn protected_pages(pid: i32) -> usize {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let Ok(pagemap) = std::fs::File::open(format!("/proc/{pid}/pagemap")) else {
        return 0;
    };
    let mut count = 0;
    for l in maps.lines() {
        let range = l.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        if a >= 0xffff_ffff_ff60_0000 {
            continue; // vsyscall: not in pagemap
        }
        let mut buf = vec![0u8; ((b - a) / 4096 * 8) as usize];
        if pagemap.read_exact_at(&mut buf, a / 4096 * 8).is_err() {
            continue;
        }
        count += buf
            .chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 57) != 0)
            .count();
    }
    count
}

/// A --leave-running dump, which copies memory while the process runs
/// (write tracking with a userfaultfd), failed by error and by SIGKILL
/// at each of its points: the process runs on as it was, crest's write
/// tracking is gone from it, and no image is left (but a complete one
/// after the commit, when crest is killed).
#[test]
fn precopy_dump_fails_at_every_point() {
    let w = Workload::start("memory", &["8"]);
    let img = w.image();
    let pid = w.pid.to_string();
    let args = [
        "dump",
        "-p",
        &pid,
        "-o",
        img.to_str().unwrap(),
        "--leave-running",
        "-q",
    ];
    let counted = crest_fault(&args, 0, Mode::Error);
    assert!(
        counted.status.success(),
        "traced dump: {}",
        errors(&counted)
    );
    std::fs::remove_file(&img).unwrap();
    let names = trace(&counted);
    assert!(
        names.iter().any(|n| n == "dump: frozen pages copied"),
        "the dump did not pre-copy: {names:?}"
    );
    let committed = names
        .iter()
        .position(|n| n == "dump: image committed")
        .expect("an image-committed point");
    let before = snapshot(w.pid);
    for mode in [Mode::Error, Mode::Kill] {
        for n in 1..=names.len() {
            let what = format!("{mode:?} at pre-copy dump point {n} ({})", names[n - 1]);
            let o = crest_fault(&args, n, mode);
            check_failed_at(&o, n, &names[n - 1], mode, &what);
            if let Err(e) = intact(&w, &before).and_then(|()| untracked(w.pid)) {
                panic!("{what}: the process was not left as it was: {e}");
            }
            if mode == Mode::Kill && n > committed {
                std::fs::remove_file(&img).unwrap();
            }
            assert!(
                !img.exists(),
                "{what}: a file was left under the output name"
            );
            for p in files_starting(&w.dir, ".img.partial-") {
                assert_eq!(mode, Mode::Kill, "{what}: temporary file left: {p:?}");
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    eprintln!("{} pre-copy dump points, each failed twice", names.len());
    w.go();
    w.expect_pass();
}

/// A tmpfs mounted for the test, unmounted (lazily) on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        use std::ffi::CString;
        std::fs::create_dir_all(dir).unwrap();
        let target = CString::new(dir.to_str().unwrap()).unwrap();
        let opts = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mounting a tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        use std::ffi::CString;
        let target = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A dump into a full filesystem fails saying so, leaves nothing there,
/// and the process runs on.
#[test]
fn dump_to_a_full_disk() {
    let w = Workload::start("memory", &["16"]);
    let before = snapshot(w.pid);
    let full = w.dir.join("full");
    let m = Mount::tmpfs(&full, "1m");
    let img = full.join("img");
    let o = crest(&[
        "dump",
        "-p",
        &w.pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "-q",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("crest: error: ") && err.lines().count() == 1,
        "one error line: {err:?}"
    );
    assert!(
        err.contains("No space left on device"),
        "the error says the disk is full: {err}"
    );
    let left: Vec<_> = std::fs::read_dir(&full).unwrap().collect();
    assert!(left.is_empty(), "files left on the full disk: {left:?}");
    intact(&w, &before).unwrap();
    drop(m);
    w.go();
    w.expect_pass();
}

/// `dump -o -` into a pipe whose reader goes away after a few KiB fails,
/// and the process runs on.
#[test]
fn dump_to_a_pipe_closed_by_its_reader() {
    use std::io::Read;
    let w = Workload::start("memory", &["16"]);
    let before = snapshot(w.pid);
    let mut child = Command::new(crest_bin())
        .args(["dump", "-p", &w.pid.to_string(), "-o", "-", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 8192];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..8], b"CRESTIMG");
    drop(out);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the dump must fail: {err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "a clean error, not a signal ({:?}): {err}",
        o.status
    );
    assert!(
        err.starts_with("crest: error: ") && err.lines().count() == 1,
        "one error line: {err:?}"
    );
    assert!(err.contains("Broken pipe"), "{err}");
    intact(&w, &before).unwrap();
    w.go();
    w.expect_pass();
}

/// A hundred --leave-running dumps in a row leave the process as it was.
#[test]
fn leave_running_a_hundred_times() {
    let w = Workload::start("memory", &["8"]);
    let before = snapshot(w.pid);
    for i in 0..100 {
        let o = w.dump(&["--leave-running", "-q"]);
        assert!(o.status.success(), "dump {i}: {}", stderr(&o));
        intact(&w, &before).unwrap_or_else(|e| panic!("after dump {i}: {e}"));
        assert!(w.image().exists());
    }
    // The last image is good.
    let i = crest(&["inspect", w.image().to_str().unwrap()]);
    assert!(i.status.success(), "{}", stderr(&i));
    w.go();
    w.expect_pass();
}

/// Restores the image of `w` (dumped, its pid free) with a fault at each
/// point in `mode`: every restore fails and leaves no process with the
/// pid and no recreated file in the workload directory.  Then restores
/// it for real; the workload must pass.  Returns the number of points.
fn fault_restores(w: Workload, mode: Mode) -> usize {
    let unlinked_fd = unlinked_fd(w.pid);
    w.dump_ok();
    let img = w.image();
    let args = ["restore", "-i", img.to_str().unwrap(), "-d"];
    let leftovers = |w: &Workload| -> Vec<PathBuf> {
        let mut v = files_starting(&w.dir, "gone");
        v.extend(
            files_starting(&w.dir, "")
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(".crest-")),
        );
        v
    };
    let files_before = leftovers(&w);
    assert!(files_before.is_empty(), "{files_before:?}");
    // Count the points on a successful restore, then undo it.
    let o = crest_fault(&args, 0, Mode::Error);
    assert!(o.status.success(), "traced restore: {}", errors(&o));
    assert_eq!(stdout(&o).trim().parse::<i32>().ok(), Some(w.pid));
    let names = trace(&o);
    assert!(names.len() > 10, "too few restore points: {names:?}");
    // SAFETY: plain kill of the process this test restored.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    assert_eq!(
        reap(w.pid, Duration::from_secs(10)),
        Some(Exit::Signal(libc::SIGKILL))
    );
    let mut absorbed = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        let what = format!("{mode:?} at restore point {n} ({name}) of {}", w.scenario);
        let o = crest_fault(&args, n, mode);
        if mode == Mode::Error && o.status.success() {
            // crest handled the error itself (an injected syscall with a
            // fallback): only possible for a syscall, and the restore
            // must have gone on through every point.
            assert_eq!(
                name, "restore: injected syscall",
                "{what}: a restore step's error was ignored"
            );
            let t = trace(&o);
            assert!(
                t.len() > n && t.last() == names.last(),
                "{what}: the restore went on to the end: {t:?}"
            );
            assert_eq!(stdout(&o).trim().parse::<i32>().ok(), Some(w.pid));
            absorbed.push(n);
            // SAFETY: plain kill of the process this test restored.
            unsafe { libc::kill(w.pid, libc::SIGKILL) };
            reap(w.pid, Duration::from_secs(10));
            continue;
        }
        // A stub crest left behind is our child now (we are a subreaper).
        let stub = reap(w.pid, Duration::from_secs(10));
        check_failed_at(&o, n, name, mode, &what);
        assert!(
            !Path::new(&format!("/proc/{}", w.pid)).exists(),
            "{what}: a process with pid {} is left (reaped: {stub:?})",
            w.pid
        );
        if mode == Mode::Error {
            assert_eq!(stub, None, "{what}: crest must reap its stub itself");
        }
        let left = leftovers(&w);
        assert!(left.is_empty(), "{what}: files left: {left:?}");
    }
    eprintln!(
        "{mode:?}: {} restore fault points of {} run; errors handled by crest itself at {absorbed:?}",
        names.len(),
        w.scenario
    );
    assert!(
        absorbed.len() <= 1,
        "{mode:?}: injected errors ignored at points {absorbed:?}"
    );
    w.restore_ok();
    w.go();
    match unlinked_fd {
        None => w.expect_pass(),
        Some(fd) => expect_pass_but_unlinked_inode(w, fd),
    }
    names.len()
}

/// The descriptor of `pid` on an unlinked file, if any.
fn unlinked_fd(pid: i32) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().ends_with(" (deleted)"))
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// Like `expect_pass`, but tolerates the one check crest cannot
/// satisfy: the inode number of a recreated unlinked file (equal only
/// when the filesystem happens to reuse the number).
fn expect_pass_but_unlinked_inode(w: Workload, fd: i32) {
    let res = w.dir.join("result");
    let start = Instant::now();
    while !res.exists() && alive(w.pid) && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    let tolerated = format!("fd {fd} st_ino: ");
    let bad: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(&tolerated))
        .collect();
    assert!(
        (text.starts_with("PASS") || text.starts_with("FAIL")) && bad.is_empty(),
        "workload {} did not pass:\n{text}\nlog:\n{}",
        w.scenario,
        w.log()
    );
    if text.starts_with("FAIL") {
        eprintln!(
            "{}: tolerated: the recreated unlinked file has another inode number: {text}",
            w.scenario
        );
    }
    // Dropping `w` reaps the exited workload.
}

#[test]
fn restore_error_at_every_point() {
    fault_restores(Workload::start("idle", &[]), Mode::Error);
}

#[test]
fn restore_killed_at_every_point() {
    fault_restores(Workload::start("idle", &[]), Mode::Kill);
}

/// With an unlinked file, whose name is recreated while the restore
/// opens it: no name may be left behind.
#[test]
fn restore_with_unlinked_file_error_at_every_point() {
    fault_restores(Workload::start("files", &[]), Mode::Error);
}

#[test]
fn restore_with_unlinked_file_killed_at_every_point() {
    fault_restores(Workload::start("files", &[]), Mode::Kill);
}

/// A restore that runs out of memory (crest limited by RLIMIT_AS, which
/// its stubs inherit) fails with a clear error and leaves no process.
#[test]
fn restore_out_of_memory_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let w = Workload::start("memory", &["64"]);
    w.dump_ok();
    let img = w.image();
    let mut cmd = std::process::Command::new(crest_bin());
    cmd.args(["restore", "-i", img.to_str().unwrap(), "-d"]);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Only the soft limit: a hard limit below the image's is
            // refused by the restore plan before anything is built.
            let lim = libc::rlimit {
                rlim_cur: 512 << 20,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(
        !o.status.success(),
        "the restore must fail under a 512 MiB limit"
    );
    let err = stderr(&o);
    assert!(
        err.starts_with("crest: error: ") && err.contains("Cannot allocate memory"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    reap(w.pid, std::time::Duration::from_millis(500));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", w.pid)).exists(),
        "a process was left"
    );
    // Without the limit it restores.
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// A tree whose processes fork and exit all the time while crest seizes it:
/// each dump succeeds or refuses cleanly, and the tree keeps working.
#[test]
fn dump_while_the_tree_forks_and_exits() {
    init();
    let dir = temp_dir("forker");
    let log = dir.join("log");
    let script = format!(
        "cd '{}' && i=0; while [ $i -lt 100000 ]; do /bin/true; i=$((i+1)); echo $i > count.tmp; done",
        dir.display()
    );
    let out = crest(&[
        "run",
        "--log",
        log.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = stdout(&out).trim().parse().unwrap();
    let mut ok = 0;
    for k in 0..20 {
        let img = dir.join(format!("img{k}"));
        let d = crest(&[
            "dump",
            "-p",
            &pid.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--leave-running",
            "--no-sync",
        ]);
        let err = stderr(&d);
        assert!(!err.contains("panicked"), "{err}");
        if d.status.success() {
            ok += 1;
        } else {
            assert!(
                err.starts_with("crest: error: ") && err.lines().count() == 1,
                "{err}"
            );
            assert!(!img.exists());
        }
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(st.contains("TracerPid:\t0"), "left traced: {st}");
        assert!(
            !st.contains("State:\tT") && !st.contains("State:\tt"),
            "left stopped: {st}"
        );
    }
    // The shell goes on counting (give a loaded machine time).
    let count = || std::fs::read_to_string(dir.join("count.tmp")).unwrap_or_default();
    let before = count();
    let t = std::time::Instant::now();
    while count() == before && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_ne!(before, count(), "the tree stopped working");
    eprintln!("{ok} of 20 dumps of a forking tree succeeded");
    // SAFETY: plain kill of the pid this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}
