//! Decoder fuzz: the model records (TASK, THREAD, MM, FDTABLE, the object
//! records…) of a valid checkpoint are mutated at random
//! (deterministically); decoding must never panic, and whatever decodes
//! must go through `restore::validate` without a panic (errors are fine).
//! A payload claiming an absurd number of elements must fail without
//! allocating for them.

use crest::codec::ModelReader;
use crest::model::*;
use crest_image::{kind, Reader, Record, Writer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The system allocator, recording the largest single request made by
/// the current thread (so tests running in parallel do not disturb it).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result and the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(|l| l.get()))
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const PAGE: u64 = 4096;

fn file_id(path: &str, size: u64) -> FileId {
    FileId {
        path: path.into(),
        size,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o100755,
    }
}

fn vma(start: u64, end: u64, prot: i32, backing: Backing, name: &str, pages: u64) -> Vma {
    Vma {
        start,
        end,
        prot: prot as u32,
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
        cow: None,
        cow_drop: Vec::new(),
        huge_page: None,
        aio: None,
        kept: Vec::new(),
        digests: None,
    }
}

fn siginfo(signo: i32) -> SigInfo {
    let mut raw = vec![0u8; 128];
    raw[..4].copy_from_slice(&signo.to_le_bytes());
    raw[16..20].copy_from_slice(&42i32.to_le_bytes());
    SigInfo { signo, raw }
}

/// A checkpoint that `validate` accepts, with something of every kind.
fn checkpoint() -> Checkpoint {
    let (r, w, x) = (libc::PROT_READ, libc::PROT_WRITE, libc::PROT_EXEC);
    let objects = vec![
        Object {
            id: 0,
            kind: ObjectKind::File(file_id("/usr/bin/program", 123_456)),
        },
        Object {
            id: 1,
            kind: ObjectKind::Open(OpenFile {
                flags: libc::O_RDWR as u32 | libc::O_APPEND as u32,
                pos: 123,
                target: OpenTarget::Regular(file_id("/srv/data/log", 4096)),
            }),
        },
        Object {
            id: 2,
            kind: ObjectKind::Open(OpenFile {
                flags: libc::O_WRONLY as u32,
                pos: 0,
                target: OpenTarget::CharDevice {
                    path: "/dev/null".into(),
                    rdev: libc::makedev(1, 3),
                },
            }),
        },
        Object {
            id: 3,
            kind: ObjectKind::Open(OpenFile {
                flags: libc::O_RDWR as u32,
                pos: 5000,
                target: OpenTarget::Unlinked {
                    path: "/tmp/work/gone".into(),
                    size: 8192,
                    mode: 0o100600,
                    meta: None,
                },
            }),
        },
        Object {
            id: 4,
            kind: ObjectKind::Open(OpenFile {
                flags: libc::O_RDONLY as u32 | libc::O_DIRECTORY as u32,
                pos: 0,
                target: OpenTarget::Directory {
                    path: "/tmp/work/sub".into(),
                },
            }),
        },
        Object {
            id: 5,
            kind: ObjectKind::Open(OpenFile {
                flags: libc::O_RDWR as u32,
                pos: 0,
                target: OpenTarget::Fifo {
                    path: "/tmp/work/fifo".into(),
                },
            }),
        },
    ];
    let pid = 1234;
    // A thread stopped in clock_nanosleep: restore re-issues the call.
    let mut regs = vec![0u64; crest_sys::arch::USER_REGS_WORDS];
    regs[10] = (-516i64) as u64; // rax = -ERESTART_RESTARTBLOCK
    regs[15] = 230; // orig_rax = clock_nanosleep
    regs[16] = 0x5555_5555_8123; // rip
    regs[17] = 0x33; // cs
    regs[18] = 0x246; // eflags
    regs[19] = 0x7fff_ffff_e000; // rsp
    regs[20] = 0x2b; // ss
    regs[21] = 0x7fff_f7d8_a740; // fs_base
    let mut heap = vma(
        0x5555_5556_0000,
        0x5555_5558_1000,
        r | w,
        Backing::Anonymous,
        "[heap]",
        3,
    );
    heap.guards = vec![(0x5555_5557_0000, 0x5555_5557_1000)];
    let mut stack = vma(
        0x7fff_fffd_e000,
        0x7fff_ffff_f000,
        r | w,
        Backing::Anonymous,
        "[stack]",
        4,
    );
    stack.flags.growsdown = true;
    let process = Process {
        pid,
        ppid: 1,
        pgid: pid,
        sid: pid,
        creds: Creds {
            uids: [1000, 1000, 1000, 1000],
            gids: [100, 100, 100, 100],
            groups: vec![10, 20, 30],
            cap_bnd: (1 << 41) - 1,
            ..Creds::default()
        },
        attrs: Attrs {
            umask: 0o022,
            rlimits: vec![(7, 1024, 4096), (3, 8 << 20, u64::MAX)],
            dumpable: 1,
            ..Attrs::default()
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
            auxv: vec![(6, PAGE), (25, 0x7fff_ffff_e8a9), (0, 0)],
            exe: Some(0),
            vmas: vec![
                vma(
                    0x5555_5555_4000,
                    0x5555_5555_9000,
                    r | x,
                    Backing::File(0),
                    "/usr/bin/program",
                    0,
                ),
                vma(
                    0x5555_5555_b000,
                    0x5555_5555_c000,
                    r | w,
                    Backing::File(0),
                    "/usr/bin/program",
                    1,
                ),
                heap,
                vma(
                    0x7fff_f7fc_1000,
                    0x7fff_f7fc_5000,
                    r,
                    Backing::Vvar,
                    "[vvar]",
                    0,
                ),
                vma(
                    0x7fff_f7fc_5000,
                    0x7fff_f7fc_7000,
                    r | x,
                    Backing::Vdso,
                    "[vdso]",
                    0,
                ),
                stack,
                vma(
                    0xffff_ffff_ff60_0000,
                    0xffff_ffff_ff60_1000,
                    x,
                    Backing::Vsyscall,
                    "[vsyscall]",
                    0,
                ),
            ],
            vdso_crc: Some(0xdead_beef),
            state: Default::default(),
        },
        signals: Signals {
            actions: vec![SigAction {
                signo: libc::SIGUSR1,
                handler: 0x5555_5555_6000,
                flags: 0x0400_0004,
                restorer: 0x7fff_f7e0_0000,
                mask: 1 << 9,
            }],
            shared_pending: vec![siginfo(libc::SIGUSR2)],
        },
        itimers: ITimers {
            real: ITimer {
                interval_us: 7_000_000,
                value_us: 99_000_000,
            },
            ..ITimers::default()
        },
        fds: vec![
            Fd {
                fd: 0,
                cloexec: false,
                file: 2,
            },
            Fd {
                fd: 1,
                cloexec: false,
                file: 1,
            },
            Fd {
                fd: 2,
                cloexec: false,
                file: 1,
            },
            Fd {
                fd: 7,
                cloexec: true,
                file: 3,
            },
            Fd {
                fd: 8,
                cloexec: false,
                file: 4,
            },
            Fd {
                fd: 4321,
                cloexec: false,
                file: 5,
            },
        ],
        fs: FsInfo {
            cwd: "/tmp/work/sub".into(),
            root: "/".into(),
            cwd_deleted: None,
        },
        threads: vec![Thread {
            tid: pid,
            comm: "program".into(),
            regs,
            xsave: (0..832u32).map(|i| (i * 7) as u8).collect(),
            sigmask: 1 << 1,
            pending: vec![siginfo(libc::SIGRTMIN() + 5)],
            altstack: AltStack {
                sp: 0x7fff_f000_0000,
                flags: 0,
                size: 65536,
            },
            rseq: Some(Rseq {
                addr: 0x7fff_f7d8_afe0,
                len: 32,
                signature: 0x5305_3053,
            }),
            robust_list: (0x7fff_f7d8_a750, 24),
            clear_child_tid: 0x7fff_f7d8_aa10,
            creds: None,
            comm_raw: Vec::new(),
            cgroups: None,
            seccomp: Vec::new(),
        }],
        posix_timers: Vec::new(),
        stopped: false,
        zombies: Vec::new(),
        shares_files_with: None,
        shares_fs_with: None,
        locks: Vec::new(),
        fd_owners: Vec::new(),
        task_state: Default::default(),
        ns: Default::default(),
    };
    Checkpoint {
        objects,
        processes: vec![process],
        namespaces: Default::default(),
        cgroups: Vec::new(),
        parent: None,
    }
}

/// One random change to `b`.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    let len = b.len();
    match rng.below(9) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        // Overwrite a byte.
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = rng.byte();
        }
        // An interesting byte: varint continuation, sign, extremes.
        2 if len > 0 => {
            let i = rng.below(len);
            b[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe][rng.below(6)];
        }
        // Insert a few bytes.
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(4);
            for _ in 0..n {
                b.insert(i, rng.byte());
            }
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.below(len);
            let n = (1 + rng.below(8)).min(len - i);
            b.drain(i..i + n);
        }
        // Truncate.
        5 => b.truncate(rng.below(len + 1)),
        // A huge length or number from nowhere: MessagePack array, map,
        // string and byte-string headers of 2^32 - 1, a u64, and varints.
        6 => {
            let i = rng.below(len + 1);
            let huge: &[u8] = [
                &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
                &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
                &[0xdb, 0xff, 0xff, 0xff, 0xff][..],
                &[0xc6, 0xff, 0xff, 0xff, 0xff][..],
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
                &[0xff, 0xff, 0xff, 0xff, 0x0f][..],
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01][..],
            ][rng.below(7)];
            if i < len && rng.below(2) == 0 {
                let end = (i + huge.len()).min(len);
                b.splice(i..end, huge.iter().copied());
            } else {
                b.splice(i..i, huge.iter().copied());
            }
        }
        // Duplicate a slice somewhere else.
        7 if len > 1 => {
            let i = rng.below(len);
            let n = (1 + rng.below(16)).min(len - i);
            let piece: Vec<u8> = b[i..i + n].to_vec();
            let at = rng.below(len + 1);
            b.splice(at..at, piece);
        }
        // Swap two bytes.
        _ if len > 1 => {
            let (i, j) = (rng.below(len), rng.below(len));
            b.swap(i, j);
        }
        _ => b.push(rng.byte()),
    }
}

