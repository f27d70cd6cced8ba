//! The model as format 1 and 2 images hold it, frozen: PROCESS and FILE
//! records are postcard encodings of these types, which are positional, so
//! they must never change.  They are copies of `crate::model` as it was
//! when format 3 replaced them (doc comments kept, `impl`s dropped; the
//! byte strings marked `serde_bytes`, which postcard encodes exactly as a
//! `Vec<u8>`, so they transcode to and from the current model's).
//!
//! A decoded value is converted into the current model by re-encoding it
//! with named fields and decoding that as the current type: the current
//! model is a compatible evolution of this one (same names; fields added
//! since take their defaults), which is exactly the rule format 3 records
//! follow.  A later incompatible model change must add a conversion step
//! here.

#![allow(dead_code)]

use crate::error::{Error, Result};
use crate::model as current;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Decodes a postcard payload as legacy type `L`, then converts it into
/// the current model type `C`.
fn convert<L: DeserializeOwned + Serialize, C: DeserializeOwned>(
    b: &[u8],
    what: &str,
) -> Result<C> {
    let old: L = postcard::from_bytes(b)
        .map_err(|e| Error::Invalid(format!("cannot decode a {what} record: {e}")))?;
    let named = rmp_serde::to_vec_named(&old)
        .map_err(|e| Error::msg(format!("converting a format 2 {what} record: {e}")))?;
    rmp_serde::from_slice(&named).map_err(|e| {
        Error::Invalid(format!(
            "cannot convert a format 2 {what} record into the current model: {e}"
        ))
    })
}

/// The other way, for tests that make format 2 images of live processes:
/// the current value re-encoded with named fields, decoded as the legacy
/// type (fields added since are dropped), encoded with postcard.
fn convert_back<C: Serialize, L: DeserializeOwned + Serialize>(v: &C) -> Result<Vec<u8>> {
    let named = rmp_serde::to_vec_named(v).map_err(|e| Error::msg(e.to_string()))?;
    let old: L = rmp_serde::from_slice(&named).map_err(|e| Error::msg(e.to_string()))?;
    postcard::to_stdvec(&old).map_err(|e| Error::msg(e.to_string()))
}

/// A FILE record payload of format 2.
pub fn encode_object(o: &current::Object) -> Result<Vec<u8>> {
    convert_back::<_, Object>(o)
}

/// A PROCESS record payload of format 2.
pub fn encode_process(p: &current::Process) -> Result<Vec<u8>> {
    convert_back::<_, Process>(p)
}

/// A FILE record of a format 1 or 2 image.
pub fn decode_object(b: &[u8]) -> Result<current::Object> {
    convert::<Object, _>(b, "object")
}

/// A PROCESS record of a format 1 or 2 image.
pub fn decode_process(b: &[u8]) -> Result<current::Process> {
    convert::<Process, _>(b, "process")
}

/// Index into the object table.
pub type ObjectId = u32;

/// An entry of the object table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub id: ObjectId,
    pub kind: ObjectKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A file on disk as the kernel knew it at dump time.  Mappings and
    /// `/proc/PID/exe` refer to it; restore checks it is still the same.
    File(FileId),
    /// An open file description (what `open` returns and `dup` shares).
    Open(OpenFile),
    /// A pipe (the buffer both ends share).  The bytes in flight follow
    /// in FILE_DATA records with this object's id.
    Pipe(PipeObj),
    /// Shared memory that mappings and descriptors refer to.
    Shmem(ShmemObj),
}

/// A shared-memory object (a shmem inode): the content follows in
/// FILE_DATA records with this object's id (holes and zero pages left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmemObj {
    pub kind: ShmemKind,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShmemKind {
    /// MAP_SHARED | MAP_ANONYMOUS memory ("/dev/zero (deleted)").
    Anonymous,
    /// A memfd with its name and seals.
    Memfd { name: String, seals: u32 },
    /// A System V shared memory segment ("/SYSV%08x (deleted)"), recreated
    /// with the same id.  `mode` holds the permission bits; `destroyed`:
    /// marked for removal (IPC_RMID) while still attached.
    SysV {
        key: i32,
        shmid: i32,
        mode: u32,
        uid: u32,
        gid: u32,
        cuid: u32,
        cgid: u32,
        destroyed: bool,
    },
}

