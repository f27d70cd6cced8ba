//! `procfiles`: descriptors on the workload's own /proc files, which
//! exist only once the process does: /proc/self/status read up to an
//! offset, a dup of it, /proc/self/task/TID/stat, and /proc/self as a
//! directory.  After go each must refer to this process again (same link,
//! content naming our pid), the offset and the dup sharing it must be as
//! before.  `<dir>/info` names the status fd (`status=N`).

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{list_fds, readlink};

const OFF: i64 = 6;

fn check(p: &Proto, r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        p.bail_errno(what);
    }
    r
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    // SAFETY: plain syscalls on valid C strings and our descriptors.
    let (status, dup, stat, dir) = unsafe {
        let status = check(
            p,
            libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY),
            "open status",
        );
        if libc::lseek(status, OFF, libc::SEEK_SET) != OFF {
            p.bail_errno("lseek status");
        }
        let dup = check(p, libc::dup(status), "dup");
        let task =
            std::ffi::CString::new(format!("/proc/self/task/{}/stat", libc::getpid())).unwrap();
        let stat = check(
            p,
            libc::open(task.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC),
            "open stat",
        );
        let dir = check(
            p,
            libc::open(c"/proc/self".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY),
            "open /proc/self",
        );
        (status, dup, stat, dir)
    };
    p.write_aux("info", &format!("status={status}\n"));
    let fds = [status, dup, stat, dir];
    let links: Vec<Option<String>> = fds
        .iter()
        .map(|f| readlink(&format!("/proc/self/fd/{f}")))
        .collect();
    // SAFETY: fcntl query.
    let cloexec = unsafe { libc::fcntl(stat, libc::F_GETFD) };
    let fds_before = list_fds();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq("open fds", fds_before, list_fds());
    let now: Vec<Option<String>> = fds
        .iter()
        .map(|f| readlink(&format!("/proc/self/fd/{f}")))
        .collect();
    c.eq("links of the /proc descriptors", links, now);
    // SAFETY: fcntl query.
    c.eq("FD_CLOEXEC of the task stat fd", cloexec, unsafe {
        libc::fcntl(stat, libc::F_GETFD)
    });
    // SAFETY: lseek queries on our descriptors.
    let (o1, o2) = unsafe {
        (
            libc::lseek(status, 0, libc::SEEK_CUR),
            libc::lseek(dup, 0, libc::SEEK_CUR),
        )
    };
    c.eq("status offset (and its dup's)", (OFF, OFF), (o1, o2));
    // SAFETY: as above.
    unsafe { libc::lseek(dup, 0, libc::SEEK_SET) };
    // SAFETY: as above.
    let shared = unsafe { libc::lseek(status, 0, libc::SEEK_CUR) };
    c.eq("the dup shares the status description", 0, shared);
    let mut buf = vec![0u8; 4096];
    // SAFETY: read into our buffer.
    let n = unsafe { libc::read(status, buf.as_mut_ptr().cast(), buf.len()) };
    let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
    c.ensure(text.lines().any(|l| l == format!("Pid:\t{pid}")), || {
        format!("status names pid {pid}: {text:?}")
    });
    // SAFETY: read into our buffer.
    let n = unsafe { libc::pread(stat, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
    c.ensure(text.starts_with(&format!("{pid} (")), || {
        format!("task stat names pid {pid}: {text:?}")
    });
    c
}
