//! The FILE_DATA records of a dump: unlinked files' data extents, the
//! bytes in flight in pipes, and shared memory's non-zero pages.

use crate::error::{Context, Error, Result};
use crate::files::DataSource;
use crest_image::Writer;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Writes unlinked files' contents and pipes' bytes as FILE_DATA records.
pub fn write_data<W: Write>(srcs: &[DataSource], out: &mut Writer<W>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for s in srcs {
        match s {
            DataSource::Pipe { object, data } => {
                for (i, c) in data.chunks(1 << 20).enumerate() {
                    out.write_file_data(*object as u64, (i << 20) as u64, c)?;
                }
            }
            DataSource::Shmem { object, path, size } => {
                let f = File::open(path).context(|| format!("opening {path}"))?;
                write_shmem(*object, &f, path, *size, &mut buf, out)?;
            }
            DataSource::ShmemFile {
                object,
                what,
                file,
                size,
            } => {
                write_shmem(*object, file, what, *size, &mut buf, out)?;
            }
            DataSource::UnlinkedMap { object, path, size } => {
                crate::files::unlinked::write_extents(*object, path, *size, &mut buf, out)
                    .context(|| format!("{path}: saving the mapped unlinked file"))?;
            }
            &DataSource::Unlinked {
                object,
                pid,
                fd,
                size,
            } => {
                let path = format!("/proc/{pid}/fd/{fd}");
                crate::files::unlinked::write_extents(object, &path, size, &mut buf, out)
                    .context(|| format!("pid {pid}: fd {fd}: saving the unlinked file"))?;
            }
        }
    }
    Ok(())
}

/// Writes the non-hole, non-zero pages of a shared-memory object.
fn write_shmem<W: Write>(
    object: u32,
    f: &File,
    path: &str,
    size: u64,
    buf: &mut [u8],
    out: &mut Writer<W>,
) -> Result<()> {
    let ps = crate::memory::page_size() as usize;
    let mut off = 0u64;
    while off < size {
        // SAFETY: lseek on a descriptor we own.
        let start = unsafe { libc::lseek(f.as_raw_fd(), off as i64, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data past `off`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) }.max(start) as u64;
        let mut pos = start as u64;
        let end = hole.min(size);
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)
                .context(|| format!("reading {path} at {pos}"))?;
            let mut i = 0;
            while i < n {
                let pe = (i + ps).min(n);
                if buf[i..pe].iter().all(|&b| b == 0) {
                    i = pe;
                    continue;
                }
                let mut j = pe;
                while j < n && buf[j..(j + ps).min(n)].iter().any(|&b| b != 0) {
                    j = (j + ps).min(n);
                }
                out.write_file_data(object as u64, pos + i as u64, &buf[i..j])?;
                i = j;
            }
            pos += n as u64;
        }
        off = end.max(off + 1);
    }
    Ok(())
}

/// Buffer size and bytes in flight of the pipe behind `fd` of `pid`,
/// copied with tee(2) so nothing is consumed.
pub fn pipe_contents(pid: i32, fd: i32) -> Result<(u32, Vec<u8>)> {
    // A read end of our own on the same pipe (reopening the magic link
    // gives one even when the task holds only the write end).
    let path = format!("/proc/{pid}/fd/{fd}");
    let src = crate::files::open_path(&path, (libc::O_RDONLY | libc::O_NONBLOCK) as u32)?;
    // SAFETY: fcntl on a descriptor we own.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size < 0 {
        return Err(crest_sys::Error::last_os(format!("F_GETPIPE_SZ on {path}")).into());
    }
    let (tr, tw) = crate::files::make_pipe()?;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(tw.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
        return Err(
            crest_sys::Error::last_os(format!("sizing a copy pipe to {size} bytes")).into(),
        );
    }
    let mut out = Vec::new();
    // SAFETY: tee between two pipe descriptors we own.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            tw.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(Error::Io(e));
        }
    } else if n > 0 {
        out.resize(n as usize, 0);
        let mut f = File::from(tr);
        f.read_exact(&mut out)
            .context(|| format!("copying the data in {path}"))?;
    }
    Ok((size as u32, out))
}
