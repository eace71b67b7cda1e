//! Command-line interface: flags, and how they override the config file.

use crate::config::{self, Config};
use clap::Parser;
use std::path::PathBuf;

/// chatd: a hardened fork-per-client TCP chat room.
#[derive(Debug, Parser, Clone)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Configuration file [default: /etc/chatd/chatd.toml, used only if it exists]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Ignore any config file: built-in defaults plus these flags
    #[arg(long, conflicts_with = "config")]
    pub no_config: bool,

    /// Validate the configuration, print the result and exit (0 valid, 2 invalid)
    #[arg(long)]
    pub check_config: bool,

    /// Address to listen on, IP:PORT or [IPv6]:PORT (repeatable; replaces `listen`)
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Address for IRC clients, IP:PORT (repeatable; replaces `irc_listen`;
    /// `--irc-listen ''` disables IRC)
    #[arg(long, value_name = "ADDR")]
    pub irc_listen: Vec<String>,

    /// Address for the line protocol over TLS (repeatable; replaces
    /// `tls_listen`; needs `--tls-cert` and `--tls-key`)
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<String>,

    /// Address for IRC over TLS, conventionally port 6697 (repeatable;
    /// replaces `ircs_listen`)
    #[arg(long, value_name = "ADDR")]
    pub ircs_listen: Vec<String>,

    /// Override `tls_cert`: the certificate chain (PEM)
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Override `tls_key`: the certificate's private key (PEM)
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Override `max_clients`
    #[arg(long, value_name = "N")]
    pub max_clients: Option<u32>,

    /// Override `max_per_ip`
    #[arg(long, value_name = "N")]
    pub max_per_ip: Option<u32>,

    /// Override `max_line` (bytes)
    #[arg(long, value_name = "BYTES")]
    pub max_line: Option<usize>,

    /// Override `flood_burst`
    #[arg(long, value_name = "LINES")]
    pub flood_burst: Option<u32>,

    /// Override `flood_rate` (lines per second; 0 disables flood control)
    #[arg(long, value_name = "RATE")]
    pub flood_rate: Option<f64>,

    /// Override `user`: the service user to switch to when started as root
    #[arg(short, long, value_name = "NAME")]
    pub user: Option<String>,

    /// Override `server_name`
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl Args {
    /// The file this invocation reads, and whether it may be missing.
    pub fn config_file(&self) -> Option<(PathBuf, bool)> {
        if self.no_config {
            return None;
        }
        Some(match &self.config {
            Some(p) => (p.clone(), false),
            None => (PathBuf::from(config::DEFAULT_PATH), true),
        })
    }

    /// Loads the file this invocation names and applies the flags.
    pub fn load_config(&self) -> Result<Config, config::ConfigError> {
        let cfg = match self.config_file() {
            None => Config::default(),
            Some((p, missing_ok)) => Config::load(&p, missing_ok)?,
        };
        self.apply(cfg)
    }

    /// Returns a loader for SIGHUP that reads the file through its
    /// directory opened now, so that it works after the master's chroot.
    pub fn reloader(&self) -> std::io::Result<crate::master::Reloader> {
        let args = self.clone();
        let pinned = match self.config_file() {
            None => None,
            Some((p, missing_ok)) => match config::Pinned::open(&p) {
                Ok(d) => Some((p, missing_ok, d)),
                Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
        };
        Ok(Box::new(move || {
            let cfg = match &pinned {
                None => Config::default(),
                Some((p, missing_ok, dir)) => Config::load_with(p, *missing_ok, |_| dir.read())?,
            };
            args.apply(cfg)
        }))
    }

    /// Applies the command-line overrides to a loaded file.
    fn apply(&self, mut cfg: Config) -> Result<Config, config::ConfigError> {
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if !self.irc_listen.is_empty() {
            cfg.irc_listen = self
                .irc_listen
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect();
        }
        let given = |l: &Vec<String>| -> Vec<String> {
            l.iter().filter(|a| !a.is_empty()).cloned().collect()
        };
        if !self.tls_listen.is_empty() {
            cfg.tls_listen = given(&self.tls_listen);
        }
        if !self.ircs_listen.is_empty() {
            cfg.ircs_listen = given(&self.ircs_listen);
        }
        if let Some(v) = &self.tls_cert {
            cfg.tls_cert = v.clone();
        }
        if let Some(v) = &self.tls_key {
            cfg.tls_key = v.clone();
        }
        if let Some(v) = self.max_clients {
            cfg.max_clients = v;
        }
        if let Some(v) = self.max_per_ip {
            cfg.max_per_ip = v;
        }
        if let Some(v) = self.max_line {
            cfg.max_line = v;
        }
        if let Some(v) = self.flood_burst {
            cfg.flood_burst = v;
        }
        if let Some(v) = self.flood_rate {
            cfg.flood_rate = v;
        }
        if let Some(v) = &self.user {
            cfg.user = v.clone();
        }
        if let Some(v) = &self.server_name {
            cfg.server_name = v.clone();
        }
        cfg.validate()
            .map_err(|(key, message)| config::ConfigError {
                path: None,
                key: Some(key.to_string()),
                line: None,
                message,
            })?;
        Ok(cfg)
    }
}
