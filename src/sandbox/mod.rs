//! Confinement: every step that takes a privilege away from chatd.
//!
//! One module per step, each with a tiny API, in the order they run:
//!
//! | module        | who             | what                                           |
//! |---------------|-----------------|------------------------------------------------|
//! | [`user`]      | master, as root | resolve the service user while NSS still works |
//! | [`chroot`]    | master, as root | check/create `empty_dir`, chroot into it       |
//! | [`privs`]     | master          | groups, gid, uid, capabilities, no_new_privs   |
//! | [`seccomp`]   | master, child   | the two syscall allowlists                     |
//! | [`rlimits`]   | child           | NPROC, FSIZE, CORE 0; NOFILE at its fd count   |
//! | [`landlock`]  | child           | no filesystem access at all                    |
//! | `fault`       | child           | test-only faults (cargo feature `fault-injection`) |
//!
//! The master's sequence is [`crate::master::confine`]; the child's is
//! [`crate::child::setup::prepare`]. ARCHITECTURE.md ("Confinement") lists
//! both as numbered sequences. Every failure is a [`StepError`] that names
//! its step, and every failure is fatal.

pub mod chroot;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod landlock;
pub mod privs;
pub mod rlimits;
pub mod seccomp;
pub mod user;

/// A confinement step that failed; the message starts with the step's name.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StepError {
    pub step: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StepError {
    pub fn new(
        step: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StepError {
        StepError {
            step,
            source: source.into(),
        }
    }
}

/// `result.step("name")` turns any error into a [`StepError`] for that step.
pub trait Step<T> {
    fn step(self, name: &'static str) -> Result<T, StepError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Step<T> for Result<T, E> {
    fn step(self, name: &'static str) -> Result<T, StepError> {
        self.map_err(|e| StepError::new(name, e))
    }
}
