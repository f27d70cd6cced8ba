//! epoll: each registration (the target file, the number it was
//! registered under, events and data), found with kcmp(KCMP_EPOLL_TFD)
//! even when that number was closed or reused since.  Restore registers
//! every target under its number once all descriptors exist; signalfd
//! targets from inside the process that polls them.

use super::Refusal;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, EpollTarget, ObjectKind, OpenFile, OpenTarget, Process};
use crate::task::freeze::Inject;
use crest_sys::event::{NofileAtLeast, PrivateTable};
use crest_sys::proc::{self, FdInfo};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};

/// kcmp(2) type comparing a descriptor with an epoll target.
const KCMP_EPOLL_TFD: i32 = 7;
/// epoll flags that are not events.
const EPOLL_FLAG_BITS: u32 = (1 << 31) | (1 << 30) | (1 << 29) | (1 << 28);

/// One `tfd:` line of an epoll's fdinfo: (tfd, events, data).
fn parse_epoll_line(v: &str) -> std::result::Result<(i32, u32, u64), String> {
    let bad = || format!("fdinfo: bad epoll line {v:?}");
    let t: Vec<&str> = v.split_whitespace().collect();
    let tfd = t.first().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let after = |key: &str| {
        t.iter()
            .position(|s| *s == key)
            .and_then(|i| t.get(i + 1))
            .copied()
            .ok_or_else(bad)
    };
    let events = u32::from_str_radix(after("events:")?, 16).map_err(|_| bad())?;
    let data = u64::from_str_radix(after("data:")?, 16).map_err(|_| bad())?;
    Ok((tfd, events, data))
}

/// Whether descriptor `fd` of `pid` is the file registered in epoll `efd`
/// of `pid` as (`tfd`, the `toff`-th registration with that number).
fn is_epoll_target(pid: i32, fd: i32, efd: i32, tfd: i32, toff: u32) -> bool {
    let slot: [u32; 3] = [efd as u32, tfd as u32, toff];
    crest_sys::process::kcmp(pid, pid, KCMP_EPOLL_TFD, fd as u64, slot.as_ptr() as u64)
        .is_ok_and(|r| r == 0)
}

pub(super) fn collect(pid: i32, efd: i32, info: &FdInfo) -> Refusal<OpenTarget> {
    let mut targets = Vec::new();
    let mut fds: Option<Vec<i32>> = None;
    let mut seen: HashMap<i32, u32> = HashMap::new();
    for v in info.get_all("tfd") {
        let (tfd, events, data) = parse_epoll_line(v)?;
        // Registrations with the same number are told apart by their rank.
        let toff = seen.entry(tfd).or_insert(0);
        let rank = *toff;
        *toff += 1;
        let fd = if is_epoll_target(pid, tfd, efd, tfd, rank) {
            tfd
        } else {
            // The registered number was closed (or reused) since: look
            // for the file elsewhere in the table.
            let all = match &fds {
                Some(f) => f,
                None => fds.insert(proc::list_fds(pid).map_err(|e| e.to_string())?),
            };
            match all
                .iter()
                .copied()
                .find(|&fd| fd != efd && is_epoll_target(pid, fd, efd, tfd, rank))
            {
                Some(fd) => fd,
                None => {
                    return Err(format!(
                        "epoll watches a file registered as fd {tfd} that is no longer \
                         open in the process (closed since, and held elsewhere)"
                    ))
                }
            }
        };
        targets.push(EpollTarget {
            pid,
            fd,
            tfd,
            events,
            data,
        });
    }
    Ok(OpenTarget::Epoll { targets })
}

/// Object `id` (ids are indexes in a restored image; anything else falls
/// back to a search).
fn object(ckpt: &Checkpoint, id: u32) -> Option<&ObjectKind> {
    match ckpt.objects.get(id as usize) {
        Some(o) if o.id == id => Some(&o.kind),
        _ => ckpt.object(id),
    }
}

