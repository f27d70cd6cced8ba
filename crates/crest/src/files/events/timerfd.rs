//! timerfd: clock, time left, interval, unread expirations and the
//! settime flags (absolute, cancel-on-set), from fdinfo.

use super::Refusal;
use crate::error::steal;
use crate::error::Result;
use crate::model::OpenTarget;
use crest_sys::proc::{self, FdInfo};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// "(sec, nsec)" → nanoseconds.
fn parse_timespec(s: &str) -> Option<u64> {
    let (a, b) = s
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let sec: u64 = a.trim().parse().ok()?;
    let nsec: u64 = b.trim().parse().ok()?;
    sec.checked_mul(1_000_000_000)?.checked_add(nsec)
}

/// The timerfd fields of an fdinfo: (clockid, settime flags, value, interval, ticks).
fn parse_timerfd(info: &FdInfo) -> std::result::Result<(i32, u32, u64, u64, u64), String> {
    let get = |k: &str| info.get(k).ok_or(format!("fdinfo has no {k} line"));
    let clockid = get("clockid")?
        .parse()
        .map_err(|_| "fdinfo: bad clockid".to_string())?;
    let flags = match info.get("settime flags") {
        Some(f) => {
            u32::from_str_radix(f, 8).map_err(|_| format!("fdinfo: bad settime flags {f:?}"))?
        }
        None => return Err("this kernel does not show a timerfd's settime flags".into()),
    };
    let ticks = get("ticks")?
        .parse()
        .map_err(|_| "fdinfo: bad ticks".to_string())?;
    let value = parse_timespec(get("it_value")?).ok_or("fdinfo: bad it_value")?;
    let interval = parse_timespec(get("it_interval")?).ok_or("fdinfo: bad it_interval")?;
    Ok((clockid, flags, value, interval, ticks))
}

pub(super) fn collect(pid: i32, fd: i32, info: &FdInfo) -> Refusal<OpenTarget> {
    let (mut clockid, mut flags, mut value, mut interval, mut ticks) = parse_timerfd(info)?;
    if ticks > 0 && interval > 0 && value == 0 {
        // An expired periodic timer is only brought forward (its missed
        // expirations counted, the next one armed) when it is read or
        // queried: query a copy of it, which does just that, and read the
        // state again.
        let own = steal(pid, fd)?;
        for _ in 0..3 {
            crest_sys::event::timerfd_get(own.as_fd()).map_err(|e| e.to_string())?;
            let info = proc::read_fdinfo(std::process::id() as i32, own.as_raw_fd())
                .map_err(|e| e.to_string())?;
            (clockid, flags, value, interval, ticks) = parse_timerfd(&info)?;
            if value > 0 {
                break;
            }
        }
    }
    Ok(OpenTarget::Timerfd {
        clockid,
        settime_flags: flags,
        value_ns: value,
        interval_ns: interval,
        ticks,
    })
}

/// The fields of an [`OpenTarget::Timerfd`]: (clockid, settime flags,
/// time left, interval, unread expirations).
fn fields(t: &OpenTarget) -> Option<(i32, u32, u64, u64, u64)> {
    match *t {
        OpenTarget::Timerfd {
            clockid,
            settime_flags,
            value_ns,
            interval_ns,
            ticks,
        } => Some((clockid, settime_flags, value_ns, interval_ns, ticks)),
        _ => None,
    }
}

/// A new timerfd in the state `t` (an [`OpenTarget::Timerfd`]).
pub(super) fn open(t: &OpenTarget, nonblock: bool) -> Result<OwnedFd> {
    let (clockid, settime_flags, value_ns, interval_ns, ticks) = fields(t)
        .ok_or_else(|| crate::error::Error::msg("timerfd::open called for another kind of file"))?;
    let fd = crest_sys::event::timerfd(clockid, nonblock)?;
    if value_ns > 0 {
        // The time left runs from now.  An absolute timer stays absolute
        // (so TFD_TIMER_CANCEL_ON_SET keeps working), at now + the time it
        // had left.
        let abs = settime_flags & TFD_TIMER_ABSTIME != 0;
        let (value, flags) = if abs {
            (
                crest_sys::event::clock_now_ns(clockid)?.saturating_add(value_ns),
                settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
            )
        } else {
            (value_ns, 0)
        };
        crest_sys::event::timerfd_set(fd.as_fd(), flags, value, interval_ns)?;
    }
    if ticks > 0 {
        crest_sys::event::timerfd_set_ticks(fd.as_fd(), ticks)?;
    }
    Ok(fd)
}

pub(super) fn describe(t: &OpenTarget) -> String {
    let Some((clockid, settime_flags, value_ns, interval_ns, ticks)) = fields(t) else {
        return format!("{t:?}");
    };
    format!(
        "timerfd (clock {clockid}, {}, interval {}, {ticks} unread expirations{})",
        if value_ns == 0 {
            "disarmed".to_string()
        } else {
            format!("{} left", secs(value_ns))
        },
        secs(interval_ns),
        if settime_flags & TFD_TIMER_ABSTIME != 0 {
            ", absolute"
        } else {
            ""
        }
    )
}

fn secs(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::super::info;
    use super::*;

    #[test]
    fn timerfd_lines() {
        let i = info("pos:\t0\nflags:\t02\nclockid: 0\nticks: 4\nsettime flags: 03\nit_value: (49, 847295133)\nit_interval: (3, 500)\n");
        assert_eq!(
            parse_timerfd(&i),
            Ok((0, 3, 49_847_295_133, 3_000_000_500, 4))
        );
    }
}
