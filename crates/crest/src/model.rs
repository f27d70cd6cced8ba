//! The model: everything crest knows about a checkpointed process tree.
//!
//! Dump fills it from a live tree, the image is its serialization, restore
//! rebuilds a tree from it and `inspect` prints it.  Nothing here touches
//! the kernel, so the model can be built, encoded and checked in tests.
//!
//! Shared things (an open file description, a file that several mappings
//! map) live once in the object table and are referenced by [`ObjectId`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Index into the object table.
pub type ObjectId = u32;

/// An entry of the object table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Object {
    pub id: ObjectId,
    pub kind: ObjectKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Private anonymous memory shared copy-on-write by several processes
    /// of the tree (after fork): its pages are in the image once, in the
    /// page chunks of address space [`COW_SPACE`] (see `crate::memory::cow`).
    Cow(CowRange),
}

/// A shared-memory object (a shmem inode): the content follows in
/// FILE_DATA records with this object's id (holes and zero pages left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShmemObj {
    pub kind: ShmemKind,
    pub size: u64,
    /// A memfd's inode mode (permission bits), owner and group.
    #[serde(default)]
    pub owner: Option<(u32, u32, u32)>,
    /// The huge page size in bytes of an object on hugetlbfs (a
    /// MFD_HUGETLB memfd, shared MAP_HUGETLB memory); None for shmem.
    #[serde(default)]
    pub huge_page: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ShmemKind {
    /// MAP_SHARED | MAP_ANONYMOUS memory ("/dev/zero (deleted)").
    Anonymous,
    /// A memfd with its name and seals.
    Memfd { name: String, seals: u32 },
    /// A System V shared memory segment ("/SYSV%08x (deleted)"), recreated
    /// with the same id.  `mode` holds the permission bits; `destroyed`:
    /// marked for removal (IPC_RMID) while still attached; `locked`:
    /// locked in memory (SHM_LOCK).  A segment of a private IPC namespace
    /// is listed in that namespace's [`IpcState::shm`].
    SysV {
        key: i32,
        shmid: i32,
        mode: u32,
        uid: u32,
        gid: u32,
        cuid: u32,
        cgid: u32,
        destroyed: bool,
        #[serde(default)]
        locked: bool,
    },
}

/// A pipe's buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipeObj {
    /// Buffer size (F_GETPIPE_SZ).
    pub size: u32,
    /// Bytes in flight.
    pub data_len: u64,
    /// The buffer of a named FIFO (refilled through its path) rather than
    /// of an anonymous pipe.
    #[serde(default)]
    pub fifo: bool,
    /// The other end was held outside the tree (a container runtime's
    /// stdio pipe): no bytes were saved, and a restore installs the
    /// descriptor its caller supplies under this key (`pipe:[INODE]`).
    #[serde(default)]
    pub external: Option<String>,
}

/// The identity of a file at dump time, used to refuse a restore when
/// the file has changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
}

/// An open file description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenFile {
    /// Open flags as fdinfo shows them (access mode and status flags).
    pub flags: u32,
    pub pos: u64,
    pub target: OpenTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
        /// Owner, times and sharing (see [`UnlinkedMeta`]).
        #[serde(default)]
        meta: Option<UnlinkedMeta>,
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
    /// pair with the same number (the slave keeps its /dev/pts/N path).
    PtyMaster(Pty),
    /// A slave side (/dev/pts/N) of the pair whose master, in the same
    /// image, has this `index`; `exclusive`: TIOCEXCL on the slave side.
    PtySlave { index: u32, exclusive: bool },
    /// A named FIFO whose buffer held data (an [`ObjectKind::Pipe`] with
    /// `fifo` set), opened by path.
    FifoData { path: String, pipe: ObjectId },
    /// An AF_INET or AF_INET6 socket: TCP or UDP (see `crate::net`).
    Inet(Box<InetSocket>),
    /// An AF_NETLINK socket (see `crate::net::netlink`).
    Netlink(NetlinkSocket),
    /// An O_PATH descriptor: only a reference to `path`, never read or
    /// seeked.  `kind` is the file type bits (S_IFMT) of what it refers
    /// to; a symbolic link is referred to itself (O_NOFOLLOW).
    Path { path: String, kind: u32 },
    /// A directory, FIFO (with an empty buffer) or stateless device node
    /// deleted while open: restore makes a node like it at `path`, opens
    /// it and removes it again (see `crate::files::deleted`).
    Deleted(DeletedNode),
    /// A pidfd (pidfd_open, CLONE_PIDFD) of process (or, with
    /// PIDFD_THREAD, thread) `pid`, or of a process that has exited and
    /// been reaped (`pid` -1).  `start_time` (clock ticks after boot, from
    /// /proc/PID/stat) tells the process from a later one with its pid.
    Pidfd { pid: i32, start_time: u64 },
    /// A fanotify group and its marks; no events were queued (see
    /// `crate::files::fanotify`).
    Fanotify(Fanotify),
    /// The console (/dev/console) or a virtual terminal (/dev/ttyN),
    /// reopened by its path (see `crate::files::console`).
    SystemTty(SystemTty),
    /// /dev/tty, the controlling-terminal alias, opened when the slave of
    /// the pair whose master (in the same image) has this `index` was the
    /// opener's controlling terminal (see `crate::files::tty`).
    TtyAlias { index: u32 },
    /// A POSIX message queue (mq_open), reopened by `name` ("/q") with
    /// the description's access mode and O_NONBLOCK: in the private IPC
    /// namespace `ipc_ns` of the image (its queues are
    /// [`IpcState::mqueues`]), or, `None`, in crest's own, where the
    /// queue is the machine's and must exist (see `crate::ns::mqueue`).
    PosixMq { name: String, ipc_ns: Option<NsId> },
}

