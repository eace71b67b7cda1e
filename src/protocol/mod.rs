//! The client protocol: UTF-8 lines in, formatted lines out.
//!
//! Everything here is pure (no I/O) so that it can be unit-tested and
//! fuzzed: [`lines`] frames a byte stream into lines with a length limit,
//! [`sanitize`] decides whether a line may be forwarded, [`command`] parses
//! `/commands`, and [`nick`] validates nicknames. The child process drives
//! these on its client's input; the master re-applies [`sanitize`] to what
//! it reads from shared memory.

pub mod command;
pub mod lines;
pub mod nick;
pub mod sanitize;

/// Prefix of every error line sent to a client, so scripts can tell them apart.
pub const ERR: &str = "! ";
/// Prefix of server notices (joins, leaves, replies to commands).
pub const NOTICE: &str = "* ";
