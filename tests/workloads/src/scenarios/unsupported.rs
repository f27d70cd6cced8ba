//! `unsupported <thread|child|socket|netlink|packet|raw|uring>`: sets up
//! something crest must refuse to dump (a second thread, a child process,
//! a TCP socket, a netlink socket, a packet or raw socket, an io_uring
//! instance with its SQ ring mapped). The harness expects the dump to be refused and the
//! process to keep running undisturbed: after go the memory checksum must
//! be intact, no wait may have seen EINTR, nothing may be tracing us, and
//! the obstacle must still work before it is cleaned up.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{
    checksum, count_bad, err_str, errno, fill, mmap_anon, sleep_ns, status_field, words,
};

const MEM_LEN: usize = 8 << 20;
const SEED: u64 = 0x0B57;

enum Obstacle {
    Thread {
        handle: std::thread::JoinHandle<()>,
        ticks: Arc<AtomicU64>,
        eintr: Arc<AtomicU32>,
        stop: Arc<AtomicBool>,
    },
    Child {
        pid: libc::pid_t,
        to_child: i32,
        from_child: i32,
    },
    Tcp {
        fd: i32,
        addr: libc::sockaddr_in,
    },
    Netlink {
        fd: i32,
        nl_pid: u32,
    },
    /// An AF_PACKET or raw IP socket, which crest refuses.
    Raw {
        fd: i32,
    },
    /// An io_uring instance and its mapped SQ ring.
    Uring {
        fd: i32,
        ring: usize,
    },
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let mem = mmap_anon(MEM_LEN, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| p.bail(&format!("setup: mmap: {}", err_str(e))));
    // SAFETY: fresh mapping of MEM_LEN bytes.
    let sum = unsafe {
        fill(mem, MEM_LEN, SEED);
        checksum(words(mem, MEM_LEN))
    };
    let obstacle = match kind {
        "thread" => setup_thread(),
        "child" => setup_child(p),
        "socket" => setup_tcp(p),
        "netlink" => setup_netlink(p),
        "packet" => setup_raw(p, libc::AF_PACKET, (libc::ETH_P_ALL as u16).to_be() as i32),
        "raw" => setup_raw(p, libc::AF_INET, libc::IPPROTO_ICMP),
        "uring" => setup_uring(p),
        other => p.bail(&format!(
            "setup: unsupported needs thread|child|socket|netlink|packet|raw|uring, got {other:?}"
        )),
    };
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq(
        "/proc/self/status TracerPid",
        Some("0".to_string()),
        status_field("TracerPid"),
    );
    // SAFETY: our mapping, MEM_LEN readable bytes.
    let (bad, first) = unsafe { count_bad(mem, MEM_LEN, SEED) };
    c.ensure(bad == 0, || {
        format!("8 MiB region: {bad} words changed, first at {first:?}")
    });
    // SAFETY: as above.
    c.eq(
        "8 MiB region checksum",
        sum,
        checksum(unsafe { words(mem, MEM_LEN) }),
    );
    base.verify(p, &mut c);
    match obstacle {
        Obstacle::Thread {
            handle,
            ticks,
            eintr,
            stop,
        } => {
            let t0 = ticks.load(SeqCst);
            sleep_ns(200_000_000);
            let t1 = ticks.load(SeqCst);
            c.ensure(t1 > t0, || {
                format!("second thread stopped ticking ({t0} -> {t1} in 200 ms)")
            });
            stop.store(true, SeqCst);
            c.ensure(handle.join().is_ok(), || "second thread panicked".into());
            c.eq(
                "second thread: sleeps that returned EINTR",
                0,
                eintr.load(SeqCst),
            );
        }
        Obstacle::Child {
            pid,
            to_child,
            from_child,
        } => check_child(&mut c, pid, to_child, from_child),
        Obstacle::Tcp { fd, addr } => check_tcp(&mut c, fd, addr),
        Obstacle::Netlink { fd, nl_pid } => check_netlink(&mut c, fd, nl_pid),
        Obstacle::Raw { fd } => {
            let mut ty: i32 = 0;
            let mut len = 4u32;
            // SAFETY: getsockopt writes one int into `ty`.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&mut ty as *mut i32).cast(),
                    &mut len,
                )
            };
            c.ensure(r == 0 && ty == libc::SOCK_RAW, || {
                format!("the raw socket is gone or changed (type {ty}, r {r})")
            });
        }
        Obstacle::Uring { fd, ring } => {
            // SAFETY: a submit of nothing on our ring.
            let r = unsafe { libc::syscall(libc::SYS_io_uring_enter, fd, 0, 0, 0, 0usize, 0) };
            c.eq("io_uring_enter(ring, 0, 0)", 0, r);
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            c.ensure(info.contains("SqMask:\t0x3"), || {
                format!("the ring is gone or changed: {info:?}")
            });
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            c.ensure(
                maps.lines()
                    .any(|l| l.starts_with(&format!("{ring:x}-")) && l.ends_with("[io_uring]")),
                || format!("the SQ ring mapping at {ring:#x} is gone"),
            );
        }
    }
    c
}

