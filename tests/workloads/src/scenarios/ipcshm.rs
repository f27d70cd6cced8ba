//! `ipcshm`: System V shared memory in a container — a tree whose root
//! is PID 1 of its own PID and IPC namespaces.
//!
//! ```text
//! launcher        started by the harness: clones C, writes `ready` with
//!                 C's pid (as the harness sees it) and exits
//! C  (pid 1)      new PID and IPC namespaces; makes (after one segment
//!                 made and removed, so ids are not the first ones):
//!                   SHARED  key 0xc15a0001, 3 pages + 100 bytes, 0640,
//!                           attached read-write by C and A
//!                   LONE    key 0xc15a0002, 16 pages, 0604, made as
//!                           1234:2345 (its creator ids), then given to
//!                           4321:5432, SHM_LOCK'd, content in its first
//!                           and last pages only; attached by nobody
//!                   DEST    IPC_PRIVATE, 2 pages, 0600, attached by C,
//!                           then marked for removal (IPC_RMID)
//!                   RO      key 0xc15a0004, 2 pages, 0644, attached
//!                           read-write by C and SHM_RDONLY by A
//! └── A (pid 2)   drops the attaches it inherited and attaches SHARED
//!                 (read-write) and RO (read-only) at addresses of its own
//! ```
//!
//! After go, C checks that its namespace lists exactly these four
//! segments, each one's IPC_STAT (key, id, mode with SHM_DEST and
//! SHM_LOCKED, size, owner, creator, attach count), that every key gives
//! its id,
//! each content (LONE through an attach of its own, holes still zero),
//! and its mappings (addresses, names, permissions).  Then C writes into
//! RO and raises a flag in SHARED; A, which checked its own attaches,
//! waits for the flag, must see C's write in RO, and writes into SHARED,
//! which C must see once A has exited.

use crate::checks::Checks;
use crate::family::{judge, member_wait_go, reap, spawn_labeled, STEP_TIMEOUT_NS};
use crate::proto::Proto;
use crate::util::{err_str, errno, sleep_ns};

const POLL_NS: u64 = 2_000_000;
const PAGE: usize = 4096;
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
/// Offset in SHARED of the flag C raises for A, and its value (the
/// pattern there is another).
const FLAG: usize = 0x801;
const FLAG_UP: u8 = 0xa5;

/// (name, key, size, mode)
const SEGS: [(&str, i32, usize, u32); 4] = [
    ("SHARED", 0xc15a_0001_u32 as i32, 3 * PAGE + 100, 0o640),
    ("LONE", 0xc15a_0002_u32 as i32, 16 * PAGE, 0o604),
    ("DEST", libc::IPC_PRIVATE, 2 * PAGE, 0o600),
    ("RO", 0xc15a_0004_u32 as i32, 2 * PAGE, 0o644),
];
const SHARED: usize = 0;
const LONE: usize = 1;
const DEST: usize = 2;
const RO: usize = 3;
const LONE_CREATOR: (u32, u32) = (1234, 2345);
const LONE_OWNER: (u32, u32) = (4321, 5432);

fn pattern(seg: usize, i: usize) -> u8 {
    ((i * 7 + seg * 31 + 1) & 0xff) as u8
}

/// Whether byte `i` of segment `seg` holds content (LONE: only its first
/// and last pages; the others are holes).
fn filled(seg: usize, i: usize) -> bool {
    seg != LONE || i < PAGE || i >= SEGS[LONE].2 - PAGE
}

fn expected(seg: usize, i: usize) -> u8 {
    if filled(seg, i) {
        pattern(seg, i)
    } else {
        0
    }
}

/// IPC_STAT: (key, mode, size, nattch, (uid, gid), (cuid, cgid)).
type Stat = (i32, u32, usize, u64, (u32, u32), (u32, u32));

fn stat(id: i32) -> Result<Stat, String> {
    // SAFETY: an all-zero shmid_ds is valid; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        return Err(format!("shmctl({id}, IPC_STAT): {}", err_str(errno())));
    }
    Ok((
        ds.shm_perm.__key,
        ds.shm_perm.mode as u32 & 0o7777,
        ds.shm_segsz,
        ds.shm_nattch,
        (ds.shm_perm.uid, ds.shm_perm.gid),
        (ds.shm_perm.cuid, ds.shm_perm.cgid),
    ))
}

