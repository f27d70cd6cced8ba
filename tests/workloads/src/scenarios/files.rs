//! `files`: regular files with distinct access modes, offsets and fd flags,
//! a dup pair, a high dup2 target, a directory fd and cwd, an open unlinked
//! file and character devices. After go the fd table must be identical
//! (numbers, flags, offsets, targets) and every fd must still work.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{cpath, err_str, errno, fstat, list_fds, pread_full, readlink, write_all};

const A_LEN: usize = 123;
const B_LEN: usize = 10_000;
const B_OFF: i64 = 4103;
const C_OFF: i64 = 10;
const GONE_LEN: usize = 10_000;
const GONE_OFF: i64 = 5000;
const HIGH_FD: i32 = 4321;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// What one fd looked like.
#[derive(PartialEq, Debug, Clone)]
struct FdState {
    getfl: i32,
    getfd: i32,
    offset: i64,
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    size: i64,
    rdev: u64,
    link: Option<String>,
    fdinfo_pos_flags: Vec<String>,
}

fn fd_state(fd: i32) -> Result<FdState, String> {
    // SAFETY: fcntl/lseek on an fd number; errors are reported.
    let (getfl, getfd, offset) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
            libc::lseek(fd, 0, libc::SEEK_CUR),
        )
    };
    let st = fstat(fd).map_err(|e| format!("fstat({fd}): {}", err_str(e)))?;
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| format!("fdinfo/{fd}: {e}"))?;
    Ok(FdState {
        getfl,
        getfd,
        offset,
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        nlink: st.st_nlink,
        size: st.st_size,
        rdev: st.st_rdev,
        link: readlink(&format!("/proc/self/fd/{fd}")),
        fdinfo_pos_flags: fdinfo
            .lines()
            .filter(|l| l.starts_with("pos:") || l.starts_with("flags:"))
            .map(str::to_string)
            .collect(),
    })
}

fn open(p: &Proto, path: &CString, flags: i32, what: &str) -> i32 {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644) };
    if fd < 0 {
        p.bail_errno(&format!("open {what}"));
    }
    fd
}

fn seek(p: &Proto, fd: i32, off: i64, what: &str) {
    // SAFETY: lseek on our fd.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } != off {
        p.bail_errno(&format!("lseek {what}"));
    }
}

struct Fds {
    a: i32,
    b: i32,
    c: i32,
    dup_a: i32,
    dir: i32,
    gone: i32,
    null: i32,
    zero: i32,
    urandom: i32,
}

fn setup(p: &Proto) -> Fds {
    let d = p.dir();
    let path = |n: &str| cpath(&d.join(n));
    // A 4321 fd needs RLIMIT_NOFILE above it.
    // SAFETY: valid out-pointer / rlimit struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur <= HIGH_FD as u64 {
            rl.rlim_cur = rl.rlim_max.min(8192);
            if rl.rlim_cur <= HIGH_FD as u64 || libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                p.bail("setup: RLIMIT_NOFILE cannot be raised above 4321");
            }
        }
    }
    std::fs::write(d.join("b"), bytes(B_LEN, 0xB0))
        .unwrap_or_else(|e| p.bail(&format!("setup: write b: {e}")));
    std::fs::write(d.join("c"), bytes(64, 0xC0))
        .unwrap_or_else(|e| p.bail(&format!("setup: write c: {e}")));
    std::fs::create_dir(d.join("sub"))
        .unwrap_or_else(|e| p.bail(&format!("setup: mkdir sub: {e}")));

    let a = open(
        p,
        &path("a"),
        libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_TRUNC,
        "a",
    );
    if write_all(a, &bytes(A_LEN, 0xA0)).is_err() {
        p.bail_errno("write a");
    }
    let b = open(p, &path("b"), libc::O_RDONLY, "b");
    seek(p, b, B_OFF, "b");
    let c = open(p, &path("c"), libc::O_WRONLY | libc::O_CLOEXEC, "c");
    seek(p, c, C_OFF, "c");
    // SAFETY: dup/dup2 of our own fds.
    let dup_a = unsafe { libc::dup(a) };
    // SAFETY: as above.
    if dup_a < 0 || unsafe { libc::dup2(b, HIGH_FD) } != HIGH_FD {
        p.bail_errno("dup/dup2");
    }
    let dir = open(p, &path("sub"), libc::O_DIRECTORY | libc::O_RDONLY, "sub");
    // SAFETY: valid C string.
    if unsafe { libc::chdir(path("sub").as_ptr()) } != 0 {
        p.bail_errno("chdir sub");
    }
    let gone = open(
        p,
        &path("gone"),
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        "gone",
    );
    if write_all(gone, &bytes(GONE_LEN, 0x60)).is_err() {
        p.bail_errno("write gone");
    }
    seek(p, gone, GONE_OFF, "gone");
    // SAFETY: valid C string.
    if unsafe { libc::unlink(path("gone").as_ptr()) } != 0 {
        p.bail_errno("unlink gone");
    }
    Fds {
        a,
        b,
        c,
        dup_a,
        dir,
        gone,
        null: open(p, &c"/dev/null".into(), libc::O_WRONLY, "/dev/null"),
        zero: open(p, &c"/dev/zero".into(), libc::O_RDONLY, "/dev/zero"),
        urandom: open(p, &c"/dev/urandom".into(), libc::O_RDONLY, "/dev/urandom"),
    }
}

