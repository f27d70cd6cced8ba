//! A network namespace that belongs to the tree's user namespace (a
//! container made with `unshare --user --net`, or by a rootless runtime):
//! CAP_NET_ADMIN inside the user namespace is what lets the container
//! configure its network, so the namespace must belong to the restored
//! user namespace, not to crest's.
//!
//! Dump: the network namespace belongs (NS_GET_USERNS) to the user
//! namespace of the process that entered it
//! ([`super::user::check_owner`]); the image records that owner
//! ([`NetState::owner`]) and the owner's creator uid (NS_GET_OWNER_UID,
//! [`UserNsState::owner_uid`]).  A user namespace nested in another of
//! the tree is refused by name.
//!
//! Restore: crest makes the tree's network namespace before any process
//! of the tree exists (its sockets are made inside first), so the user
//! namespace is made first as well, by a helper
//! (`crest_sys::userns_early::make`): as the recorded creator uid it
//! unshares the user namespace, crest writes the recorded maps, the
//! helper unshares the network namespace, which crest then configures
//! and makes the sockets in as usual ([`super::net`]).  The process that
//! entered the user namespace at the dump is then not cloned with
//! CLONE_NEWUSER but inside that very namespace
//! (`crest_sys::userns_early::clone_in`), so its new PID, mount, UTS…
//! namespaces belong to it as they did.  This takes root (crest joins
//! the network namespace and writes the maps as the creator).

use crate::error::{Error, Result};
use crate::model::{Checkpoint, Namespaces, NetState, NsId, NsState, UserNsState};
use crate::Obstacle;
use std::os::fd::OwnedFd;

/// At the dump, for the network namespace `state` of `pid`, which belongs
/// to the user namespace `user` of the tree (`pid`'s): records the owner,
/// or refuses a layout restore cannot make.
pub fn collect(
    pid: i32,
    table: &mut Namespaces,
    user: Option<NsId>,
    state: &mut NsState,
    obstacles: &mut Vec<Obstacle>,
) -> Result<()> {
    let (NsState::Net(st), Some(u)) = (state, user) else {
        return Ok(());
    };
    let Some(NsState::User(us)) = table.table.get_mut(u as usize).map(|n| &mut n.state) else {
        return Ok(());
    };
    if us.parent.is_some() {
        obstacles.push(Obstacle {
            pid,
            object: "net namespace".into(),
            reason: "its network namespace belongs to a user namespace nested in another of \
                     the tree: crest restores a network namespace owned by the tree's \
                     outermost user namespace only (not supported)"
                .into(),
        });
        return Ok(());
    }
    let fd = crest_sys::ns::open(pid, "user")?;
    us.owner_uid = Some(crest_sys::userns_early::owner_uid(&fd)?);
    st.owner = Some(u);
    Ok(())
}

/// The user namespace made ahead of its process, and its network
/// namespace.
pub struct Early {
    /// The image's user namespace it stands for.
    pub user: NsId,
    pub made: crest_sys::userns_early::Made,
}

fn owned(ckpt: &Checkpoint) -> Option<(&NetState, NsId)> {
    ckpt.namespaces.table.iter().find_map(|n| match &n.state {
        NsState::Net(st) => st.owner.map(|u| (st, u)),
        _ => None,
    })
}

/// Makes the user namespace that owns the image's network namespace, and
/// that network namespace, if the image has one so owned.
pub fn prepare(ckpt: &Checkpoint) -> Result<Option<Early>> {
    let Some((_, u)) = owned(ckpt) else {
        return Ok(None);
    };
    let us: &UserNsState = match ckpt.namespaces.table.get(u as usize).map(|n| &n.state) {
        Some(NsState::User(s)) => s,
        _ => {
            return Err(Error::Invalid(format!(
                "the network namespace's owner, namespace {u}, is not a user namespace of \
                 the image"
            )))
        }
    };
    if us.parent.is_some() {
        return Err(Error::Incompatible(format!(
            "the network namespace belongs to user namespace {u} of the image, which is nested \
             in another: not supported"
        )));
    }
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Incompatible(
            "the tree's network namespace belongs to its user namespace: restoring that \
             takes root (crest makes the user namespace as its creator and joins the network \
             namespace to make the sockets); run crest restore as root"
                .into(),
        ));
    }
    let maps = super::user::maps(&ckpt.namespaces, u)?;
    let owner = (us.owner_uid.unwrap_or(0), 0);
    let made = crest_sys::userns_early::make(owner, |pid| {
        crest_sys::ns::write_id_maps(pid, None, maps.deny_setgroups, &maps.uid_map, &maps.gid_map)
    })
    .map_err(|e| {
        Error::msg(format!(
            "making user namespace {u} of the image with its network namespace: {e}"
        ))
    })?;
    Ok(Some(Early { user: u, made }))
}

/// A second descriptor on the early network namespace (for
/// [`super::net::prepare`]).
pub fn net_fd(e: &Early) -> Result<OwnedFd> {
    e.made
        .net
        .try_clone()
        .map_err(|x| Error::msg(format!("dup of a network namespace descriptor: {x}")))
}