/// The model records of `c`, as (kind, payload), in image order.
fn records_of(c: &Checkpoint) -> Vec<(u32, Vec<u8>)> {
    let mut w = Writer::new(Vec::new(), &crest_image::Header::default()).unwrap();
    crest::codec::write_metadata(&mut w, c).unwrap();
    let img = w.finish().unwrap();
    let mut r = Reader::new(&img[..]).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push((rec.kind, rec.payload.to_vec()));
    }
    out
}

/// Assembles a checkpoint from (kind, payload) records as restore does.
fn decode(records: &[(u32, Vec<u8>)]) -> crest::Result<Checkpoint> {
    let mut m = ModelReader::new(crest_image::FORMAT_VERSION);
    for (i, (k, payload)) in records.iter().enumerate() {
        m.feed(&Record {
            kind: *k,
            flags: 0,
            offset: 8 * i as u64,
            payload,
        })?;
    }
    m.take()
}

#[test]
fn the_base_checkpoint_is_valid_and_round_trips() {
    let c = checkpoint();
    crest::restore::validate(&c).expect("the base checkpoint is valid");
    assert_eq!(decode(&records_of(&c)).unwrap(), c);
}

const ITERATIONS: usize = 50_000;

thread_local! {
    /// Where the last panic on this thread happened.
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[test]
fn mutated_records_never_panic() {
    let base = checkpoint();
    let records = records_of(&base);
    let objects = records
        .iter()
        .filter(|(k, _)| *k < kind::TASK || *k >= kind::FILE_ID);
    let n_objects = objects.count();
    assert!(n_objects > 0 && n_objects < records.len());
    let mut rng = Rng(0x00C0_FFEE_D00D_F00D);
    let (mut decoded, mut valid, mut proc_tries) = (0usize, 0usize, 0usize);
    let mut per_kind = std::collections::BTreeMap::<&str, usize>::new();
    let mut panics: Vec<String> = Vec::new();
    // Panics are collected with their location and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_AT.with(|p| *p.borrow_mut() = at);
    }));
    for it in 0..ITERATIONS {
        // Three in four mutate a record of the process, the others an object.
        let i = if rng.below(4) < 3 {
            proc_tries += 1;
            n_objects + rng.below(records.len() - n_objects)
        } else {
            rng.below(n_objects)
        };
        let mut recs = records.clone();
        *per_kind.entry(kind::name(recs[i].0)).or_default() += 1;
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut recs[i].1);
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            let ckpt = decode(&recs).ok()?;
            Some(crest::restore::validate(&ckpt).is_ok())
        }));
        match r {
            Ok(Some(ok)) => {
                decoded += 1;
                valid += ok as usize;
            }
            Ok(None) => {}
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let at = PANIC_AT.with(|p| p.borrow().clone());
                if panics.len() < 5 {
                    panics.push(format!(
                        "iteration {it}, {} record at {at}: {msg}; input {:02x?}",
                        kind::name(recs[i].0),
                        recs[i].1
                    ));
                }
            }
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{ITERATIONS} iterations ({proc_tries} on the process's records): {decoded} decoded, \
         {valid} of them valid; mutated per kind: {per_kind:?}"
    );
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    // Every record kind of the checkpoint was mutated.
    for (k, _) in &records {
        assert!(
            per_kind.get(kind::name(*k)).is_some_and(|&n| n > 100),
            "{}",
            kind::name(*k)
        );
    }
    // The mutations must reach both outcomes, or the test proves little.
    assert!(
        decoded > ITERATIONS / 50,
        "only {decoded} mutated records decoded"
    );
    assert!(decoded < ITERATIONS, "every mutated record decoded");
    assert!(valid > 0 && valid < decoded, "{valid} of {decoded} valid");
}

