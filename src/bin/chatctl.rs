//! chatctl: the admin's tool. Sends one request to chatd's control socket
//! and prints the reply (see `chatd::control` for the protocol and
//! `chatd::master::control` for the master's side).

use clap::Parser;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Control a running chatd: see who is connected, kick and mute users,
/// speak to the room, set its topic, reload, read metrics.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = COMMANDS)]
struct Args {
    /// The control socket
    #[arg(
        short,
        long,
        value_name = "PATH",
        env = "CHATD_CONTROL",
        default_value = "/run/chatd/control"
    )]
    socket: PathBuf,

    /// Print the reply as one JSON object (for scripts)
    #[arg(long)]
    json: bool,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

const COMMANDS: &str = "Commands:
  status                          uptime, clients, counters
  who                             every connected client
  kick NICK [REASON]              disconnect a client, telling it and the room
  ban TARGET [--for DURATION] [REASON]
                                  refuse an address, a CIDR range or a nick mask
  unban TARGET
  bans                            the bans in force
  mute NICK [--for DURATION]      its lines are not relayed (90s, 10m, 2h, 7d)
  unmute NICK
  say TEXT                        a server notice to everyone
  topic TEXT                      set the room's topic
  reload                          re-read the configuration (as SIGHUP)
  metrics                         counters in the Prometheus text format

Exit status: 0 done, 1 refused or failed (the reply says why), 2 chatd
cannot be reached.";

fn main() -> ExitCode {
    let args = Args::parse();
    let mut line = args.command.join(" ");
    if args.json {
        line = format!("--json {line}");
    }
    if line.contains('\n') {
        eprintln!("chatctl: a request is one line");
        return ExitCode::from(1);
    }
    let mut s = match UnixStream::connect(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "chatctl: cannot reach chatd at {}: {e}",
                args.socket.display()
            );
            return ExitCode::from(2);
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reply = String::new();
    let sent = s.write_all(format!("{line}\n").as_bytes());
    // A refusal comes before the request is read: read it either way.
    let read = s.read_to_string(&mut reply);
    if reply.is_empty() {
        let e = read.err().or(sent.err());
        eprintln!(
            "chatctl: no reply from chatd{}",
            e.map_or(String::new(), |e| format!(": {e}"))
        );
        return ExitCode::from(2);
    }
    print!("{reply}");
    let failed = match args.json {
        true => serde_json::from_str::<serde_json::Value>(&reply)
            .map_or(true, |v| v.get("error").is_some()),
        false => reply.starts_with("error: "),
    };
    match failed {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    }
}
