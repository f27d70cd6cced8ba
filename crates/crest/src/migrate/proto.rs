//! The migration protocol, version 1: the messages and their order.
//!
//! ```text
//! source                                   destination
//!   HELLO_S (magic, version, flags, nonce_s, host identity)   untagged
//!                                  <-  HELLO_D (version, nonce_d, host identity)
//!                                  <-  KEYOK (first tagged frame: it holds the key)
//!   -- both sides derive the keys; every frame from here on is tagged --
//!   DATA* (the image stream, in pieces)
//!   END (bytes, frames)
//! or, pre-copied (the tree runs during the PRE frames, then is frozen):
//!   PRE* (spool offset, page bytes) ... freeze ... PRE* (pages written since)
//!   (or LAYOUT (pid, mappings) per process and PRE_AT (offset, pid,
//!   address, bytes) instead of PRE: the destination pre-builds memory)
//!   META* (an image without pages)  WINDOWS* (spool bytes of each chunk)
//!   END_PRE (spool bytes, metadata bytes, windows)
//!                                  <-  REFUSE (why)      stream not accepted
//!                                  <-  RUNNING (pid)     restored, it runs
//!                                  <-  FAILED (why)      restore failed
//! handover only (same PID space, see below):
//!                                  <-  READY             all verified, PIDs needed
//!   the source kills its frozen tree; GO (or ABORT (why))
//!                                  <-  RUNNING / FAILED
//! ```
//!
//! The source's tree is frozen before the first DATA and stays frozen
//! until RUNNING: then it is killed.  Anything else (REFUSE, FAILED, the
//! connection closing, a bad tag, a timeout) resumes it.
//!
//! Handover: when both sides share the PID space (same boot id and same
//! PID namespace: two crests on one machine), the restored tree needs the
//! PIDs the source tree holds.  The destination then receives and checks
//! the whole stream first and says READY; the source, which kept a copy of
//! the image, kills its tree and says GO; if the destination then fails
//! (FAILED, or the connection ends), the source restores the tree from its
//! copy, on the source.
//!
//! Post-copy (`migrate --lazy`, to `restore --listen --lazy` in another
//! PID space): LAZY_INDEX* then DATA* (an image whose lazily restored
//! pages are left out) and END; the destination restores at once and
//! says RUNNING; meanwhile the source sends PAGES (those asked for by
//! PAGE_REQ first) until the destination says ALL_IN; the source kills
//! its tree only then.  A failure after END (ABORT from the source, the
//! connection lost) kills the destination's tree; see `postcopy` for
//! the source's.
//!
//! One-way streams (`--to - --one-way`): no message goes back; HELLO_D is
//! not sent and its nonce counts as zero.  The source kills its tree once
//! the stream is written and flushed, as `dump -o -` does.

use crate::error::{Error, Result};
use crate::migrate::transport::NONCE_LEN;

pub const VERSION: u16 = 1;
pub const MAGIC: &[u8; 8] = b"CRESTMIG";

pub const HELLO_S: u8 = 1;
pub const HELLO_D: u8 = 2;
pub const DATA: u8 = 3;
pub const END: u8 = 4;
pub const READY: u8 = 5;
pub const REFUSE: u8 = 6;
pub const RUNNING: u8 = 7;
pub const FAILED: u8 = 8;
pub const GO: u8 = 9;
pub const ABORT: u8 = 10;
/// The destination's first tagged frame (empty): proves it holds the key.
pub const KEYOK: u8 = 11;

/// Pre-copied migration (see `precopied`): a stretch of the source's page
/// spool (`offset u64` then the bytes, offsets contiguous from 0).
pub const PRE: u8 = 12;
/// Pre-copied migration: part of the metadata image (an image without pages).
pub const META: u8 = 13;
/// Pre-copied migration: encoded page windows (see `image`).
pub const WINDOWS: u8 = 14;
/// Pre-copied migration: the end (spool bytes, metadata bytes, windows).
pub const END_PRE: u8 = 15;

