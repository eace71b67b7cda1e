//! Logging set-up: `tracing` events with structured fields, to the systemd
//! journal or to stderr.
//!
//! Every connect, disconnect, kick, refusal and error is one event with the
//! fields `event`, `client`, `pid`, `peer`, `nick`, `reason` where they
//! apply. Message contents are never logged. The level comes from
//! `CHATD_LOG` (an env-filter directive such as `debug`), default `info`.
//!
//! Where the events go ([`Sink`]):
//! - **Journal**: when stderr is the journal (`$JOURNAL_STREAM` names
//!   stderr's device and inode, as systemd sets it for a service) and the
//!   journal socket answers, events are sent natively (tracing-journald):
//!   `SYSLOG_IDENTIFIER=chatd`, `PRIORITY` from the level, `MESSAGE`, and
//!   every field as `CHATD_<FIELD>` (`CHATD_EVENT`, `CHATD_CLIENT`,
//!   `CHATD_PEER`, ...), so `journalctl -u chatd CHATD_EVENT=disconnect`
//!   finds the disconnects.
//! - **Stream**: stderr is the journal but native logging is impossible,
//!   because the master will chroot (started as root: the socket path is
//!   gone afterwards) or the socket does not answer. One line per event with
//!   a `<N>` syslog priority prefix, which journald turns into the
//!   priority; the fields stay in the text.
//! - **Stderr**: anything else (a terminal, a pipe, a file): readable lines
//!   with a timestamp, coloured on a terminal.
//!
//! Children never log: the master logs every event, including a child's
//! reason for leaving, so only one process talks to the journal. A child's
//! panic line goes to its inherited stderr (the journal stream under
//! systemd).

use std::io::{IsTerminal, Write};
use tracing::{Level, Metadata};
use tracing_journald::Priority;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where log events go; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stream,
    Stderr,
}

/// Chooses the sink and installs the subscriber. `will_chroot` says that
/// the master is about to chroot (started as root), which rules out the
/// native journal.
pub fn init(will_chroot: bool) -> Sink {
    let filter = || EnvFilter::try_from_env("CHATD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry();
    if !stderr_is_journal() {
        registry
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| RawStderr)
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init();
        return Sink::Stderr;
    }
    if !will_chroot {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(Some("CHATD".into()))
                .with_syslog_identifier("chatd".into())
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    error: Priority::Error,
                    warn: Priority::Warning,
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    trace: Priority::Debug,
                });
            registry.with(filter()).with(layer).init();
            return Sink::Journal;
        }
    }
    registry
        .with(filter())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Prefixed)
                .with_target(false)
                .with_ansi(false)
                .without_time(),
        )
        .init();
    Sink::Stream
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`) is our stderr.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// syslog priority for a level, as journald reads it from a `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Standard error, written without std's `Stderr` lock. That lock is a
/// static in the binary's data; the master taking it for every event after
/// a fork would leave a private copy of its page in every child forked
/// before. Each event is one `write_all`, as with std's (unbuffered)
/// stderr.
struct RawStderr;

impl Write for RawStderr {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match nix::unistd::write(std::io::stderr(), b) {
            // As std's stderr: a closed stderr swallows what is written.
            Err(nix::errno::Errno::EBADF) => Ok(b.len()),
            r => r.map_err(std::io::Error::from),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes stderr writers that put the event's `<N>` priority first.
struct Prefixed;

/// Buffers one formatted event and writes it with its prefix in one call.
struct PrefixedWriter {
    prio: u8,
    buf: Vec<u8>,
}

impl Write for PrefixedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PrefixedWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut line = format!("<{}>", self.prio).into_bytes();
        line.extend_from_slice(&self.buf);
        let _ = RawStderr.write_all(&line);
    }
}

impl<'a> MakeWriter<'a> for Prefixed {
    type Writer = PrefixedWriter;
    fn make_writer(&'a self) -> PrefixedWriter {
        PrefixedWriter {
            prio: 6,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> PrefixedWriter {
        PrefixedWriter {
            prio: priority(meta.level()),
            buf: Vec::new(),
        }
    }
}
