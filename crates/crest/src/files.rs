//! Files: the descriptor table, open file descriptions, cwd and root.
//!
//! Dump reads /proc/PID/fd and fdinfo; two descriptors share one open
//! file description (dup) when kcmp(KCMP_FILE) says so, and then share one
//! object.  Restore opens each object once in crest, places it at every
//! descriptor number in the new task and seeks it to its offset.

use crate::error::{Context, Error, Result};
use crate::model::{Fd, FileId, ObjectKind, OpenFile, OpenTarget};
use crate::objects::{file_id, ObjectTable};
use crate::Obstacle;
use crest_image::Writer;
use crest_sys::proc;
use crest_sys::process::{kcmp, kcmp_type};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};

/// Character devices that carry no state and exist on every machine.
const STATELESS_DEVICES: [(u32, u32, &str); 5] = [
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 7, "/dev/full"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
];

/// Unlinked-file contents larger than this are refused.
const MAX_UNLINKED: u64 = 1 << 32;

/// An unlinked file whose content goes into the image.
pub struct UnlinkedSource {
    pub object: u32,
    pub pid: i32,
    pub fd: i32,
    pub size: u64,
}

/// (pid, fd, object) of a descriptor already collected.
type SeenFd = (i32, i32, u32);

/// Descriptors seen so far in a tree, by (dev, ino) of their file, so
/// that one open file description held by several descriptors (in one
/// process or several) becomes one object: kcmp(KCMP_FILE) decides.
#[derive(Default)]
pub struct FdIndex {
    seen: HashMap<(u64, u64), Vec<SeenFd>>,
}

/// Reads the descriptor table of `pid`.
pub fn collect_fds(
    pid: i32,
    objects: &mut ObjectTable,
    obstacles: &mut Vec<Obstacle>,
    unlinked: &mut Vec<UnlinkedSource>,
    index: &mut FdIndex,
) -> Result<Vec<Fd>> {
    let mut out: Vec<Fd> = Vec::new();
    let seen = &mut index.seen;
    for fd in proc::list_fds(pid)? {
        let refuse = |obstacles: &mut Vec<Obstacle>, reason: String| {
            obstacles.push(Obstacle {
                pid,
                object: format!("fd {fd}"),
                reason,
            })
        };
        let link = match proc::fd_link(pid, fd) {
            Ok(l) => l,
            Err(_) => continue, // closed meanwhile: the task is frozen, so only a race with exit
        };
        let info = proc::read_fdinfo(pid, fd)?;
        let md = match std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
            Ok(m) => m,
            Err(e) => {
                refuse(obstacles, format!("{link}: cannot stat: {e}"));
                continue;
            }
        };
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let key = (md.dev(), md.ino());
        if let Some(prev) = seen.get(&key) {
            let mut shared = None;
            for &(ppid, pfd, obj) in prev {
                if kcmp(ppid, pid, kcmp_type::FILE, pfd as u64, fd as u64)? == 0 {
                    shared = Some(obj);
                    break;
                }
            }
            if let Some(obj) = shared {
                out.push(Fd {
                    fd,
                    cloexec,
                    file: obj,
                });
                continue;
            }
        }
        let ft = md.file_type();
        let target = if ft.is_file() {
            if md.nlink() == 0 || link.ends_with(" (deleted)") {
                if md.size() > MAX_UNLINKED {
                    refuse(
                        obstacles,
                        format!("unlinked file {link} is larger than 4 GiB"),
                    );
                    continue;
                }
                OpenTarget::Unlinked {
                    path: link.trim_end_matches(" (deleted)").to_string(),
                    size: md.size(),
                    mode: md.mode(),
                }
            } else {
                OpenTarget::Regular(file_id(&link)?)
            }
        } else if ft.is_dir() {
            OpenTarget::Directory { path: link.clone() }
        } else if ft.is_char_device() {
            let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
            match STATELESS_DEVICES.iter().find(|d| d.0 == maj && d.1 == min) {
                Some(_) => OpenTarget::CharDevice {
                    path: link.clone(),
                    rdev: md.rdev(),
                },
                None => {
                    refuse(
                        obstacles,
                        format!("character device {link} ({maj}:{min}) is not supported"),
                    );
                    continue;
                }
            }
        } else if ft.is_fifo() {
            if link.starts_with("pipe:") {
                refuse(obstacles, "pipes are not supported yet".into());
                continue;
            }
            match fifo_bytes(pid, fd) {
                Ok(0) => OpenTarget::Fifo { path: link.clone() },
                Ok(n) => {
                    refuse(
                        obstacles,
                        format!("FIFO {link} has {n} bytes in flight (not supported yet)"),
                    );
                    continue;
                }
                Err(e) => {
                    refuse(obstacles, format!("FIFO {link}: {e}"));
                    continue;
                }
            }
        } else if ft.is_socket() {
            refuse(
                obstacles,
                format!("{} socket is not supported", socket_family(pid, fd)),
            );
            continue;
        } else if link.starts_with("anon_inode:") {
            let what = link
                .trim_start_matches("anon_inode:")
                .trim_matches(|c| c == '[' || c == ']');
            refuse(
                obstacles,
                format!("{what} descriptors are not supported yet"),
            );
            continue;
        } else {
            refuse(
                obstacles,
                format!("{link}: this kind of file is not supported"),
            );
            continue;
        };
        let obj = objects.add(ObjectKind::Open(OpenFile {
            flags,
            pos: info.pos,
            target: target.clone(),
        }));
        if let OpenTarget::Unlinked { size, .. } = target {
            unlinked.push(UnlinkedSource {
                object: obj,
                pid,
                fd,
                size,
            });
        }
        seen.entry(key).or_default().push((pid, fd, obj));
        out.push(Fd {
            fd,
            cloexec,
            file: obj,
        });
    }
    Ok(out)
}

