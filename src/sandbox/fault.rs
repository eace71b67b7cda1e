//! Fault injection for the sandbox tests. Compiled only with the cargo
//! feature `fault-injection`; release builds have none of it, so neither the
//! environment variable nor the `/fault` command below exists there.
//!
//! - `CHATD_FAULT_OPEN=PATH` in the master's environment: every child, after
//!   Landlock and before seccomp, tries to open PATH and greets its client
//!   with the outcome (`! fault: open PATH: ...`). Proves Landlock holds on
//!   its own.
//! - `CHATD_FAULT_NO_SET_MM` in the master's environment: every child acts
//!   as if the kernel refused `PR_SET_MM_MAP` (a kernel without
//!   `CONFIG_CHECKPOINT_RESTORE`), so it keeps the stack and title it was
//!   forked with. Proves that fallback works.
//! - `/fault NAME` typed by a client makes its child do something the sandbox
//!   forbids: `openat`, `socket`, `execve`, `ptrace`, `mprotect-other` (make
//!   another client's slot writable), `mremap-grow` (grow the own slot's
//!   mapping over the next slot) are seccomp violations (SIGSYS);
//!   `write-other` writes where another client's slot is in the master
//!   (unmapped in a child: SIGSEGV), `write-log` into the read-only relay
//!   log (SIGSEGV); `panic` panics; `sign` and `sign-handshake` ask the
//!   master for a TLS signature, over a message that is not a handshake's
//!   or one that is (the child's loop does these two: they need its
//!   control socket), which the master must answer by killing the child.

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

/// Whether the child must act as if `PR_SET_MM_MAP` were refused.
pub fn refuse_set_mm() -> bool {
    std::env::var_os("CHATD_FAULT_NO_SET_MM").is_some()
}

/// Performs the named fault. Returns only for an unknown name.
pub fn trigger(name: &str, region: &Region, own_slot: usize) -> String {
    // Three slots, so that the other slot below is neither this child's
    // nor slot 0, whose place this child's own slot now takes.
    if region.layout().max_slots < 3 {
        return format!("{}fault needs max_clients >= 3\n", crate::protocol::ERR);
    }
    let last = region.layout().max_slots - 1;
    let other = if own_slot == last { last - 1 } else { last };
    let other_slot = region.layout().slot_range(other);
    let own_start = region.layout().slots_off;
    match name {
        // SAFETY: a C string literal and plain flags; the call is meant to
        // be refused by the filter.
        "openat" => unsafe {
            libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY);
        },
        // SAFETY: plain integer arguments.
        "socket" => unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        },
        // SAFETY: a NULL-terminated argv of C string literals and a NULL
        // environment; if the filter let it through, /bin/sh would replace
        // this process, which is what the test must never see.
        "execve" => unsafe {
            let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
            libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), std::ptr::null());
        },
        // SAFETY: plain integer arguments (attach to pid 1).
        "ptrace" => unsafe {
            libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0);
        },
        // SAFETY: the range is another slot of the mapping, page-aligned;
        // the call is meant to be refused by the filter.
        "mprotect-other" => unsafe {
            libc::mprotect(
                region.raw_ptr(other_slot.start).cast(),
                other_slot.len(),
                libc::PROT_READ | libc::PROT_WRITE,
            );
        },
        // SAFETY: the range is this child's own slot, at slots_off; growing
        // it would map the next slot's memfd pages writable, and the call
        // is meant to be refused by the filter.
        "mremap-grow" => unsafe {
            let p = libc::mremap(
                region.raw_ptr(own_start).cast(),
                crate::shm::SLOT_SIZE,
                2 * crate::shm::SLOT_SIZE,
                libc::MREMAP_MAYMOVE,
            );
            if p != libc::MAP_FAILED {
                std::ptr::write_volatile(p.cast::<u8>().add(crate::shm::SLOT_SIZE + 512), 0xAB);
            }
        },
        "write-other" => {
            let at = region.raw_ptr(other_slot.start + 512);
            // The child's own heap is mapped right after its view, over
            // where the first slots lie in the master: a store there is
            // the child's business, and proves nothing.
            if crate::arena::span().is_some_and(|(s, e)| (s..e).contains(&(at as usize))) {
                return format!(
                    "{}fault write-other: slot {other} lies where this child's heap is; \
                     use a larger max_clients\n",
                    crate::protocol::ERR
                );
            }
            // SAFETY: the address is where another slot lies in the
            // master's view (512 bytes in), outside this child's heap (just
            // checked); a child has it unmapped, so the store faults.
            unsafe { std::ptr::write_volatile(at, 0xAB) };
        }
        // SAFETY: the address is inside the relay log, read-only in a
        // child, so the store faults.
        "write-log" => unsafe {
            std::ptr::write_volatile(region.raw_ptr(region.layout().log_off + 512), 0xAB);
        },
        "panic" => panic!("fault injection"),
        _ => return format!("{}unknown fault {name}\n", crate::protocol::ERR),
    }
    format!("{}fault {name}: survived\n", crate::protocol::ERR)
}
