//! The empty root (`empty_dir`): created if missing, checked, entered.
//!
//! chatd chroots only when started as root (chroot needs CAP_SYS_CHROOT,
//! which an unprivileged start never has). The directory must be owned by
//! root, writable by nobody else, not a symlink, and empty: a chroot the
//! service user could write into would let it plant files in its own root.
//! The checks run on an open fd and the chroot goes through that same fd,
//! so the directory checked is the directory entered.

use super::{Step, StepError};
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

const STEP: &str = "empty_dir";

/// Creates `path` (root-owned, mode 0755) if missing and checks it.
pub fn prepare(path: &Path) -> Result<OwnedFd, StepError> {
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| StepError::new(STEP, format!("creating {}: {e}", path.display())))?;
    }
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StepError::new(STEP, format!("opening {}: {e}", path.display())))?;
    let st = fstat(&fd).step(STEP)?;
    if st.st_uid != 0 {
        return Err(StepError::new(
            STEP,
            format!("{} is not owned by root", path.display()),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(StepError::new(
            STEP,
            format!(
                "{} is writable by group or others (mode {:o}); refusing it as the children's root",
                path.display(),
                st.st_mode & 0o7777
            ),
        ));
    }
    let dup = fd.try_clone().step(STEP)?;
    let mut dir = Dir::from_fd(dup).step(STEP)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.step(STEP)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    if !names.is_empty() {
        return Err(StepError::new(
            STEP,
            format!(
                "{} is not empty (holds {})",
                path.display(),
                names.join(", ")
            ),
        ));
    }
    Ok(fd)
}

/// Makes `dir` the process's root and working directory.
pub fn enter(dir: OwnedFd) -> Result<(), StepError> {
    nix::unistd::fchdir(dir.as_fd()).step("chroot")?;
    nix::unistd::chroot(".").step("chroot")?;
    nix::unistd::chdir("/").step("chroot")?;
    Ok(())
}