/// A pipe's buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeObj {
    /// Buffer size (F_GETPIPE_SZ).
    pub size: u32,
    /// Bytes in flight.
    pub data_len: u64,
    /// The buffer of a named FIFO (refilled through its path) rather than
    /// of an anonymous pipe.
    #[serde(default)]
    pub fifo: bool,
}

/// The identity of a file at dump time, used to refuse a restore when
/// the file has changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
}

/// An open file description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// Open flags as fdinfo shows them (access mode and status flags).
    pub flags: u32,
    pub pos: u64,
    pub target: OpenTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenTarget {
    /// A regular file that still has a name.
    Regular(FileId),
    /// A directory.
    Directory { path: String },
    /// A character device node (/dev/null, /dev/zero, /dev/urandom …).
    CharDevice { path: String, rdev: u64 },
    /// A named pipe, opened by path; its buffer was empty.
    Fifo { path: String },
    /// One end of a pipe (an [`ObjectKind::Pipe`]).
    PipeEnd { pipe: ObjectId, write: bool },
    /// A memfd (an [`ObjectKind::Shmem`]).
    Memfd { shmem: ObjectId },
    /// A regular file unlinked while open: its content follows in
    /// FILE_DATA records with this object's id.
    Unlinked {
        /// The path it had, without the " (deleted)" suffix.
        path: String,
        size: u64,
        mode: u32,
    },
    /// An eventfd: its counter and whether it is in semaphore mode.
    Eventfd { count: u64, semaphore: bool },
    /// A timerfd.  `value_ns` is the time left at the dump (restore arms
    /// it relative to the restore), `ticks` the expirations not yet read.
    Timerfd {
        clockid: i32,
        /// TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET as last set.
        settime_flags: u32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
    },
    /// A signalfd and the signals it accepts.
    Signalfd { mask: u64 },
    /// An inotify instance and its watches (no events were queued).
    Inotify { watches: Vec<InotifyWatch> },
    /// An epoll instance and what it watches: the targets are added once
    /// every other descriptor of the tree is open.
    Epoll { targets: Vec<EpollTarget> },
    /// An AF_UNIX socket (see `crate::net::unix`): its peers are other
    /// sockets of the image, found by their dump-time inode numbers.
    Unix(UnixSocket),
    /// The master side of a pseudo-terminal pair (opened from /dev/ptmx),
    /// with the pair's state (see `crate::files::tty`).  Restore makes a new
    /// pair: its number, and so the slave's /dev/pts/N path, may differ.
    PtyMaster(Pty),
    /// A slave side (/dev/pts/N) of the pair whose master, in the same
    /// image, has this `index`; `exclusive`: TIOCEXCL on the slave side.
    PtySlave { index: u32, exclusive: bool },
    /// A named FIFO whose buffer held data (an [`ObjectKind::Pipe`] with
    /// `fifo` set), opened by path.
    FifoData { path: String, pipe: ObjectId },
}

/// An AF_UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// The socket's inode at the dump: peers refer to each other by it.
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: i32,
    /// The bound address as in `sun_path` (abstract names start with a
    /// NUL byte); empty when unbound.  An accepted socket shows its
    /// listener's.
    pub name: Vec<u8>,
    /// For a filesystem name: the socket file's mode and owner, or `None`
    /// when the file was unlinked (or replaced) since the bind.
    pub file: Option<UnixFile>,
    /// Listening, with this backlog.
    pub listen: Option<u32>,
    /// The peer's inode; `Some(0)` when the peer has been closed, or is
    /// the server end of a connection not accepted yet (see `pending`).
    pub peer: Option<u64>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// The receive queue, oldest first (datagram and seqpacket messages
    /// keep their boundaries; stream data is split where the senders'
    /// credentials change).
    pub queue: Vec<UnixMsg>,
    /// Listening: the connections not yet accepted, oldest first.
    pub pending: Vec<UnixPending>,
    pub passcred: bool,
    pub passpidfd: bool,
    /// SO_RCVBUF / SO_SNDBUF as getsockopt reports them.
    pub rcvbuf: u32,
    pub sndbuf: u32,
    /// SO_PEEK_OFF (-1: off).
    pub peek_off: i32,
    /// SO_RCVTIMEO / SO_SNDTIMEO in microseconds (0: none).
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
}

