//! signalfd: the signal mask it reads, from fdinfo.  (Registered in an
//! epoll, it is added by the process itself: see
//! [`super::epoll::add_process_targets`].)

use super::{hex, Refusal};
use crate::model::OpenTarget;
use crest_sys::proc::FdInfo;

pub(super) fn collect(info: &FdInfo) -> Refusal<OpenTarget> {
    let mask = hex(
        info.get("sigmask").ok_or("fdinfo has no sigmask line")?,
        "sigmask",
    )?;
    Ok(OpenTarget::Signalfd { mask })
}
