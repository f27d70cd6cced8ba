//! Bytes written on a pty's slave side and not read yet from its master.
//!
//! They wait in the master's input buffer, already through the slave's
//! output processing (OPOST, ONLCR …); the master side's own line
//! discipline is raw (the kernel sets it so, and termios ioctls on a
//! master reach the slave).  There is no way to peek a tty's buffer, so
//! dump reads them out through the master and writes them straight back
//! through a slave descriptor of its own, with output processing switched
//! off for that write (and the settings put back at once): the buffer
//! holds the same bytes again and crest has a copy.  Restore refills the
//! new pair the same way.  The tree is frozen meanwhile, so no program
//! sees the buffer change.

use crate::error::{Error, Result};
use crest_sys::tty;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::os::fd::{AsFd, OwnedFd};

/// How long the kernel may take to move written bytes into the buffer.
const SETTLE_MS: u64 = 2000;

fn fionread(f: &OwnedFd) -> i32 {
    tty::input_queued(f.as_fd()).map_or(-1, |n| n as i32)
}

/// A poll for input that does not wait: it flushes the kernel's pending
/// work on the tty first.
fn poll_now(f: &OwnedFd) {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let _ = poll(&mut [PollFd::new(f, PollFlags::IN)], Some(&zero));
}

/// Writes all of `data` to the non-blocking `fd`.
fn write_all(fd: &OwnedFd, data: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match rustix::io::write(fd, &data[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until the master's buffer holds `n` bytes (a poll for input
/// flushes the kernel's pending work first).
fn wait_for(master: &OwnedFd, n: i32) -> bool {
    let t = std::time::Instant::now();
    loop {
        poll_now(master);
        if fionread(master) >= n {
            return true;
        }
        if t.elapsed().as_millis() as u64 > SETTLE_MS {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Writes `data` through a new slave descriptor of `master` with output
/// processing off, so that it lands unchanged in the master's buffer.
pub fn refill(master: &OwnedFd, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let before = fionread(master);
    let slave = peer(master)?;
    let t = termios(master)?;
    let mut raw = t;
    raw.c_oflag &= !libc::OPOST;
    // Through the master: the slave's settings.
    tty::set_termios2(master.as_fd(), &raw)
        .map_err(|e| Error::msg(format!("switching output processing off: {e}")))?;
    let wrote = write_all(&slave, data);
    let back = tty::set_termios2(master.as_fd(), &t);
    wrote.map_err(|e| Error::msg(format!("writing the bytes back: {e}")))?;
    back.map_err(|e| Error::msg(format!("putting the line settings back: {e}")))?;
    if !wait_for(master, before.max(0) + data.len() as i32) {
        return Err(Error::msg(format!(
            "the {} bytes written back did not reach the master's buffer",
            data.len()
        )));
    }
    Ok(())
}

/// The `n` bytes waiting in `master`'s buffer, left in place (read out
/// and written back).  `packet`: the master is in packet mode (each read
/// starts with a status byte).
pub fn copy(master: &OwnedFd, n: usize, packet: bool) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; n + 1];
    while out.len() < n {
        if fionread(master) <= 0 {
            break;
        }
        // Data is available: this does not block.
        let r = match rustix::io::read(master, &mut buf[..]) {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        let got = &buf[..r];
        let data = if packet {
            if got[0] != 0 {
                // A status packet: it cannot be given back.  Put back what
                // was read so far and refuse.
                let _ = refill(master, &out);
                return Err(format!(
                    "a packet-mode status byte {:#x} is pending (not supported)",
                    got[0]
                ));
            }
            &got[1..]
        } else {
            got
        };
        out.extend_from_slice(data);
    }
    refill(master, &out).map_err(|e| format!("giving back the unread bytes: {e}"))?;
    Ok(out)
}

/// A new slave description of `master`'s pair, non-blocking.
fn peer(master: &OwnedFd) -> Result<OwnedFd> {
    Ok(tty::open_peer(master.as_fd())?)
}

fn termios(master: &OwnedFd) -> Result<libc::termios2> {
    Ok(tty::get_termios2(master.as_fd())?)
}

/// Why input waiting on the slave side cannot be given back unchanged:
/// in canonical mode the line discipline has edited it into lines (and
/// a partial line cannot even be seen); with IXON, flow-control
/// characters in it would act again.
fn input_problem(t: &libc::termios2, data: &[u8]) -> Option<String> {
    if t.c_lflag & libc::ICANON != 0 {
        return Some(
            "the slave is in canonical mode, where typed-ahead lines cannot be rebuilt".into(),
        );
    }
    let (stop, start) = (t.c_cc[libc::VSTOP], t.c_cc[libc::VSTART]);
    (t.c_iflag & libc::IXON != 0 && data.iter().any(|&b| b == stop || b == start))
        .then(|| "the input holds flow-control characters (IXON is on)".into())
}

/// Gives `data` to the slave side's input buffer of `master`'s pair as
/// it is: input processing and echo are off while it is written.
pub fn refill_input(master: &OwnedFd, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let slave = peer(master)?;
    let t = termios(master)?;
    if let Some(why) = input_problem(&t, data) {
        return Err(Error::Incompatible(why));
    }
    let before = fionread(&slave).max(0);
    let mut raw = t;
    // IXON stays: changing it would queue a packet-mode status byte.
    raw.c_iflag &= libc::IXON;
    raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    // Through the master: the slave's settings.
    tty::set_termios2(master.as_fd(), &raw)
        .map_err(|e| Error::msg(format!("switching input processing off: {e}")))?;
    let wrote = write_all(master, data);
    let reached = wrote.is_ok() && wait_for(&slave, before + data.len() as i32);
    let back = tty::set_termios2(master.as_fd(), &t);
    wrote.map_err(|e| Error::msg(format!("writing the slave's input back: {e}")))?;
    if back.is_err() || !reached {
        return Err(Error::msg(format!(
            "the {} bytes of input did not reach the slave's buffer",
            data.len()
        )));
    }
    Ok(())
}

/// The bytes written on the master side that the slave has not read,
/// left in place (read out through a slave description of crest's and
/// written back).
pub fn copy_input(master: &OwnedFd) -> std::result::Result<Vec<u8>, String> {
    let slave = peer(master).map_err(|e| e.to_string())?;
    poll_now(&slave);
    let n = fionread(&slave);
    if n <= 0 {
        return Ok(Vec::new());
    }
    let t = termios(master).map_err(|e| e.to_string())?;
    if let Some(why) = input_problem(&t, &[]) {
        return Err(why);
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; n as usize];
    while out.len() < n as usize {
        match rustix::io::read(&slave, &mut buf[..]) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    if let Some(why) = input_problem(&t, &out) {
        let _ = refill_input_unchecked(master, &out);
        return Err(why);
    }
    refill_input(master, &out).map_err(|e| format!("giving back the slave's input: {e}"))?;
    Ok(out)
}

/// [`refill_input`] for bytes that were just read out: put back whatever
/// they hold, so that a refused dump leaves the buffer as it was.
fn refill_input_unchecked(master: &OwnedFd, data: &[u8]) -> Result<()> {
    let t = termios(master)?;
    let mut loose = t;
    loose.c_iflag &= !libc::IXON;
    let _ = tty::set_termios2(master.as_fd(), &loose);
    let r = refill_input(master, data);
    let _ = tty::set_termios2(master.as_fd(), &t);
    r
}
