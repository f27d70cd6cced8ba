//! The authenticated framing of a migration connection.
//!
//! Everything on the wire is a frame: `type (u8) | length (u32 LE) |
//! payload | tag (32 bytes)`.  The tag is HMAC-SHA256, under the key of
//! the frame's direction, of `sequence number (u64 LE) | type | length |
//! payload`; the sequence number counts the frames of that direction from
//! 0, so a frame dropped, repeated or moved is refused like a changed one.
//! Only the source's hello (which carries its nonce) has no tag.
//!
//! The two direction keys are derived from the pre-shared key and both
//! sides' nonces:
//! `prk = HMAC(psk, "crest-migrate/1" | nonce_source | nonce_destination)`,
//! `key(source→destination) = HMAC(prk, "s>d")`, `key(d→s) = HMAC(prk, "d>s")`.
//! The destination's nonce is fresh for every connection, so a recorded
//! stream replayed to it fails at its first tagged frame.  On a one-way
//! stream (no reply channel) the destination's nonce is all zero: such a
//! stream is authenticated but can be replayed.
//!
//! Without a pre-shared key the key is empty: the tags then only catch
//! corruption, they prove nothing about the peer (allowed only on a
//! standard-input stream, never on a TCP port).
//!
//! Frames are authenticated, not encrypted: the memory of the migrated
//! tree crosses the link in the clear.

use crate::error::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};

type HmacSha256 = Hmac<Sha256>;

/// Length of a tag and of a nonce.
pub const TAG_LEN: usize = 32;
pub const NONCE_LEN: usize = 32;
/// Largest payload accepted.
pub const MAX_FRAME: usize = 4 << 20;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 5;

/// A pre-shared key, as read from `--psk FILE`.
#[derive(Clone)]
pub struct Psk(Vec<u8>);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

impl Psk {
    /// At least this many bytes of key.
    pub const MIN_LEN: usize = 16;

    pub fn new(bytes: Vec<u8>) -> Result<Psk> {
        if bytes.len() < Self::MIN_LEN {
            return Err(Error::msg(format!(
                "the key holds {} bytes, at least {} are needed \
                 (e.g. head -c 32 /dev/urandom > KEYFILE)",
                bytes.len(),
                Self::MIN_LEN
            )));
        }
        Ok(Psk(bytes))
    }

    /// Reads a key file (its bytes as they are).
    pub fn read(path: &std::path::Path) -> Result<Psk> {
        let b = std::fs::read(path)
            .map_err(|e| Error::msg(format!("reading the key file {}: {e}", path.display())))?;
        Psk::new(b)
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut got = 0;
    while got < n.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let r = unsafe { libc::getrandom(n[got..].as_mut_ptr().cast(), n.len() - got, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::msg(format!("getrandom: {e}")));
        }
        got += r as usize;
    }
    Ok(n)
}

/// The keys of both directions of one session.
pub struct Keys {
    pub to_dest: [u8; 32],
    pub to_source: [u8; 32],
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Keys {
    pub fn derive(psk: Option<&Psk>, source: &[u8; NONCE_LEN], dest: &[u8; NONCE_LEN]) -> Keys {
        let key = psk.map(|p| p.0.as_slice()).unwrap_or(&[]);
        let prk = hmac(key, &[b"crest-migrate/1", source, dest]);
        Keys {
            to_dest: hmac(&prk, &[b"s>d"]),
            to_source: hmac(&prk, &[b"d>s"]),
        }
    }
}

fn tag(key: &[u8; 32], seq: u64, ty: u8, payload: &[u8]) -> [u8; 32] {
    let len = (payload.len() as u32).to_le_bytes();
    hmac(key, &[&seq.to_le_bytes(), &[ty], &len, payload])
}

/// The sending half: frames, tagged once a key is set.
pub struct Sender {
    w: Box<dyn Write + Send>,
    key: Option<[u8; 32]>,
    seq: u64,
    /// Bytes written so far (headers and tags included).
    pub bytes: u64,
}

impl Sender {
    pub fn new(w: Box<dyn Write + Send>) -> Sender {
        Sender {
            w,
            key: None,
            seq: 0,
            bytes: 0,
        }
    }

    pub fn set_key(&mut self, key: [u8; 32]) {
        self.key = Some(key);
    }

