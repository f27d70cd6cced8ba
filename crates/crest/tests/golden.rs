//! Golden model images: `golden/v2.img` was written by the format 2
//! writer (PROCESS and FILE records holding postcard) from the fixed model
//! below, and `golden/v2.json` is that model as JSON.
//!
//! To create missing golden files, run this test with `CREST_BLESS_GOLDEN=1`.

use crest::model::*;
use crest_image::{Header, SealedPages, Writer};

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn golden_header() -> Header {
    Header {
        producer: "crest 0.1.0".into(),
        arch: "x86_64".into(),
        page_size: 4096,
        uts_sysname: "Linux".into(),
        uts_nodename: "golden".into(),
        uts_release: "6.18.0".into(),
        uts_version: "#1 SMP PREEMPT_DYNAMIC".into(),
        uts_machine: "x86_64".into(),
        cpu_vendor: "GenuineIntel".into(),
        xsave_features: 0x2e7,
        xsave_size: 2696,
        created_unix_secs: 1_796_000_000,
    }
}

fn fid(path: &str, size: u64) -> FileId {
    FileId {
        path: path.into(),
        size,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o100755,
    }
}

fn siginfo(signo: i32) -> SigInfo {
    let mut raw: Vec<u8> = (0..128u32).map(|i| (i * 3 + signo as u32) as u8).collect();
    raw[..4].copy_from_slice(&signo.to_le_bytes());
    SigInfo { signo, raw }
}

fn creds(base: u32) -> Creds {
    Creds {
        uids: [base, base + 1, base + 2, base + 3],
        gids: [base + 10, base + 11, base + 12, base + 13],
        groups: vec![4, 24, 27],
        cap_inh: 1 << 7,
        cap_prm: 0x1ff_ffff_ffff,
        cap_eff: 0x1ff_ffff_fffe,
        cap_bnd: 0x1ff_ffff_ffff,
        cap_amb: 1 << 10,
        securebits: 0x2f,
        no_new_privs: true,
    }
}

fn all_flags() -> VmaFlags {
    VmaFlags {
        growsdown: true,
        noreserve: true,
        dontdump: true,
        dontfork: true,
        wipeonfork: true,
        hugepage: true,
        nohugepage: true,
        mergeable: true,
        locked: true,
        may_write: true,
    }
}

fn vma(start: u64, end: u64, backing: Backing, name: &str, pages: u64) -> Vma {
    Vma {
        start,
        end,
        prot: 3,
        shared: false,
        offset: 0,
        backing,
        flags: VmaFlags {
            may_write: true,
            ..VmaFlags::default()
        },
        name: name.into(),
        guards: Vec::new(),
        pages,
    }
}

fn unix(ino: u64, peer: Option<u64>) -> UnixSocket {
    UnixSocket {
        ino,
        sock_type: 5,
        name: b"\0golden-abstract".to_vec(),
        file: Some(UnixFile {
            mode: 0o140755,
            uid: 1000,
            gid: 1001,
        }),
        listen: Some(16),
        peer,
        shutdown: 3,
        queue: vec![UnixMsg {
            data: b"queued message".to_vec(),
            from: b"/tmp/sender.sock".to_vec(),
            creds: Some((4321, 1000, 1001)),
        }],
        pending: vec![UnixPending { client: ino + 100 }],
        passcred: true,
        passpidfd: true,
        rcvbuf: 212_992,
        sndbuf: 425_984,
        peek_off: 7,
        rcvtimeo_us: 1_500_000,
        sndtimeo_us: 2_500_000,
    }
}

fn open(id: u32, flags: u32, pos: u64, target: OpenTarget) -> Object {
    Object {
        id,
        kind: ObjectKind::Open(OpenFile { flags, pos, target }),
    }
}

