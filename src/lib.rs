//! chatd: a hardened fork-per-client TCP chat room.
//!
//! The crate's map, by process:
//! - [`master`]: the one master process and its epoll loop (accept, fork,
//!   relay, signals, reload, shutdown);
//! - [`child`]: the per-client process and its poll loop;
//! - [`shm`]: the shared-memory region both sides use, and the only code
//!   that touches it;
//! - [`ipc`]: the small control messages on each child's socketpair;
//! - [`protocol`]: pure line framing, sanitising and command parsing;
//! - [`sandbox`]: the confinement steps (privilege drop, chroot, rlimits,
//!   Landlock, seccomp), one module each;
//! - [`arena`]: the master's heap, which children do not inherit;
//! - [`config`], [`cli`], [`logging`]: start-up.
//!
//! ARCHITECTURE.md describes the design; README.md how to run it.

pub mod arena;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod ipc;
pub mod logging;
pub mod master;
pub mod protocol;
pub mod sandbox;
pub mod shm;
pub mod tls;