/// Bytes waiting in a FIFO of the task.
fn fifo_bytes(pid: i32, fd: i32) -> Result<i32> {
    let pidfd = crest_sys::pidfd::open(pid)?;
    let f = crest_sys::pidfd::getfd(&pidfd, pid, fd)?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(crest_sys::Error::last_os("FIONREAD").into());
    }
    Ok(n)
}

/// "AF_INET" etc. for a socket descriptor of the task.
fn socket_family(pid: i32, fd: i32) -> String {
    let name = (|| -> Option<i32> {
        let pidfd = crest_sys::pidfd::open(pid).ok()?;
        let f = crest_sys::pidfd::getfd(&pidfd, pid, fd).ok()?;
        let mut dom: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_DOMAIN writes one int; len says how big it is.
        let r = unsafe {
            libc::getsockopt(
                f.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut dom as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(dom)
    })();
    match name {
        Some(libc::AF_UNIX) => "AF_UNIX".into(),
        Some(libc::AF_INET) => "AF_INET".into(),
        Some(libc::AF_INET6) => "AF_INET6".into(),
        Some(libc::AF_NETLINK) => "AF_NETLINK".into(),
        Some(libc::AF_PACKET) => "AF_PACKET".into(),
        Some(d) => format!("address family {d}"),
        None => "this".into(),
    }
}

/// Writes the contents of unlinked files as FILE_DATA records.
pub fn write_unlinked<W: Write>(srcs: &[UnlinkedSource], out: &mut Writer<W>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for s in srcs {
        let path = format!("/proc/{}/fd/{}", s.pid, s.fd);
        let mut f = File::open(&path)
            .context(|| format!("pid {}: fd {}: reopening the unlinked file", s.pid, s.fd))?;
        let mut off = 0u64;
        while off < s.size {
            let want = ((s.size - off) as usize).min(buf.len());
            let n = f
                .read(&mut buf[..want])
                .context(|| format!("reading {path}"))?;
            if n == 0 {
                break;
            }
            out.write_file_data(s.object as u64, off, &buf[..n])?;
            off += n as u64;
        }
    }
    Ok(())
}

/// cwd and root of the task.
pub fn collect_fs(pid: i32) -> Result<crate::model::FsInfo> {
    Ok(crate::model::FsInfo {
        cwd: proc::read_link(pid, "cwd")?,
        root: proc::read_link(pid, "root")?,
    })
}

/// Unlinked files being recreated for a restore.  They are unlinked as
/// soon as they are open; whatever is left on error is removed on drop.
#[derive(Default)]
pub struct UnlinkedFiles {
    files: HashMap<u32, (File, String)>,
}

impl UnlinkedFiles {
    fn create(&mut self, object: u32, path: &str, mode: u32) -> Result<&File> {
        if !self.files.contains_key(&object) {
            let mut candidates = vec![path.to_string()];
            candidates.push(format!("{path}.crest-{}-{object}", std::process::id()));
            let mut last = None;
            for p in candidates {
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(mode & 0o7777)
                    .open(&p)
                {
                    Ok(f) => {
                        self.files.insert(object, (f, p));
                        last = None;
                        break;
                    }
                    Err(e) => last = Some((p, e)),
                }
            }
            if let Some((p, e)) = last {
                return Err(Error::msg(format!(
                    "recreating unlinked file {p} for the restore: {e}"
                )));
            }
        }
        Ok(&self.files[&object].0)
    }

    /// Writes a piece of an unlinked file's content.
    pub fn write(
        &mut self,
        ckpt_obj: Option<&ObjectKind>,
        object: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let (path, mode, size) = match ckpt_obj {
            Some(ObjectKind::Open(OpenFile {
                target: OpenTarget::Unlinked { path, mode, size },
                ..
            })) => (path.clone(), *mode, *size),
            _ => {
                return Err(Error::Invalid(format!(
                    "file data for object {object}, which is not an unlinked file"
                )))
            }
        };
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(Error::Invalid(format!(
                "file data for {path} at {offset} runs past its size {size}"
            )));
        }
        let f = self.create(object, &path, mode)?;
        f.write_all_at(data, offset)
            .context(|| format!("writing the content of unlinked file {path}"))
    }

    fn open(
        &mut self,
        object: u32,
        path: &str,
        mode: u32,
        size: u64,
        flags: u32,
    ) -> Result<OwnedFd> {
        self.create(object, path, mode)?;
        let (f, p) = &self.files[&object];
        f.set_len(size).context(|| format!("sizing {p}"))?;
        let fd = open_path(p, flags)?;
        Ok(fd)
    }
}

impl Drop for UnlinkedFiles {
    fn drop(&mut self) {
        for (_, (_, p)) in self.files.drain() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn open_path(path: &str, flags: u32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| Error::Invalid(format!("path with a NUL byte: {path:?}")))?;
    let flags = (flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY)
        | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(crest_sys::Error::last_os(format!("opening {path}")).into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn seek(fd: &OwnedFd, pos: u64, path: &str) -> Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) } < 0 {
        return Err(crest_sys::Error::last_os(format!("seeking {path} to {pos}")).into());
    }
    Ok(())
}

fn set_fl(fd: &OwnedFd, flags: u32, path: &str) -> Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as i32) } < 0 {
        return Err(crest_sys::Error::last_os(format!("setting the flags of {path}")).into());
    }
    Ok(())
}

