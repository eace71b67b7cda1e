//! Resource limits for a child: it may create no process and no file, dump
//! no core, and hold no more fds than it already has.

use super::{Step, StepError};
use nix::sys::resource::{setrlimit, Resource};

/// Sets each limit, soft and hard, so it cannot be raised again.
/// `nofile` is one more than the highest fd the child keeps (poll with
/// open fds needs them below the limit; 0 would break it).
pub fn confine_child(nofile: u64) -> Result<(), StepError> {
    setrlimit(Resource::RLIMIT_NPROC, 0, 0).step("rlimit NPROC")?;
    setrlimit(Resource::RLIMIT_FSIZE, 0, 0).step("rlimit FSIZE")?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).step("rlimit CORE")?;
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).step("rlimit NOFILE")?;
    Ok(())
}