/// Every object kind, every open target, every shared-memory kind.
fn objects() -> Vec<Object> {
    vec![
        Object {
            id: 0,
            kind: ObjectKind::File(fid("/usr/bin/golden", 123_456)),
        },
        open(1, 0o102002, 4096, OpenTarget::Regular(fid("/srv/log", 9000))),
        open(
            2,
            0o200000,
            3,
            OpenTarget::Directory {
                path: "/srv/dir".into(),
            },
        ),
        open(
            3,
            0o2,
            0,
            OpenTarget::CharDevice {
                path: "/dev/null".into(),
                rdev: 0x103,
            },
        ),
        open(
            4,
            0o4002,
            0,
            OpenTarget::Fifo {
                path: "/srv/fifo".into(),
            },
        ),
        Object {
            id: 5,
            kind: ObjectKind::Pipe(PipeObj {
                size: 65536,
                data_len: 11,
                fifo: false,
            }),
        },
        open(
            6,
            0o4001,
            0,
            OpenTarget::PipeEnd {
                pipe: 5,
                write: true,
            },
        ),
        Object {
            id: 7,
            kind: ObjectKind::Shmem(ShmemObj {
                kind: ShmemKind::Memfd {
                    name: "golden-memfd".into(),
                    seals: 0x1f,
                },
                size: 3 * 4096,
            }),
        },
        open(8, 0o2, 17, OpenTarget::Memfd { shmem: 7 }),
        open(
            9,
            0o102,
            5000,
            OpenTarget::Unlinked {
                path: "/tmp/gone".into(),
                size: 8192,
                mode: 0o100600,
            },
        ),
        open(
            10,
            0o4002,
            0,
            OpenTarget::Eventfd {
                count: 42,
                semaphore: true,
            },
        ),
        open(
            11,
            0o4000,
            0,
            OpenTarget::Timerfd {
                clockid: 1,
                settime_flags: 3,
                value_ns: 1_500_000_000,
                interval_ns: 250_000_000,
                ticks: 9,
            },
        ),
        open(12, 0o4000, 0, OpenTarget::Signalfd { mask: 1 << 9 | 1 }),
        open(
            13,
            0o4000,
            0,
            OpenTarget::Inotify {
                watches: vec![InotifyWatch {
                    wd: 3,
                    path: "/srv/watched".into(),
                    mask: 0x0100_0fff,
                    ino: 777_777,
                    dev: 0x803,
                }],
            },
        ),
        open(
            14,
            0o2000000,
            0,
            OpenTarget::Epoll {
                targets: vec![EpollTarget {
                    pid: 4242,
                    fd: 10,
                    tfd: 11,
                    events: 0x8000_0019,
                    data: 0xdead_beef_cafe,
                }],
            },
        ),
        open(15, 0o2, 0, OpenTarget::Unix(unix(5001, Some(5002)))),
        open(
            16,
            0o2,
            0,
            OpenTarget::PtyMaster(Pty {
                index: 7,
                ptmx: "/dev/pts/ptmx".into(),
                termios: Termios {
                    iflag: 0x500,
                    oflag: 0x5,
                    cflag: 0xbf,
                    lflag: 0x8a3b,
                    line: 2,
                    cc: (1..=19).collect(),
                    ispeed: 38400,
                    ospeed: 115_200,
                },
                winsize: [50, 132, 800, 600],
                packet: true,
                locked: true,
                exclusive: true,
                session: 4242,
                foreground: 4243,
            }),
        ),
        open(
            17,
            0o2,
            0,
            OpenTarget::PtySlave {
                index: 7,
                exclusive: true,
            },
        ),
        Object {
            id: 18,
            kind: ObjectKind::Pipe(PipeObj {
                size: 1 << 20,
                data_len: 5,
                fifo: true,
            }),
        },
        open(
            19,
            0o4000,
            0,
            OpenTarget::FifoData {
                path: "/srv/fifo2".into(),
                pipe: 18,
            },
        ),
        Object {
            id: 20,
            kind: ObjectKind::Shmem(ShmemObj {
                kind: ShmemKind::Anonymous,
                size: 2 * 4096,
            }),
        },
        Object {
            id: 21,
            kind: ObjectKind::Shmem(ShmemObj {
                kind: ShmemKind::SysV {
                    key: 0x1234,
                    shmid: 98_310,
                    mode: 0o640,
                    uid: 1000,
                    gid: 1001,
                    cuid: 1002,
                    cgid: 1003,
                    destroyed: true,
                },
                size: 4096,
            }),
        },
        Object {
            id: 22,
            kind: ObjectKind::File(fid("/usr/lib/libgolden.so", 65536)),
        },
    ]
}