/// A terminal of the machine, held open: the console or a virtual
/// terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SystemTty {
    /// The path it was opened by (/dev/console, /dev/ttyN).
    pub path: String,
    /// The device number of that path.
    pub rdev: u64,
    /// The terminal behind it (TIOCGDEV: for /dev/console, the device the
    /// console is on).
    pub real: u64,
    pub termios: Termios,
    /// rows, columns, x pixels, y pixels.
    pub winsize: [u16; 4],
}

/// A fanotify group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fanotify {
    /// The fanotify_init flags (FAN_CLASS_*, FAN_REPORT_*, FAN_UNLIMITED_*,
    /// FAN_CLOEXEC, FAN_NONBLOCK, ...) as given, which fdinfo shows (the
    /// descriptor's and the description's own flags are recorded apart).
    pub flags: u32,
    /// The fanotify_init event_f_flags: the open flags of the files that
    /// events carry.
    pub event_flags: u32,
    /// The marks, in the order they are added again (the reverse of the
    /// order fdinfo lists them in: the newest mark is listed first).
    pub marks: Vec<FanotifyMark>,
}

/// One mark of a fanotify group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FanotifyMark {
    /// What the mark is on.
    pub object: FanotifyObject,
    /// The mark's persistent flags as fdinfo's `mflags` shows them:
    /// FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE.
    pub flags: u32,
    /// The events (and FAN_ONDIR, FAN_EVENT_ON_CHILD) the mark reports.
    pub mask: u32,
    /// The events the mark ignores.
    pub ignored_mask: u32,
}

/// The object of a fanotify mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FanotifyObject {
    /// An inode (FAN_MARK_INODE), found by its file handle at the dump:
    /// its path then, its inode number and device (st_dev encoding).
    Inode { path: String, ino: u64, dev: u64 },
    /// A mount (FAN_MARK_MOUNT): its mount point, as the process saw it.
    Mount { path: String },
    /// A filesystem (FAN_MARK_FILESYSTEM): a mount point of it, and its
    /// device (st_dev encoding).
    Filesystem { path: String, dev: u64 },
}

/// An AF_UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// SO_PEERCRED (pid, uid, gid) as crest saw it, for a connected or
    /// listening socket (`None`: none recorded).
    #[serde(default)]
    pub peercred: Option<(i32, u32, u32)>,
    /// SO_PEERCRED's pid as the PID namespace of the socket's holder sees
    /// it, when that is not crest's (the peer may have exited: restore
    /// cannot find its number there from the process table).
    #[serde(default)]
    pub peercred_ns: Option<i32>,
    /// A relative filesystem name: the directory it was bound in (the
    /// binder's cwd then, as far as crest can tell: the binder's cwd at
    /// the dump), absolute.  `name` stays relative, as the program sees it.
    #[serde(default)]
    pub bound_in: Option<String>,
    /// Connected to a socket outside the tree (`--ext-unix-sk`): the name
    /// its peer is bound to (a listener's for a stream socket), which the
    /// restore connects to again.
    #[serde(default)]
    pub external: Option<Vec<u8>>,
}

/// The file a filesystem-bound UNIX socket created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnixFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One message (or stream chunk) queued on a UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnixMsg {
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub data: Vec<u8>,
    /// The sender's address (datagrams; empty: unbound sender).
    pub from: Vec<u8>,
    /// The sender's credentials (pid, uid, gid), when the receiver had
    /// SO_PASSCRED set at the dump.
    pub creds: Option<(i32, u32, u32)>,
    /// The open files in flight with this message (SCM_RIGHTS), in order:
    /// objects of the image, which may be held by no process.
    #[serde(default)]
    pub rights: Vec<ObjectId>,
}