/// Post-copy (see `postcopy`): the pages left out of the image, as runs
/// `space u32, addr u64, pages u64` (sent before the image's DATA).
pub const LAZY_INDEX: u8 = 16;
/// Post-copy, source → destination: `space u32, addr u64`, then pages.
pub const PAGES: u8 = 17;
/// Post-copy, destination → source: `space u32, addr u64, pages u32`
/// wanted now (a task waits on them).
pub const PAGE_REQ: u8 = 18;
/// Post-copy, destination → source: every page is in (the source may
/// kill its tree).
pub const ALL_IN: u8 = 19;
/// Pre-copied migration, pre-built (see `prebuild`): a process's private
/// anonymous mappings, sent before its first pages.
pub const LAYOUT: u8 = 24;
/// Pre-copied migration, pre-built: PRE with the pid and address the
/// bytes were read at (`offset u64, pid i32, addr u64`, then the bytes).
pub const PRE_AT: u8 = 25;

/// HELLO_S flag: no reply channel.
pub const ONE_WAY: u8 = 1;
/// Flag: the sender holds a pre-shared key.
pub const KEYED: u8 = 2;

/// Which kernel and PID namespace a side runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostId {
    pub boot_id: String,
    pub pidns: u64,
}

impl HostId {
    pub fn here() -> Result<HostId> {
        use std::os::unix::fs::MetadataExt;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map_err(|e| Error::msg(format!("reading the boot id: {e}")))?
            .trim()
            .to_string();
        let pidns = std::fs::metadata("/proc/self/ns/pid")
            .map_err(|e| Error::msg(format!("reading the PID namespace: {e}")))?
            .ino();
        Ok(HostId { boot_id, pidns })
    }
}

/// A hello, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub flags: u8,
    pub nonce: [u8; NONCE_LEN],
    pub host: HostId,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(96);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.push(self.flags);
        v.extend_from_slice(&self.nonce);
        v.extend_from_slice(&self.host.pidns.to_le_bytes());
        let b = self.host.boot_id.as_bytes();
        v.push(b.len().min(255) as u8);
        v.extend_from_slice(&b[..b.len().min(255)]);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Hello> {
        let bad = || Error::msg("the peer does not speak the crest migration protocol");
        if b.len() < 8 + 2 + 1 + NONCE_LEN + 8 + 1 || &b[..8] != MAGIC {
            return Err(bad());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(Error::msg(format!(
                "the peer speaks migration protocol version {version}, this crest version {VERSION}"
            )));
        }
        let flags = b[10];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[11..11 + NONCE_LEN]);
        let at = 11 + NONCE_LEN;
        let pidns = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let n = b[at + 8] as usize;
        let boot = b.get(at + 9..at + 9 + n).ok_or_else(bad)?;
        Ok(Hello {
            version,
            flags,
            nonce,
            host: HostId {
                boot_id: String::from_utf8_lossy(boot).into_owned(),
                pidns,
            },
        })
    }
}

/// END: what the stream held, so that a cut is noticed.
pub fn encode_end(bytes: u64, frames: u64) -> Vec<u8> {
    let mut v = bytes.to_le_bytes().to_vec();
    v.extend_from_slice(&frames.to_le_bytes());
    v
}

pub fn decode_end(b: &[u8]) -> Result<(u64, u64)> {
    if b.len() != 16 {
        return Err(Error::msg("malformed END message"));
    }
    Ok((
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ))
}

pub fn encode_end_pre(spool: u64, meta: u64, windows: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for x in [spool, meta, windows] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

pub fn decode_end_pre(b: &[u8]) -> Result<(u64, u64, u64)> {
    if b.len() != 24 {
        return Err(Error::msg("malformed END message"));
    }
    let f = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok((f(0), f(1), f(2)))
}

/// A message text from the peer, made safe to print.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_refusals() {
        let h = Hello {
            version: VERSION,
            flags: KEYED,
            nonce: [9; NONCE_LEN],
            host: HostId {
                boot_id: "abc-def".into(),
                pidns: 4026531836,
            },
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut other = h.encode();
        other[8] = 2;
        assert!(Hello::decode(&other)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(Hello::decode(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(decode_end(&encode_end(7, 3)).unwrap(), (7, 3));
    }
}