fn thread(tid: i32, own_creds: bool) -> Thread {
    Thread {
        tid,
        comm: format!("golden-{tid}"),
        regs: (0..27u64).map(|i| 0x1000 * i + tid as u64).collect(),
        xsave: (0..2696u32).map(|i| (i * 7 + tid as u32) as u8).collect(),
        sigmask: 1 << 1 | 1 << 14,
        pending: vec![siginfo(40)],
        altstack: AltStack {
            sp: 0x7f00_0000_0000,
            flags: 1,
            size: 65536,
        },
        rseq: Some(Rseq {
            addr: 0x7fff_f7d8_afe0,
            len: 32,
            signature: 0x5305_3053,
        }),
        robust_list: (0x7fff_f7d8_a750, 24),
        clear_child_tid: 0x7fff_f7d8_aa10,
        creds: own_creds.then(|| creds(2000)),
    }
}

fn leader() -> Process {
    let mut file_map = vma(
        0x5555_5555_4000,
        0x5555_5555_9000,
        Backing::File(0),
        "/usr/bin/golden",
        1,
    );
    file_map.prot = 5;
    file_map.offset = 0x2000;
    let mut heap = vma(
        0x5555_5556_0000,
        0x5555_5558_1000,
        Backing::Anonymous,
        "[heap]",
        3,
    );
    heap.guards = vec![(0x5555_5557_0000, 0x5555_5557_1000)];
    heap.flags = all_flags();
    let mut shm = vma(
        0x7f00_1000_0000,
        0x7f00_1000_2000,
        Backing::Shmem(20),
        "/dev/zero (deleted)",
        0,
    );
    shm.shared = true;
    Process {
        pid: 4242,
        ppid: 1,
        pgid: 4242,
        sid: 4242,
        creds: creds(1000),
        attrs: Attrs {
            umask: 0o027,
            personality: 0x0040_0000,
            nice: 5,
            sched_policy: 3,
            sched_priority: 0,
            rlimits: vec![(7, 1024, 4096), (3, 8 << 20, u64::MAX)],
            dumpable: 1,
            pdeath_signal: 15,
            child_subreaper: true,
        },
        mm: Mm {
            start_code: 0x5555_5555_4000,
            end_code: 0x5555_5555_9000,
            start_data: 0x5555_5555_b000,
            end_data: 0x5555_5555_c000,
            start_brk: 0x5555_5556_0000,
            brk: 0x5555_5558_1000,
            start_stack: 0x7fff_ffff_e5a0,
            arg_start: 0x7fff_ffff_e7a0,
            arg_end: 0x7fff_ffff_e7c0,
            env_start: 0x7fff_ffff_e7c0,
            env_end: 0x7fff_ffff_efe0,
            auxv: vec![(6, 4096), (25, 0x7fff_ffff_e8a9), (0, 0)],
            exe: Some(0),
            vmas: vec![
                file_map,
                vma(
                    0x5555_5555_b000,
                    0x5555_5555_c000,
                    Backing::File(22),
                    "/usr/lib/libgolden.so",
                    1,
                ),
                heap,
                shm,
                vma(
                    0x7f00_2000_0000,
                    0x7f00_2000_3000,
                    Backing::Shmem(7),
                    "/memfd:golden-memfd (deleted)",
                    0,
                ),
                vma(
                    0x7fff_f7fc_0000,
                    0x7fff_f7fc_1000,
                    Backing::VvarVclock,
                    "[vvar_vclock]",
                    0,
                ),
                vma(
                    0x7fff_f7fc_1000,
                    0x7fff_f7fc_5000,
                    Backing::Vvar,
                    "[vvar]",
                    0,
                ),
                vma(
                    0x7fff_f7fc_5000,
                    0x7fff_f7fc_7000,
                    Backing::Vdso,
                    "[vdso]",
                    0,
                ),
                vma(
                    0xffff_ffff_ff60_0000,
                    0xffff_ffff_ff60_1000,
                    Backing::Vsyscall,
                    "[vsyscall]",
                    0,
                ),
            ],
            vdso_crc: Some(0xdead_beef),
        },
        signals: Signals {
            actions: vec![SigAction {
                signo: 10,
                handler: 0x5555_5555_6000,
                flags: 0x0400_0004,
                restorer: 0x7fff_f7e0_0000,
                mask: 1 << 9,
            }],
            shared_pending: vec![siginfo(12)],
        },
        itimers: ITimers {
            real: ITimer {
                interval_us: 7_000_000,
                value_us: 99_000_000,
            },
            virt: ITimer {
                interval_us: 1000,
                value_us: 2000,
            },
            prof: ITimer {
                interval_us: 3000,
                value_us: 4000,
            },
        },
        fds: (1..20)
            .map(|i| Fd {
                fd: if i == 19 { 4321 } else { i as i32 },
                cloexec: i % 2 == 0,
                file: match i {
                    5 => 6,
                    18 => 19,
                    _ if i >= 5 => i + 1,
                    _ => i,
                },
            })
            .collect(),
        fs: FsInfo {
            cwd: "/srv/dir".into(),
            root: "/".into(),
        },
        threads: vec![thread(4242, false), thread(4243, true)],
        posix_timers: vec![PosixTimer {
            id: 3,
            clockid: 1,
            signo: 34,
            sigev_value: 0x1234_5678,
            notify: 4,
            tid: 4243,
            value_ns: 500_000_000,
            interval_ns: 1_000_000_000,
            overrun: 2,
        }],
        stopped: true,
        zombies: vec![Zombie {
            pid: 4250,
            pgid: 4242,
            sid: 4242,
            status: 0x0100,
            comm: "dead-child".into(),
        }],
        shares_files_with: None,
        shares_fs_with: None,
    }
}

