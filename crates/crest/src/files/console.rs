//! The console and virtual terminals held open: /dev/console (5:1) and
//! /dev/ttyN (4:N, N 0..=63); and the controlling-terminal alias /dev/tty
//! (5:0) when it names one of these (or any terminal but a pseudo-terminal
//! of the tree, which `crate::files::tty` restores), which is refused.
//!
//! These terminals belong to the machine and outlive the tree: restore
//! opens them again by path, with the same flags (and O_NOCTTY: crest
//! must not make one its own controlling terminal), after checking the
//! path is the same device and leads to the same terminal (TIOCGDEV: the
//! console may be on another device here).  Their termios and window size
//! are put back when they differ from the dump's: the last close of a
//! virtual terminal resets its termios, so the killed tree's settings
//! would be lost otherwise; when they are the same nothing is set (a
//! window size set on a virtual terminal resizes the console).
//!
//! Refused: input typed and not read yet (reading it would take it from
//! the program); /dev/tty naming such a terminal, because the terminal it
//! names is fixed when it is opened — the opener's controlling terminal
//! then — and the one way to open it again is to make that terminal a
//! helper's controlling terminal, which for these terminals would hang up
//! every description of them when the helper's session ends.  Output already queued is not
//! refused: the driver writes it out whether the tree lives or not.

use crate::error::{steal, Error, Refusal, Result};
use crate::model::{OpenFile, OpenTarget, SystemTty};
use std::fs::Metadata;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// /dev/tty, /dev/console, the virtual terminals' major.
const TTY_ALIAS: (u32, u32) = (5, 0);
const CONSOLE: (u32, u32) = (5, 1);
const VT_MAJOR: u32 = 4;
const VT_MINORS: std::ops::RangeInclusive<u32> = 0..=63;

/// The canonical path of device (`maj`, `min`), if it is one of these.
fn canonical(maj: u32, min: u32) -> Option<String> {
    if (maj, min) == CONSOLE {
        Some("/dev/console".into())
    } else if maj == VT_MAJOR && VT_MINORS.contains(&min) {
        Some(format!("/dev/tty{min}"))
    } else {
        None
    }
}

fn dev_name(d: u64) -> String {
    format!("{}:{}", libc::major(d), libc::minor(d))
}

/// The state of descriptor `fd` of `pid` if it is the console, a virtual
/// terminal or /dev/tty; `None` for any other file.
pub fn collect(pid: i32, fd: i32, link: &str, md: &Metadata) -> Option<Refusal<OpenTarget>> {
    if !md.file_type().is_char_device() {
        return None;
    }
    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    if (maj, min) == TTY_ALIAS {
        let real = steal(pid, fd)
            .ok()
            .and_then(|f| crest_sys::tty::real_device(f.as_fd()).ok());
        return Some(Err(format!(
            "{link} (the controlling-terminal alias{}): the terminal it names was fixed \
             when it was opened, as the opener's controlling terminal; crest reopens it only \
             on a pseudo-terminal whose both sides are in the tree (not supported)",
            real.map(|d| format!(", here of terminal {}", dev_name(d)))
                .unwrap_or_default()
        )));
    }
    let path = canonical(maj, min)?;
    Some(collect_tty(pid, fd, link, &path, md.rdev()))
}

fn collect_tty(pid: i32, fd: i32, link: &str, path: &str, rdev: u64) -> Refusal<OpenTarget> {
    if link != path {
        return Err(format!(
            "terminal {link} (device {}): only {path} by that name is supported",
            dev_name(rdev)
        ));
    }
    let f = steal(pid, fd)?;
    let e = |e: crest_sys::Error| format!("{link}: {e}");
    let queued = crest_sys::tty::input_queued(f.as_fd()).map_err(e)?;
    if queued > 0 {
        return Err(format!(
            "{link}: {queued} bytes of input are not read yet (they can only be seen by \
             reading them, which takes them from the program)"
        ));
    }
    let real = crest_sys::tty::real_device(f.as_fd()).map_err(e)?;
    let t = crest_sys::tty::get_termios2(f.as_fd()).map_err(e)?;
    let winsize = crest_sys::tty::get_winsize(f.as_fd()).map_err(e)?;
    Ok(OpenTarget::SystemTty(SystemTty {
        path: path.to_string(),
        rdev,
        real,
        termios: crate::files::tty::termios_of(&t),
        winsize,
    }))
}

/// Why terminal `t` cannot be opened again here.
pub fn problem(t: &SystemTty) -> Option<String> {
    match std::fs::metadata(&*crate::ns::mnt::host_path(&t.path)) {
        Ok(m) if m.file_type().is_char_device() && m.rdev() == t.rdev => None,
        Ok(_) => Some(format!(
            "{} is no longer device {}",
            t.path,
            dev_name(t.rdev)
        )),
        Err(e) => Some(format!("{}: {e}", t.path)),
    }
}

/// Opens terminal `t` again with the description's flags `o.flags`, and
/// gives it its termios and window size back where they changed.
pub fn open(o: &OpenFile, t: &SystemTty) -> Result<OwnedFd> {
    if let Some(why) = problem(t) {
        return Err(Error::Incompatible(why));
    }
    let here = crate::ns::mnt::host_path(&t.path);
    let c = std::ffi::CString::new(here.as_bytes())
        .map_err(|_| Error::Invalid(format!("path with a NUL byte: {:?}", t.path)))?;
    let flags = (o.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC)
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::open(c.as_ptr(), flags) };
    if r < 0 {
        return Err(crest_sys::Error::last_os(format!("opening {}", t.path)).into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(r) };
    let ctx = |e: crest_sys::Error| Error::msg(format!("{}: {e}", t.path));
    let real = crest_sys::tty::real_device(fd.as_fd()).map_err(ctx)?;
    if real != t.real {
        return Err(Error::Incompatible(format!(
            "{} leads to terminal {} here, not {} as at the checkpoint",
            t.path,
            dev_name(real),
            dev_name(t.real)
        )));
    }
    let mut now = crest_sys::tty::get_termios2(fd.as_fd()).map_err(ctx)?;
    let want = &t.termios;
    if want.cc.len() != now.c_cc.len() {
        return Err(Error::Invalid(format!(
            "{}: {} control characters in the image",
            t.path,
            want.cc.len()
        )));
    }
    let same = now.c_iflag == want.iflag
        && now.c_oflag == want.oflag
        && now.c_cflag == want.cflag
        && now.c_lflag == want.lflag
        && now.c_line == want.line
        && now.c_cc[..] == want.cc[..]
        && now.c_ispeed == want.ispeed
        && now.c_ospeed == want.ospeed;
    if !same {
        now.c_iflag = want.iflag;
        now.c_oflag = want.oflag;
        now.c_cflag = want.cflag;
        now.c_lflag = want.lflag;
        now.c_line = want.line;
        now.c_cc.copy_from_slice(&want.cc);
        now.c_ispeed = want.ispeed;
        now.c_ospeed = want.ospeed;
        crest_sys::tty::set_termios2(fd.as_fd(), &now).map_err(ctx)?;
    }
    if crest_sys::tty::get_winsize(fd.as_fd()).map_err(ctx)? != t.winsize {
        crest_sys::tty::set_winsize(fd.as_fd(), t.winsize).map_err(ctx)?;
    }
    Ok(fd)
}

/// For `inspect`.
pub fn describe(t: &SystemTty) -> String {
    format!(
        "terminal {} (device {}, terminal {}, {}x{})",
        t.path,
        dev_name(t.rdev),
        dev_name(t.real),
        t.winsize[1],
        t.winsize[0]
    )
}
