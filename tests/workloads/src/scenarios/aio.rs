//! `aio`: AIO contexts (io_setup) with completed events not yet reaped.
//!
//! - context `big` (io_setup 128): 10 reads of 4 KiB of file `data`
//!   submitted (buffered reads complete inside io_submit), 4 reaped;
//! - context `small` (io_setup 1: the smallest ring) driven round its ring
//!   (submissions and reaps) until its head is near the end, then 10
//!   reads submitted and 3 reaped: its unreaped events wrap round.
//!
//! After go each context must have the same id (its ring's address,
//! shown as `/[aio]` in /proc/self/maps), the ring the same nr, head and
//! tail, io_getevents must return the unreaped events in order (data,
//! obj, res) and the buffers must hold what was read; then new reads are
//! submitted and completed on each.  `CREST_WL_DISTURB=lose` (selftest)
//! reaps one event before the checks, as a restore that lost it would.

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::pat;

const BLOCK: usize = 4096;
const BLOCKS: usize = 32;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Event {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

fn io_setup(n: u32) -> Result<u64, i32> {
    let mut ctx = 0u64;
    // SAFETY: io_setup writes the context id into `ctx`.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, n, &mut ctx as *mut u64) };
    if r != 0 {
        return Err(crate::util::errno());
    }
    Ok(ctx)
}

fn submit(ctx: u64, cbs: &[*mut Iocb]) -> i64 {
    // SAFETY: every pointer points to a live iocb of ours.
    unsafe { libc::syscall(libc::SYS_io_submit, ctx, cbs.len() as i64, cbs.as_ptr()) }
}

fn getevents(ctx: u64, min: usize, out: &mut [Event]) -> i64 {
    let ts = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    // SAFETY: `out` has room for out.len() events.
    unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            min as i64,
            out.len() as i64,
            out.as_mut_ptr(),
            &ts as *const libc::timespec,
        )
    }
}

/// (nr, head, tail) of the ring at `ctx`.
fn header(ctx: u64) -> (u32, u32, u32) {
    let p = ctx as *const u32;
    // SAFETY: the ring is mapped at the context's id.
    unsafe {
        (
            p.add(1).read_volatile(),
            p.add(2).read_volatile(),
            p.add(3).read_volatile(),
        )
    }
}

struct Ctx {
    name: &'static str,
    id: u64,
    /// The iocbs (boxed: their addresses, the events' obj, must not move
    /// as the vector grows) and buffers.
    #[allow(clippy::vec_box)]
    cbs: Vec<Box<Iocb>>,
    bufs: Vec<Vec<u8>>,
    /// Events submitted and not reaped, in order.
    pending: Vec<Event>,
    ring: (u32, u32, u32),
}

impl Ctx {
    /// Submits reads of blocks `blocks` of `fd`, tagged `tag + i`.
    fn read(&mut self, p: &Proto, fd: i32, blocks: &[usize], tag: u64) {
        let mut ptrs = Vec::new();
        for (i, &b) in blocks.iter().enumerate() {
            self.bufs.push(vec![0u8; BLOCK]);
            let buf = self.bufs.last_mut().unwrap().as_mut_ptr() as u64;
            let mut cb = Box::new(Iocb {
                data: tag + i as u64,
                opcode: 0, // IOCB_CMD_PREAD
                fildes: fd as u32,
                buf,
                nbytes: BLOCK as u64,
                offset: (b * BLOCK) as i64,
                ..Default::default()
            });
            ptrs.push(&mut *cb as *mut Iocb);
            self.pending.push(Event {
                data: tag + i as u64,
                obj: &*cb as *const Iocb as u64,
                res: BLOCK as i64,
                res2: 0,
            });
            self.cbs.push(cb);
        }
        let n = submit(self.id, &ptrs);
        if n != ptrs.len() as i64 {
            p.bail(&format!("{}: io_submit gave {n}", self.name));
        }
    }

    fn reap(&mut self, p: &Proto, n: usize) {
        let mut ev = vec![Event::default(); n];
        let got = getevents(self.id, n, &mut ev);
        if got != n as i64 || ev[..] != self.pending[..n] {
            p.bail(&format!(
                "{}: setup reaped {got} unexpected events",
                self.name
            ));
        }
        self.pending.drain(..n);
    }
}

