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

    /// Override `server_name`
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl Args {
    /// Loads the file this invocation names and applies the flags.
    pub fn load_config(&self) -> Result<Config, config::ConfigError> {
        let mut cfg = if self.no_config {
            Config::default()
        } else {
            match &self.config {
                Some(p) => Config::load(p, false)?,
                None => Config::load(std::path::Path::new(config::DEFAULT_PATH), true)?,
            }
        };
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
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