/// The file a filesystem-bound UNIX socket created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One message (or stream chunk) queued on a UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixMsg {
    // postcard writes byte strings as it writes Vec<u8>: same bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The sender's address (datagrams; empty: unbound sender).
    pub from: Vec<u8>,
    /// The sender's credentials (pid, uid, gid), when the receiver had
    /// SO_PASSCRED set at the dump.
    pub creds: Option<(i32, u32, u32)>,
}

/// A connection waiting in a listening socket's queue.  Its server end
/// has no inode (no process holds it yet): it is known by its client end,
/// which shows it as a peer of inode 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixPending {
    /// The client end's inode (0: the client end was closed).
    pub client: u64,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// The watch descriptor the program knows.
    pub wd: i32,
    /// The watched inode's path at the dump.
    pub path: String,
    /// The user-visible mask (events, IN_ONESHOT, IN_EXCL_UNLINK).
    pub mask: u32,
    /// The watched inode and its device (st_dev encoding).
    pub ino: u64,
    pub dev: u64,
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    /// The process whose fd table held the target at the dump, and the
    /// descriptor there that is the target's open file description.
    pub pid: i32,
    pub fd: i32,
    /// The descriptor number the registration was made with (usually
    /// `fd`; it differs when that descriptor was closed or moved since).
    pub tfd: i32,
    /// The event mask as the kernel holds it (EPOLLET, EPOLLONESHOT, … included).
    pub events: u32,
    pub data: u64,
}

/// A whole checkpoint: the processes and the objects they share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub objects: Vec<Object>,
    pub processes: Vec<Process>,
}

/// A process (thread group) and everything it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub creds: Creds,
    pub attrs: Attrs,
    pub mm: Mm,
    pub signals: Signals,
    pub itimers: ITimers,
    pub fds: Vec<Fd>,
    pub fs: FsInfo,
    pub threads: Vec<Thread>,
    /// POSIX timers (timer_create), by id.
    #[serde(default)]
    pub posix_timers: Vec<PosixTimer>,
    /// Stopped by a job-control signal (SIGSTOP, SIGTSTP…) at the dump.
    pub stopped: bool,
    /// Children that had exited but were not reaped yet.
    pub zombies: Vec<Zombie>,
    /// The process (its parent in the tree) whose descriptor table this
    /// one shares (CLONE_FILES without CLONE_VM); `fds` are then that
    /// table's, the same as the parent's.
    #[serde(default)]
    pub shares_files_with: Option<i32>,
    /// The process (its parent in the tree) whose cwd, root and umask
    /// this one shares (CLONE_FS without CLONE_VM).
    #[serde(default)]
    pub shares_fs_with: Option<i32>,
}

/// A child that exited and waits for its parent to reap it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The wait status its parent will collect.
    pub status: i32,
    pub comm: String,
}

/// One thread.  The first thread of a process is its leader (tid == pid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: i32,
    pub comm: String,
    /// `user_regs_struct` words in kernel order (27 on x86-64).
    pub regs: Vec<u64>,
    /// The XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) gives it.
    // postcard writes byte strings as it writes Vec<u8>: same bytes.
    #[serde(with = "serde_bytes")]
    pub xsave: Vec<u8>,
    pub sigmask: u64,
    /// Signals queued to this thread only.
    pub pending: Vec<SigInfo>,
    pub altstack: AltStack,
    pub rseq: Option<Rseq>,
    pub robust_list: (u64, u64),
    pub clear_child_tid: u64,
    /// The thread's own credentials, when they differ from its process's
    /// (a raw setresuid/setresgid/capset in one thread).
    #[serde(default)]
    pub creds: Option<Creds>,
}

/// A queued signal with its full siginfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigInfo {
    pub signo: i32,
    /// The 128 bytes of `siginfo_t`.
    // postcard writes byte strings as it writes Vec<u8>: same bytes.
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