/// The records of the checkpoint with one list of its process holding
/// one element, where the length of that list is replaced by the
/// largest MessagePack can say (2^32 - 1 elements or bytes; found as the
/// first byte where the encoding with an empty list and the one with a
/// single element differ).
fn claim_u32_max(set: impl Fn(&mut Process, bool)) -> Vec<(u32, Vec<u8>)> {
    let mut empty = checkpoint();
    set(&mut empty.processes[0], false);
    let mut one = checkpoint();
    set(&mut one.processes[0], true);
    let (e, mut o) = (records_of(&empty), records_of(&one));
    let i = e.iter().zip(&o).position(|(a, b)| a != b).unwrap();
    let (eb, ob) = (&e[i].1, &o[i].1);
    let at = eb.iter().zip(ob).position(|(a, b)| a != b).unwrap();
    let claim: &[u8] = match (eb[at], ob[at]) {
        (0x90, 0x91) => &[0xdd, 0xff, 0xff, 0xff, 0xff], // array 32
        (0x00, 0x01) if at > 0 && eb[at - 1] == 0xc4 => &[0xff, 0xff, 0xff, 0xff], // bin 8 → length bytes
        other => panic!("not a length: {other:x?}"),
    };
    let mut b = ob[..at].to_vec();
    if claim.len() == 4 {
        // bin 8 length: rewrite the marker as bin 32.
        *b.last_mut().unwrap() = 0xc6;
    }
    b.extend(claim);
    b.extend(&ob[at + 1..]);
    o[i].1 = b;
    o
}

