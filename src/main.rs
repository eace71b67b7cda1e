//! The `chatd` binary: parse flags, load the configuration, run the master.
//!
//! Exit status: 0 after a clean shutdown, 2 for a bad configuration or
//! command line, 1 for any other start-up failure.

use chatd::cli::Args;
use chatd::master::Master;
use clap::Parser;
use std::process::ExitCode;

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
    chatd::logging::init();
    let reload_args = args.clone();
    let reload = Box::new(move || reload_args.load_config());
    let result = Master::new(cfg, reload).and_then(|mut m| m.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "fatal: {e:#}");
            ExitCode::from(1)
        }
    }
}
