//! `conns PAIRS`: one process holding PAIRS established loopback TCP
//! connections (both ends, 2 × PAIRS sockets) and their listener.  Each
//! end has sent its peer a message the peer has not read yet, so every
//! socket has a receive queue.  After go each end reads its message,
//! checks it, and one more round trip runs on every connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::proto::Proto;

fn message(i: usize, side: u8) -> Vec<u8> {
    (0..600)
        .map(|k| (i.wrapping_mul(31) + k * 7 + side as usize) as u8)
        .collect()
}

fn raise_nofile(want: u64) -> Result<(), String> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err("getrlimit".into());
    }
    if r.rlim_cur < want {
        r.rlim_cur = want.min(r.rlim_max);
        // SAFETY: setrlimit reads a local rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err("setrlimit(RLIMIT_NOFILE)".into());
        }
    }
    Ok(())
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let pairs: usize = match args.first().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => p.finish(Err("usage: conns PAIRS".into())),
    };
    let setup = (|| -> Result<(TcpListener, Vec<(TcpStream, TcpStream)>), String> {
        raise_nofile(2 * pairs as u64 + 64)?;
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let mut v = Vec::with_capacity(pairs);
        for i in 0..pairs {
            let c = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
            let (a, _) = l.accept().map_err(|e| format!("accept {i}: {e}"))?;
            (&c).write_all(&message(i, 0))
                .map_err(|e| format!("send {i}: {e}"))?;
            (&a).write_all(&message(i, 1))
                .map_err(|e| format!("send {i}: {e}"))?;
            v.push((c, a));
        }
        Ok((l, v))
    })();
    let (_l, conns) = match setup {
        Ok(v) => v,
        Err(e) => p.finish(Err(e)),
    };
    p.ready();
    if let Err(e) = p.wait_go() {
        p.finish(Err(e));
    }
    let verdict = (|| {
        for (i, (c, a)) in conns.iter().enumerate() {
            for (s, from) in [(c, 1u8), (a, 0u8)] {
                s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let mut got = vec![0u8; 600];
                let mut r: &TcpStream = s;
                r.read_exact(&mut got)
                    .map_err(|e| format!("connection {i}: reading: {e}"))?;
                if got != message(i, from) {
                    return Err(format!("connection {i}: the queued message differs"));
                }
            }
            let (mut w, mut r): (&TcpStream, &TcpStream) = (c, a);
            w.write_all(b"ping")
                .map_err(|e| format!("connection {i}: {e}"))?;
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| format!("connection {i}: round trip: {e}"))?;
            if &b != b"ping" {
                return Err(format!("connection {i}: round trip data"));
            }
        }
        Ok(())
    })();
    p.finish(verdict)
}