/// A connection waiting in a listening socket's queue.  Its server end
/// has no inode (no process holds it yet): it is known by its client end,
/// which shows it as a peer of inode 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnixPending {
    /// The client end's inode (0: the client end was closed).
    pub client: u64,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// The watched file was unlinked while open (`path` is the name it
    /// had): the object of the image that recreates it, an
    /// [`OpenTarget::Unlinked`] held open in the tree.  The watch is added
    /// on that recreated file once its name is gone again.
    #[serde(default)]
    pub unlinked: Option<ObjectId>,
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Checkpoint {
    pub objects: Vec<Object>,
    pub processes: Vec<Process>,
    /// The namespaces of the tree that are not crest's (see `crate::ns`).
    #[serde(default)]
    pub namespaces: Namespaces,
    /// The cgroups that belong to the tree, with their settings (see
    /// `crate::task::cgroup_dirs`); parents before children.
    #[serde(default)]
    pub cgroups: Vec<CgroupDir>,
    /// An incremental image's parent: the image that holds the pages its
    /// mappings' `kept` ranges take (see `crate::memory::incremental`).
    #[serde(default)]
    pub parent: Option<ParentRef>,
}

/// The parent of an incremental image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ParentRef {
    /// Its path as given to the dump, relative to this image's directory
    /// (absolute if it was not below a common root).
    pub path: String,
    /// The digest in its tail: restore refuses any other image.
    pub digest: u64,
}

/// Digests of a mapping's non-zero saved pages, for a later incremental
/// dump to tell which pages changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PageDigests {
    /// Runs (start address, pages) of the pages digested, in address order.
    pub runs: Vec<(u64, u64)>,
    /// XXH3-128 of each page of `runs`, 16 bytes each (little-endian), in order.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub hashes: Vec<u8>,
}

/// A process (thread group) and everything it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// File locks the process holds or owns (see [`FileLock`]).
    #[serde(default)]
    pub locks: Vec<FileLock>,
    /// Descriptors whose open file description has a SIGIO owner or
    /// signal (F_SETOWN_EX / F_SETSIG), set through this process.
    #[serde(default)]
    pub fd_owners: Vec<FdOwner>,
    /// Job-control stop, audit ids, OOM score and cgroups (see
    /// [`TaskState`]).
    #[serde(default)]
    pub task_state: TaskState,
    /// The namespaces the process is in and its PIDs inside them (see
    /// `crate::ns`); the default: all of crest's.
    #[serde(default)]
    pub ns: ProcNs,
}

/// A child that exited and waits for its parent to reap it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Zombie {
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The wait status its parent will collect.
    pub status: i32,
    pub comm: String,
    /// The name's exact bytes (it need not be UTF-8); `comm` when empty.
    #[serde(default)]
    pub comm_raw: Vec<u8>,
}

/// One thread.  The first thread of a process is its leader (tid == pid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Thread {
    pub tid: i32,
    pub comm: String,
    /// `user_regs_struct` words in kernel order (27 on x86-64).
    pub regs: Vec<u64>,
    /// The XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) gives it.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
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
    /// The name's exact bytes (it need not be UTF-8); `comm` when empty.
    #[serde(default)]
    pub comm_raw: Vec<u8>,
    /// The thread's cgroups when they differ from its process's (a v1
    /// hierarchy's `tasks` file, a v2 threaded cgroup).
    #[serde(default)]
    pub cgroups: Option<Vec<CgroupMember>>,
    /// The thread's seccomp filters, oldest first (see `crate::task::seccomp`).
    #[serde(default)]
    pub seccomp: Vec<SeccompFilter>,
}

/// A queued signal with its full siginfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SigInfo {
    pub signo: i32,
    /// The 128 bytes of `siginfo_t`.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

/// The process-wide signal state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signals {
    /// Dispositions for signals 1..=64 other than SIGKILL and SIGSTOP
    /// that are not default.
    pub actions: Vec<SigAction>,
    /// Signals queued to the whole thread group.
    pub shared_pending: Vec<SigInfo>,
}

/// A `struct sigaction` as the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ITimers {
    pub real: ITimer,
    pub virt: ITimer,
    pub prof: ITimer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Address-space state set by prctl and membarrier (see [`MmState`]).
    #[serde(default)]
    pub state: MmState,
}

/// One mapping, as /proc/PID/maps and smaps describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// The [`ObjectKind::Cow`] range (the same bounds) whose pages this
    /// mapping shares copy-on-write with other processes of the tree; its
    /// own `pages` are only those it does not share.
    #[serde(default)]
    pub cow: Option<ObjectId>,
    /// With `cow`: pages of the range this process does not have (not
    /// resident here while resident and shared in others), as (start, end).
    #[serde(default)]
    pub cow_drop: Vec<(u64, u64)>,
    /// The huge page size in bytes of a hugetlbfs mapping (MAP_HUGETLB
    /// memory, a MFD_HUGETLB memfd's mapping); None for normal pages.
    #[serde(default)]
    pub huge_page: Option<u64>,
    /// With [`Backing::Aio`]: the state of the AIO context whose ring
    /// this mapping is (its id is the mapping's start).
    #[serde(default)]
    pub aio: Option<AioRing>,
    /// In an incremental image: ranges (start, end) of saved pages not in
    /// this image because they are unchanged since the parent's, which
    /// holds them (or takes them from its own parent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<(u64, u64)>,
    /// Digests of the mapping's non-zero saved pages (dumps meant to be
    /// parents of incremental ones: `--digests`, `--parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<PageDigests>,
}

