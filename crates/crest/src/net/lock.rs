//! The connection lock: an nftables table of crest's own that drops the
//! packets of the tree's established TCP connections, from before their
//! state is read at the dump until the restore has rebuilt them.  With a
//! peer outside the tree neither kernel then answers the other with a
//! reset meanwhile (the peer's retransmissions go unanswered and resume
//! after); between two sockets of the tree the kernels stop exchanging
//! window probes and updates, so both ends are read in agreement, and no
//! restored socket meets a peer that is not rebuilt yet.
//!
//! The table (family `inet`, named `crest-PID-…`) has a set of connections
//! per IP version (source, port, destination, port; both directions) and
//! two base chains, on the input and output hooks before connection
//! tracking, that drop what matches (except the segments crest sends
//! itself, marked with [`super::fin::MARK`]).  Its name goes into the image;
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
    /// The network namespace it is in (that of the thread that made it).
    ns: Option<std::os::fd::OwnedFd>,
}

/// Runs `f` on a thread in network namespace `ns` (here without one).
fn in_ns<T: Send>(
    ns: Option<&std::os::fd::OwnedFd>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            crest_sys::ns::setns(ns, libc::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::msg("a namespace thread panicked")))
    })
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

impl Lock {
    /// Creates an empty table for the tree of `pid`: a set of connections
    /// per IP version (source, port, destination, port) whose packets the
    /// input and output chains drop.
    pub fn create(pid: i32) -> Result<Lock> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let table = format!("crest-{pid}-{nanos:x}");
        let t = &table;
        let mut script = format!(
            "add table inet {t}\n\
             add set inet {t} c4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}\n\
             add set inet {t} c6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}\n"
        );
        // What crest sends itself to a rebuilt socket (the peer's FIN,
        // see `super::fin`) carries its mark and passes.
        let mark = super::fin::MARK;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            script += &format!(
                "add chain inet {t} {chain} {{ type filter hook {hook} priority -300; policy accept; }}\n\
                 add rule inet {t} {chain} meta mark {mark:#x} accept\n\
                 add rule inet {t} {chain} ip saddr . tcp sport . ip daddr . tcp dport @c4 drop\n\
                 add rule inet {t} {chain} ip6 saddr . tcp sport . ip6 daddr . tcp dport @c6 drop\n"
            );
        }
        nft(&script)
            .map_err(|e| Error::msg(format!("installing the connection lock {table}: {e}")))?;
        let ns = std::fs::File::open("/proc/thread-self/ns/net")
            .ok()
            .map(Into::into);
        Ok(Lock {
            table,
            keep: false,
            ns,
        })
    }

    /// Drops the packets of the connections `local` ↔ `peer`, both ways.
    pub fn add(&self, conns: &[(SocketAddr, SocketAddr)]) -> Result<()> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (l, p) in conns {
            let (l, p) = (wire(l), wire(p));
            for (a, b) in [(l, p), (p, l)] {
                let e = format!("{} . {} . {} . {}", a.ip(), a.port(), b.ip(), b.port());
                if a.is_ipv4() && b.is_ipv4() {
                    v4.push(e);
                } else {
                    v6.push(e);
                }
            }
        }
        let t = &self.table;
        let mut script = String::new();
        for (set, elems) in [("c4", v4), ("c6", v6)] {
            for chunk in elems.chunks(500) {
                script += &format!("add element inet {t} {set} {{ {} }}\n", chunk.join(", "));
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        in_ns(self.ns.as_ref(), || nft(&script))
            .map_err(|e| Error::msg(format!("locking {} connection(s): {e}", conns.len())))
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
            let _ = in_ns(self.ns.as_ref(), || remove(&self.table));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crest_table_names_reach_nft() {
        for bad in [
            "filter",
            "crest-1; flush ruleset",
            "crest-1\nadd",
            "crest-x y",
            "",
        ] {
            assert!(remove(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn v4_mapped_addresses_go_on_the_wire_as_ipv4() {
        let a: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(wire(&a), "127.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(wire(&b), b);
    }
}
