//! Giving up identity and capabilities: the master's privilege drop.
//!
//! Started as root ([`drop_to`]), in this order: clear the capability
//! bounding set (needs CAP_SETPCAP, so while still root); setgroups to the
//! service user's primary group only; setresgid; setresuid; verify that the
//! old gid and uid cannot be regained; clear the ambient, inheritable,
//! effective and permitted sets (the uid change does not clear inheritable);
//! set no_new_privs. Started as another user ([`drop_caps`]): no identity
//! change, but the same capability clearing and no_new_privs. [`verify`]
//! then reads everything back and fails unless it all holds.
//!
//! Capabilities are per thread: this runs before any thread exists (chatd
//! never starts one).

use super::user::ServiceUser;
use super::{Step, StepError};
use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::unistd::{getresgid, getresuid, setgroups, setresgid, setresuid, Gid, Uid};

/// Switches a root process to `user` for good.
pub fn drop_to(user: &ServiceUser) -> Result<(), StepError> {
    let (old_uid, old_gid) = (
        getresuid().step("getresuid")?,
        getresgid().step("getresgid")?,
    );
    caps::clear(None, CapSet::Bounding).step("clear capability bounding set")?;
    setgroups(&[user.gid]).step("setgroups")?;
    setresgid(user.gid, user.gid, user.gid).step("setresgid")?;
    setresuid(user.uid, user.uid, user.uid).step("setresuid")?;
    // Each of these must now be refused.
    expect_eperm(
        "regain uid",
        setresuid(old_uid.real, old_uid.real, old_uid.real),
    )?;
    expect_eperm(
        "regain uid",
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
    )?;
    if old_gid.real != user.gid {
        expect_eperm(
            "regain gid",
            setresgid(old_gid.real, old_gid.real, old_gid.real),
        )?;
    }
    expect_eperm(
        "regain gid",
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
    )?;
    expect_eperm("regain groups", setgroups(&[Gid::from_raw(0)]))?;
    drop_caps()
}

/// Clears every capability this process can clear, then sets no_new_privs.
pub fn drop_caps() -> Result<(), StepError> {
    // Without CAP_SETPCAP the bounding set cannot shrink; no_new_privs below
    // makes it unreachable anyway (nothing can raise a capability through
    // execve any more). systemd's CapabilityBoundingSet= empties it for us.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).step("clear capability bounding set")?;
    }
    // Only sets that hold something: capset on empty sets is a no-op that a
    // unit's SystemCallFilter=~@privileged would refuse.
    for (set, step) in [
        (CapSet::Ambient, "clear ambient capabilities"),
        (CapSet::Inheritable, "clear inheritable capabilities"),
        (CapSet::Effective, "clear effective capabilities"),
        (CapSet::Permitted, "clear permitted capabilities"),
    ] {
        if !caps::read(None, set).step(step)?.is_empty() {
            caps::clear(None, set).step(step)?;
        }
    }
    nix::sys::prctl::set_no_new_privs().step("no_new_privs")?;
    Ok(())
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    /// Whether the bounding set is empty too (it cannot be emptied without
    /// CAP_SETPCAP, so an unprivileged start may keep an inherited one).
    pub bounding_empty: bool,
}

/// Reads the credentials back: no capability in the ambient, inheritable,
/// effective or permitted set, no_new_privs set, and, when `uid` is given,
/// real, effective and saved uid and gid all that user's and no other group.
pub fn verify(user: Option<&ServiceUser>) -> Result<Verified, StepError> {
    const STEP: &str = "verify privileges";
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        let held = caps::read(None, set).step(STEP)?;
        if !held.is_empty() {
            return Err(StepError::new(
                STEP,
                format!("{set:?} set still holds {held:?}"),
            ));
        }
    }
    if !nix::sys::prctl::get_no_new_privs().step(STEP)? {
        return Err(StepError::new(STEP, "no_new_privs is not set"));
    }
    if let Some(u) = user {
        let (r, g) = (getresuid().step(STEP)?, getresgid().step(STEP)?);
        if [r.real, r.effective, r.saved] != [u.uid; 3]
            || [g.real, g.effective, g.saved] != [u.gid; 3]
        {
            return Err(StepError::new(STEP, "uid or gid is not the service user's"));
        }
        let groups = nix::unistd::getgroups().step(STEP)?;
        if groups.iter().any(|&x| x != u.gid) {
            return Err(StepError::new(
                STEP,
                format!("supplementary groups remain: {groups:?}"),
            ));
        }
    }
    let bounding = caps::read(None, CapSet::Bounding).step(STEP)?;
    if user.is_some() && !bounding.is_empty() {
        return Err(StepError::new(
            STEP,
            format!("bounding set still holds {bounding:?}"),
        ));
    }
    Ok(Verified {
        bounding_empty: bounding.is_empty(),
    })
}

fn expect_eperm(step: &'static str, r: nix::Result<()>) -> Result<(), StepError> {
    match r {
        Err(Errno::EPERM) => Ok(()),
        Ok(()) => Err(StepError::new(step, "succeeded after the privilege drop")),
        Err(e) => Err(StepError::new(step, format!("expected EPERM, got {e}"))),
    }
}
