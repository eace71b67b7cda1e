//! The master's confinement, run once between opening everything it needs
//! and entering its loop. The steps live in [`crate::sandbox`]; this is the
//! order (ARCHITECTURE.md, "Confinement", numbers them):
//!
//! 1. ([`Plan::new`], first thing after reading the config) started as root:
//!    resolve the service user while name lookup works; refuse to start if
//!    it does not exist. Report Landlock's availability.
//! 2. (the caller) open the listening sockets, the shared region, the
//!    signalfd, timerfd and epoll, the notify socket, the config directory.
//! 3. compile both seccomp filters.
//! 4. as root: check or create `empty_dir`, chroot into it, chdir /.
//! 5. as root: clear the bounding set, setgroups, setresgid, setresuid,
//!    verify the old ids cannot be regained. Otherwise: nothing here.
//! 6. clear ambient, inheritable, effective, permitted; set no_new_privs.
//! 7. read it all back ([`crate::sandbox::privs::verify`]).
//! 8. install the master's seccomp filter.
//!
//! Any failure is fatal and names its step.

use crate::config::Config;
use crate::sandbox::seccomp::{self, Filters};
use crate::sandbox::user::{self, ServiceUser, UserError};
use crate::sandbox::{chroot, landlock, privs, StepError};
use nix::unistd::geteuid;
use std::path::PathBuf;
use tracing::{info, warn};

/// What confinement will do, decided at start-up.
pub struct Plan {
    /// The user to switch to; `None` when not started as root.
    pub user: Option<ServiceUser>,
    pub empty_dir: PathBuf,
}

/// What confinement did, for the master's state.
pub struct Confined {
    /// The child filter, applied by every child after fork.
    pub child_filter: seccompiler::BpfProgram,
}

impl Plan {
    /// Step 1.
    pub fn new(cfg: &Config) -> Result<Plan, UserError> {
        let user = if geteuid().is_root() {
            Some(user::resolve(&cfg.user)?)
        } else {
            None
        };
        let (available, text) = landlock::describe();
        if available {
            info!(event = "landlock", "{text}");
        } else {
            warn!(event = "landlock", "{text}");
        }
        Ok(Plan {
            user,
            empty_dir: cfg.empty_dir.clone(),
        })
    }

    /// Steps 3 to 8.
    pub fn apply(self) -> Result<Confined, StepError> {
        let filters = Filters::build()?;
        if let Some(user) = &self.user {
            let dir = chroot::prepare(&self.empty_dir)?;
            chroot::enter(dir)?;
            privs::drop_to(user)?;
        } else {
            privs::drop_caps()?;
        }
        let verified = privs::verify(self.user.as_ref())?;
        let uid = nix::unistd::getuid();
        seccomp::apply(&filters.master, "seccomp (master filter)")?;
        match &self.user {
            Some(u) => info!(
                event = "confined",
                user = %u.name,
                uid = u.uid.as_raw(),
                gid = u.gid.as_raw(),
                root = %self.empty_dir.display(),
                "running as {} ({}:{}) chrooted in {}, no capabilities, no_new_privs, seccomp",
                u.name,
                u.uid,
                u.gid,
                self.empty_dir.display()
            ),
            None => info!(
                event = "confined",
                uid = uid.as_raw(),
                bounding_set_empty = verified.bounding_empty,
                "not started as root: kept uid {}, no capabilities{}, no_new_privs, seccomp",
                uid,
                if verified.bounding_empty {
                    ""
                } else {
                    " (bounding set inherited, unreachable under no_new_privs)"
                }
            ),
        }
        Ok(Confined {
            child_filter: filters.child,
        })
    }
}