fn snapshot() -> Vec<(i32, Result<FdState, String>)> {
    list_fds()
        .into_iter()
        .map(|fd| (fd, fd_state(fd)))
        .collect()
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let inherited = list_fds();
    let f = setup(p);
    let before = snapshot();
    let cwd = std::env::current_dir().unwrap_or_else(|e| p.bail(&format!("setup: getcwd: {e}")));
    let expect_fds = {
        let mut v = vec![
            f.a, f.b, f.c, f.dup_a, HIGH_FD, f.dir, f.gone, f.null, f.zero, f.urandom,
        ];
        v.extend(&inherited);
        v.sort_unstable();
        v
    };
    let got_fds: Vec<i32> = before.iter().map(|x| x.0).collect();
    if got_fds != expect_fds || before.iter().any(|x| x.1.is_err()) {
        let errs: Vec<&String> = before.iter().filter_map(|x| x.1.as_ref().err()).collect();
        p.bail(&format!(
            "setup: fd table {got_fds:?}, expected {expect_fds:?}; errors {errs:?}"
        ));
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("getpid()", pid, unsafe { libc::getpid() });
    c.eq("getpid() vs ready", p.ready_pid(), pid);
    let after = snapshot();
    let after_fds: Vec<i32> = after.iter().map(|x| x.0).collect();
    c.eq("open fds", &got_fds, &after_fds);
    for (fd, st) in &before {
        let Some((_, now)) = after.iter().find(|x| x.0 == *fd) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (st, now) else {
            c.fail(format!("fd {fd}: {now:?}"));
            continue;
        };
        compare_fd(&mut c, *fd, a, b);
    }
    match std::env::current_dir() {
        Ok(now) => c.eq("getcwd", &cwd, &now),
        Err(e) => c.fail(format!("getcwd: {e}")),
    }
    functional(p, &mut c, &f);
    c
}

fn compare_fd(c: &mut Checks, fd: i32, a: &FdState, b: &FdState) {
    // stdio belongs to the harness, which may reattach it on restore: only
    // its presence is compared (by the fd list).
    if fd <= 2 {
        return;
    }
    let fields: [(&str, String, String); 11] = [
        (
            "F_GETFL",
            format!("{:#o}", a.getfl),
            format!("{:#o}", b.getfl),
        ),
        ("F_GETFD", a.getfd.to_string(), b.getfd.to_string()),
        ("offset", a.offset.to_string(), b.offset.to_string()),
        ("st_dev", a.dev.to_string(), b.dev.to_string()),
        // An unlinked file is recreated on restore: its inode number is
        // the filesystem's choice; only a named file keeps it.
        (
            "st_ino",
            a.ino.to_string(),
            if a.nlink == 0 { a.ino } else { b.ino }.to_string(),
        ),
        (
            "st_mode",
            format!("{:#o}", a.mode),
            format!("{:#o}", b.mode),
        ),
        ("st_nlink", a.nlink.to_string(), b.nlink.to_string()),
        ("st_size", a.size.to_string(), b.size.to_string()),
        ("st_rdev", a.rdev.to_string(), b.rdev.to_string()),
        ("link", format!("{:?}", a.link), format!("{:?}", b.link)),
        (
            "fdinfo pos/flags",
            format!("{:?}", a.fdinfo_pos_flags),
            format!("{:?}", b.fdinfo_pos_flags),
        ),
    ];
    for (what, x, y) in fields {
        c.ensure(x == y, || format!("fd {fd} {what}: expected {x}, got {y}"));
    }
}

fn cur(fd: i32) -> i64 {
    // SAFETY: lseek on an fd number.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn functional(p: &Proto, c: &mut Checks, f: &Fds) {
    // The dup pair shares one file description (offset).
    // SAFETY: lseek on our fd.
    unsafe { libc::lseek(f.dup_a, 7, libc::SEEK_SET) };
    c.eq("offset of a after lseek(dup(a), 7)", 7, cur(f.a));
    // O_APPEND: writes go to the end whatever the offset.
    let _ = write_all(f.a, b"APPENDED");
    let size = fstat(f.a).map(|s| s.st_size).unwrap_or(-1);
    c.eq(
        "size of a after appending 8 bytes",
        (A_LEN + 8) as i64,
        size,
    );
    c.eq(
        "offset of dup(a) after appending",
        (A_LEN + 8) as i64,
        cur(f.dup_a),
    );
    let mut buf = vec![0u8; A_LEN + 8];
    let _ = pread_full(f.a, &mut buf, 0);
    let mut want = bytes(A_LEN, 0xA0);
    want.extend_from_slice(b"APPENDED");
    c.ensure(buf == want, || {
        "content of a (123 bytes + appended) differs".into()
    });

    // b reads the right bytes at its offset; fd 4321 shares the offset.
    let mut buf = [0u8; 16];
    // SAFETY: reads into a local buffer.
    let n = unsafe { libc::read(f.b, buf.as_mut_ptr().cast(), 16) };
    let want = &bytes(B_LEN, 0xB0)[B_OFF as usize..B_OFF as usize + 16];
    c.ensure(n == 16 && buf == want, || {
        format!("read(b, 16) at 4103: got {n} bytes {buf:?}, expected {want:?}")
    });
    c.eq(
        "offset of fd 4321 (dup2 of b) after reading b",
        B_OFF + 16,
        cur(HIGH_FD),
    );

    // c writes at offset 10.
    let _ = write_all(f.c, b"xyz");
    match std::fs::read(p.dir().join("c")) {
        Ok(data) => c.ensure(
            data.get(C_OFF as usize..C_OFF as usize + 3) == Some(b"xyz"),
            || {
                format!(
                    "file c: write through fd at offset 10 not found: {:?}",
                    &data[..data.len().min(16)]
                )
            },
        ),
        Err(e) => c.fail(format!("reading c: {e}")),
    }

    // The directory fd still names <dir>/sub; cwd is the same directory.
    // SAFETY: valid C string; new fd closed below.
    let x = unsafe {
        libc::openat(
            f.dir,
            c"x".as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if x < 0 {
        c.fail(format!(
            "openat(dirfd, \"x\", O_CREAT|O_EXCL): {}",
            err_str(errno())
        ));
    } else {
        let st = fstat(x).map(|s| (s.st_dev, s.st_ino)).ok();
        // SAFETY: our fd.
        unsafe { libc::close(x) };
        let m = std::fs::metadata(p.dir().join("sub/x"))
            .map(|m| (m.dev(), m.ino()))
            .ok();
        c.ensure(st.is_some() && st == m, || {
            format!("file made by openat(dirfd) {st:?} is not <dir>/sub/x {m:?}")
        });
    }
    let dot = std::fs::metadata(".").map(|m| (m.dev(), m.ino())).ok();
    let dir = fstat(f.dir).map(|s| (s.st_dev, s.st_ino)).ok();
    c.ensure(dot.is_some() && dot == dir, || {
        format!("stat(\".\") {dot:?} differs from fstat(dirfd) {dir:?}")
    });

    // The unlinked file.
    match fstat(f.gone) {
        Ok(st) => {
            c.eq("unlinked file st_nlink", 0, st.st_nlink);
            c.eq("unlinked file st_size", GONE_LEN as i64, st.st_size);
        }
        Err(e) => c.fail(format!("fstat(unlinked): {}", err_str(e))),
    }
    let mut buf = vec![0u8; GONE_LEN + 1];
    let n = pread_full(f.gone, &mut buf, 0);
    c.ensure(
        n == Ok(GONE_LEN) && buf[..GONE_LEN] == bytes(GONE_LEN, 0x60)[..],
        || format!("unlinked file content: read {n:?} bytes, expected {GONE_LEN} identical bytes"),
    );
    c.eq("unlinked file offset", GONE_OFF, cur(f.gone));
    let link = readlink(&format!("/proc/self/fd/{}", f.gone)).unwrap_or_default();
    let want = format!("{} (deleted)", p.dir().join("gone").display());
    c.ensure(link == want, || {
        format!("readlink of the unlinked file's fd: expected {want:?}, got {link:?}")
    });

    // Devices.
    // SAFETY: writes from / reads into local buffers.
    let (wn, zn, zbuf, un, ubuf) = unsafe {
        let wn = libc::write(f.null, b"0123456789".as_ptr().cast(), 10);
        let mut zbuf = [0xFFu8; 64];
        let zn = libc::read(f.zero, zbuf.as_mut_ptr().cast(), 64);
        let mut ubuf = [0u8; 64];
        let un = libc::read(f.urandom, ubuf.as_mut_ptr().cast(), 64);
        (wn, zn, zbuf, un, ubuf)
    };
    c.eq("write(/dev/null, 10)", 10, wn);
    c.ensure(zn == 64 && zbuf.iter().all(|&b| b == 0), || {
        format!("read(/dev/zero, 64) = {zn}, bytes {zbuf:?}")
    });
    c.ensure(un == 64 && ubuf.iter().any(|&b| b != 0), || {
        format!("read(/dev/urandom, 64) = {un}, all zero or short")
    });
}