/// Opens the open file description `o` (object `id`) in crest.
pub fn open_object(id: u32, o: &OpenFile, unlinked: &mut UnlinkedFiles) -> Result<OwnedFd> {
    let fd = match &o.target {
        OpenTarget::Regular(fid) => {
            let fd = open_path(&fid.path, o.flags)?;
            seek(&fd, o.pos, &fid.path)?;
            fd
        }
        OpenTarget::Directory { path } => {
            let fd = open_path(path, o.flags)?;
            seek(&fd, o.pos, path)?;
            fd
        }
        OpenTarget::CharDevice { path, rdev } => {
            let fd = open_path(path, o.flags)?;
            let md = File::from(fd.try_clone().context(|| format!("dup {path}"))?)
                .metadata()
                .context(|| format!("stat {path}"))?;
            if md.rdev() != *rdev {
                return Err(Error::Incompatible(format!(
                    "{path} is device {}:{} here, not {}:{} as in the image",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev()),
                    libc::major(*rdev),
                    libc::minor(*rdev)
                )));
            }
            fd
        }
        OpenTarget::Fifo { path } => {
            // Opening one end of a FIFO blocks until the other is open:
            // hold a reader while opening, then set the real flags.
            let _keeper = open_path(path, (libc::O_RDONLY | libc::O_NONBLOCK) as u32)?;
            let fd = open_path(path, o.flags | libc::O_NONBLOCK as u32)?;
            set_fl(&fd, o.flags, path)?;
            fd
        }
        OpenTarget::Unlinked { path, size, mode } => {
            let fd = unlinked.open(id, path, *mode, *size, o.flags)?;
            seek(&fd, o.pos, path)?;
            fd
        }
    };
    Ok(fd)
}

/// Removes the names of the recreated unlinked files, once every
/// descriptor on them is open.
pub fn unlink_recreated(unlinked: &mut UnlinkedFiles) -> Result<()> {
    for (_, (_, p)) in unlinked.files.drain() {
        std::fs::remove_file(&p).context(|| format!("unlinking {p}"))?;
    }
    Ok(())
}

/// Opens a file of the image for mapping or as the exe link, checking it
/// is still the file that was checkpointed.
pub fn open_checked(f: &FileId, write: bool) -> Result<OwnedFd> {
    let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
    let fd =
        open_path(&f.path, flags as u32).context(|| format!("the image needs file {}", f.path))?;
    let md = File::from(fd.try_clone().context(|| format!("dup {}", f.path))?)
        .metadata()
        .context(|| format!("stat {}", f.path))?;
    let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    if md.size() != f.size || mtime != f.mtime_ns {
        return Err(Error::Incompatible(format!(
            "{} changed since the checkpoint (size {} → {}, mtime changed: {}); \
             restoring would mix old memory with new file content",
            f.path,
            f.size,
            md.size(),
            mtime != f.mtime_ns
        )));
    }
    Ok(fd)
}