/// An AIO context (io_setup) as its ring shows it.  Requests in flight
/// are not part of it: the kernel shows them nowhere (see
/// `crate::memory::aio`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AioRing {
    /// The ring's number of event slots (`nr` of struct aio_ring).
    pub nr: u32,
    /// The ring's head and tail (slot indexes).
    pub head: u32,
    pub tail: u32,
    /// The completed events not yet reaped, head to tail, as
    /// (data, obj, res, res2) of struct io_event.
    pub events: Vec<(u64, u64, i64, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Backing {
    Anonymous,
    File(ObjectId),
    /// Shared memory (an [`ObjectKind::Shmem`]): anonymous shared or memfd.
    Shmem(ObjectId),
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
    /// The ring of an AIO context (`/[aio] (deleted)`): recreated with
    /// io_setup and moved here; its state is in [`Vma::aio`].
    Aio,
}

/// The smaps VmFlags crest restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// MADV_SEQUENTIAL (`sr`).
    #[serde(default)]
    pub seq_read: bool,
    /// MADV_RANDOM (`rr`).
    #[serde(default)]
    pub rand_read: bool,
    /// A MAP_DROPPABLE mapping (`dp`): its pages may be freed by the
    /// kernel under memory pressure at any time.
    #[serde(default)]
    pub droppable: bool,
}

/// A descriptor in the fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// The open file description (an [`ObjectKind::Open`]).
    pub file: ObjectId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FsInfo {
    pub cwd: String,
    pub root: String,
    /// The cwd was a directory deleted since (`cwd` ends in " (deleted)").
    #[serde(default)]
    pub cwd_deleted: Option<DeletedNode>,
}

impl Checkpoint {
    /// Looks up an object by id.
    /// Looks up an object by id.  Ids are indexes (restore refuses an
    /// image where they are not); anything else falls back to a search.
    pub fn object(&self, id: ObjectId) -> Option<&ObjectKind> {
        match self.objects.get(id as usize) {
            Some(o) if o.id == id => Some(&o.kind),
            _ => self.objects.iter().find(|o| o.id == id).map(|o| &o.kind),
        }
    }
}

/// A POSIX timer (timer_create) of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Bytes written on the slave side that the master had not read.
    #[serde(default)]
    pub unread: Vec<u8>,
    /// Bytes written on the master side that the slave had not read (the
    /// slave is in non-canonical mode: they are plain bytes).
    #[serde(default)]
    pub input: Vec<u8>,
    /// The slave node's (/dev/pts/N) owner, group and permission bits.
    #[serde(default)]
    pub slave_owner: Option<(u32, u32, u32)>,
}

/// `struct termios2` (TCGETS2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

// ===================================================================
// Network sockets (crate::net): AF_INET / AF_INET6 TCP and UDP, netlink.
// ===================================================================

/// An AF_INET or AF_INET6 socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InetSocket {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// SOCK_STREAM (TCP) or SOCK_DGRAM (UDP).
    pub sock_type: i32,
    pub protocol: i32,
    /// The bound address (getsockname); `None` when it was not bound.
    pub local: Option<std::net::SocketAddr>,
    /// The peer of a connected socket.
    pub peer: Option<std::net::SocketAddr>,
    /// TCP: the kernel's state number (1 established, 7 closed, 10 listening).
    pub state: u8,
    /// Listening, with this backlog.
    pub listen: Option<u32>,
    pub opts: SockOpts,
    /// An established TCP connection as TCP_REPAIR read it.
    pub tcp: Option<TcpConn>,
    /// UDP: the datagrams queued, oldest first, with their senders.
    #[serde(default)]
    pub datagrams: Vec<Datagram>,
    /// The nftables table of crest's own (family inet) that drops this
    /// connection's packets from the dump until the restore: its peer is
    /// outside the tree (`--tcp-established`).
    #[serde(default)]
    pub lock_table: Option<String>,
    /// SO_PEEK_OFF when the program enabled it.
    #[serde(default)]
    pub peek_off: Option<i32>,
    /// A TCP client whose server end waited in the accept queue of a
    /// listener of the tree: restore connects it again (a new handshake)
    /// instead of rebuilding it in repair mode, and writes `tcp`'s send
    /// queue again (see `crate::net::accept`).
    #[serde(default)]
    pub reconnect: bool,
}

