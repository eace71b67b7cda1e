//! Resolving the service user (config `user`, `--user`, default `chatd`).
//!
//! Runs first, while name lookup still works: after the chroot there is no
//! /etc/passwd and no NSS module to load.

use nix::unistd::{Gid, Uid, User};

/// The user and primary group the master switches to when started as root.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Why the service user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "service user `{0}` does not exist; create it (the Debian package does, with \
         systemd-sysusers; by hand: useradd --system --no-create-home --shell \
         /usr/sbin/nologin {0}) or choose an existing unprivileged user with --user \
         or the `user` key (e.g. --user nobody)"
    )]
    Missing(String),
    #[error("service user `{0}` has uid 0; choose an unprivileged user")]
    IsRoot(String),
    #[error("looking up service user `{0}`: {1}")]
    Lookup(String, nix::Error),
}

/// Looks `name` up in the user database.
pub fn resolve(name: &str) -> Result<ServiceUser, UserError> {
    match User::from_name(name) {
        Ok(Some(u)) if u.uid.is_root() || u.gid.as_raw() == 0 => {
            Err(UserError::IsRoot(name.to_string()))
        }
        Ok(Some(u)) => Ok(ServiceUser {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
        }),
        Ok(None) => Err(UserError::Missing(name.to_string())),
        Err(e) => Err(UserError::Lookup(name.to_string(), e)),
    }
}
