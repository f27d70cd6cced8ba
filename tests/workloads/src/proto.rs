//! The file protocol spoken with the test harness: `ready`, `go`, `result`.
//!
//! Writing `ready` and waiting for `go` never allocate, so scenarios that
//! compare their own memory map before and after the checkpoint can use them.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use crate::checks::Checks;
use crate::util::{cpath, err_str, errno};

/// How long the go-wait may last, counted in requested sleep time (so time
/// spent frozen in a checkpoint does not count).
pub const GO_TIMEOUT_NS: u64 = 120_000_000_000;
const GO_POLL_NS: u64 = 2_000_000;

pub struct Proto {
    dir: PathBuf,
    ready_tmp: CString,
    ready: CString,
    go: CString,
    result_tmp: CString,
    result: CString,
    ready_pid: Cell<i32>,
}

/// What happened during a go-wait.
#[derive(Clone, Copy, Default, Debug)]
pub struct WaitOutcome {
    /// Sleeps that returned EINTR.
    pub eintr: u32,
    /// Last error other than EINTR returned by a sleep (0 if none).
    pub other_err: i32,
    /// Number of sleeps issued.
    pub sleeps: u64,
}

impl WaitOutcome {
    /// Turns anything abnormal seen while waiting into failures.
    pub fn report(&self, c: &mut Checks, what: &str) {
        if self.eintr != 0 {
            c.fail(format!(
                "{what}: clock_nanosleep returned EINTR {} time(s) (expected 0: the checkpoint must be invisible)",
                self.eintr
            ));
        }
        if self.other_err != 0 {
            c.fail(format!(
                "{what}: clock_nanosleep failed: {}",
                err_str(self.other_err)
            ));
        }
    }
}