fn setup_thread() -> Obstacle {
    let ticks = Arc::new(AtomicU64::new(0));
    let eintr = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (t, e, s) = (ticks.clone(), eintr.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(SeqCst) {
            if sleep_ns(10_000_000) == libc::EINTR {
                e.fetch_add(1, SeqCst);
            }
            t.fetch_add(1, SeqCst);
        }
    });
    while ticks.load(SeqCst) == 0 {
        sleep_ns(1_000_000);
    }
    Obstacle::Thread {
        handle,
        ticks,
        eintr,
        stop,
    }
}

fn pipe(p: &Proto) -> [i32; 2] {
    let mut fds = [0; 2];
    // SAFETY: valid out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        p.bail_errno("pipe2");
    }
    fds
}

/// One request/response round trip with the child, 5 s timeout.
fn ping(to_child: i32, from_child: i32, b: u8) -> Result<u8, String> {
    // SAFETY: one byte from a local.
    if unsafe { libc::write(to_child, (&b as *const u8).cast(), 1) } != 1 {
        return Err(format!("write to child: {}", err_str(errno())));
    }
    let mut pfd = libc::pollfd {
        fd: from_child,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 5000) } != 1 {
        return Err("child did not answer within 5 s".into());
    }
    let mut r = 0u8;
    // SAFETY: one byte into a local.
    match unsafe { libc::read(from_child, (&mut r as *mut u8).cast(), 1) } {
        1 => Ok(r),
        n => Err(format!("read from child returned {n}")),
    }
}

fn setup_child(p: &Proto) -> Obstacle {
    let down = pipe(p);
    let up = pipe(p);
    // SAFETY: the child only calls async-signal-safe functions, then _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        p.bail_errno("fork");
    }
    if pid == 0 {
        // SAFETY: child side: raw syscalls only.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as u64,
                0u64,
                0u64,
                0u64,
            );
            libc::close(down[1]);
            libc::close(up[0]);
            let mut b = 0u8;
            loop {
                let n = libc::read(down[0], (&mut b as *mut u8).cast(), 1);
                if n == 0 {
                    libc::_exit(0);
                }
                if n == 1 {
                    let r = b.wrapping_add(1);
                    libc::write(up[1], (&r as *const u8).cast(), 1);
                }
            }
        }
    }
    // SAFETY: our fds.
    unsafe {
        libc::close(down[0]);
        libc::close(up[1]);
    }
    match ping(down[1], up[0], 41) {
        Ok(42) => {}
        other => p.bail(&format!("setup: child ping: {other:?}")),
    }
    Obstacle::Child {
        pid,
        to_child: down[1],
        from_child: up[0],
    }
}

fn check_child(c: &mut Checks, pid: libc::pid_t, to_child: i32, from_child: i32) {
    let mut status = 0;
    // SAFETY: our child; WNOHANG.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    c.ensure(r == 0, || {
        format!("child {pid} no longer running: waitpid = {r}, status {status:#x}")
    });
    match ping(to_child, from_child, 99) {
        Ok(100) => {}
        other => c.fail(format!(
            "child ping after go: expected Ok(100), got {other:?}"
        )),
    }
    // SAFETY: our child and fds.
    let (k, w) = unsafe {
        libc::close(to_child);
        libc::close(from_child);
        let k = libc::kill(pid, libc::SIGKILL);
        (k, libc::waitpid(pid, &mut status, 0))
    };
    c.ensure(k == 0 && w == pid, || {
        format!("kill/reap child: kill {k}, waitpid {w}")
    });
}

