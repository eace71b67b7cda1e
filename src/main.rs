//! The `chatd` binary: parse flags, load the configuration, run the master.
//!
//! Exit status: 0 after a clean shutdown, 2 for a bad configuration or
//! command line (a TLS certificate or key that cannot be used included), 67 (EX_NOUSER) when started as root and the service user
//! does not exist, 1 for any other start-up failure (a confinement step
//! that failed is named in the message).

use anyhow::Context;
use chatd::cli::Args;
use chatd::master::confine::Plan;
use chatd::master::Master;
use clap::Parser;
use std::process::ExitCode;

/// The master moves its heap into an arena children do not inherit (see
/// `chatd::arena`); everything else uses the system allocator.
#[global_allocator]
static ALLOC: chatd::arena::Global = chatd::arena::Global;

/// sysexits.h: "addressee unknown", used for a missing service user.
const EX_NOUSER: u8 = 67;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let as_root = nix::unistd::geteuid().is_root();
    let sink = chatd::logging::init(as_root);
    if sink == chatd::logging::Sink::Stream && as_root {
        tracing::info!(
            event = "logging",
            "logging to the journal stream without CHATD_ fields: started as root, chatd chroots and the journal socket is out of reach"
        );
    }
    let plan = match Plan::new(&cfg) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(event = "fatal", step = "service user", "cannot start: {e}");
            return ExitCode::from(EX_NOUSER);
        }
    };
    let result = args
        .reloader()
        .context("opening the configuration directory")
        .and_then(|reload| Master::new(cfg, reload, plan))
        .and_then(|mut m| m.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "fatal: {e:#}");
            // A certificate or key that cannot be used is a bad configuration.
            match e.downcast_ref::<chatd::tls::keys::TlsError>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::from(1),
            }
        }
    }
}
