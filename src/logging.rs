//! Logging set-up: `tracing` events with structured fields to stderr.
//!
//! Every connect, disconnect, kick, refusal and error is one event with the
//! fields `event`, `client`, `peer`, `nick`, `reason` where they apply.
//! Message contents are never logged. The level comes from `CHATD_LOG`
//! (an env-filter directive such as `debug`), default `info`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("CHATD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
