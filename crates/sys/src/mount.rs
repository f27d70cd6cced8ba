//! The new mount API (fsopen, fsconfig, fsmount, open_tree, move_mount,
//! mount_setattr) and openat2 inside a root, for building a detached
//! mount tree and looking paths up in it.

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// MOUNT_ATTR_* bits (`struct mount_attr`'s `attr_set`).
pub const ATTR_RDONLY: u64 = 0x1;
pub const ATTR_NOSUID: u64 = 0x2;
pub const ATTR_NODEV: u64 = 0x4;
pub const ATTR_NOEXEC: u64 = 0x8;
pub const ATTR_RELATIME: u64 = 0x0;
pub const ATTR_NOATIME: u64 = 0x10;
pub const ATTR_STRICTATIME: u64 = 0x20;
pub const ATTR_NODIRATIME: u64 = 0x80;
/// The atime bits, cleared before one of them is set.
pub const ATTR_ATIME_MASK: u64 = 0x70;

const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const OPEN_TREE_CLONE: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSCONFIG_CMD_RECONFIGURE: u32 = 7;
const FSPICK_CLOEXEC: u32 = 1;
const FSPICK_EMPTY_PATH: u32 = 8;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::parse(s, "a NUL byte in a mount argument"))
}

fn owned(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::last_os(what()));
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn done(r: libc::c_long, what: impl FnOnce() -> String) -> Result<()> {
    if r < 0 {
        return Err(Error::last_os(what()));
    }
    Ok(())
}

/// A filesystem context being configured (fsopen).
pub struct FsContext {
    fd: OwnedFd,
    fstype: String,
}

impl FsContext {
    pub fn open(fstype: &str) -> Result<Self> {
        let t = cstr(fstype)?;
        // SAFETY: a NUL-terminated name; the result is checked.
        let r = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) };
        Ok(FsContext {
            fd: owned(r, || format!("fsopen {fstype}"))?,
            fstype: fstype.into(),
        })
    }

    /// `key=value` (a string parameter) or, with no value, a flag.
    pub fn set(&self, key: &str, value: Option<&str>) -> Result<()> {
        let k = cstr(key)?;
        let v = value.map(cstr).transpose()?;
        let (cmd, vp) = match &v {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: NUL-terminated key and value (or null) on our context.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                k.as_ptr(),
                vp,
                0,
            )
        };
        done(r, || {
            format!(
                "{}: setting {key}{}",
                self.fstype,
                value.map(|v| format!("={v}")).unwrap_or_default()
            )
        })
    }

    /// The context of the filesystem mount `m` is of, to change its
    /// superblock's parameters ([`FsContext::set`], then
    /// [`FsContext::reconfigure`]).
    pub fn pick(m: BorrowedFd, fstype: &str) -> Result<Self> {
        // SAFETY: an empty path on a valid descriptor; the result is checked.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fspick,
                m.as_raw_fd(),
                c"".as_ptr(),
                FSPICK_CLOEXEC | FSPICK_EMPTY_PATH,
            )
        };
        Ok(FsContext {
            fd: owned(r, || format!("fspick {fstype}"))?,
            fstype: fstype.into(),
        })
    }

    /// Applies the parameters set since [`FsContext::pick`].
    pub fn reconfigure(&self) -> Result<()> {
        // SAFETY: a plain syscall on our context.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_CMD_RECONFIGURE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        done(r, || format!("reconfiguring a {} filesystem", self.fstype))
    }

    /// Creates the superblock and a detached mount of it with the
    /// MOUNT_ATTR_* `attrs`.
    pub fn mount(self, attrs: u64) -> Result<OwnedFd> {
        // SAFETY: plain syscalls on our context.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        done(r, || format!("creating a {} filesystem", self.fstype))?;
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        owned(r, || format!("fsmount {}", self.fstype))
    }
}

/// A detached copy of the mount at `path` (relative to `dir`, or the
/// current directory), without its submounts (open_tree OPEN_TREE_CLONE).
pub fn clone_tree(dir: Option<BorrowedFd>, path: &str) -> Result<OwnedFd> {
    let p = cstr(if path.is_empty() { "." } else { path })?;
    let d = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a NUL-terminated path; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            d,
            p.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
        )
    };
    owned(r, || format!("cloning the mount at {path}"))
}

/// Attaches the mount `m` at `path` below `dir` (`path` empty: on top of
/// `dir` itself).
pub fn attach(m: BorrowedFd, dir: BorrowedFd, path: &str) -> Result<()> {
    let empty = c"";
    let p = cstr(path)?;
    let flags = MOVE_MOUNT_F_EMPTY_PATH
        | if path.is_empty() {
            MOVE_MOUNT_T_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: NUL-terminated paths on descriptors we borrow.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            empty.as_ptr(),
            dir.as_raw_fd(),
            p.as_ptr(),
            flags,
        )
    };
    done(r, || format!("attaching a mount at {path}"))
}

/// Sets the MOUNT_ATTR_* `set` on the mount `m` (not its submounts),
/// clearing `clear` first.
pub fn set_attrs(m: BorrowedFd, set: u64, clear: u64) -> Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid struct of the size passed, on a borrowed descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            m.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    done(r, || format!("setting mount attributes {set:#x}"))
}

/// Opens `path` as if `root` were "/" (openat2 RESOLVE_IN_ROOT: "..",
/// and absolute symlinks stay inside).
pub fn open_in_root(root: BorrowedFd, path: &str, flags: i32, mode: u32) -> Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let p = cstr(if rel.is_empty() { "." } else { rel })?;
    // SAFETY: open_how is plain old data; zeroed is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: a NUL-terminated path and a valid open_how of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(r, || format!("opening {path} in the restored mount tree"))
}
