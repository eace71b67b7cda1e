//! Configuration: the TOML file, its built-in defaults and their validation.
//!
//! The master loads a [`Config`] at start-up and again on SIGHUP. Every key
//! is optional; a missing key takes the default documented in
//! `packaging/chatd.toml` and chatd(8). A bad file yields one [`ConfigError`]
//! that names the key and the line, and the daemon exits with status 2 (or,
//! on reload, keeps its running configuration).

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the packaged configuration lives; a missing file there means
/// built-in defaults.
pub const DEFAULT_PATH: &str = "/etc/chatd/chatd.toml";

/// Default `empty_dir`: the children's root when started as root.
pub const DEFAULT_EMPTY_DIR: &str = "/run/chatd/empty";

/// Hard upper bound for `max_line`; the shared-memory rings are sized for it.
pub const MAX_LINE_LIMIT: usize = 4096;
/// Longest nickname accepted by `/nick`.
pub const MAX_NICK: usize = 24;

/// The daemon's settings. Field docs are the reference for the config keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on (`"127.0.0.1:5555"`, `"[::1]:5555"`); ignored
    /// when systemd passes sockets. Cannot change on reload.
    pub listen: Vec<String>,
    /// Addresses for IRC clients (irssi, WeeChat, HexChat, bots); empty
    /// disables IRC. Ignored when systemd passes sockets (the one named
    /// `irc` speaks IRC). Cannot change on reload.
    pub irc_listen: Vec<String>,
    /// Addresses for the line protocol over TLS; empty (the default)
    /// disables it. Ignored when systemd passes sockets (the one named
    /// `tls`). Cannot change on reload.
    pub tls_listen: Vec<String>,
    /// Addresses for IRC over TLS (conventionally port 6697); empty (the
    /// default) disables it. Ignored when systemd passes sockets (the one
    /// named `ircs`). Cannot change on reload.
    pub ircs_listen: Vec<String>,
    /// The TLS certificate chain (PEM, leaf first). systemd's credentials
    /// `tls.crt` and `tls.key` (`LoadCredential=`) take precedence.
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM: ECDSA P-256/P-384, Ed25519 or
    /// RSA). Read by the master only; no child ever holds it.
    pub tls_key: PathBuf,
    /// Seconds a TLS client may take to complete its handshake.
    pub tls_handshake_timeout: f64,
    /// The room's name as an IRC channel.
    pub irc_channel: String,
    /// The room's topic (IRC 332; empty: none).
    pub topic: String,
    /// Seconds an IRC client may take to register (NICK, USER, CAP END)
    /// before it is disconnected.
    pub registration_timeout: f64,
    /// Most clients connected at once; further connects get "server full".
    /// Raising it above the start-up value needs a restart.
    pub max_clients: u32,
    /// Most clients connected at once from one IP address.
    pub max_per_ip: u32,
    /// Longest accepted line in bytes, without the line ending (16..=4096).
    pub max_line: usize,
    /// Lines a client may send in a burst before flood control delays it.
    pub flood_burst: u32,
    /// Lines per second a client may sustain; 0 disables flood control.
    pub flood_rate: f64,
    /// Seconds to wait for children at shutdown before killing them.
    pub shutdown_timeout: f64,
    /// Bytes of undelivered output a client may have queued before it is
    /// disconnected with "SendQ exceeded".
    pub max_sendq: usize,
    /// Seconds a stalled client may hold up the relay log when it is full
    /// before it is disconnected.
    pub stall_timeout: f64,
    /// Seconds of idleness before TCP keepalive probes; 0 disables them.
    pub keepalive: u32,
    /// Seconds a line may take to arrive, from its first byte to its end of
    /// line; a slower client is disconnected ("line timeout"). 0 disables.
    pub line_timeout: f64,
    /// Lines of the room's recent conversation a newcomer is shown, marked
    /// with the time they were said (0..=100; 0: none).
    pub history_lines: u32,
    /// Joins and leaves are announced one by one while the room has at
    /// most this many people; in a larger room they are summed up every
    /// 30 s.
    pub join_notices_up_to: u32,
    /// Name shown in the greeting.
    pub server_name: String,
    /// Message of the day, shown after the greeting (may span lines).
    pub motd: String,
    /// Service user the master switches to when started as root (its
    /// primary group becomes the only group). Ignored when not started as
    /// root. Cannot change on reload.
    pub user: String,
    /// The control socket `chatctl` talks to (a unix socket; empty: none).
    /// Under systemd, chatd-control.socket passes it instead. Created with
    /// mode 0600 when chatd starts; if it cannot be created chatd runs
    /// without it. Cannot change on reload.
    pub control_socket: PathBuf,
    /// Besides root and chatd's own user, members of this group may use
    /// the control socket.
    pub control_group: String,
    /// Where chatd keeps what outlives it (the bans). Created if missing
    /// (given to `user` when started as root); if it cannot be used, bans
    /// last until chatd stops. Under systemd, `StateDirectory=chatd`.
    /// Cannot change on reload.
    pub state_dir: PathBuf,
    /// Empty, root-owned directory chatd chroots into when started as root,
    /// so that the children's root holds nothing. Created if missing.
    /// Cannot change on reload.
    pub empty_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec!["127.0.0.1:5555".to_string()],
            irc_listen: vec!["127.0.0.1:6667".to_string()],
            tls_listen: Vec::new(),
            ircs_listen: Vec::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_handshake_timeout: 10.0,
            irc_channel: "#chatd".to_string(),
            topic: String::new(),
            registration_timeout: 30.0,
            max_clients: 1024,
            max_per_ip: 16,
            max_line: 1024,
            flood_burst: 10,
            flood_rate: 5.0,
            shutdown_timeout: 5.0,
            max_sendq: 256 * 1024,
            history_lines: 20,
            join_notices_up_to: 1000,
            stall_timeout: 2.0,
            keepalive: 60,
            line_timeout: 60.0,
            server_name: "chatd".to_string(),
            motd: String::new(),
            control_socket: PathBuf::from("/run/chatd/control"),
            control_group: "chatd-admin".to_string(),
            state_dir: PathBuf::from("/var/lib/chatd"),
            user: "chatd".to_string(),
            empty_dir: PathBuf::from(DEFAULT_EMPTY_DIR),
        }
    }
}