/// The options of an IP socket, as getsockopt reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SockOpts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// SO_RCVBUF / SO_SNDBUF as getsockopt reports them (twice the value set).
    pub rcvbuf: u32,
    pub sndbuf: u32,
    pub keepalive: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.
    pub keepidle: i32,
    pub keepintvl: i32,
    pub keepcnt: i32,
    pub nodelay: bool,
    pub cork: bool,
    /// SO_LINGER: (l_onoff, l_linger).
    pub linger: (i32, i32),
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
    /// IP_TOS (IPv4) or IPV6_TCLASS (IPv6).
    pub tos: i32,
    /// IPV6_V6ONLY (IPv6 only).
    pub v6only: bool,
    /// SO_BINDTODEVICE: the interface name, empty when not bound.
    pub bindtodevice: String,
    pub mark: u32,
    pub priority: i32,
    pub user_timeout: i32,
    /// TCP_CONGESTION: the algorithm's name.
    pub congestion: String,
    /// TCP_FASTOPEN: the listener's fast-open queue length (0: off).
    pub fastopen: i32,
    /// IP_FREEBIND / IPV6_FREEBIND.
    pub freebind: bool,
    /// SO_BROADCAST (UDP).
    #[serde(default)]
    pub broadcast: bool,
    /// IP_TTL / IPV6_UNICAST_HOPS (-1: the default).
    #[serde(default)]
    pub ttl: i32,
}

/// An established TCP connection, as TCP_REPAIR shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TcpConn {
    /// The sequence number of the first byte of `send_queue` (snd_una).
    pub snd_seq: u32,
    /// The sequence number of the first byte of `recv_queue` (copied_seq).
    pub rcv_seq: u32,
    /// Bytes written and not yet acknowledged by the peer, oldest first.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were not yet sent.
    pub unsent: u32,
    /// Bytes received and not yet read by the program.
    pub recv_queue: Vec<u8>,
    /// The MSS clamp (TCP_MAXSEG in repair mode).
    pub mss: u32,
    /// Window scaling negotiated, with both shifts.
    pub wscale: bool,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub sack: bool,
    pub timestamps: bool,
    /// The TCP timestamp clock at the dump (TCP_TIMESTAMP).
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// Our side was shut down for writing (FIN-WAIT-1/2): the FIN follows
    /// `send_queue` in the sequence space.
    #[serde(default)]
    pub fin_sent: bool,
    /// The peer had closed its side (CLOSE-WAIT, LAST-ACK, CLOSING): its
    /// FIN follows `recv_queue` in the sequence space (see
    /// `crate::net::fin`).
    #[serde(default)]
    pub fin_received: bool,
}

/// A queued datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Datagram {
    pub data: Vec<u8>,
    pub from: Option<std::net::SocketAddr>,
}

/// An AF_NETLINK socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetlinkSocket {
    /// NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT, NETLINK_GENERIC …
    pub protocol: i32,
    /// SOCK_RAW or SOCK_DGRAM.
    pub sock_type: i32,
    /// The bound port id (nl_pid); 0 when not bound.
    pub portid: u32,
    /// The multicast groups it belongs to (NETLINK_LIST_MEMBERSHIPS).
    pub groups: Vec<u32>,
    /// The peer set with connect (nl_pid, nl_groups), if any.
    pub peer: Option<(u32, u32)>,
    pub rcvbuf: u32,
    pub sndbuf: u32,
}

// ---- issue 16: file locks, SIGIO owners, unlinked files' metadata ----

/// One lock held through a descriptor of a process (see `crate::files::locks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileLock {
    /// The descriptor it is taken through, in this process.
    pub fd: i32,
    pub kind: LockKind,
    /// A write (exclusive) lock or lease; else a read (shared) one.
    pub write: bool,
    /// Byte range (POSIX and OFD locks): start and length, 0 = to EOF.
    pub start: u64,
    pub len: u64,
}

/// Who owns a lock, as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LockKind {
    /// fcntl F_SETLK: owned by the process (its descriptor table).
    Posix,
    /// flock(2): owned by the open file description.
    Flock,
    /// fcntl F_OFD_SETLK: owned by the open file description.
    Ofd,
    /// fcntl F_SETLEASE: held by the open file description.
    Lease,
}

/// The SIGIO owner and signal of an open file description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FdOwner {
    pub fd: i32,
    /// F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP, and the id (0: none).
    pub owner_type: i32,
    pub owner: i32,
    /// F_GETSIG (0: SIGIO).
    pub signal: i32,
}

/// What an unlinked file carries besides its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnlinkedMeta {
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i128,
    pub mtime_ns: i128,
    /// Another open file description of the same file, described earlier
    /// in the image: this one is a new description of that recreated file
    /// (its content follows that object's id).
    pub same_as: Option<ObjectId>,
    /// Made with O_TMPFILE (its name is `dir/#ino`): recreated so, and so
    /// still linkable into the directory.
    pub tmpfile: bool,
}

/// A directory, FIFO or device node that was deleted while held open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeletedNode {
    /// Its path, without the " (deleted)" suffix.
    pub path: String,
    /// st_mode (file type and permissions), owner, and device number.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

// ---------------------------------------------------------------------
// Task state: job-control stops, audit ids, OOM score, cgroups (issue 16).
// ---------------------------------------------------------------------

