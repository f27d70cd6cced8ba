//! eventfd: its 64-bit counter and semaphore mode, both in fdinfo.

use super::{hex, Refusal};
use crate::model::OpenTarget;
use crest_sys::proc::FdInfo;

pub(super) fn collect(info: &FdInfo) -> Refusal<OpenTarget> {
    let count = hex(
        info.get("eventfd-count")
            .ok_or("fdinfo has no eventfd-count line")?,
        "eventfd-count",
    )?;
    let semaphore = match info.get("eventfd-semaphore") {
        Some("0") => false,
        Some("1") => true,
        Some(s) => return Err(format!("fdinfo: bad eventfd-semaphore {s:?}")),
        None => {
            return Err("this kernel does not show whether an eventfd is in semaphore mode".into())
        }
    };
    Ok(OpenTarget::Eventfd { count, semaphore })
}

#[cfg(test)]
mod tests {
    use super::super::info;
    use super::*;

    #[test]
    fn eventfd_lines() {
        let i = info("pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:        12345678e\neventfd-id: 1\neventfd-semaphore: 1\n");
        assert_eq!(
            collect(&i),
            Ok(OpenTarget::Eventfd {
                count: 0x1_2345_678e,
                semaphore: true
            })
        );
        let old = info("pos:\t0\nflags:\t02\neventfd-count:        0\neventfd-id: 1\n");
        assert!(collect(&old).is_err());
    }
}
