//! The connection lock: an nftables table of crest's own that drops the
//! packets of TCP connections whose peer is outside the tree, from the
//! moment their state is read at the dump until the restore has rebuilt
//! them, so that neither kernel answers the other with a reset meanwhile
//! (the peer's retransmissions simply go unanswered and resume after).
//!
//! The table (family `inet`, named `crest-PID-…`) has two base chains, on
//! the input and output hooks before connection tracking, each with one
//! drop rule per connection and direction.  Its name goes into the image;
//! restore deletes it once the sockets are back (or when it fails), the
//! dump deletes it itself when it fails or the tree runs on.

use crate::error::{Error, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// A table installed by this process; deleted on drop unless kept.
pub struct Lock {
    pub table: String,
    keep: bool,
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::msg(format!(
                "running nft (the nftables command, needed to hold the packets of \
                 connections to peers outside the tree): {e}"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| Error::msg(format!("writing to nft: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::msg(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The IPv4 address of a v4-mapped IPv6 one: that is what goes on the wire.
fn wire(a: &SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip4) => SocketAddr::new(ip4.into(), v.port()),
            None => *a,
        },
        _ => *a,
    }
}

fn match_of(src: &SocketAddr, dst: &SocketAddr) -> String {
    let fam = if src.is_ipv4() { "ip" } else { "ip6" };
    format!(
        "{fam} saddr {} {fam} daddr {} tcp sport {} tcp dport {}",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

impl Lock {
    /// Creates an empty table for the tree of `pid`.
    pub fn create(pid: i32) -> Result<Lock> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let table = format!("crest-{pid}-{nanos:x}");
        nft(&format!(
            "add table inet {table}\n\
             add chain inet {table} in {{ type filter hook input priority -300; policy accept; }}\n\
             add chain inet {table} out {{ type filter hook output priority -300; policy accept; }}\n"
        ))
        .map_err(|e| Error::msg(format!("installing the connection lock {table}: {e}")))?;
        Ok(Lock { table, keep: false })
    }

    /// Drops the packets of the connection `local` ↔ `peer` both ways.
    pub fn add(&self, local: &SocketAddr, peer: &SocketAddr) -> Result<()> {
        let (l, p) = (wire(local), wire(peer));
        let t = &self.table;
        nft(&format!(
            "add rule inet {t} in {} drop\nadd rule inet {t} out {} drop\n",
            match_of(&p, &l),
            match_of(&l, &p)
        ))
        .map_err(|e| Error::msg(format!("locking the connection {l} -> {p}: {e}")))
    }

    /// Leaves the table in place (the image names it; restore removes it).
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.table.clone()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove(&self.table);
        }
    }
}

/// Deletes table `table`; one already gone is not an error.
pub fn remove(table: &str) -> Result<()> {
    if !table.starts_with("crest-")
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "{table:?} is not the name of a crest connection lock"
        )));
    }
    match nft(&format!("delete table inet {table}\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("No such file") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether table `table` exists (for tests and `inspect`).
pub fn exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes, when dropped, the locks an image names: a restore holds one
/// from the moment it knows them, so they go whether it succeeds or fails.
#[derive(Default)]
pub struct Pending(pub Vec<String>);

impl Pending {
    pub fn note(&mut self, o: &crate::model::Object) {
        if let crate::model::ObjectKind::Open(crate::model::OpenFile {
            target: crate::model::OpenTarget::Inet(s),
            ..
        }) = &o.kind
        {
            if let Some(t) = &s.lock_table {
                if !self.0.contains(t) {
                    self.0.push(t.clone());
                }
            }
        }
    }

    /// Removes them now (the sockets are back).
    pub fn release(&mut self) -> Result<()> {
        for t in self.0.drain(..) {
            remove(&t)?;
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        for t in self.0.drain(..) {
            let _ = remove(&t);
        }
    }
}