/// A child sharing its parent's descriptor table and fs info.
fn child() -> Process {
    let mut p = leader();
    p.pid = 4244;
    p.ppid = 4242;
    p.pgid = 4244;
    p.stopped = false;
    p.zombies.clear();
    p.posix_timers.clear();
    p.threads = vec![thread(4244, false)];
    p.mm.vmas.truncate(3);
    p.shares_files_with = Some(4242);
    p.shares_fs_with = Some(4242);
    p
}

fn golden_model() -> Checkpoint {
    Checkpoint {
        objects: objects(),
        processes: vec![leader(), child()],
    }
}

fn page(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// The image of `ckpt` as `write_metadata` makes it, with file data for
/// the unlinked file, the pipes and the memfd, and page chunks: dense,
/// sparse, and compressed.
fn write_image(ckpt: &Checkpoint) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &golden_header()).unwrap();
    crest::codec::write_metadata(&mut w, ckpt).unwrap();
    w.write_file_data(9, 0, &page(1)).unwrap();
    w.write_file_data(9, 4096, &page(2)[..100]).unwrap();
    w.write_file_data(5, 0, b"hello pipe!").unwrap();
    w.write_file_data(18, 0, b"fifo!").unwrap();
    w.write_file_data(7, 4096, &page(3)).unwrap();
    // Process 0: one dense chunk of the file mapping, a sparse window of
    // the heap (pages 0, 2 and 32 of 33), compressed; process 1: dense.
    w.write_pages(0, 0x5555_5555_4000, &page(4)).unwrap();
    let mut heap = vec![0u8; 33 * 4096];
    for (i, p) in [(0usize, 5u8), (2, 6), (32, 7)] {
        heap[i * 4096..(i + 1) * 4096].copy_from_slice(&page(p));
    }
    let len = heap.len();
    let s = SealedPages::seal(0, 0x5555_5556_0000, heap, len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, false).unwrap(), 1);
    let zeroish = vec![0x11u8; 4096];
    w.write_pages_compressed(0, 0x5555_5555_b000, &zeroish)
        .unwrap();
    w.write_pages(1, 0x5555_5556_0000, &page(8)).unwrap();
    w.finish().unwrap()
}

fn bless(name: &str, bytes: &[u8]) {
    let path = format!("{GOLDEN_DIR}/{name}");
    if std::env::var_os("CREST_BLESS_GOLDEN").is_some() && std::fs::metadata(&path).is_err() {
        std::fs::create_dir_all(GOLDEN_DIR).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn golden_v2_written_by_the_format_2_writer() {
    let m = golden_model();
    let json = serde_json::to_string_pretty(&m).unwrap() + "\n";
    bless("v2.json", json.as_bytes());
    bless("v2.img", &write_image(&m));
    let stored = std::fs::read(format!("{GOLDEN_DIR}/v2.img")).unwrap();
    assert_eq!(stored, write_image(&m), "the format 2 writer changed");
}
