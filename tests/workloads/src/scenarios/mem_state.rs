//! `mem-state`: address-space state beyond contents.
//!
//! - 16 anonymous pages in 2-page parts with MADV_SEQUENTIAL, MADV_RANDOM,
//!   MADV_DONTFORK, MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
//!   MADV_DONTDUMP and none, each page holding a pattern;
//! - 8 pages of a MAP_DROPPABLE mapping holding a pattern (after the
//!   restore each page must hold its pattern or zeroes: the kernel may drop
//!   them, never change them);
//! - PR_SET_THP_DISABLE;
//! - a memfd holding a copy of /bin/true, mode 0750, owner 1234:5678 (as
//!   root), held only through a read-only descriptor: a child must be able
//!   to execveat it (exit 0, not ETXTBSY);
//! - a MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED registration (the private
//!   expedited barrier must work, the sync-core one must still say EPERM).
//!
//! After go it compares every part's smaps VmFlags with its own record.
//! `CREST_WL_DISTURB` (selftests) breaks one thing after go, as a bad
//! restore would: `madvise`, `thp`, `memfd-mode`, `exec-busy`.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{errno, mmap_anon, pat};

const PAGE: usize = 4096;
const ADVICE: [(i32, &str); 8] = [
    (libc::MADV_SEQUENTIAL, "SEQUENTIAL"),
    (libc::MADV_RANDOM, "RANDOM"),
    (libc::MADV_DONTFORK, "DONTFORK"),
    (libc::MADV_WIPEONFORK, "WIPEONFORK"),
    (libc::MADV_HUGEPAGE, "HUGEPAGE"),
    (libc::MADV_NOHUGEPAGE, "NOHUGEPAGE"),
    (libc::MADV_DONTDUMP, "DONTDUMP"),
    (libc::MADV_NORMAL, "NORMAL"),
];
const MAP_DROPPABLE: i32 = 0x08;
const DROP_PAGES: usize = 8;
const MEMFD_MODE: u32 = 0o750;
const MEMFD_OWNER: (u32, u32) = (1234, 5678);
const MB_PRIVATE_EXPEDITED: i32 = 1 << 3;
const MB_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;
const MB_PRIVATE_EXPEDITED_SYNC_CORE: i32 = 1 << 5;

