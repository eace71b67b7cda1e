//! The shipped config, the man page and the README agree with the code.

use chatd::config::Config;

const KEYS: &[&str] = &[
    "listen",
    "max_clients",
    "max_per_ip",
    "max_line",
    "flood_burst",
    "flood_rate",
    "max_sendq",
    "stall_timeout",
    "keepalive",
    "line_timeout",
    "shutdown_timeout",
    "server_name",
    "motd",
    "user",
    "empty_dir",
];

fn read(p: &str) -> String {
    std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn default_config_file_documents_the_real_defaults() {
    let text = read("packaging/chatd.toml");
    assert_eq!(Config::parse(&text).unwrap(), Config::default());
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let keys: Vec<&str> = uncommented
        .lines()
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert_eq!(keys, KEYS, "every key, in order, in packaging/chatd.toml");
    assert_eq!(Config::parse(&uncommented).unwrap(), Config::default());
}

#[test]
fn every_key_is_documented() {
    // Unknown keys are rejected, so KEYS lists real keys only.
    for k in KEYS {
        let value = if *k == "listen" {
            "[\"127.0.0.1:1\"]"
        } else {
            "0"
        };
        if let Err(e) = Config::parse(&format!("{k} = {value}\n")) {
            assert!(!e.message.contains("unknown field"), "{k}: {e}");
        }
    }
    let man = read("packaging/chatd.8");
    let readme = read("README.md");
    for k in KEYS {
        assert!(man.contains(k), "chatd.8 lacks {k}");
        assert!(readme.contains(&format!("`{k}`")), "README lacks {k}");
    }
}