#[test]
fn absurd_lengths_fail_without_allocating() {
    type Setter = fn(&mut Process, bool);
    let cases: [(&str, Setter); 6] = [
        ("groups", |p, one| {
            p.creds.groups = if one { vec![7] } else { vec![] }
        }),
        ("vmas", |p, one| {
            let v = p.mm.vmas[2].clone();
            p.mm.vmas = if one { vec![v] } else { vec![] };
        }),
        ("auxv", |p, one| {
            p.mm.auxv = if one { vec![(6, PAGE)] } else { vec![] }
        }),
        ("fds", |p, one| {
            let f = p.fds[0];
            p.fds = if one { vec![f] } else { vec![] };
        }),
        ("pending", |p, one| {
            let s = siginfo(10);
            p.threads[0].pending = if one { vec![s] } else { vec![] };
        }),
        ("xsave", |p, one| {
            p.threads[0].xsave = if one { vec![1] } else { vec![] }
        }),
    ];
    for (what, set) in cases {
        let records = claim_u32_max(set);
        let (r, largest) = largest_allocation(|| decode(&records));
        println!("{what}: 2^32 - 1 elements claimed; largest allocation {largest} bytes");
        let err = r.expect_err(what);
        assert!(
            err.to_string().contains("cannot decode the"),
            "{what}: {err}"
        );
        assert!(
            largest < 16 << 20,
            "{what}: decoding a claim of 2^32 - 1 elements allocated {largest} bytes at once"
        );
    }
    // A string (a path) of 2^32 - 1 bytes in an object record.
    let mut records = records_of(&checkpoint());
    let b = &mut records[0].1;
    let at = b
        .windows(17)
        .position(|w| w == b"\xb0/usr/bin/program")
        .unwrap();
    b.splice(at..at + 1, [0xdb, 0xff, 0xff, 0xff, 0xff]);
    let (r, largest) = largest_allocation(|| decode(&records));
    let err = r.expect_err("path");
    assert!(
        err.to_string().contains("cannot decode the FILE_ID record"),
        "{err}"
    );
    assert!(largest < 16 << 20, "object path: {largest} bytes");
}