/// The object of an epoll target: the open file description at (pid, fd).
fn target_object(ckpt: &Checkpoint, t: &EpollTarget) -> Option<u32> {
    ckpt.processes
        .iter()
        .find(|p| p.pid == t.pid)
        .and_then(|p| p.fds.iter().find(|f| f.fd == t.fd))
        .map(|f| f.file)
}

fn is_signalfd(ckpt: &Checkpoint, id: u32) -> bool {
    matches!(
        object(ckpt, id),
        Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Signalfd { .. },
            ..
        }))
    )
}

/// Registers, from inside the restored process `p` (whose descriptors are
/// in place), the signalfd targets of its epolls.  A signalfd reports the
/// signals of the task that polls it, and epoll polls it once, at
/// EPOLL_CTL_ADD, hooking itself on *that* task's signal wait queue: the
/// add must come from the process, not from crest.
pub fn add_process_targets(t: &impl Inject, ckpt: &Checkpoint, p: &Process) -> Result<()> {
    let mut done = std::collections::HashSet::new();
    for epfd in &p.fds {
        let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Epoll { targets },
            ..
        })) = object(ckpt, epfd.file)
        else {
            continue;
        };
        if !done.insert(epfd.file) {
            continue;
        }
        for tg in targets {
            if tg.pid != p.pid || !target_object(ckpt, tg).is_some_and(|o| is_signalfd(ckpt, o)) {
                continue;
            }
            let mut ev = [0u8; 12];
            ev[0..4].copy_from_slice(&tg.events.to_ne_bytes());
            ev[4..12].copy_from_slice(&tg.data.to_ne_bytes());
            t.write_scratch(0, &ev)?;
            let what = format!(
                "registering signalfd {} in the epoll at fd {} as fd {}",
                tg.fd, epfd.fd, tg.tfd
            );
            let add = || {
                t.call(
                    libc::SYS_epoll_ctl,
                    &[
                        epfd.fd as u64,
                        libc::EPOLL_CTL_ADD as u64,
                        tg.tfd as u64,
                        t.scratch(),
                    ],
                    &what,
                )
            };
            if tg.tfd == tg.fd {
                add()?;
                continue;
            }
            // Registered under a number that is closed now or another
            // file's (the program's, or a restore helper's right above the
            // program's descriptors): place the signalfd there for the add,
            // then put back whatever was there.
            let occupant = t
                .call(
                    libc::SYS_fcntl,
                    &[tg.tfd as u64, libc::F_GETFD as u64, 0],
                    &what,
                )
                .ok();
            let top = p.fds.iter().map(|f| f.fd).max().unwrap_or(0).max(tg.tfd) + 1;
            let saved = match occupant {
                Some(_) => Some(t.call(
                    libc::SYS_fcntl,
                    &[tg.tfd as u64, libc::F_DUPFD_CLOEXEC as u64, top as u64],
                    &what,
                )?),
                None => None,
            };
            t.call(libc::SYS_dup2, &[tg.fd as u64, tg.tfd as u64], &what)?;
            add()?;
            match (saved, occupant) {
                (Some(s), Some(fdflags)) => {
                    t.call(libc::SYS_dup2, &[s, tg.tfd as u64], &what)?;
                    t.call(
                        libc::SYS_fcntl,
                        &[tg.tfd as u64, libc::F_SETFD as u64, fdflags],
                        &what,
                    )?;
                    t.call(libc::SYS_close, &[s], &what)?;
                }
                _ => {
                    t.call(libc::SYS_close, &[tg.tfd as u64], &what)?;
                }
            }
        }
    }
    Ok(())
}

/// One epoll_ctl(ADD) to make: crest's descriptors of the epoll and of
/// the target, the number to register it with, the event.
struct EpollAdd {
    ep: RawFd,
    target: RawFd,
    tfd: i32,
    events: u32,
    data: u64,
}

