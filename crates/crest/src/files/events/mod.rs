//! Event descriptors: eventfd, timerfd, signalfd, inotify and epoll, one
//! module each; pidfds, fanotify groups and io_uring instances, which are
//! also anonymous-inode files, are dispatched from here to their own.
//!
//! Dump reads each one's state from its fdinfo (and, where fdinfo is not
//! enough, from a copy of the descriptor taken with pidfd_getfd); restore
//! creates each open file description once in crest, which then hands it
//! to the stubs like any other.  An epoll instance is created empty and
//! filled by [`epoll::add_targets`] once every other descriptor of the
//! tree is open, since its targets are other descriptors.

mod epoll;
mod eventfd;
pub(crate) mod inotify;
mod signalfd;
mod timerfd;

pub use epoll::{add_process_targets, add_targets as add_epoll_targets};
pub(crate) use inotify::{add_watches, path_of_handle};

pub(super) use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::model::{OpenFile, OpenTarget};
use crest_sys::proc::FdInfo;
use std::os::fd::{AsFd, OwnedFd};

/// The state of the event descriptor `fd` of `pid` (its /proc link is
/// `link`, its fdinfo `info`), or why it cannot be checkpointed.
pub fn collect(pid: i32, fd: i32, link: &str, info: &FdInfo) -> Refusal<OpenTarget> {
    let what = link
        .trim_start_matches("anon_inode:")
        .trim_matches(|c| c == '[' || c == ']');
    match what {
        "eventfd" => eventfd::collect(info),
        "timerfd" => timerfd::collect(pid, fd, info),
        "signalfd" => signalfd::collect(info),
        "inotify" => inotify::collect(pid, fd, info),
        "eventpoll" => epoll::collect(pid, fd, info),
        "pidfd" => crate::files::pidfd::collect(info),
        "io_uring" => Err(crate::files::uring::refusal(info)),
        "fanotify" => crate::files::fanotify::collect(pid, fd, info),
        _ => Err(format!("{what} descriptors are not supported yet")),
    }
}

/// Creates the event descriptor `o` in crest (an epoll comes back empty).
pub fn open(o: &OpenFile) -> Result<OwnedFd> {
    let nonblock = o.flags & libc::O_NONBLOCK as u32 != 0;
    let fd = match &o.target {
        &OpenTarget::Eventfd { count, semaphore } => {
            crest_sys::event::eventfd(count, semaphore, nonblock)?
        }
        OpenTarget::Timerfd { .. } => timerfd::open(&o.target, nonblock)?,
        OpenTarget::Signalfd { mask } => crest_sys::event::signalfd(*mask, nonblock)?,
        OpenTarget::Inotify { watches } => inotify::open(watches)?,
        OpenTarget::Fanotify(g) => crate::files::fanotify::open(g)?,
        OpenTarget::Epoll { .. } => crest_sys::event::epoll()?,
        _ => return Err(Error::msg("events::open called for another kind of file")),
    };
    crest_sys::event::set_status_flags(fd.as_fd(), o.flags)?;
    Ok(fd)
}

/// A short description of an event descriptor, for `inspect`.
pub fn describe(t: &OpenTarget) -> Option<String> {
    Some(match t {
        OpenTarget::Pidfd { pid, .. } => format!("pidfd of pid {pid}"),
        OpenTarget::Eventfd { count, semaphore } => format!(
            "eventfd (count {count}{})",
            if *semaphore { ", semaphore" } else { "" }
        ),
        OpenTarget::Timerfd { .. } => timerfd::describe(t),
        OpenTarget::Signalfd { mask } => format!("signalfd (mask {mask:#018x})"),
        OpenTarget::Fanotify(g) => crate::files::fanotify::describe(g),
        OpenTarget::Inotify { watches } => inotify::describe(watches),
        OpenTarget::Epoll { targets } => epoll::describe(targets),
        _ => return None,
    })
}

/// A hexadecimal fdinfo field.
fn hex(s: &str, what: &str) -> std::result::Result<u64, String> {
    u64::from_str_radix(s.trim(), 16).map_err(|_| format!("fdinfo: bad {what} {s:?}"))
}

#[cfg(test)]
fn info(text: &str) -> FdInfo {
    crest_sys::proc::parse_fdinfo(text).unwrap()
}