fn block_ok(buf: &[u8], block: usize) -> bool {
    buf.chunks_exact(8)
        .enumerate()
        .all(|(i, w)| u64::from_ne_bytes(w.try_into().unwrap()) == pat(7, block * BLOCK / 8 + i))
}

fn ring_name(id: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let head = format!("{id:x}-");
    let l = maps.lines().find(|l| l.starts_with(&head))?;
    l.split_whitespace().nth(5).map(String::from)
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let path = p.dir().join("data");
    let content: Vec<u8> = (0..BLOCKS * BLOCK / 8)
        .flat_map(|i| pat(7, i).to_ne_bytes())
        .collect();
    if std::fs::write(&path, &content).is_err() {
        p.bail("setup: writing the data file");
    }
    let c = crate::util::cpath(&path);
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        p.bail_errno("opening the data file");
    }
    let mut ctxs = Vec::new();
    for (name, n) in [("big", 128), ("small", 1)] {
        let id = io_setup(n).unwrap_or_else(|_| p.bail_errno("io_setup"));
        ctxs.push(Ctx {
            name,
            id,
            cbs: Vec::new(),
            bufs: Vec::new(),
            pending: Vec::new(),
            ring: (0, 0, 0),
        });
    }
    // Which block each pending event's buffer holds, per context.
    let mut blocks: Vec<Vec<usize>> = vec![Vec::new(), Vec::new()];
    let want: Vec<usize> = (0..10).map(|i| (i * 3) % BLOCKS).collect();
    ctxs[0].read(p, fd, &want, 1000);
    ctxs[0].reap(p, 4);
    blocks[0] = want[4..].to_vec();
    let nr = header(ctxs[1].id).0 as usize;
    let mut done = 0;
    while done + 5 < nr - 3 {
        ctxs[1].read(p, fd, &[1, 2, 3, 4, 5], 5000 + done as u64);
        ctxs[1].reap(p, 5);
        done += 5;
    }
    ctxs[1].read(p, fd, &want, 2000);
    ctxs[1].reap(p, 3);
    blocks[1] = want[3..].to_vec();
    for x in ctxs.iter_mut() {
        x.ring = header(x.id);
    }
    let (_, h, t) = ctxs[1].ring;
    if t >= h {
        p.bail(&format!(
            "setup: the small ring did not wrap (head {h}, tail {t})"
        ));
    }
    let names: Vec<Option<String>> = ctxs.iter().map(|x| ring_name(x.id)).collect();
    p.write_aux(
        "info",
        &ctxs
            .iter()
            .map(|x| format!("{}={:#x} {:?}\n", x.name, x.id, x.ring))
            .collect::<String>(),
    );
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    if std::env::var("CREST_WL_DISTURB").as_deref() == Ok("lose") {
        let mut ev = [Event::default(); 1];
        getevents(ctxs[0].id, 1, &mut ev);
    }
    for (k, x) in ctxs.iter_mut().enumerate() {
        c.eq(
            &format!("{}: /proc/self/maps name of the ring", x.name),
            &names[k],
            &ring_name(x.id),
        );
        c.eq(
            &format!("{}: ring nr, head, tail", x.name),
            x.ring,
            header(x.id),
        );
        let n = x.pending.len();
        let mut ev = vec![Event::default(); n + 1];
        let got = getevents(x.id, n.min(1), &mut ev);
        c.eq(
            &format!("{}: unreaped events after the restore", x.name),
            &x.pending[..],
            &ev[..got.max(0) as usize],
        );
        let bufs_at = x.bufs.len() - n;
        for (i, &b) in blocks[k].iter().enumerate() {
            c.ensure(block_ok(&x.bufs[bufs_at + i], b), || {
                format!("{}: the buffer of read {i} does not hold block {b}", x.name)
            });
        }
        // New requests work on the restored context.
        x.pending.clear();
        let fresh = [5, 9, 17];
        x.read(p, fd, &fresh, 9000);
        let mut ev = vec![Event::default(); 3];
        let got = getevents(x.id, 3, &mut ev);
        c.eq(
            &format!("{}: events of reads submitted after the restore", x.name),
            &x.pending[..],
            &ev[..got.max(0) as usize],
        );
        let at = x.bufs.len() - 3;
        for (i, &b) in fresh.iter().enumerate() {
            c.ensure(block_ok(&x.bufs[at + i], b), || {
                format!(
                    "{}: a read after the restore did not read block {b}",
                    x.name
                )
            });
        }
    }
    c
}
