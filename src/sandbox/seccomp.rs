//! The two syscall allowlists, built with seccompiler.
//!
//! Both are compiled to BPF once, in the master, before it forks anything
//! ([`Filters::build`]). The master installs its own filter last in its
//! start-up sequence; children inherit it across fork and stack the child
//! filter on top as the last step of their set-up, so a child can make only
//! the syscalls both lists allow. Default action for both: kill the process
//! (the master reports a child killed by SIGSYS as a security event).
//!
//! The child's list is what its poll loop needs and nothing else: no open,
//! no socket, no exec, no fork, no kill. Argument filters: `write` only to
//! stderr (the panic line; the client socket uses `sendto`), `mmap` only
//! private anonymous memory without PROT_EXEC, `mprotect` never to writable
//! or executable (so the read-only view of the shared region stays
//! read-only), `madvise` only MADV_DONTNEED, `futex` only private wait/wake.
//! No `mremap`: growing the child's own writable slot mapping would extend
//! it over the next slot's pages of the memfd (the child's allocator never
//! needs it; see `crate::arena`).
//! [`CHILD_MAX`] bounds its length; a test holds it there.

use super::{Step, StepError};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Most syscalls the child's allowlist may name (OpenSSH's network child
/// allows 35 on x86_64).
pub const CHILD_MAX: usize = 30;

/// One allowlist: syscall names, numbers and argument rules.
pub struct Allowlist {
    entries: Vec<(&'static str, i64, Vec<SeccompRule>)>,
}

/// Both compiled filters, kept by the master.
pub struct Filters {
    pub master: BpfProgram,
    pub child: BpfProgram,
}

impl Filters {
    pub fn build() -> Result<Filters, StepError> {
        Ok(Filters {
            master: master().compile().step("seccomp (master filter)")?,
            child: child().compile().step("seccomp (child filter)")?,
        })
    }
}

/// Installs a compiled filter on the calling (only) thread.
pub fn apply(prog: &BpfProgram, step: &'static str) -> Result<(), StepError> {
    seccompiler::apply_filter(prog).step(step)
}

type Rules = Vec<SeccompRule>;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("valid condition")
}

/// Allowed when `(arg & mask) == value`.
fn masked(arg: u8, mask: u64, value: u64) -> Rules {
    vec![SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), value)]).unwrap()]
}

/// Allowed when `arg` is one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Rules {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)]).unwrap())
        .collect()
}

/// mmap: private anonymous memory without PROT_EXEC.
fn mmap_rule() -> Rules {
    let anon_private = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
    vec![SeccompRule::new(vec![
        cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0),
        cond(
            3,
            SeccompCmpOp::MaskedEq(anon_private),
            libc::MAP_ANONYMOUS as u64,
        ),
    ])
    .unwrap()]
}

/// prctl in a new child's set-up: the parent-death signal, no_new_privs,
/// and the process title (`PR_SET_MM_MAP`, which needs no capability only
/// while it leaves `/proc/PID/exe` alone; the other `PR_SET_MM` operations
/// need CAP_SYS_RESOURCE, which chatd never holds). See `crate::child::stack`.
fn child_setup_prctl() -> Rules {
    let mut rules = one_of(
        0,
        &[
            libc::PR_SET_PDEATHSIG as u64,
            libc::PR_SET_NO_NEW_PRIVS as u64,
            libc::PR_GET_NO_NEW_PRIVS as u64,
        ],
    );
    let set_mm_map = vec![
        cond(0, SeccompCmpOp::Eq, libc::PR_SET_MM as u64),
        cond(1, SeccompCmpOp::Eq, libc::PR_SET_MM_MAP as u64),
    ];
    rules.push(SeccompRule::new(set_mm_map).unwrap());
    rules
}

const FUTEX_OPS: &[u64] = &[
    (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
    (libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG) as u64,
];

impl Allowlist {
    fn new() -> Allowlist {
        Allowlist {
            entries: Vec::new(),
        }
    }

    fn allow(&mut self, name: &'static str, nr: i64) -> &mut Self {
        self.allow_if(name, nr, Vec::new())
    }

    fn allow_if(&mut self, name: &'static str, nr: i64, rules: Rules) -> &mut Self {
        assert!(
            self.entries.iter().all(|e| e.1 != nr),
            "{name} listed twice"
        );
        self.entries.push((name, nr, rules));
        self
    }

    /// The syscall names, in the order listed.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.0).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compiles to BPF for the architecture this binary runs on.
    pub fn compile(self) -> Result<BpfProgram, seccompiler::BackendError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)?;
        let rules: BTreeMap<i64, Rules> = self.entries.into_iter().map(|e| (e.1, e.2)).collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )?;
        filter.try_into()
    }
}

