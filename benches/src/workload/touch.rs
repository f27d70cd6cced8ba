//! `touch MIB REPS`: the machine's bound for a restore. Copies MIB MiB from
//! a pre-faulted source into fresh anonymous memory in 1 MiB pieces (every
//! page is first-touched by the copy), then copies it again into the now
//! faulted memory (plain memcpy), and once more with process_vm_readv (how
//! a dumper copies another process's memory; here our own). Prints the
//! times as JSON on stdout.

use std::time::Instant;

use crest_bench::{pattern, MIB};

use crate::region::Region;

fn copy_all(src: &Region, dst: &mut Region) {
    let piece = MIB as usize;
    let s = src.bytes();
    let d = dst.bytes_mut();
    for (d, s) in d.chunks_mut(piece).zip(s.chunks(piece)) {
        d.copy_from_slice(s);
    }
    std::hint::black_box(&d[d.len() - 1]);
}

/// Copies `src` into `dst` with process_vm_readv on ourselves, 64 MiB per
/// call.
fn vm_readv_all(src: &Region, dst: &mut Region) -> Result<(), String> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let len = src.len().min(dst.len());
    let (s, d) = (src.addr(), dst.bytes_mut().as_mut_ptr());
    let mut off = 0usize;
    while off < len {
        let n = (len - off).min(64 << 20);
        let local = libc::iovec {
            // SAFETY: `off + n <= len`: inside `dst`.
            iov_base: unsafe { d.add(off) }.cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: (s + off) as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: one local iovec inside our own writable `dst`; the remote
        // one is inside `src`, which is mapped readable in this process.
        let r = unsafe { libc::process_vm_readv(me, &local, 1, &remote, 1, 0) };
        if r <= 0 {
            return Err(format!(
                "process_vm_readv at offset {off}: {}",
                if r < 0 {
                    std::io::Error::last_os_error().to_string()
                } else {
                    "copied nothing".into()
                }
            ));
        }
        off += r as usize;
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let parse = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let (Some(mib), Some(reps)) = (parse(0), parse(1)) else {
        return Err("usage: touch MIB REPS".into());
    };
    let bytes = mib * MIB as usize;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let mut src = Region::new(bytes, rw).map_err(|e| format!("mmap: {e}"))?;
    pattern::fill(src.words_mut(), 1, 0);
    let mut touch = Vec::new();
    let mut copy = Vec::new();
    let mut readv = Vec::new();
    for _ in 0..reps.max(1) {
        let mut dst = Region::new(bytes, rw).map_err(|e| format!("mmap: {e}"))?;
        let t = Instant::now();
        copy_all(&src, &mut dst);
        touch.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        copy_all(&src, &mut dst);
        copy.push(t.elapsed().as_secs_f64() * 1e3);
        if dst.words()[dst.words().len() / 2] != src.words()[src.words().len() / 2] {
            return Err("copy mismatch".into());
        }
        dst.words_mut().fill(0);
        let t = Instant::now();
        vm_readv_all(&src, &mut dst)?;
        readv.push(t.elapsed().as_secs_f64() * 1e3);
        if dst.words()[dst.words().len() - 1] != src.words()[src.words().len() - 1] {
            return Err("process_vm_readv copy mismatch".into());
        }
    }
    let out = serde_json::json!({
        "mib": mib,
        "first_touch_ms": touch,
        "memcpy_ms": copy,
        "vm_readv_ms": readv,
    });
    println!("{out}");
    Ok(())
}