/// Nesting deeper than any model record (here: arrays in arrays where an
/// unknown field's value is skipped) is refused before the stack runs out.
#[test]
fn deep_nesting_is_refused() {
    let mut records = records_of(&checkpoint());
    let i = records.iter().position(|(k, _)| *k == kind::FS).unwrap();
    let b = &mut records[i].1;
    // One more key at the front of the FS map: "x" → [[[[…]]]].
    assert_eq!(b[0] & 0xf0, 0x80, "a fixmap");
    b[0] += 1;
    let mut deep = vec![0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    b.splice(1..1, deep);
    let err = decode(&records).unwrap_err();
    assert!(
        err.to_string().contains("cannot decode the FS record"),
        "{err}"
    );
}

/// A thread stopped in an interrupted syscall with its instruction
/// pointer below 2: restore backs it up over the `syscall` instruction.
#[test]
fn validate_interrupted_syscall_at_rip_zero() {
    for rip in [0u64, 1] {
        let mut c = checkpoint();
        c.processes[0].threads[0].regs[16] = rip;
        let r = catch_unwind(|| crest::restore::validate(&c).map(|_| ()));
        assert!(r.is_ok(), "validate panicked with rip {rip}");
    }
}

/// The PROCESS and FILE records of the format 2 golden image (postcard,
/// read through the frozen legacy types), mutated: never a panic, never a
/// large allocation, whatever length a mutation makes up.
#[test]
fn mutated_format_2_records_never_panic_nor_allocate_much() {
    let golden =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v2.img")).unwrap();
    let mut r = Reader::new(&golden[..]).unwrap();
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if matches!(rec.kind, kind::PROCESS | kind::FILE) {
            records.push((rec.kind, rec.payload.to_vec()));
        }
    }
    let decode_v2 = |recs: &[(u32, Vec<u8>)]| {
        let mut m = ModelReader::new(2);
        for (i, (k, payload)) in recs.iter().enumerate() {
            m.feed(&Record {
                kind: *k,
                flags: 0,
                offset: 8 * i as u64,
                payload,
            })?;
        }
        m.take()
    };
    assert!(decode_v2(&records).is_ok());
    let mut rng = Rng(0x05EE_D0F2);
    let (mut decoded, mut largest_seen) = (0usize, 0usize);
    for it in 0..10_000 {
        let mut recs = records.clone();
        // Mostly the process records, where the long lists are.
        let i = if rng.below(4) < 3 {
            recs.len() - 1 - rng.below(2)
        } else {
            rng.below(recs.len())
        };
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut recs[i].1);
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            largest_allocation(|| decode_v2(&recs).is_ok())
        }));
        let (ok, largest) = r.unwrap_or_else(|_| panic!("iteration {it}: a panic"));
        decoded += ok as usize;
        largest_seen = largest_seen.max(largest);
        assert!(
            largest < 16 << 20,
            "iteration {it}: an allocation of {largest} bytes"
        );
    }
    println!(
        "format 2: {decoded} of 10000 mutated images decoded; largest allocation {largest_seen}"
    );
    assert!(decoded > 0 && decoded < 10_000);
}

/// The model records of the format 3 golden image, which has every record
/// kind (every object kind and open target family), mutated: decoding and
/// validating never panic.
#[test]
fn mutated_records_of_every_kind_never_panic() {
    let golden =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v3.img")).unwrap();
    let mut r = Reader::new(&golden[..]).unwrap();
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if kind::is_model_v3(rec.kind) {
            records.push((rec.kind, rec.payload.to_vec()));
        }
    }
    assert!(decode(&records).is_ok());
    let mut rng = Rng(0xFACE_B00C);
    let mut per_kind = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for it in 0..20_000 {
        let mut recs = records.clone();
        let i = rng.below(recs.len());
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut recs[i].1);
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            decode(&recs)
                .map(|c| crest::restore::validate(&c).is_ok())
                .is_ok()
        }));
        let ok =
            r.unwrap_or_else(|_| panic!("iteration {it}: a panic on {}", kind::name(recs[i].0)));
        let e = per_kind.entry(kind::name(recs[i].0)).or_default();
        e.0 += 1;
        e.1 += ok as usize;
    }
    println!("every kind, (mutated, decoded): {per_kind:?}");
    for (k, _) in &records {
        assert!(per_kind.contains_key(kind::name(*k)), "{}", kind::name(*k));
    }
}