/// The child's allowlist: its poll loop, its allocator, its exit.
pub fn child() -> Allowlist {
    let mut a = Allowlist::new();
    a.allow("recvfrom", libc::SYS_recvfrom)
        .allow("sendto", libc::SYS_sendto);
    #[cfg(target_arch = "x86_64")]
    a.allow("epoll_wait", libc::SYS_epoll_wait);
    a.allow("epoll_pwait", libc::SYS_epoll_pwait)
        .allow_if("write", libc::SYS_write, one_of(0, &[2]))
        .allow("shutdown", libc::SYS_shutdown)
        .allow("close", libc::SYS_close)
        .allow("brk", libc::SYS_brk)
        .allow_if("mmap", libc::SYS_mmap, mmap_rule())
        .allow("munmap", libc::SYS_munmap)
        .allow_if(
            "mprotect",
            libc::SYS_mprotect,
            masked(2, (libc::PROT_WRITE | libc::PROT_EXEC) as u64, 0),
        )
        .allow_if(
            "madvise",
            libc::SYS_madvise,
            one_of(2, &[libc::MADV_DONTNEED as u64]),
        )
        .allow_if("futex", libc::SYS_futex, one_of(1, FUTEX_OPS))
        .allow("clock_gettime", libc::SYS_clock_gettime)
        // TLS: the handshake's key exchange and nonces (ring).
        .allow("getrandom", libc::SYS_getrandom)
        .allow("getpid", libc::SYS_getpid)
        .allow("gettid", libc::SYS_gettid)
        .allow("rt_sigreturn", libc::SYS_rt_sigreturn)
        .allow("restart_syscall", libc::SYS_restart_syscall)
        .allow("exit", libc::SYS_exit)
        .allow("exit_group", libc::SYS_exit_group);
    a
}

