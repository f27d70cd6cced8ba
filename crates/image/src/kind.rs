//! Record kinds.
//!
//! The kind is the first word of every record header. Kinds not listed here
//! are *unknown* to this crate: a reader skips them when the record carries
//! [`FLAG_OPTIONAL`](crate::FLAG_OPTIONAL) and refuses the image otherwise.
//!
//! The framing kinds (HEADER, FILE_DATA, PAGES, TAIL) have payloads this
//! crate defines. The model kinds (from format version 3 on: TASK to SHMEM)
//! carry one MessagePack map each, whose layout belongs to the program
//! (crest's `codec` module and `docs/image-format.md`). PROCESS and FILE
//! are the model records of format versions 1 and 2, still read.

/// The image header ([`Header`](crate::Header)); exactly one, always first.
pub const HEADER: u32 = 1;
/// Format 1 and 2: a whole process as one postcard blob.
pub const PROCESS: u32 = 0x10;
/// Format 1 and 2: one object of the object table as one postcard blob.
pub const FILE: u32 = 0x11;
/// Raw contents of a file object ([`FileData`](crate::FileData)).
pub const FILE_DATA: u32 = 0x12;
/// A chunk of raw memory pages ([`PageChunk`](crate::PageChunk)).
pub const PAGES: u32 = 0x20;

/// A process: ids, attributes, job-control stop, zombies, table sharing.
/// Starts the records of one process.
pub const TASK: u32 = 0x30;
/// The process's credentials.
pub const CREDS: u32 = 0x31;
/// One thread: registers, XSAVE area, signal mask and queue, altstack,
/// rseq, robust list, own credentials.
pub const THREAD: u32 = 0x32;
/// The address space: mm fields, auxv, exe, and its first mappings.
pub const MM: u32 = 0x33;
/// More mappings of the address space of the MM record before it.
pub const MAPPINGS: u32 = 0x34;
/// The descriptor table.
pub const FDTABLE: u32 = 0x35;
/// Dispositions and process-wide pending signals.
pub const SIGNALS: u32 = 0x36;
/// Interval timers and POSIX timers.
pub const TIMERS: u32 = 0x37;
/// cwd and root.
pub const FS: u32 = 0x38;

/// An object: the identity of a file on disk (mapped, or the executable).
pub const FILE_ID: u32 = 0x40;
/// An object: an open file description of a path (regular file,
/// directory, device, FIFO, unlinked file).
pub const OPEN_FILE: u32 = 0x41;
/// An object: an open file description of one end of a pipe.
pub const OPEN_PIPE: u32 = 0x42;
/// An object: an open file description of a memfd.
pub const OPEN_MEMFD: u32 = 0x43;
/// An object: an event descriptor (eventfd, timerfd, signalfd, inotify,
/// epoll).
pub const OPEN_EVENT: u32 = 0x44;
/// An object: a socket.
pub const OPEN_SOCKET: u32 = 0x45;
/// An object: a terminal end.
pub const OPEN_TTY: u32 = 0x46;
/// An object: a pipe buffer.
pub const PIPE: u32 = 0x48;
/// An object: shared memory (anonymous shared, memfd, System V segment).
pub const SHMEM: u32 = 0x49;
/// An object: anonymous pages shared copy-on-write between processes
/// (saved once, mapped again before the processes that share them fork).
pub const COW: u32 = 0x4a;
/// The namespaces the tree uses (one record, before the processes).
pub const NAMESPACES: u32 = 0x50;
/// The cgroups that belong to the tree, with their settings (one record,
/// after NAMESPACES, before the processes).
pub const CGROUPS: u32 = 0x51;
/// The parent of an incremental image (one record, after CGROUPS, before
/// the processes; absent in a full image).
pub const PARENT: u32 = 0x52;
/// The last of the model kinds of format version 3.
const LAST_MODEL: u32 = PARENT;

/// The tail ([`Tail`](crate::Tail)); exactly one, always last.
pub const TAIL: u32 = 0xFFFF;

/// Every kind this crate knows, with its name.
pub const ALL: [(u32, &str); 28] = [
    (HEADER, "HEADER"),
    (PROCESS, "PROCESS"),
    (FILE, "FILE"),
    (FILE_DATA, "FILE_DATA"),
    (PAGES, "PAGES"),
    (TASK, "TASK"),
    (CREDS, "CREDS"),
    (THREAD, "THREAD"),
    (MM, "MM"),
    (MAPPINGS, "MAPPINGS"),
    (FDTABLE, "FDTABLE"),
    (SIGNALS, "SIGNALS"),
    (TIMERS, "TIMERS"),
    (FS, "FS"),
    (FILE_ID, "FILE_ID"),
    (OPEN_FILE, "OPEN_FILE"),
    (OPEN_PIPE, "OPEN_PIPE"),
    (OPEN_MEMFD, "OPEN_MEMFD"),
    (OPEN_EVENT, "OPEN_EVENT"),
    (OPEN_SOCKET, "OPEN_SOCKET"),
    (OPEN_TTY, "OPEN_TTY"),
    (PIPE, "PIPE"),
    (SHMEM, "SHMEM"),
    (COW, "COW"),
    (NAMESPACES, "NAMESPACES"),
    (CGROUPS, "CGROUPS"),
    (PARENT, "PARENT"),
    (TAIL, "TAIL"),
];

/// A short display name for a kind (`"unknown"` for kinds this crate does not
/// know).
pub fn name(kind: u32) -> &'static str {
    ALL.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, n)| *n)
        .unwrap_or("unknown")
}

/// Whether the kind is one of the model records of format version 3
/// (TASK to PARENT): an image of an older version holding one is corrupt.
pub fn is_model_v3(kind: u32) -> bool {
    (TASK..=LAST_MODEL).contains(&kind) && is_known(kind)
}

/// Whether this crate knows the kind.
pub fn is_known(kind: u32) -> bool {
    ALL.iter().any(|(k, _)| *k == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_knowledge_agree() {
        for (k, n) in ALL {
            assert!(is_known(k));
            assert_eq!(name(k), n);
        }
        let mut kinds: Vec<u32> = ALL.iter().map(|(k, _)| *k).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), ALL.len(), "a kind is listed twice");
        for k in [
            0,
            2,
            0x13,
            0x21,
            0x39,
            0x4b,
            0x53,
            0xFFFE,
            0x1_0000,
            u32::MAX,
        ] {
            assert!(!is_known(k));
            assert_eq!(name(k), "unknown");
        }
    }
}