    /// Writes one frame (not flushed).
    pub fn send(&mut self, ty: u8, payload: &[u8]) -> io::Result<()> {
        assert!(payload.len() <= MAX_FRAME, "frame too large");
        let mut head = [0u8; HEADER_LEN];
        head[0] = ty;
        head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let t = self.key.map(|k| tag(&k, self.seq, ty, payload));
        let mut parts: Vec<io::IoSlice> = vec![io::IoSlice::new(&head), io::IoSlice::new(payload)];
        if let Some(t) = &t {
            parts.push(io::IoSlice::new(t));
            self.seq += 1;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        write_all_vectored(&mut self.w, &mut parts)?;
        self.bytes += total as u64;
        Ok(())
    }

    /// Writes one frame and flushes.
    pub fn send_now(&mut self, ty: u8, payload: &[u8]) -> io::Result<()> {
        self.send(ty, payload)?;
        self.w.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

fn write_all_vectored(w: &mut dyn Write, mut parts: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    while !parts.is_empty() {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The receiving half: checks each frame's tag before handing it out.
pub struct Receiver {
    r: Box<dyn Read + Send>,
    key: Option<[u8; 32]>,
    seq: u64,
    pub bytes: u64,
}

/// Why a frame could not be received.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection (between frames or inside one).
    Closed {
        inside_frame: bool,
    },
    Io(io::Error),
    /// The frame's tag is wrong: changed, replayed, or another key.
    BadTag {
        seq: u64,
    },
    TooLarge(usize),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed {
                inside_frame: false,
            } => write!(f, "the peer closed the connection"),
            RecvError::Closed { inside_frame: true } => {
                write!(
                    f,
                    "the connection ended in the middle of a frame (truncated stream)"
                )
            }
            RecvError::Io(e) => write!(f, "{e}"),
            RecvError::BadTag { seq } => write!(
                f,
                "frame {seq} failed authentication (wrong key, replayed or changed in transit)"
            ),
            RecvError::TooLarge(n) => write!(f, "a frame of {n} bytes is larger than allowed"),
        }
    }
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Error {
        Error::msg(e.to_string())
    }
}

impl Receiver {
    pub fn new(r: Box<dyn Read + Send>) -> Receiver {
        Receiver {
            r,
            key: None,
            seq: 0,
            bytes: 0,
        }
    }

    pub fn set_key(&mut self, key: [u8; 32]) {
        self.key = Some(key);
    }

    fn fill(&mut self, buf: &mut [u8], started: bool) -> std::result::Result<(), RecvError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(RecvError::Closed {
                        inside_frame: started || got > 0,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Receives one frame into `payload` (replacing its contents); returns
    /// its type.  With a key set, the frame is returned only if its tag
    /// is right.
    pub fn recv(&mut self, payload: &mut Vec<u8>) -> std::result::Result<u8, RecvError> {
        let mut head = [0u8; HEADER_LEN];
        self.fill(&mut head, false)?;
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(RecvError::TooLarge(len));
        }
        payload.resize(len, 0);
        self.fill(payload, true)?;
        if let Some(k) = self.key {
            let mut t = [0u8; TAG_LEN];
            self.fill(&mut t, true)?;
            // Constant time: the tag is compared by the MAC library.
            let mut m = HmacSha256::new_from_slice(&k).expect("any key length");
            m.update(&self.seq.to_le_bytes());
            m.update(&[head[0]]);
            m.update(&(len as u32).to_le_bytes());
            m.update(payload);
            if m.verify_slice(&t).is_err() {
                return Err(RecvError::BadTag { seq: self.seq });
            }
            self.seq += 1;
        }
        Ok(head[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn keys(k: &[u8], d: u8) -> Keys {
        Keys::derive(Some(&Psk::new(k.to_vec()).unwrap()), &[1; 32], &[d; 32])
    }

    fn stream(k: &Keys) -> Vec<u8> {
        let out = Shared::default();
        let mut s = Sender::new(Box::new(out.clone()));
        s.set_key(k.to_dest);
        s.send(3, b"hello pages").unwrap();
        s.send(4, b"end").unwrap();
        let v = out.0.lock().unwrap().clone();
        v
    }

    fn receive(bytes: Vec<u8>, k: &Keys) -> std::result::Result<Vec<(u8, Vec<u8>)>, String> {
        let mut r = Receiver::new(Box::new(io::Cursor::new(bytes)));
        r.set_key(k.to_dest);
        let mut out = Vec::new();
        let mut p = Vec::new();
        loop {
            match r.recv(&mut p) {
                Ok(t) => out.push((t, p.clone())),
                Err(RecvError::Closed {
                    inside_frame: false,
                }) => return Ok(out),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let k = keys(b"0123456789abcdef", 7);
        let got = receive(stream(&k), &k).unwrap();
        assert_eq!(
            got,
            vec![(3, b"hello pages".to_vec()), (4, b"end".to_vec())]
        );
    }

    #[test]
    fn wrong_key_changed_byte_other_nonce_and_truncation_are_refused() {
        let k = keys(b"0123456789abcdef", 7);
        let s = stream(&k);
        let wrong = keys(b"0123456789abcdeX", 7);
        assert!(receive(s.clone(), &wrong)
            .unwrap_err()
            .contains("authentication"));
        // Replayed to a session with another destination nonce.
        let replay = keys(b"0123456789abcdef", 8);
        assert!(receive(s.clone(), &replay)
            .unwrap_err()
            .contains("authentication"));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x20;
            assert!(receive(t, &k).is_err(), "flipped byte {i} accepted");
        }
        let mut t = s.clone();
        t.truncate(s.len() - 3);
        assert!(receive(t, &k).unwrap_err().contains("truncated"));
        // Frames swapped: the sequence numbers differ.
        let first = HEADER_LEN + 11 + TAG_LEN;
        let mut t = s[first..].to_vec();
        t.extend_from_slice(&s[..first]);
        assert!(receive(t, &k).is_err());
    }
}
