//! Fault injection for the sandbox tests. Compiled only with the cargo
//! feature `fault-injection`; release builds have none of it, so neither the
//! environment variable nor the `/fault` command below exists there.
//!
//! - `CHATD_FAULT_OPEN=PATH` in the master's environment: every child, after
//!   Landlock and before seccomp, tries to open PATH and greets its client
//!   with the outcome (`! fault: open PATH: ...`). Proves Landlock holds on
//!   its own.
//! - `/fault NAME` typed by a client makes its child do something the sandbox
//!   forbids: `openat`, `socket`, `execve`, `ptrace`, `mprotect-other` (make
//!   another client's slot writable) are seccomp violations (SIGSYS);
//!   `write-other` writes to another client's slot (SIGSEGV); `panic` panics.

use crate::shm::Region;

/// The command prefix a client types.
pub const COMMAND: &str = "/fault ";

/// Runs between Landlock and seccomp; returns a line for the client.
pub fn before_seccomp() -> Option<String> {
    let path = std::env::var_os("CHATD_FAULT_OPEN")?;
    let outcome = match std::fs::File::open(&path) {
        Ok(_) => "opened".to_string(),
        Err(e) => e.to_string(),
    };
    Some(format!(
        "{}fault: open {}: {outcome}\n",
        crate::protocol::ERR,
        path.to_string_lossy()
    ))
}

/// Performs the named fault. Returns only for an unknown name.
pub fn trigger(name: &str, region: &Region, own_slot: usize) -> String {
    let other = if own_slot == 0 { 1 } else { 0 };
    let other = other.min(region.layout().max_slots - 1);
    // SAFETY (all blocks below): these calls are meant to fail or to kill
    // the process; their arguments are valid pointers or plain integers.
    match name {
        "openat" => unsafe {
            libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY);
        },
        "socket" => unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        },
        "execve" => unsafe {
            let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
            libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), std::ptr::null());
        },
        "ptrace" => unsafe {
            libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0);
        },
        "mprotect-other" => unsafe {
            let range = region.layout().slot_range(other);
            libc::mprotect(
                region.raw_ptr(range.start).cast(),
                range.len(),
                libc::PROT_READ | libc::PROT_WRITE,
            );
        },
        "write-other" => unsafe {
            let start = region.layout().slot_range(other).start;
            std::ptr::write_volatile(region.raw_ptr(start).add(512), 0xAB);
        },
        "panic" => panic!("fault injection"),
        _ => return format!("{}unknown fault {name}\n", crate::protocol::ERR),
    }
    format!("{}fault {name}: survived\n", crate::protocol::ERR)
}
