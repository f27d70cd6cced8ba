//! `relay CAPACITY`: the driver's memory-speed pipe endpoint. Pre-faults a
//! buffer of CAPACITY bytes and says `ready` on stderr; reads standard input
//! (a dump writing `-o -`) to its end with large reads, says `read N`; then
//! writes the N bytes to standard output (a restore reading `-i -`), says
//! `wrote N` and exits. The driver never holds an image itself, so crest's
//! peak RSS (which a spawned child inherits from its parent's) stays clean.

use std::io::Write;

use crate::region::Region;

fn say(what: &str) -> Result<(), String> {
    let mut e = std::io::stderr().lock();
    writeln!(e, "{what}")
        .and_then(|_| e.flush())
        .map_err(|e| format!("stderr: {e}"))
}

pub fn run(args: &[String]) -> Result<(), String> {
    let cap = match args.first().and_then(|s| s.parse::<usize>().ok()) {
        Some(n) if n > 0 => n.next_multiple_of(crest_bench::page_size()),
        _ => return Err("usage: relay CAPACITY".into()),
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let mut buf = Region::new(cap, rw).map_err(|e| format!("mmap: {e}"))?;
    buf.prefault(0);
    say("ready")?;
    let mut len = 0usize;
    loop {
        if len == buf.len() {
            let old = buf.len();
            buf.grow(old * 2).map_err(|e| format!("mremap: {e}"))?;
            buf.prefault(old);
        }
        let room = &mut buf.bytes_mut()[len..];
        let want = room.len().min(8 << 20);
        // SAFETY: reads into `want` bytes of our own writable buffer.
        let n = unsafe { libc::read(0, room.as_mut_ptr().cast(), want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("read: {e}"));
        }
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: closes our standard input, which nothing else uses.
    unsafe { libc::close(0) };
    say(&format!("read {len}"))?;
    let mut off = 0usize;
    while off < len {
        let part = &buf.bytes()[off..len];
        let want = part.len().min(8 << 20);
        // SAFETY: writes `want` bytes of our own buffer.
        let n = unsafe { libc::write(1, part.as_ptr().cast(), want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("write after {off} bytes: {e}"));
        }
        off += n as usize;
    }
    // SAFETY: closes our standard output so the reader sees the end.
    unsafe { libc::close(1) };
    say(&format!("wrote {len}"))
}