fn setup_tcp(p: &Proto) -> Obstacle {
    // SAFETY: socket/bind/getsockname with valid sockaddr buffers.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            p.bail_errno("socket(AF_INET)");
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of_val(&sa) as u32,
        ) != 0
        {
            p.bail_errno("bind 127.0.0.1:0");
        }
        let mut len = std::mem::size_of_val(&sa) as u32;
        if libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) != 0
            || sa.sin_port == 0
        {
            p.bail_errno("getsockname");
        }
        Obstacle::Tcp { fd, addr: sa }
    }
}

fn check_tcp(c: &mut Checks, fd: i32, addr: libc::sockaddr_in) {
    // SAFETY: socket calls on our fds with valid sockaddr buffers.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&sa) as u32;
        libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
        c.eq(
            "TCP socket bound address (addr, port)",
            (addr.sin_addr.s_addr, addr.sin_port),
            (sa.sin_addr.s_addr, sa.sin_port),
        );
        if libc::listen(fd, 1) != 0 {
            c.fail(format!("listen: {}", err_str(errno())));
            return;
        }
        let cl = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let conn = libc::connect(cl, (&addr as *const libc::sockaddr_in).cast(), len);
        let acc = libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        );
        let sent = libc::send(cl, b"ping".as_ptr().cast(), 4, 0);
        let mut buf = [0u8; 8];
        let got = if acc >= 0 {
            libc::recv(acc, buf.as_mut_ptr().cast(), 8, 0)
        } else {
            -1
        };
        c.ensure(conn == 0 && acc >= 0 && sent == 4 && &buf[..got.max(0) as usize] == b"ping", || {
            format!("loopback round trip through the bound socket: connect {conn}, accept {acc}, send {sent}, recv {got}")
        });
        libc::close(cl);
        if acc >= 0 {
            libc::close(acc);
        }
        libc::close(fd);
    }
}

fn setup_netlink(p: &Proto) -> Obstacle {
    // SAFETY: socket/bind/getsockname with valid sockaddr buffers.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            p.bail_errno("socket(AF_NETLINK)");
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of_val(&sa) as u32,
        ) != 0
        {
            p.bail_errno("bind netlink");
        }
        let mut len = std::mem::size_of_val(&sa) as u32;
        if libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_nl).cast(), &mut len) != 0
            || sa.nl_pid == 0
        {
            p.bail_errno("getsockname netlink");
        }
        Obstacle::Netlink {
            fd,
            nl_pid: sa.nl_pid,
        }
    }
}

fn check_netlink(c: &mut Checks, fd: i32, nl_pid: u32) {
    // SAFETY: socket calls on our fd with valid buffers.
    unsafe {
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&sa) as u32;
        libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_nl).cast(), &mut len);
        c.eq("netlink socket nl_pid", nl_pid, sa.nl_pid);
        // NLMSG_NOOP with NLM_F_ACK: the kernel answers NLMSG_ERROR(0).
        let mut msg = [0u8; 16];
        msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&(libc::NLMSG_NOOP as u16).to_ne_bytes());
        msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        msg[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let sent = libc::send(fd, msg.as_ptr().cast(), 16, 0);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = libc::poll(&mut pfd, 1, 5000);
        let mut buf = [0u8; 256];
        let n = if ready == 1 {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        } else {
            -1
        };
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        c.ensure(sent == 16 && n >= 20 && ty == libc::NLMSG_ERROR as u16 && seq == 7 && err == 0, || {
            format!("netlink NOOP+ACK round trip: send {sent}, recv {n}, type {ty}, seq {seq}, error {err}")
        });
        libc::close(fd);
    }
}

fn setup_uring(p: &Proto) -> Obstacle {
    // struct io_uring_params: 120 bytes, all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup writes into the 120-byte params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) } as i32;
    if fd < 0 {
        p.bail_errno("io_uring_setup");
    }
    // SAFETY: maps the ring's first page (IORING_OFF_SQ_RING = 0), shared.
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    if ring == libc::MAP_FAILED {
        p.bail_errno("mmap(io_uring SQ ring)");
    }
    Obstacle::Uring {
        fd,
        ring: ring as usize,
    }
}

fn setup_raw(p: &Proto, family: i32, protocol: i32) -> Obstacle {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        p.bail_errno("socket(SOCK_RAW)");
    }
    Obstacle::Raw { fd }
}
