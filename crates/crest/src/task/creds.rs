//! Credentials: uids, gids, supplementary groups, capabilities,
//! securebits and no_new_privs.
//!
//! Restore sets them last (after everything that needs crest's
//! privilege), in the order the kernel demands: bounding set, groups and
//! gids, then uids with capabilities kept across the change, then the
//! capability sets themselves.

use crate::error::Result;
use crate::model::Creds;
use crate::task::freeze::{Call, Inject};
use crest_sys::proc::Status;

const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Reads credentials from /proc status plus securebits from the task.
pub fn collect(t: &impl Inject, st: &Status) -> Result<Creds> {
    let securebits = t.prctl(libc::PR_GET_SECUREBITS, &[], "reading securebits")? as u32;
    Ok(Creds {
        uids: st.uid,
        gids: st.gid,
        groups: st.groups.clone(),
        cap_inh: st.cap_inh,
        cap_prm: st.cap_prm,
        cap_eff: st.cap_eff,
        cap_bnd: st.cap_bnd,
        cap_amb: st.cap_amb,
        securebits,
        no_new_privs: st.no_new_privs != 0,
    })
}

/// Refuses to give a restored process more privilege than crest's caller
/// has: a caller that is not root may only restore processes running as
/// its own user and group, and nobody may restore capabilities beyond
/// those crest itself holds (permitted set).  The capabilities of a
/// process in a user namespace of the image (`in_userns`) are not
/// compared: they hold only in the namespace restore makes, which
/// belongs to crest's caller.
pub fn check_restorable(pid: i32, c: &Creds, in_userns: bool) -> Result<()> {
    let me = crest_sys::proc::read_status(std::process::id() as i32)?;
    let mut why = Vec::new();
    if me.uid[1] != 0 {
        let mine_u = me.uid[0];
        let mine_g = me.gid[0];
        if c.uids.iter().any(|&u| u != mine_u) {
            why.push(format!(
                "it runs as uid {:?} and you are uid {mine_u}",
                c.uids
            ));
        }
        if c.gids.iter().any(|&g| g != mine_g) || c.groups.iter().any(|g| !me.groups.contains(g)) {
            why.push(format!(
                "it has gids {:?} and groups {:?}, which you do not",
                c.gids, c.groups
            ));
        }
    }
    let extra = (c.cap_prm | c.cap_eff | c.cap_inh | c.cap_amb) & !me.cap_prm;
    if extra != 0 && !in_userns {
        why.push(format!(
            "it holds capabilities {extra:#x} that crest does not have"
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::msg(format!(
            "restoring pid {pid} would give it more privilege than you have: {}",
            why.join("; ")
        )))
    }
}

/// Highest capability number this kernel knows.
pub fn cap_last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Sets the credentials of the task's thread (every call queued), ids as
/// its user namespace sees them.  `fixed_groups`: its user namespace
/// denies setgroups, so the supplementary groups stay as they are.
pub fn restore(t: &impl Inject, c: &Creds, fixed_groups: bool) -> Result<()> {
    let prctl = |args: &[u64], what: String| t.queue(Call::new(libc::SYS_prctl, args, what));
    for cap in 0..=cap_last_cap() {
        if c.cap_bnd & (1u64 << cap) == 0 {
            prctl(
                &[libc::PR_CAPBSET_DROP as u64, cap as u64],
                format!("dropping capability {cap} from the bounding set"),
            )?;
        }
    }
    if !fixed_groups {
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        let at = t.place(&groups)?;
        t.queue(Call::new(
            libc::SYS_setgroups,
            &[c.groups.len() as u64, at],
            "setting supplementary groups".into(),
        ))?;
    }
    let [rg, eg, sg, fg] = c.gids.map(u64::from);
    t.queue(Call::new(
        libc::SYS_setresgid,
        &[rg, eg, sg],
        "setting gids".into(),
    ))?;
    t.queue(Call::new(
        libc::SYS_setfsgid,
        &[fg],
        "setting the fs gid".into(),
    ))?;
    let keep = c.securebits as u64 | SECBIT_KEEP_CAPS;
    prctl(
        &[libc::PR_SET_SECUREBITS as u64, keep],
        "setting securebits".into(),
    )?;
    let [ru, eu, su, fu] = c.uids.map(u64::from);
    t.queue(Call::new(
        libc::SYS_setresuid,
        &[ru, eu, su],
        "setting uids".into(),
    ))?;
    t.queue(Call::new(
        libc::SYS_setfsuid,
        &[fu],
        "setting the fs uid".into(),
    ))?;
    // capset v3: header {version, pid}, then two {effective, permitted,
    // inheritable} u32 triples (low and high halves).
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    b.extend_from_slice(&0i32.to_ne_bytes());
    for half in [0, 32] {
        for set in [c.cap_eff, c.cap_prm, c.cap_inh] {
            b.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
        }
    }
    let s = t.place(&b)?;
    t.queue(Call::new(
        libc::SYS_capset,
        &[s, s + 8],
        "setting capabilities".into(),
    ))?;
    for cap in 0..=cap_last_cap() {
        if c.cap_amb & (1u64 << cap) != 0 {
            prctl(
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap as u64,
                ],
                format!("raising ambient capability {cap}"),
            )?;
        }
    }
    if keep != c.securebits as u64 {
        // Only KEEP_CAPS differs, and clearing it needs no CAP_SETPCAP
        // (which the task may no longer have).
        prctl(
            &[libc::PR_SET_KEEPCAPS as u64, 0],
            "clearing keep-caps".into(),
        )?;
    }
    if c.no_new_privs {
        prctl(
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            "setting no_new_privs".into(),
        )?;
    }
    Ok(())
}