/// Per-process task state beyond identity and attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskState {
    /// The signal of the job-control stop the process was in (SIGSTOP,
    /// SIGTSTP, SIGTTIN, SIGTTOU); 0 when not stopped (or SIGSTOP in
    /// images that predate this field).
    pub stop_signal: i32,
    /// The parent (in the tree) had already collected that stop with
    /// waitpid(WUNTRACED): it must not be reported again.
    pub stop_collected: bool,
    /// /proc/PID/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// The audit login uid (/proc/PID/loginuid; u32::MAX: unset).
    pub loginuid: Option<u32>,
    /// The audit session id (/proc/PID/sessionid).  The kernel assigns it
    /// when the login uid is set; it cannot be set directly (informational).
    pub sessionid: Option<u32>,
    /// The cgroups of the process (its leader), one per hierarchy.
    pub cgroups: Vec<CgroupMember>,
}

/// Membership in one cgroup hierarchy, as a line of /proc/PID/cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupMember {
    /// The hierarchy id (0: the unified v2 hierarchy).
    pub hierarchy: u32,
    /// Its controllers, comma-separated ("cpu,cpuacct", "name=systemd";
    /// empty for v2).
    pub controllers: String,
    /// The cgroup's path inside the hierarchy ("/" is its root).
    pub path: String,
}

/// A cgroup that belongs to the tree: it and every cgroup below it hold
/// only processes of the tree.  Restore creates it where it is missing,
/// with these settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupDir {
    /// The hierarchy id (0: the unified v2 hierarchy).
    pub hierarchy: u32,
    /// Its controllers, comma-separated, as in [`CgroupMember`].
    pub controllers: String,
    /// The cgroup's path inside the hierarchy.
    pub path: String,
    /// Interface files and the values restore writes into them, in order.
    pub settings: Vec<CgroupSetting>,
}

/// One value of a cgroup interface file (`memory.max`, `pids.max`,
/// `cpu.cfs_quota_us`…), as read; one line of it per write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

// ---------------------------------------------------------------------
// Address-space state beyond the mappings (issue 16).
// ---------------------------------------------------------------------

/// prctl and membarrier state of an address space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MmState {
    /// PR_GET_THP_DISABLE: 0, or 1 | the PR_SET_THP_DISABLE flags.
    pub thp_disable: u32,
    /// The private expedited membarrier commands the process registered
    /// for (MEMBARRIER_CMD_PRIVATE_EXPEDITED, _SYNC_CORE, _RSEQ bits).
    pub membarrier: u32,
}

// ---------------------------------------------------------------------
// Copy-on-write sharing between processes (issue 16).
// ---------------------------------------------------------------------

/// The address space number of the page chunks holding the pages shared
/// copy-on-write ([`ObjectKind::Cow`]); they come before any other chunk.
pub const COW_SPACE: u32 = u32::MAX;

/// A range of private anonymous memory that processes of the tree map at
/// the same place and partly share (same physical pages, after a fork).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CowRange {
    pub start: u64,
    pub end: u64,
    /// Shared pages saved in the [`COW_SPACE`] chunks.
    pub pages: u64,
    /// For a private file mapping: the file (an [`ObjectKind::File`]) and
    /// the offset it is mapped from; the shared pages are its modified ones.
    pub file: Option<(ObjectId, u64)>,
}

// ---------------------------------------------------------------------
// seccomp filters (issue 16).
// ---------------------------------------------------------------------

/// One installed seccomp filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SeccompFilter {
    /// The classic-BPF program, one `struct sock_filter` per word.
    pub prog: Vec<u64>,
    /// Installed with SECCOMP_FILTER_FLAG_LOG.
    pub log: bool,
}

// ───────────────────────────── namespaces ─────────────────────────────
// (see `crate::ns`)

/// The namespaces a tree lives in that are not crest's own: what each is
/// and the state it holds.  Empty for a tree wholly in crest's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Namespaces {
    /// Every namespace other than crest's that a process of the tree is
    /// in (or creates its children in), by [`NsId`].
    pub table: Vec<Namespace>,
}

/// Index into [`Namespaces::table`].
pub type NsId = u32;

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Namespace {
    pub id: NsId,
    /// The inode of /proc/PID/ns/KIND at the dump (informational: restore
    /// makes a new namespace).
    pub ino: u64,
    pub state: NsState,
}

/// What a namespace holds, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NsState {
    /// A PID namespace; `level` counts the PID namespaces between it and
    /// crest's (1: a child of crest's).  `last_pid`: the last PID it had
    /// handed out (its `ns_last_pid`), so that the next process made in it
    /// after restore gets the PID it would have got (none: unknown).
    Pid {
        level: u32,
        #[serde(default)]
        last_pid: Option<i32>,
    },
    /// A UTS namespace: its host and domain names.
    Uts {
        hostname: String,
        domainname: String,
    },
    /// An IPC namespace: its System V objects (see `crate::ns::ipc`).
    Ipc(IpcState),
    /// A mount namespace (see `crate::ns::mnt`).
    Mnt(MntState),
    /// A network namespace: its links, routes and sysctls (see
    /// `crate::ns::net`).
    Net(NetState),
    /// A time namespace (see `crate::ns::time`).
    Time(TimeState),
    /// A cgroup namespace (see `crate::ns::cgroup`).
    Cgroup(CgroupNsState),
    /// A user namespace (see `crate::ns::user`).
    User(UserNsState),
}