/// The master's allowlist: its epoll loop, accept and fork, reaping and
/// killing children, reading the config on reload, talking to systemd, and
/// what a freshly forked child does before it installs its own filter.
pub fn master() -> Allowlist {
    let no_ns_no_thread = (libc::CLONE_THREAD
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP) as u64;
    let mut a = Allowlist::new();
    // The loop.
    #[cfg(target_arch = "x86_64")]
    a.allow("epoll_wait", libc::SYS_epoll_wait)
        .allow("poll", libc::SYS_poll);
    a.allow("epoll_pwait", libc::SYS_epoll_pwait)
        .allow("ppoll", libc::SYS_ppoll)
        .allow("epoll_ctl", libc::SYS_epoll_ctl)
        .allow("read", libc::SYS_read)
        .allow("write", libc::SYS_write)
        .allow("writev", libc::SYS_writev)
        .allow("close", libc::SYS_close)
        .allow("timerfd_settime", libc::SYS_timerfd_settime)
        .allow("clock_gettime", libc::SYS_clock_gettime)
        // Clients and children's control sockets.
        .allow("accept4", libc::SYS_accept4)
        .allow("recvfrom", libc::SYS_recvfrom)
        .allow("recvmsg", libc::SYS_recvmsg)
        .allow("sendto", libc::SYS_sendto)
        .allow("sendmsg", libc::SYS_sendmsg)
        .allow("setsockopt", libc::SYS_setsockopt)
        .allow("getsockopt", libc::SYS_getsockopt)
        .allow("getsockname", libc::SYS_getsockname)
        .allow("getpeername", libc::SYS_getpeername)
        .allow("shutdown", libc::SYS_shutdown)
        .allow("socketpair", libc::SYS_socketpair)
        .allow_if(
            "ioctl",
            libc::SYS_ioctl,
            one_of(1, &[libc::FIONBIO, libc::FIOCLEX]),
        )
        .allow("fcntl", libc::SYS_fcntl)
        // systemd's notify and journal sockets (unix datagram only).
        .allow_if(
            "socket",
            libc::SYS_socket,
            one_of(0, &[libc::AF_UNIX as u64]),
        )
        .allow("connect", libc::SYS_connect)
        // Children.
        .allow_if("clone", libc::SYS_clone, masked(0, no_ns_no_thread, 0))
        .allow("wait4", libc::SYS_wait4)
        .allow("waitid", libc::SYS_waitid)
        .allow_if("kill", libc::SYS_kill, one_of(1, &[libc::SIGKILL as u64]))
        .allow("getpid", libc::SYS_getpid)
        .allow("gettid", libc::SYS_gettid)
        .allow("getppid", libc::SYS_getppid)
        // Reading the config file on reload (through the pinned directory);
        // writing the bans file (through the state directory's fd).
        .allow("openat", libc::SYS_openat)
        .allow("fsync", libc::SYS_fsync)
        .allow("renameat2", libc::SYS_renameat2)
        .allow("fstat", libc::SYS_fstat)
        .allow("newfstatat", libc::SYS_newfstatat)
        .allow("statx", libc::SYS_statx)
        .allow("lseek", libc::SYS_lseek)
        // Memory, signals, exit.
        .allow("brk", libc::SYS_brk)
        .allow_if("mmap", libc::SYS_mmap, masked(2, libc::PROT_EXEC as u64, 0))
        .allow("munmap", libc::SYS_munmap)
        .allow("mremap", libc::SYS_mremap)
        .allow_if(
            "mprotect",
            libc::SYS_mprotect,
            masked(2, libc::PROT_EXEC as u64, 0),
        )
        .allow("madvise", libc::SYS_madvise)
        .allow_if("futex", libc::SYS_futex, one_of(1, FUTEX_OPS))
        .allow("getrandom", libc::SYS_getrandom)
        .allow("memfd_create", libc::SYS_memfd_create)
        .allow("rt_sigprocmask", libc::SYS_rt_sigprocmask)
        .allow("rt_sigaction", libc::SYS_rt_sigaction)
        .allow("rt_sigreturn", libc::SYS_rt_sigreturn)
        .allow("restart_syscall", libc::SYS_restart_syscall)
        .allow("sigaltstack", libc::SYS_sigaltstack)
        .allow("exit", libc::SYS_exit)
        .allow("exit_group", libc::SYS_exit_group)
        // A new child's set-up, before its own filter (child::setup).
        .allow("set_robust_list", libc::SYS_set_robust_list)
        .allow_if("prctl", libc::SYS_prctl, child_setup_prctl())
        .allow("dup3", libc::SYS_dup3)
        .allow("close_range", libc::SYS_close_range)
        .allow("epoll_create1", libc::SYS_epoll_create1)
        .allow("prlimit64", libc::SYS_prlimit64)
        .allow("landlock_create_ruleset", libc::SYS_landlock_create_ruleset)
        .allow("landlock_add_rule", libc::SYS_landlock_add_rule)
        .allow("landlock_restrict_self", libc::SYS_landlock_restrict_self)
        .allow("seccomp", libc::SYS_seccomp);
    #[cfg(target_arch = "x86_64")]
    a.allow("dup2", libc::SYS_dup2)
        // glibc's renameat, for the bans file.
        .allow("renameat", libc::SYS_renameat);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_allowlist_stays_small() {
        let c = child();
        assert!(
            c.len() <= CHILD_MAX,
            "child allowlist has {} syscalls (max {CHILD_MAX}): {:?}",
            c.len(),
            c.names()
        );
        for forbidden in [
            "openat", "socket", "execve", "ptrace", "clone", "kill", "connect", "mremap",
        ] {
            assert!(!c.names().contains(&forbidden), "{forbidden} in child list");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn child_allowlist_is_the_documented_one() {
        // README.md ("Security") and ARCHITECTURE.md list these; change
        // them together.
        let documented = "recvfrom sendto epoll_wait epoll_pwait write shutdown close brk \
            mmap munmap mprotect madvise futex clock_gettime getrandom getpid gettid \
            rt_sigreturn restart_syscall exit exit_group";
        assert_eq!(child().names().join(" "), documented);
        assert_eq!(
            master().len(),
            68,
            "master allowlist: {:?}",
            master().names()
        );
    }

    #[test]
    fn child_list_is_within_master_list() {
        // Children inherit the master's filter: a syscall the child needs
        // must pass both.
        let m = master().names();
        for name in child().names() {
            assert!(
                m.contains(&name),
                "{name} allowed to children but not to the master"
            );
        }
    }

    #[test]
    fn both_filters_compile() {
        Filters::build().unwrap();
    }
}