impl Proto {
    pub fn new(dir: PathBuf) -> Self {
        let p = |name: &str| cpath(&dir.join(name));
        Self {
            ready_tmp: p("ready.tmp"),
            ready: p("ready"),
            go: p("go"),
            result_tmp: p("result.tmp"),
            result: p("result"),
            dir,
            ready_pid: Cell::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn go_path(&self) -> &CStr {
        &self.go
    }

    /// The pid written into `ready` (0 before `write_ready`).
    pub fn ready_pid(&self) -> i32 {
        self.ready_pid.get()
    }

    /// Writes `<dir>/ready` atomically with our pid. Does not allocate.
    pub fn write_ready(&self) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut buf = [0u8; 24];
        let n = fmt_decimal(pid as u64, &mut buf);
        buf[n] = b'\n';
        if let Err(e) = write_atomic(&self.ready_tmp, &self.ready, &buf[..=n]) {
            self.bail(&format!("writing ready: {}", err_str(e)));
        }
        self.ready_pid.set(pid);
    }

    /// Whether `<dir>/go` exists. Does not allocate.
    pub fn go_exists(&self) -> bool {
        // SAFETY: the path is a valid NUL-terminated string.
        unsafe { libc::access(self.go.as_ptr(), libc::F_OK) == 0 }
    }

    /// The default go-wait: `access(go)` then a 2 ms monotonic sleep, until
    /// go exists. Gives up (writing a FAIL result) after 120 s of sleeping.
    /// Does not allocate unless it times out.
    pub fn wait_go(&self) -> WaitOutcome {
        let mut out = WaitOutcome::default();
        let step = libc::timespec {
            tv_sec: 0,
            tv_nsec: GO_POLL_NS as i64,
        };
        loop {
            if self.go_exists() {
                return out;
            }
            if out.sleeps * GO_POLL_NS >= GO_TIMEOUT_NS {
                self.timeout(&out);
            }
            // SAFETY: `step` is a valid timespec; no remainder is requested.
            let r = unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &step, std::ptr::null_mut())
            };
            out.sleeps += 1;
            match r {
                0 => {}
                libc::EINTR => out.eintr += 1,
                e => out.other_err = e,
            }
        }
    }

    /// Writes a FAIL result for a go-wait that timed out and exits.
    pub fn timeout(&self, out: &WaitOutcome) -> ! {
        let mut c = Checks::new();
        c.fail("timeout waiting for go");
        out.report(&mut c, "go-wait");
        self.finish(&c)
    }

    /// Writes a FAIL result with one message (for setup errors) and exits 1.
    pub fn bail(&self, msg: &str) -> ! {
        let mut c = Checks::new();
        c.fail(msg);
        self.finish(&c)
    }

    /// Like `bail`, with the current errno appended.
    pub fn bail_errno(&self, what: &str) -> ! {
        let e = errno();
        self.bail(&format!("setup: {what}: {}", err_str(e)))
    }

    /// Writes `<dir>/result` atomically and exits (0 on PASS, 1 on FAIL).
    pub fn finish(&self, c: &Checks) -> ! {
        self.finish_code(c, 0, 1)
    }

    /// Like `finish`, with chosen exit codes for PASS and FAIL (tree members
    /// exit with distinct codes their parent checks).
    pub fn finish_code(&self, c: &Checks, pass: i32, fail: i32) -> ! {
        let text = result_text(c.failures());
        if let Err(e) = write_atomic(&self.result_tmp, &self.result, text.as_bytes()) {
            eprintln!("crest-workload: writing result: {}", err_str(e));
            std::process::exit(3);
        }
        if !c.passed() {
            for f in c.failures() {
                eprintln!("crest-workload: FAIL: {f}");
            }
        }
        std::process::exit(if c.passed() { pass } else { fail })
    }

    /// Writes an informational `<dir>/<name>` file (atomically).
    pub fn write_aux(&self, name: &str, text: &str) {
        let tmp = cpath(&self.dir.join(format!("{name}.tmp")));
        let dst = cpath(&self.dir.join(name));
        if let Err(e) = write_atomic(&tmp, &dst, text.as_bytes()) {
            self.bail(&format!("writing {name}: {}", err_str(e)));
        }
    }

    /// The protocol handle of a forked member `pid` of a process tree: its
    /// verdict goes to `<dir>/child-<pid>` instead of `<dir>/result` (a
    /// member never writes `ready`). Call `install_member_panic_hook` in the
    /// new process.
    pub fn for_member(&self, pid: i32) -> Self {
        let mut m = Self::new(self.dir.clone());
        m.result_tmp = cpath(&self.dir.join(format!("child-{pid}.tmp")));
        m.result = cpath(&self.dir.join(format!("child-{pid}")));
        m
    }

    /// In a forked tree member: replaces the inherited panic hook (which
    /// would write the root's result) by one writing this member's verdict.
    pub fn install_member_panic_hook(&self) {
        let tmp = self.result_tmp.clone();
        let dst = self.result.clone();
        drop(std::panic::take_hook());
        std::panic::set_hook(Box::new(move |info| {
            let msg = format!("panic: {info}").replace('\n', " ");
            eprintln!("crest-workload: {msg}");
            let _ = write_atomic(&tmp, &dst, result_text(&[msg]).as_bytes());
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) };
        }));
    }

    /// A panic writes a FAIL result naming the panic, then exits 1.
    pub fn install_panic_hook(&self) {
        let tmp = self.result_tmp.clone();
        let dst = self.result.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let text = result_text(&[format!("panic: {info}").replace('\n', " ")]);
            let _ = write_atomic(&tmp, &dst, text.as_bytes());
            std::process::exit(1);
        }));
    }
}

fn result_text(failures: &[String]) -> String {
    let mut s = String::from(if failures.is_empty() {
        "PASS\n"
    } else {
        "FAIL\n"
    });
    for f in failures {
        s.push_str(f);
        s.push('\n');
    }
    s
}

/// Formats `v` in decimal into `buf`, returning the length. No allocation.
pub fn fmt_decimal(mut v: u64, buf: &mut [u8]) -> usize {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (dst, src) in buf.iter_mut().zip(tmp[..n].iter().rev()) {
        *dst = *src;
    }
    n
}

/// Writes `data` to `tmp` then renames it over `dst`. No allocation.
fn write_atomic(tmp: &CStr, dst: &CStr, data: &[u8]) -> Result<(), i32> {
    // SAFETY: `tmp` is a valid C string.
    let fd = unsafe {
        libc::open(
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let mut off = 0;
    while off < data.len() {
        // SAFETY: the pointer/length pair lies inside `data`.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        off += n as usize;
    }
    // SAFETY: fd is ours; the paths are valid C strings.
    unsafe {
        if libc::close(fd) != 0 {
            return Err(errno());
        }
        if libc::rename(tmp.as_ptr(), dst.as_ptr()) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}