/// A configuration that could not be loaded, with the place to fix it.
#[derive(Debug)]
pub struct ConfigError {
    pub path: Option<PathBuf>,
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display())?,
            None => write!(f, "command line")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path`. A missing file is an error unless `missing_ok`, in which
    /// case the defaults are returned.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Config, ConfigError> {
        Config::load_with(path, missing_ok, |p| std::fs::read_to_string(p))
    }

    /// Like [`Config::load`], reading the file with `read` (see [`Pinned`]).
    pub fn load_with(
        path: &Path,
        missing_ok: bool,
        read: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let text = match read(path) {
            Ok(t) => t,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(ConfigError {
                    path: Some(path.to_path_buf()),
                    key: None,
                    line: None,
                    message: format!("cannot read: {e}"),
                })
            }
        };
        Config::parse(&text).map_err(|mut e| {
            e.path = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            let message = e.message().to_string();
            let key =
                unknown_field_name(&message).or_else(|| line.and_then(|l| key_on_line(text, l)));
            ConfigError {
                path: None,
                key,
                line,
                message,
            }
        })?;
        cfg.validate().map_err(|(key, message)| ConfigError {
            path: None,
            line: find_key_line(text, key),
            key: Some(key.to_string()),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks ranges and cross-key rules; returns the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Err(("listen", "needs at least one address".into()));
        }
        for a in &self.listen {
            parse_listen(a).map_err(|m| ("listen", m))?;
        }
        for a in &self.irc_listen {
            parse_listen(a).map_err(|m| ("irc_listen", m))?;
        }
        for a in &self.tls_listen {
            parse_listen(a).map_err(|m| ("tls_listen", m))?;
        }
        for a in &self.ircs_listen {
            parse_listen(a).map_err(|m| ("ircs_listen", m))?;
        }
        if !(self.tls_handshake_timeout.is_finite()
            && (1.0..=300.0).contains(&self.tls_handshake_timeout))
        {
            return Err((
                "tls_handshake_timeout",
                "must be between 1 and 300 seconds".into(),
            ));
        }
        let chan = self.irc_channel.as_bytes();
        if chan.len() < 2
            || chan.len() > 50
            || chan[0] != b'#'
            || !self.irc_channel[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err((
                "irc_channel",
                "must be # and 1 to 49 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if !(self.registration_timeout.is_finite()
            && (1.0..=3600.0).contains(&self.registration_timeout))
        {
            return Err((
                "registration_timeout",
                "must be between 1 and 3600 seconds".into(),
            ));
        }
        if self.topic.len() > 300 || self.topic.chars().any(char::is_control) {
            return Err(("topic", "must be at most 300 printable characters".into()));
        }
        if !(1..=100_000).contains(&self.max_clients) {
            return Err(("max_clients", "must be between 1 and 100000".into()));
        }
        if self.max_per_ip < 1 {
            return Err(("max_per_ip", "must be at least 1".into()));
        }
        if !(16..=MAX_LINE_LIMIT).contains(&self.max_line) {
            return Err((
                "max_line",
                format!("must be between 16 and {MAX_LINE_LIMIT}"),
            ));
        }
        if self.history_lines as usize > crate::shm::HISTORY_MAX {
            return Err((
                "history_lines",
                format!("must be between 0 and {}", crate::shm::HISTORY_MAX),
            ));
        }
        if self.join_notices_up_to > 100_000 {
            return Err(("join_notices_up_to", "must be between 0 and 100000".into()));
        }
        if self.flood_burst < 1 {
            return Err(("flood_burst", "must be at least 1".into()));
        }
        if !(self.flood_rate.is_finite() && self.flood_rate >= 0.0) {
            return Err(("flood_rate", "must be a number >= 0 (0 disables)".into()));
        }
        if !(self.shutdown_timeout.is_finite() && (0.0..=3600.0).contains(&self.shutdown_timeout)) {
            return Err((
                "shutdown_timeout",
                "must be between 0 and 3600 seconds".into(),
            ));
        }
        if !(self.stall_timeout.is_finite() && (0.01..=3600.0).contains(&self.stall_timeout)) {
            return Err((
                "stall_timeout",
                "must be between 0.01 and 3600 seconds".into(),
            ));
        }
        if self.keepalive > 32767 {
            return Err(("keepalive", "must be between 0 and 32767 seconds".into()));
        }
        if !(self.line_timeout.is_finite() && (0.0..=86400.0).contains(&self.line_timeout)) {
            return Err((
                "line_timeout",
                "must be between 0 and 86400 seconds (0 disables)".into(),
            ));
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.max_sendq) {
            return Err((
                "max_sendq",
                "must be between 4096 and 67108864 bytes".into(),
            ));
        }
        if self.server_name.is_empty()
            || self.server_name.len() > 64
            || self.server_name.chars().any(char::is_control)
        {
            return Err(("server_name", "must be 1 to 64 printable characters".into()));
        }
        if self.user.is_empty()
            || self.user.len() > 32
            || !self
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(("user", "must be a user name like chatd".into()));
        }
        if !self.empty_dir.is_absolute() || self.empty_dir == Path::new("/") {
            return Err(("empty_dir", "must be an absolute path other than /".into()));
        }
        if self.motd.len() > 4096 || self.motd.chars().any(|c| c.is_control() && c != '\n') {
            return Err(("motd", "must be at most 4096 printable characters".into()));
        }
        Ok(())
    }

    /// Every address to listen on and its protocol, parsed (validated by
    /// [`Config::validate`]).
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, crate::protocol::Service)> {
        use crate::protocol::{Proto, Service};
        let lists = [
            (&self.listen, Proto::Line, false),
            (&self.irc_listen, Proto::Irc, false),
            (&self.tls_listen, Proto::Line, true),
            (&self.ircs_listen, Proto::Irc, true),
        ];
        lists
            .into_iter()
            .flat_map(|(l, proto, tls)| l.iter().map(move |a| (a, Service { proto, tls })))
            .filter_map(|(a, s)| Some((parse_listen(a).ok()?, s)))
            .collect()
    }

    /// Whether any listener is configured to speak TLS.
    pub fn wants_tls(&self) -> bool {
        !self.tls_listen.is_empty() || !self.ircs_listen.is_empty()
    }
}

/// A config file's directory, opened at start-up.
///
/// The master keeps it so that a SIGHUP reload still finds the file after
/// the master has chrooted into `empty_dir` (see ARCHITECTURE.md, "Confinement").
/// The fd is `O_PATH`: it grants no reading by itself, and every child closes
/// it with the rest of the master's fds.
pub struct Pinned {
    dir: OwnedFd,
    name: std::ffi::OsString,
}

impl Pinned {
    /// Opens the directory that holds `path`.
    pub fn open(path: &Path) -> std::io::Result<Pinned> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("not a file name"))?
            .to_os_string();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = nix::fcntl::open(
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Pinned { dir, name })
    }

    /// Opens the file through the pinned directory, for reading.
    pub fn open_file(&self) -> std::io::Result<std::fs::File> {
        let fd = nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// Reads the file through the pinned directory.
    pub fn read(&self) -> std::io::Result<String> {
        std::io::read_to_string(self.open_file()?)
    }
}

/// Parses one `listen` entry: `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:5555 or [::1]:5555"))
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line - 1)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('#')).then(|| k.to_string())
}

fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim() == key || k.trim() == format!("\"{key}\""))
        })
        .map(|i| i + 1)
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn type_error_names_key_and_line() {
        let e = Config::parse("server_name = \"x\"\nmax_clients = \"many\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("max_clients"));
    }

    #[test]
    fn range_error_names_key_and_line() {
        let e = Config::parse("\n\nmax_line = 3\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("max_line"));
        assert!(e.to_string().contains("max_line"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("max_clientz = 3\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("max_clientz"));
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn bad_listen_address() {
        let e = Config::parse("listen = [\"localhost\"]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen"));
    }
}