/// The process-wide signal state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Dispositions for signals 1..=64 other than SIGKILL and SIGSTOP
    /// that are not default.
    pub actions: Vec<SigAction>,
    /// Signals queued to the whole thread group.
    pub shared_pending: Vec<SigInfo>,
}

/// A `struct sigaction` as the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimers {
    pub real: ITimer,
    pub virt: ITimer,
    pub prof: ITimer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    pub umask: u32,
    pub personality: u32,
    pub nice: i32,
    pub sched_policy: i32,
    pub sched_priority: i32,
    /// (resource, soft, hard) for every resource.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub dumpable: i32,
    pub pdeath_signal: i32,
    pub child_subreaper: bool,
}

/// The address space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mm {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector as (type, value) pairs, AT_NULL included.
    pub auxv: Vec<(u64, u64)>,
    /// The executable (an [`ObjectKind::File`]).
    pub exe: Option<ObjectId>,
    pub vmas: Vec<Vma>,
    /// CRC32C of the vDSO's bytes: restore needs this kernel's vDSO to be
    /// the same code, since the program holds pointers into it.
    pub vdso_crc: Option<u32>,
}

/// One mapping, as /proc/PID/maps and smaps describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC.
    pub prot: u32,
    pub shared: bool,
    /// Offset into the backing file in bytes.
    pub offset: u64,
    pub backing: Backing,
    pub flags: VmaFlags,
    /// The name column of /proc/PID/maps ("[heap]", "[anon:x]", a path…).
    pub name: String,
    /// Ranges inside the mapping that carry a guard region
    /// (MADV_GUARD_INSTALL), as (start, end).
    pub guards: Vec<(u64, u64)>,
    /// Pages of the mapping that dump found resident or swapped and
    /// different from the backing file; the zero pages among them are not
    /// stored.  Restore makes mappings with pages writable while filling.
    pub pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    Anonymous,
    File(ObjectId),
    /// Shared memory (an [`ObjectKind::Shmem`]): anonymous shared or memfd.
    Shmem(ObjectId),
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
}

/// The smaps VmFlags crest restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaFlags {
    pub growsdown: bool,
    pub noreserve: bool,
    pub dontdump: bool,
    pub dontfork: bool,
    pub wipeonfork: bool,
    pub hugepage: bool,
    pub nohugepage: bool,
    pub mergeable: bool,
    pub locked: bool,
    pub may_write: bool,
}

/// A descriptor in the fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// The open file description (an [`ObjectKind::Open`]).
    pub file: ObjectId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    pub cwd: String,
    pub root: String,
}

/// A POSIX timer (timer_create) of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The timer id the program holds.
    pub id: i32,
    pub clockid: i32,
    /// The sigevent: signal number, value and notify kind (SIGEV_*, with
    /// SIGEV_THREAD_ID when directed at thread `tid`).
    pub signo: i32,
    pub sigev_value: u64,
    pub notify: i32,
    pub tid: i32,
    /// Time left and interval at the dump, in nanoseconds (0: disarmed).
    pub value_ns: u64,
    pub interval_ns: u64,
    /// timer_getoverrun at the dump (informational: it cannot be set).
    pub overrun: i32,
}

/// A pseudo-terminal pair whose master and slave are both held in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// The pair's number at the dump (/dev/pts/N).
    pub index: u32,
    /// The multiplexer it came from: /dev/ptmx or /dev/pts/ptmx.
    pub ptmx: String,
    /// The line settings (one set for the pair: the slave's).
    pub termios: Termios,
    /// Rows, columns, x and y pixels (TIOCGWINSZ).
    pub winsize: [u16; 4],
    /// Packet mode on the master (TIOCPKT).
    pub packet: bool,
    /// Slave opens refused until unlocked (TIOCSPTLCK).
    pub locked: bool,
    /// TIOCEXCL on the master side.
    pub exclusive: bool,
    /// The session whose controlling terminal the slave is, and that
    /// session's foreground process group (0: none).
    pub session: i32,
    pub foreground: i32,
}

/// `struct termios2` (TCGETS2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// The 19 control characters.
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}