/// Fills every epoll of the image, once all the open file descriptions
/// of the tree are open in crest: `opened` maps object ids to crest's
/// descriptors.  Each target is registered under the number the program
/// registered it with (the kernel keys registrations by (file, number),
/// and the program's later EPOLL_CTL_MOD/DEL use that number): the adds
/// run in a thread of crest with a private descriptor table, where each
/// target is placed at that number.  Signalfd targets are left to
/// [`add_process_targets`].
pub fn add_targets(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>) -> Result<()> {
    let mut adds = Vec::new();
    let mut ids: Vec<u32> = opened.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Epoll { targets },
            ..
        })) = object(ckpt, id)
        else {
            continue;
        };
        for t in targets {
            let obj = target_object(ckpt, t);
            if obj.is_some_and(|o| is_signalfd(ckpt, o)) {
                continue; // added by the process itself: see add_process_targets
            }
            let Some(&target) = obj.and_then(|o| opened.get(&o)) else {
                return Err(Error::Invalid(format!(
                    "epoll object {id}: its target fd {} of pid {} is not in the image",
                    t.fd, t.pid
                )));
            };
            if t.tfd < 0 || t.tfd >= 1 << 20 {
                return Err(Error::Invalid(format!(
                    "epoll object {id}: bad target number {}",
                    t.tfd
                )));
            }
            adds.push(EpollAdd {
                ep: opened[&id],
                target,
                tfd: t.tfd,
                events: t.events,
                data: t.data,
            });
        }
    }
    if adds.is_empty() {
        return Ok(());
    }
    std::thread::scope(|s| s.spawn(|| run_epoll_adds(&adds)).join())
        .map_err(|_| Error::msg("the epoll restore thread panicked"))?
}

/// In a thread of its own: unshares the descriptor table and makes the adds.
fn run_epoll_adds(adds: &[EpollAdd]) -> Result<()> {
    let table = PrivateTable::unshare()?;
    // Move crest's descriptors above every target number first.
    let base = adds.iter().map(|a| a.tfd).max().unwrap_or(0) + 1;
    let mut raws: Vec<RawFd> = adds.iter().flat_map(|a| [a.ep, a.target]).collect();
    raws.sort_unstable();
    raws.dedup();
    let need = base as u64 + raws.len() as u64 + 1;
    let _limit = NofileAtLeast::new(need)
        .map_err(|e| Error::msg(format!("registering epoll targets up to fd {base}: {e}")))?;
    let mut high: HashMap<RawFd, OwnedFd> = HashMap::new();
    for &raw in &raws {
        high.insert(raw, table.dup_above(raw, base)?);
    }
    for a in adds {
        // `tfd` is below every descriptor still needed; the copy placed
        // there is closed again once registered (the registration stays:
        // the file is still open elsewhere).
        let placed = table.place_at(high[&a.target].as_fd(), a.tfd)?;
        crest_sys::event::epoll_add(high[&a.ep].as_fd(), placed.as_fd(), a.events, a.data)?;
    }
    Ok(())
}

/// The registrations of an epoll, for `inspect`.
pub(super) fn describe(targets: &[EpollTarget]) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|t| {
            let flags = t.events & EPOLL_FLAG_BITS;
            format!(
                "fd {}{} events {:#x}{} data {:#x}",
                t.tfd,
                if t.fd != t.tfd {
                    format!(" (now fd {})", t.fd)
                } else {
                    String::new()
                },
                t.events & !EPOLL_FLAG_BITS,
                if flags != 0 {
                    format!("|{flags:#x}")
                } else {
                    String::new()
                },
                t.data
            )
        })
        .collect();
    format!("epoll ({})", t.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_line() {
        assert_eq!(
            parse_epoll_line("3 events: 80000019 data: deadbeef12345678  pos:0 ino:40e sdev:10"),
            Ok((3, 0x8000_0019, 0xdead_beef_1234_5678))
        );
        assert_eq!(
            parse_epoll_line("9 events:       1c data:                7  pos:0 ino:40e sdev:10"),
            Ok((9, 0x1c, 7))
        );
        assert!(parse_epoll_line("x events: 1 data: 2").is_err());
    }
}
