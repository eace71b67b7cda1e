//! Landlock: a child may open, create, execute or connect nothing.
//!
//! The ruleset handles every filesystem access right (and TCP bind/connect,
//! and the abstract-socket and signal scopes where the kernel knows them)
//! and grants none. It needs no privilege, so it also confines children of
//! a chatd started unprivileged, where there is no chroot. On a kernel
//! without Landlock the master says so at start-up ([`describe`]) and the
//! children go on with the other steps.

use super::{Step, StepError};
use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

/// The newest ABI whose rights chatd asks for; older kernels enforce the
/// subset they know (best effort), newer ones all of these.
const TARGET: ABI = ABI::V6;

/// How Landlock stands on this kernel, for the start-up log. (The crate
/// reports this only after restricting a process, so the master asks the
/// kernel directly; the call changes nothing.)
pub fn describe() -> (bool, String) {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the
    // ABI version (or -1 with errno); it creates nothing and reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v > 0 {
        return (
            true,
            format!(
                "Landlock ABI {v} available; children get ABI {} rules",
                (v as i32).min(TARGET as i32)
            ),
        );
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::EOPNOTSUPP => (
            false,
            "Landlock is built into this kernel but not enabled (lsm= boot option); children run without it".into(),
        ),
        nix::errno::Errno::ENOSYS => (
            false,
            "this kernel has no Landlock; children run without it".into(),
        ),
        e => (
            false,
            format!("Landlock is unavailable here (landlock_create_ruleset: {e}, e.g. a container's or service manager's syscall filter); children run without it"),
        ),
    }
}

/// `LANDLOCK_CREATE_RULESET_VERSION` from linux/landlock.h.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Restricts the calling process for good. Returns whether the kernel
/// enforces the ruleset (fully or partly).
pub fn restrict_all() -> Result<bool, StepError> {
    const STEP: &str = "landlock";
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))
        .step(STEP)?
        .handle_access(AccessNet::from_all(TARGET))
        .step(STEP)?
        .scope(Scope::from_all(TARGET))
        .step(STEP)?
        .create()
        .step(STEP)?
        .restrict_self()
        .step(STEP)?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}
