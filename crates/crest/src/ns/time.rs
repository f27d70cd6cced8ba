//! Time namespaces: the offsets of CLOCK_MONOTONIC and CLOCK_BOOTTIME.
//!
//! Dump reads /proc/PID/timens_offsets of the process that entered the
//! namespace (the file shows the namespace its future children get,
//! which is its own: a process whose two differ is refused by
//! [`crate::ns::preflight`]) and the host's clocks at that moment, so
//! the image holds where the container's clocks were when its tree was
//! frozen.
//!
//! Restore does not copy the offsets: it chooses new ones so that the
//! container's clocks go on from where they were at the dump (host clock
//! now + new offset = container clock at the dump), on this host or
//! another, however long the image waited; so a sleep or a deadline
//! measured on CLOCK_MONOTONIC inside sees no jump, forward or back.
//! The kernel lets offsets be written only before a process enters the
//! namespace, so the process that first entered it does, as the first
//! thing its stub routine does: unshare(CLONE_NEWTIME) (which makes a
//! namespace for its children only), writes the offsets to
//! /proc/self/timens_offsets, then setns() into
//! /proc/self/ns/time_for_children, entering it itself; its children
//! inherit it (see `crate::restore::stub`).

use crate::error::{Error, Result};
use crate::model::{NsState, TimeState};

const NS: i64 = 1_000_000_000;

fn clock(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec * NS + ts.tv_nsec
}

/// Parses /proc/PID/timens_offsets: (monotonic, boottime) offsets in ns.
pub fn parse_offsets(text: &str) -> Result<(i64, i64)> {
    let mut mono = None;
    let mut boot = None;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let bad = || Error::msg(format!("unexpected timens_offsets line {l:?}"));
        if f.len() != 3 {
            return Err(bad());
        }
        let s: i64 = f[1].parse().map_err(|_| bad())?;
        let n: i64 = f[2].parse().map_err(|_| bad())?;
        let v = s
            .checked_mul(NS)
            .and_then(|x| x.checked_add(n))
            .ok_or_else(bad)?;
        match f[0] {
            "monotonic" | "1" => mono = Some(v),
            "boottime" | "7" => boot = Some(v),
            _ => return Err(bad()),
        }
    }
    match (mono, boot) {
        (Some(m), Some(b)) => Ok((m, b)),
        _ => Err(Error::msg(format!(
            "timens_offsets lacks a clock: {text:?}"
        ))),
    }
}

/// The time namespace `pid` is in.
pub fn collect(pid: i32) -> Result<NsState> {
    let path = format!("/proc/{pid}/timens_offsets");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::msg(format!("time namespace of pid {pid}: reading {path}: {e}")))?;
    let (mo, bo) = parse_offsets(&text)?;
    Ok(NsState::Time(TimeState {
        monotonic_offset: mo,
        boottime_offset: bo,
        monotonic: clock(libc::CLOCK_MONOTONIC) + mo,
        boottime: clock(libc::CLOCK_BOOTTIME) + bo,
    }))
}

fn split(v: i64) -> (i64, i64) {
    (v.div_euclid(NS), v.rem_euclid(NS))
}

/// The text the creating stub writes to /proc/self/timens_offsets: the
/// offsets that make the clocks go on from where they were at the dump.
pub fn offsets_text(st: &TimeState) -> Vec<u8> {
    let (ms, mn) = split(st.monotonic - clock(libc::CLOCK_MONOTONIC));
    let (bs, bn) = split(st.boottime - clock(libc::CLOCK_BOOTTIME));
    format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n").into_bytes()
}

/// The offsets text for a stub that creates this namespace.
pub fn plan(state: &NsState) -> Option<Vec<u8>> {
    match state {
        NsState::Time(t) => Some(offsets_text(t)),
        _ => None,
    }
}

/// Checks the recorded clocks: a clock of a time namespace cannot be
/// negative.
pub fn validate(st: &TimeState) -> Result<()> {
    if st.monotonic < 0 || st.boottime < 0 {
        return Err(Error::Invalid(format!(
            "time namespace clocks {} / {} ns are negative",
            st.monotonic, st.boottime
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets() {
        let t = "monotonic           5         7\nboottime         -10         0\n";
        assert_eq!(parse_offsets(t).unwrap(), (5 * NS + 7, -10 * NS));
        assert!(parse_offsets("monotonic 1 2\n").is_err());
        assert!(parse_offsets("realtime 1 2\nboottime 0 0\n").is_err());
    }

    #[test]
    fn offsets_carry_the_clock_on() {
        let st = TimeState {
            monotonic: 3 * NS,
            boottime: 4 * NS,
            ..Default::default()
        };
        let text = String::from_utf8(offsets_text(&st)).unwrap();
        let (m, b) = parse_offsets(&text).unwrap();
        let now = clock(libc::CLOCK_MONOTONIC) + m;
        assert!((now - 3 * NS).abs() < NS / 10, "{text}");
        assert!((clock(libc::CLOCK_BOOTTIME) + b - 4 * NS).abs() < NS / 10);
        assert_eq!(split(-1), (-1, NS - 1));
    }
}
