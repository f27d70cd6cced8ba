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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How long the kernel may take to move written bytes into the buffer.
const SETTLE_MS: u64 = 2000;

fn fionread(f: &OwnedFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return -1;
    }
    n
}

/// Waits until the master's buffer holds `n` bytes (a poll for input
/// flushes the kernel's pending work first).
fn wait_for(master: &OwnedFd, n: i32) -> bool {
    let t = std::time::Instant::now();
    loop {
        let mut p = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) };
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
    let os = |what: &str| Error::msg(format!("{what}: {}", std::io::Error::last_os_error()));
    let before = fionread(master);
    // SAFETY: TIOCGPTPEER opens the pair's slave; the result is ours.
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(os("opening the slave side (TIOCGPTPEER)"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: termios2 is plain data; TCGETS2 fills it.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TCGETS2, &mut t) } != 0 {
        return Err(os("TCGETS2"));
    }
    let mut raw = t;
    raw.c_oflag &= !libc::OPOST;
    // SAFETY: TCSETS2 reads one termios2 (through the master: the slave's).
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &raw) } != 0 {
        return Err(os("switching output processing off"));
    }
    let mut off = 0;
    let mut err = None;
    while off < data.len() {
        // SAFETY: write from a valid buffer.
        let n = unsafe {
            libc::write(
                slave.as_raw_fd(),
                data[off..].as_ptr().cast(),
                data.len() - off,
            )
        };
        if n <= 0 {
            err = Some(os("writing the bytes back"));
            break;
        }
        off += n as usize;
    }
    // SAFETY: as above: the settings as they were.
    let back = unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &t) };
    if let Some(e) = err {
        return Err(e);
    }
    if back != 0 {
        return Err(os("putting the line settings back"));
    }
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
        // SAFETY: read into a valid buffer; data is available, so this
        // does not block.
        let r = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        let got = &buf[..r as usize];
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
    // SAFETY: TIOCGPTPEER opens the pair's slave; the result is ours.
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(Error::msg(format!(
            "opening the slave side (TIOCGPTPEER): {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

fn termios(master: &OwnedFd) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain data; TCGETS2 fills it.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TCGETS2, &mut t) } != 0 {
        return Err(Error::msg(format!(
            "TCGETS2: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(t)
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
    // SAFETY: TCSETS2 reads one termios2 (through the master: the slave's).
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &raw) } != 0 {
        return Err(Error::msg(format!(
            "switching input processing off: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut off = 0;
    let mut err = None;
    while off < data.len() {
        // SAFETY: write from a valid buffer.
        let n = unsafe {
            libc::write(
                master.as_raw_fd(),
                data[off..].as_ptr().cast(),
                data.len() - off,
            )
        };
        if n <= 0 {
            err = Some(std::io::Error::last_os_error());
            break;
        }
        off += n as usize;
    }
    let reached = err.is_none() && wait_for(&slave, before + data.len() as i32);
    // SAFETY: as above: the settings as they were.
    let back = unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &t) };
    if let Some(e) = err {
        return Err(Error::msg(format!("writing the slave's input back: {e}")));
    }
    if back != 0 || !reached {
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
    let mut p = libc::pollfd {
        fd: slave.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no timeout (flushes pending work).
    unsafe { libc::poll(&mut p, 1, 0) };
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
        // SAFETY: read into a valid buffer; non-blocking.
        let r = unsafe { libc::read(slave.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..r as usize]);
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
    // SAFETY: TCSETS2 reads one termios2.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &loose) };
    let r = refill_input(master, data);
    // SAFETY: as above.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TCSETS2, &t) };
    r
}
