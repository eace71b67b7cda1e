//! The shipped config, the man page and the README agree with the code.

use chatd::config::Config;

const KEYS: &[&str] = &[
    "listen",
    "irc_listen",
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
    "history_lines",
    "join_notices_up_to",
    "server_name",
    "motd",
    "irc_channel",
    "topic",
    "registration_timeout",
    "tls_listen",
    "ircs_listen",
    "tls_cert",
    "tls_key",
    "tls_handshake_timeout",
    "control_socket",
    "control_group",
    "state_dir",
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
        let value = if k.ends_with("listen") {
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

/// The lines of the fenced code block that follows `heading` in `doc`.
fn block_after<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let rest = &doc[doc.find(heading).unwrap_or_else(|| panic!("no {heading}"))..];
    rest.lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect()
}

#[test]
fn architecture_file_map_matches_the_tree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let map: Vec<String> = block_after(&read("ARCHITECTURE.md"), "## File map")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        map.len() > 20,
        "the file map is the first block after its heading"
    );
    for p in &map {
        assert!(
            std::path::Path::new(&format!("{root}/{p}")).exists(),
            "ARCHITECTURE.md's file map names {p}, which does not exist"
        );
    }
    // Every source file is in the map, itself or through its directory.
    fn walk(dir: &std::path::Path, out: &mut Vec<String>, root: &str) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out, root);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(root).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(
        std::path::Path::new(&format!("{root}/src")),
        &mut files,
        &format!("{root}/"),
    );
    for f in files {
        assert!(
            map.iter()
                .any(|p| *p == f || (p.ends_with('/') && f.starts_with(p.as_str()))),
            "{f} is missing from ARCHITECTURE.md's file map"
        );
    }
}

#[test]
fn readme_starts_with_the_two_setup_commands() {
    let readme = read("README.md");
    let first = block_after(&readme, "# chatd");
    assert_eq!(
        first,
        [
            "cargo run --release -- --no-config --user nobody",
            "bash tests/all.sh"
        ],
        "the README's first commands: run chatd, run every test"
    );
    let ci = read(".ci/run");
    assert!(
        ci.contains("bash tests/all.sh"),
        ".ci/run calls the README's test command"
    );
}

#[test]
fn the_documents_describe_chatd_not_its_history() {
    for doc in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/decisions.md",
        "packaging/chatd.8",
    ] {
        let text = read(doc).to_lowercase();
        // "session 5": a period of work, not a protocol session.
        let numbered = text
            .match_indices("session ")
            .any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(!numbered, "{doc} numbers periods of work");
        for word in ["planners", "before 2026", "this afternoon", "this morning"] {
            assert!(!text.contains(word), "{doc} speaks of {word:?}");
        }
    }
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines: it is for users");
    // A pasted JSON blob or log is not documentation.
    for (i, l) in readme.lines().enumerate() {
        assert!(
            l.len() <= 200,
            "README.md line {} has {} characters",
            i + 1,
            l.len()
        );
    }
}