/// The VmFlags line of the mapping starting at `addr` in /proc/self/smaps.
fn vm_flags(addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let head = format!("{addr:x}-");
    let mut inside = false;
    for l in smaps.lines() {
        if l.split('-')
            .next()
            .is_some_and(|a| a.len() >= 8 && u64::from_str_radix(a, 16).is_ok())
            && l.contains(' ')
            && !l.starts_with("VmFlags")
        {
            inside = l.starts_with(&head);
        }
        if inside {
            if let Some(f) = l.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

fn fill(base: *mut u8, pages: usize, seed: u64) {
    for i in 0..pages * PAGE / 8 {
        // SAFETY: inside the mapping of `pages` pages at `base`.
        unsafe { (base as *mut u64).add(i).write(pat(seed, i)) };
    }
}

/// Index of the first word of page `pg` that is not the pattern, if any
/// (zero pages allowed with `zero_ok`).
fn bad_word(base: *mut u8, pg: usize, seed: u64, zero_ok: bool) -> Option<usize> {
    let words = PAGE / 8;
    // SAFETY: inside the mapping.
    let w = |i: usize| unsafe { (base as *const u64).add(pg * words + i).read() };
    if zero_ok && (0..words).all(|i| w(i) == 0) {
        return None;
    }
    (0..words).find(|&i| w(i) != pat(seed, pg * words + i))
}

/// Runs the memfd's program in a child: its exit status, or the errno of
/// execveat (as 1000 + errno).
fn exec_memfd(fd: i32) -> i32 {
    // SAFETY: the child only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let argv = [c"true".as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: valid NUL-terminated arrays.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(100 + (errno() & 0x3f));
        }
    }
    let mut st = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFEXITED(st) {
        let c = libc::WEXITSTATUS(st);
        if c >= 100 {
            1000 + c - 100
        } else {
            c
        }
    } else {
        -1
    }
}

fn membarrier(cmd: i32) -> i64 {
    // SAFETY: plain syscall.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if r < 0 {
        -(errno() as i64)
    } else {
        r
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let n = ADVICE.len() * 2;
    let area = mmap_anon(n * PAGE, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|_| p.bail_errno("mmap"));
    fill(area, n, 1);
    for (i, (adv, name)) in ADVICE.iter().enumerate() {
        // SAFETY: two pages of the mapping above.
        if unsafe { libc::madvise(area.add(i * 2 * PAGE).cast(), 2 * PAGE, *adv) } != 0 {
            p.bail_errno(&format!("madvise({name})"));
        }
    }
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let drop_area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            DROP_PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_DROPPABLE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if drop_area == libc::MAP_FAILED {
        p.bail_errno("mmap(MAP_DROPPABLE)");
    }
    let drop_area: *mut u8 = drop_area.cast();
    fill(drop_area, DROP_PAGES, 2);
    // SAFETY: integer-only prctl.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1u64, 0u64, 0u64, 0u64) } != 0 {
        p.bail_errno("PR_SET_THP_DISABLE");
    }
    // The memfd, filled with /bin/true and held read-only.
    let prog = std::fs::read("/bin/true").unwrap_or_else(|_| p.bail("setup: reading /bin/true"));
    // SAFETY: a valid C string.
    let w = unsafe { libc::memfd_create(c"wl-exec".as_ptr(), 0) };
    if w < 0 || crate::util::write_all(w, &prog).is_err() {
        p.bail_errno("memfd with /bin/true");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // SAFETY: fchmod/fchown on our descriptor.
    unsafe {
        if libc::fchmod(w, MEMFD_MODE) != 0
            || (root && libc::fchown(w, MEMFD_OWNER.0, MEMFD_OWNER.1) != 0)
        {
            p.bail_errno("fchmod/fchown of the memfd");
        }
    }
    let ro = std::fs::File::open(format!("/proc/self/fd/{w}"))
        .unwrap_or_else(|_| p.bail("setup: reopening the memfd read-only"));
    let ro = std::os::fd::IntoRawFd::into_raw_fd(ro);
    // SAFETY: closing our descriptor.
    unsafe { libc::close(w) };
    let code = exec_memfd(ro);
    if code != 0 {
        p.bail(&format!("setup: running the memfd gave {code}"));
    }
    if membarrier(MB_REGISTER_PRIVATE_EXPEDITED) != 0 {
        p.bail_errno("MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED");
    }
    let mut flags_before = Vec::new();
    for i in 0..ADVICE.len() {
        flags_before.push(vm_flags(area as usize + i * 2 * PAGE));
    }
    let drop_before = vm_flags(drop_area as usize);
    if flags_before.iter().any(Option::is_none)
        || !drop_before.as_deref().unwrap_or("").contains("dp")
    {
        p.bail(&format!(
            "setup: VmFlags not found or not droppable: {flags_before:?} {drop_before:?}"
        ));
    }
    p.write_aux(
        "info",
        &format!(
            "area={:#x}\ndroppable={:#x}\nmemfd={ro}\n",
            area as usize, drop_area as usize
        ),
    );
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    match std::env::var("CREST_WL_DISTURB").as_deref() {
        // SAFETY (all arms): calls on this process's own objects.
        Ok("madvise") => unsafe {
            libc::madvise(area.cast(), 2 * PAGE, libc::MADV_NORMAL);
        },
        Ok("thp") => unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 0u64, 0u64, 0u64, 0u64);
        },
        Ok("memfd-mode") => unsafe {
            libc::fchmod(ro, 0o700);
        },
        Ok("exec-busy") => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{ro}"));
            std::mem::forget(f);
        }
        _ => {}
    }
    for (i, (_, name)) in ADVICE.iter().enumerate() {
        c.eq(
            &format!("VmFlags of the MADV_{name} part"),
            &flags_before[i],
            &vm_flags(area as usize + i * 2 * PAGE),
        );
    }
    c.eq(
        "VmFlags of the MAP_DROPPABLE mapping",
        &drop_before,
        &vm_flags(drop_area as usize),
    );
    for pg in 0..n {
        if let Some(w) = bad_word(area, pg, 1, false) {
            c.fail(format!("advised page {pg}: word {w} differs"));
        }
    }
    for pg in 0..DROP_PAGES {
        if let Some(w) = bad_word(drop_area, pg, 2, true) {
            c.fail(format!(
                "droppable page {pg}: word {w} is neither its pattern nor zero"
            ));
        }
    }
    // SAFETY: integer-only prctl.
    let thp = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0u64, 0u64, 0u64, 0u64) };
    c.eq("PR_GET_THP_DISABLE", 1, thp);
    match crate::util::fstat(ro) {
        Ok(st) => {
            c.eq("memfd mode", MEMFD_MODE, st.st_mode & 0o7777);
            if root {
                c.eq("memfd owner", MEMFD_OWNER, (st.st_uid, st.st_gid));
            }
        }
        Err(e) => c.fail(format!("fstat of the memfd: errno {e}")),
    }
    c.eq(
        "execveat of the memfd (exit status, or 1000 + errno)",
        0,
        exec_memfd(ro),
    );
    c.eq(
        "MEMBARRIER_CMD_PRIVATE_EXPEDITED (registered)",
        0,
        membarrier(MB_PRIVATE_EXPEDITED),
    );
    c.eq(
        "MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE (not registered)",
        -(libc::EPERM as i64),
        membarrier(MB_PRIVATE_EXPEDITED_SYNC_CORE),
    );
    base.verify(p, &mut c);
    c
}