fn attach(p: &Proto, id: i32, flags: i32) -> *mut u8 {
    // SAFETY: the kernel picks a free address.
    let a = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if a as isize == -1 {
        p.bail_errno("shmat");
    }
    a.cast()
}

/// The /proc/self/maps line of the mapping starting at `a`.
fn maps_line(a: *const u8) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let start = format!("{:x}-", a as usize);
    maps.lines()
        .find(|l| l.starts_with(&start))
        .map(str::to_string)
}

fn check_map(c: &mut Checks, who: &str, seg: usize, a: *const u8, perms: &str) {
    let (name, key, ..) = SEGS[seg];
    let line = maps_line(a);
    let ok = line.as_deref().is_some_and(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&perms) && f.get(5) == Some(&format!("/SYSV{key:08x}").as_str())
    });
    c.ensure(ok, || {
        format!("{who}: {name} at {a:p}: maps line {line:?}, expected {perms} /SYSV{key:08x}")
    });
}

/// Bytes written after go (the flag, A's and C's writes): not checked
/// against the pattern.
fn written_later(seg: usize, i: usize) -> bool {
    (seg == SHARED && (i == FLAG || (100..105).contains(&i)))
        || (seg == RO && (200..206).contains(&i))
}

fn check_content(c: &mut Checks, who: &str, seg: usize, a: *const u8) {
    let (name, _, size, _) = SEGS[seg];
    // SAFETY: the attach covers `size` bytes.
    let got = unsafe { std::slice::from_raw_parts(a, size) };
    if let Some(i) = (0..size).find(|&i| !written_later(seg, i) && got[i] != expected(seg, i)) {
        c.fail(format!(
            "{who}: content of {name} at byte {i}: {:#x}, expected {:#x}",
            got[i],
            expected(seg, i)
        ));
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    crate::family::hand_over(p, libc::CLONE_NEWPID | libc::CLONE_NEWIPC, || init(p))
}

fn init(p: &Proto) -> Checks {
    let mut c = Checks::new();
    // SAFETY: plain calls.
    unsafe {
        libc::setsid();
        // One segment made and removed: the ids below are not the first.
        let t = libc::shmget(libc::IPC_PRIVATE, PAGE, libc::IPC_CREAT | 0o600);
        libc::shmctl(t, libc::IPC_RMID, std::ptr::null_mut());
    }
    let mut ids = [0i32; 4];
    let mut addrs = [std::ptr::null_mut::<u8>(); 4];
    for (i, &(_, key, size, mode)) in SEGS.iter().enumerate() {
        // SAFETY: plain calls; single-threaded, so the effective ids are
        // switched for the one call (LONE's creator) and back.
        let id = unsafe {
            let creator = i == LONE;
            if creator && (libc::setegid(LONE_CREATOR.1) != 0 || libc::seteuid(LONE_CREATOR.0) != 0)
            {
                p.bail_errno("seteuid");
            }
            let id = libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode as i32);
            if creator && (libc::seteuid(0) != 0 || libc::setegid(0) != 0) {
                p.bail_errno("seteuid(0)");
            }
            id
        };
        if id < 0 {
            p.bail_errno("shmget");
        }
        ids[i] = id;
        let a = attach(p, id, 0);
        for j in (0..size).filter(|&j| filled(i, j)) {
            // SAFETY: within the attach.
            unsafe { *a.add(j) = pattern(i, j) };
        }
        addrs[i] = a;
    }
    // LONE: its owner, locked, then left alone.
    // SAFETY: IPC_STAT/IPC_SET on a valid buffer; SHM_LOCK; shmdt of our
    // attach.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        libc::shmctl(ids[LONE], libc::IPC_STAT, &mut ds);
        ds.shm_perm.uid = LONE_OWNER.0;
        ds.shm_perm.gid = LONE_OWNER.1;
        if libc::shmctl(ids[LONE], libc::IPC_SET, &mut ds) != 0 {
            p.bail_errno("IPC_SET");
        }
        if libc::shmctl(ids[LONE], libc::SHM_LOCK, std::ptr::null_mut()) != 0 {
            p.bail_errno("SHM_LOCK");
        }
        libc::shmdt(addrs[LONE].cast());
    }
    addrs[LONE] = std::ptr::null_mut();
    let (shared_id, ro_id) = (ids[SHARED], ids[RO]);
    let a = spawn_labeled(p, 2, 0, 10, move |m| {
        let mut c = Checks::new();
        // SAFETY: detaching the attaches inherited from C.
        unsafe {
            for a in addrs.iter().filter(|a| !a.is_null()) {
                libc::shmdt(a.cast());
            }
        }
        let shared = attach(m, shared_id, 0);
        let ro = attach(m, ro_id, libc::SHM_RDONLY);
        m.write_aux("a-attached", "1\n");
        let out = member_wait_go(m, 1, POLL_NS);
        out.report(&mut c, "A");
        check_map(&mut c, "A", SHARED, shared, "rw-s");
        check_map(&mut c, "A", RO, ro, "r--s");
        check_content(&mut c, "A", SHARED, shared);
        // C writes into RO, then raises the flag.
        let mut slept = 0;
        // SAFETY: within the attach; volatile: C writes it.
        while unsafe { std::ptr::read_volatile(shared.add(FLAG)) } != FLAG_UP {
            if slept > STEP_TIMEOUT_NS {
                c.fail("A: C never raised the flag in SHARED");
                return c;
            }
            sleep_ns(POLL_NS);
            slept += POLL_NS;
        }
        // SAFETY: within the attach.
        let got = unsafe { std::slice::from_raw_parts(ro.add(200), 6) }.to_vec();
        c.eq("A: C's write seen in RO", b"parent".to_vec(), got);
        // SAFETY: within the read-write attach.
        unsafe { std::ptr::copy_nonoverlapping(b"child".as_ptr(), shared.add(100), 5) };
        c
    });
    let mut slept = 0;
    while !p.dir().join("a-attached").exists() {
        if slept > STEP_TIMEOUT_NS {
            p.bail("A did not attach");
        }
        sleep_ns(POLL_NS);
        slept += POLL_NS;
    }
    // DEST: marked for removal while attached.
    // SAFETY: plain IPC_RMID.
    if unsafe { libc::shmctl(ids[DEST], libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
        p.bail_errno("IPC_RMID");
    }
    p.write_aux("inner-ready", "1\n");
    let out = p.wait_go();
    out.report(&mut c, "C");
    // The namespace lists these four and nothing else.
    let listed: Vec<i32> = std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let mut want = ids.to_vec();
    want.sort_unstable();
    let mut got = listed.clone();
    got.sort_unstable();
    c.eq("C: segments listed in /proc/sysvipc/shm", want, got);
    for (i, &(name, key, size, mode)) in SEGS.iter().enumerate() {
        let (k, m, nattch) = match i {
            DEST => (libc::IPC_PRIVATE, mode | SHM_DEST, 1),
            LONE => (key, mode | SHM_LOCKED, 0),
            _ => (key, mode, 2),
        };
        let (owner, creator) = if i == LONE {
            (LONE_OWNER, LONE_CREATOR)
        } else {
            ((0, 0), (0, 0))
        };
        c.eq(
            &format!("C: IPC_STAT of {name} (shmid {})", ids[i]),
            Ok((k, m, size, nattch, owner, creator)),
            stat(ids[i]),
        );
        if key != libc::IPC_PRIVATE {
            // SAFETY: plain lookup.
            let again = unsafe { libc::shmget(key, 0, 0) };
            c.eq(&format!("C: shmget({key:#x}) ({name})"), ids[i], again);
        }
    }
    for i in [SHARED, DEST, RO] {
        check_map(&mut c, "C", i, addrs[i], "rw-s");
        check_content(&mut c, "C", i, addrs[i]);
    }
    // LONE, through an attach of its own.
    let lone = attach(p, ids[LONE], libc::SHM_RDONLY);
    check_content(&mut c, "C", LONE, lone);
    // SAFETY: our attach.
    unsafe { libc::shmdt(lone.cast()) };
    // Sharing: C's write into RO for A, then A's write into SHARED.
    // SAFETY: within the attaches.
    unsafe {
        std::ptr::copy_nonoverlapping(b"parent".as_ptr(), addrs[RO].add(200), 6);
        std::ptr::write_volatile(addrs[SHARED].add(FLAG), FLAG_UP);
    }
    judge(&mut c, p.dir(), "A", 2, reap(a, STEP_TIMEOUT_NS), 10);
    // SAFETY: within the attach.
    let got = unsafe { std::slice::from_raw_parts(addrs[SHARED].add(100), 5) }.to_vec();
    c.eq("C: A's write seen in SHARED", b"child".to_vec(), got);
    c
}
