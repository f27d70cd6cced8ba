//! UTS namespaces: the host name and domain name.
//!
//! Dump reads them from a thread of crest that joins the namespace for a
//! moment; restore creates the namespace with the process that first
//! entered it (CLONE_NEWUTS) and that new process sets both names before
//! anything else (see `crate::restore::stub`).

use crate::error::{Context, Result};
use crate::model::NsState;

/// The names in the UTS namespace of `pid`.
pub fn collect(pid: i32) -> Result<NsState> {
    let (hostname, domainname) =
        crest_sys::ns::run_in(pid, "uts", libc::CLONE_NEWUTS, crest_sys::ns::uts_names)
            .context(|| format!("reading the UTS namespace of pid {pid}"))??;
    Ok(NsState::Uts {
        hostname,
        domainname,
    })
}

/// The names a stub creating this namespace sets, as bytes.
pub fn names(state: &NsState) -> Option<(Vec<u8>, Vec<u8>)> {
    match state {
        NsState::Uts {
            hostname,
            domainname,
        } => Some((hostname.as_bytes().to_vec(), domainname.as_bytes().to_vec())),
        _ => None,
    }
}