/// A network namespace's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetState {
    /// Its links, in ifindex order (loopback first).
    pub links: Vec<NetLink>,
    /// The routes of its main table that the kernel does not derive from
    /// an address (IPv4 then IPv6).
    pub routes: Vec<NetRoute>,
    /// sysctls under /proc/sys/net, by path below it
    /// ("ipv4/ip_forward", "ipv4/conf/all/rp_filter", …), with their value.
    pub sysctls: Vec<(String, String)>,
    /// The namespace was the runtime's (a container runtime's
    /// `empty_ns`/`external net`): its configuration is not recorded, and
    /// restore joins the one it is given or makes an empty one.
    #[serde(default)]
    pub external: bool,
    /// The user namespace of the image that owns it (that of the process
    /// that entered it; see `crate::ns::owned_net`); `None`: crest's.
    #[serde(default)]
    pub owner: Option<NsId>,
}

/// One network device of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetLink {
    pub name: String,
    /// "loopback" or "veth" (the only kinds restore recreates).
    pub kind: String,
    pub mtu: u32,
    /// Hardware address, "aa:bb:cc:dd:ee:ff".
    pub mac: String,
    /// Administratively up.
    pub up: bool,
    /// Its addresses: (address, prefix length), IPv4 and IPv6.
    pub addrs: Vec<(std::net::IpAddr, u8)>,
}

/// One route of a main table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetRoute {
    /// 4 or 6.
    pub family: u8,
    /// "default" or "ADDR/LEN".
    pub dst: String,
    pub gateway: Option<std::net::IpAddr>,
    pub dev: Option<String>,
    /// "boot", "static", … (as `ip route` names it).
    pub protocol: Option<String>,
    /// "link", "host" or "global" (None: global).
    pub scope: Option<String>,
    pub prefsrc: Option<std::net::IpAddr>,
    pub metric: Option<u32>,
}

/// A time namespace: its clock offsets and where its clocks were when
/// the tree was frozen (nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimeState {
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets against the host's.
    pub monotonic_offset: i64,
    pub boottime_offset: i64,
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME as its members saw them.
    pub monotonic: i64,
    pub boottime: i64,
}

/// A cgroup namespace: its root cgroup in every hierarchy (full paths,
/// as /proc/PID/cgroup lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupNsState {
    pub roots: Vec<CgroupMember>,
}

/// One line of a user namespace's uid_map or gid_map: `count` ids from
/// `inside` in the namespace are `outside`.. in crest's user namespace
/// at the dump (host terms, whatever the namespace's parent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IdExtent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A user namespace: its id maps and whether setgroups is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserNsState {
    pub uid_map: Vec<IdExtent>,
    pub gid_map: Vec<IdExtent>,
    /// /proc/PID/setgroups says "allow".
    pub setgroups: bool,
    /// Its parent, when that is a user namespace of the image (nested);
    /// `None`: crest's.
    pub parent: Option<NsId>,
    /// The uid (host terms) of the namespace's creator (NS_GET_OWNER_UID),
    /// when it owns the tree's network namespace (see
    /// `crate::ns::owned_net`): restore creates it as that uid.
    #[serde(default)]
    pub owner_uid: Option<u32>,
}

/// A mount namespace that is a copy of crest's but for its proc mounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MntState {
    /// Propagation of its mounts: "private", "slave" or "shared" (of its
    /// root mount).
    pub propagation: String,
    /// proc filesystems mounted in it, in mount order: (mount point,
    /// MS_* flags).
    pub procs: Vec<(String, u64)>,
    /// The whole mount tree, parents first, when it is not such a copy
    /// (see `crate::ns::mnt`); empty for the copy above.
    #[serde(default)]
    pub mounts: Vec<MountRec>,
}

