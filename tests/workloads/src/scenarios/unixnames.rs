//! `unixnames`: AF_UNIX sockets whose bound file is gone.
//!
//! - a listening socket bound to `<dir>/sd/sock`, whose file and then
//!   directory were removed;
//! - a datagram socket bound to `<dir>/g`, whose file was replaced by a
//!   regular file holding "other";
//! - an abstract datagram socket the second one sends to.
//!
//! After go: getsockname of each is as before, the listener still
//! listens, a datagram sent from the second arrives with its name as the
//! sender's address, and the filesystem is as it was: no `<dir>/sd`,
//! `<dir>/g` still the regular file with "other".

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::list_fds;
use std::os::unix::ffi::OsStrExt;

fn addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: plain data; zeroes are valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let nul = usize::from(name.first() != Some(&0));
    (a, (2 + name.len() + nul) as libc::socklen_t)
}

fn sockname(fd: i32) -> Vec<u8> {
    // SAFETY: getsockname fills at most `len` bytes of `a`.
    unsafe {
        let mut a: libc::sockaddr_un = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) != 0 {
            return b"<error>".to_vec();
        }
        let n = (len as usize).saturating_sub(2);
        a.sun_path[..n].iter().map(|&c| c as u8).collect()
    }
}

fn check(p: &Proto, r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        p.bail_errno(what);
    }
    r
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let d = p.dir();
    let sd = d.join("sd");
    std::fs::create_dir(&sd).unwrap_or_else(|e| p.bail(&format!("mkdir: {e}")));
    let lname = sd.join("sock").as_os_str().as_bytes().to_vec();
    let gname = d.join("g").as_os_str().as_bytes().to_vec();
    let rname = format!("\0crest-unixnames-{}", std::process::id()).into_bytes();
    // SAFETY: socket calls with valid addresses; results checked.
    let (l, g, r) = unsafe {
        let l = check(
            p,
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
            "socket",
        );
        let (a, n) = addr(&lname);
        check(
            p,
            libc::bind(l, (&a as *const libc::sockaddr_un).cast(), n),
            "bind l",
        );
        check(p, libc::listen(l, 4), "listen");
        let g = check(
            p,
            libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0),
            "socket",
        );
        let (a, n) = addr(&gname);
        check(
            p,
            libc::bind(g, (&a as *const libc::sockaddr_un).cast(), n),
            "bind g",
        );
        let r = check(
            p,
            libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0),
            "socket",
        );
        let (a, n) = addr(&rname);
        check(
            p,
            libc::bind(r, (&a as *const libc::sockaddr_un).cast(), n),
            "bind r",
        );
        (l, g, r)
    };
    std::fs::remove_file(sd.join("sock")).unwrap();
    std::fs::remove_dir(&sd).unwrap();
    std::fs::remove_file(d.join("g")).unwrap();
    std::fs::write(d.join("g"), b"other").unwrap();
    let names = [sockname(l), sockname(g), sockname(r)];
    let fds_before = list_fds();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq("open fds", fds_before, list_fds());
    c.eq(
        "getsockname of the three sockets",
        names.to_vec(),
        vec![sockname(l), sockname(g), sockname(r)],
    );
    let mut on: libc::c_int = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: getsockopt into an int.
    unsafe {
        libc::getsockopt(
            l,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    c.eq("the listener listens", 1, on);
    // SAFETY: sendto/recvfrom with valid buffers and addresses.
    let from = unsafe {
        let (a, n) = addr(&rname);
        libc::sendto(
            g,
            b"hi".as_ptr().cast(),
            2,
            0,
            (&a as *const libc::sockaddr_un).cast(),
            n,
        );
        let mut f: libc::sockaddr_un = std::mem::zeroed();
        let mut flen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let mut buf = [0u8; 8];
        let got = libc::recvfrom(
            r,
            buf.as_mut_ptr().cast(),
            8,
            libc::MSG_DONTWAIT,
            (&mut f as *mut libc::sockaddr_un).cast(),
            &mut flen,
        );
        c.eq("datagram from the renamed socket", 2, got);
        let n = (flen as usize).saturating_sub(2);
        f.sun_path[..n.min(108)]
            .iter()
            .map(|&c| c as u8)
            .collect::<Vec<u8>>()
    };
    c.eq(
        "its sender address",
        gname.clone(),
        from.into_iter().take_while(|&b| b != 0).collect(),
    );
    c.ensure(!sd.exists(), || format!("{} exists again", sd.display()));
    c.eq(
        "the file now at the datagram socket's path",
        Some(b"other".to_vec()),
        std::fs::read(d.join("g")).ok(),
    );
    c
}