/// One mount of a mount namespace recreated whole, as its
/// /proc/PID/mountinfo line shows it, and how restore makes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MountRec {
    /// Mount id and parent mount id (the parent of the root is not in
    /// the namespace).
    pub id: u64,
    pub parent: u64,
    /// Mount point, relative to the namespace's root.
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    /// Root of the mount within its filesystem.
    pub root: String,
    /// Per-mount options (`rw,nosuid,relatime`) and superblock options.
    pub options: String,
    pub super_options: String,
    /// Peer group it is in (`shared:N`) and receives from (`master:N`).
    pub shared: Option<u64>,
    pub master: Option<u64>,
    /// The nearest peer group it receives from that this namespace sees
    /// (`propagate_from:N`; informational, restore does not rejoin it).
    #[serde(default)]
    pub propagate_from: Option<u64>,
    /// An unbindable mount.
    #[serde(default)]
    pub unbindable: bool,
    /// A slave (not shared) of a peer group outside the namespace: the
    /// mount point, in crest's namespace, of a member of that group whose
    /// root holds this mount's (see `crate::ns::mnt::propagation`).
    #[serde(default)]
    pub outside_master: Option<String>,
    /// How restore makes it: "host" (a bind of `host`, a path in crest's
    /// namespace at the dump: a mount from outside, named by its mount
    /// point for `--ext-mount`), "inside" (a bind of the mount `from` of
    /// the namespace at its path `host`), "new" (a filesystem created
    /// anew from its type, source and superblock options: tmpfs, devpts,
    /// sysfs, cgroup, overlay), "stub" (made by the process creating the
    /// namespace, in its namespaces: proc, mqueue), "stub-bind" (a bind,
    /// made by that process too, of the proc or mqueue mount `from` at its
    /// path `host`: runc's read-only /proc/sys).
    pub how: String,
    pub host: String,
    pub from: u64,
    /// A tmpfs created anew: its files (their data in FILE_DATA records
    /// of object `data`, one extent per record).
    #[serde(default)]
    pub files: Vec<TreeFile>,
    /// A mount whoever restores supplies (a container runtime's
    /// `ext_mnt`): the name it is mapped by at restore ("" when not
    /// external; restore then maps it by its mount point).
    #[serde(default)]
    pub ext: String,
}

/// One file of a saved tmpfs, parents first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TreeFile {
    /// Path below the mount's root (no leading '/'; "" is the root).
    pub path: String,
    /// st_mode (type and permissions), owner, size.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Access and modification times (seconds, nanoseconds).
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    /// A symlink's target.
    pub target: String,
    /// A device node's number.
    pub rdev: u64,
    /// The object id its data is saved under (FILE_DATA records), 0: none.
    pub data: u32,
}

/// The System V semaphore sets, message queues and shared memory
/// segments, and the POSIX message queues, of an IPC namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpcState {
    pub sems: Vec<SemSet>,
    pub msgqs: Vec<MsgQueue>,
    /// The object ids ([`ShmemKind::SysV`] objects) of every shared memory
    /// segment of the namespace, attached by the tree or not.
    #[serde(default)]
    pub shm: Vec<u32>,
    /// Its POSIX message queues, by name (see `crate::ns::mqueue`).
    #[serde(default)]
    pub mqueues: Vec<PosixQueue>,
}

/// A POSIX message queue of a private IPC namespace and its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PosixQueue {
    /// Its name, with the leading '/' ("/q").
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// mq_maxmsg and mq_msgsize.
    pub maxmsg: i64,
    pub msgsize: i64,
    /// (priority, text) of each message, in the order mq_receive gives
    /// them (highest priority first, oldest first among equals).
    pub messages: Vec<(u32, Vec<u8>)>,
}

/// Owner and mode of a System V object (`struct ipc_perm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpcPerm {
    pub key: i32,
    pub id: i32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
}

/// A semaphore set with each semaphore's value and last operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SemSet {
    pub perm: IpcPerm,
    pub values: Vec<u16>,
}

/// A message queue and the messages in it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MsgQueue {
    pub perm: IpcPerm,
    /// msg_qbytes: the queue's byte limit.
    pub qbytes: u64,
    /// (type, text) of each message.
    pub messages: Vec<(i64, Vec<u8>)>,
}

/// The namespaces one process is in, by index into the checkpoint's
/// [`Namespaces::table`]; `None`: crest's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcNs {
    pub pid: Option<NsId>,
    pub uts: Option<NsId>,
    pub ipc: Option<NsId>,
    /// Its mount namespace.
    #[serde(default)]
    pub mnt: Option<NsId>,
    /// Its network namespace.
    #[serde(default)]
    pub net: Option<NsId>,
    /// Its time namespace.
    #[serde(default)]
    pub time: Option<NsId>,
    /// Its cgroup namespace.
    #[serde(default)]
    pub cgroup: Option<NsId>,
    /// Its user namespace.
    #[serde(default)]
    pub user: Option<NsId>,
    /// The process's PIDs in the PID namespaces below crest's, outermost
    /// first (`NSpid` without crest's own level): empty in crest's PID
    /// namespace; the last is the PID the process sees for itself.
    pub pids: Vec<i32>,
    /// The same for each thread after the leader (in `threads` order).
    pub tids: Vec<Vec<i32>>,
    /// The same for each zombie child (in `zombies` order).
    pub zombie_pids: Vec<Vec<i32>>,
    /// The PID namespace its future children are created in, when not
    /// its own (it unshared one and forked its init, as `unshare --pid
    /// --fork` does): that of a child of it in the tree, the namespace's
    /// init.
    #[serde(default)]
    pub pid_for_children: Option<NsId>,
}
