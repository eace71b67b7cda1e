//! Confinement, observed from outside: /proc of the master and a live
//! child, the chroot, the refusals at start-up, and release builds without
//! the fault hook. The faults themselves are in tests/faults.rs.

mod common;
use common::irc::Irc;
use common::*;
use std::process::Command;

#[test]
fn root_start_drops_to_the_service_user_in_the_empty_root() {
    if !have_root("root_start_drops_to_the_service_user_in_the_empty_root") {
        return;
    }
    let dir = TempDir::new();
    let empty = dir.0.join("empty");
    let mut cfg = base_config();
    cfg.insert("empty_dir".into(), format!("\"{}\"", empty.display()));
    let path = dir.0.join("chatd.toml");
    std::fs::write(&path, render(&cfg)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let server = Server::spawn(cmd, dir, path);
    server.wait_log("event=\"confined\"");
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    // An IRC client's child is confined the same way (its parser runs in it).
    let mut irc = Irc::register(&server, "ircuser");
    a.expect("ircuser joined");
    let children = server.children();
    assert_eq!(children.len(), 3, "{children:?}");
    let child = children[0];
    for &pid in [server.pid()].iter().chain(&children) {
        assert_confined(pid, NOBODY);
        let s = proc_status(pid);
        assert_eq!(s["Gid"], "65534\t65534\t65534\t65534", "pid {pid} Gid");
        assert_eq!(s["Groups"], "65534", "pid {pid} Groups");
        assert_eq!(s["CapBnd"], "0000000000000000", "pid {pid} CapBnd");
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(root, empty, "pid {pid} root");
    }
    // The child stacks its own filter on the master's.
    assert_eq!(proc_status(server.pid())["Seccomp_filters"], "1");
    for &c in &children {
        assert_eq!(proc_status(c)["Seccomp_filters"], "2", "child {c}");
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{c}/fd"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .into_string()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        fds.sort();
        assert_eq!(fds, [0, 2, 3, 4, 5], "child {c} fds");
    }
    // The empty root was created root-owned and not writable by others.
    let meta = std::fs::metadata(&empty).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o022), (0, 0));
    // A child keeps only stderr, its client socket, its control socket, the
    // shared wake-up eventfd and its own epoll instance.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut fds: Vec<i32> = fds.iter().map(|f| f.parse().unwrap()).collect();
    fds.sort();
    assert_eq!(fds, [0, 2, 3, 4, 5], "child fds");
    let link = |fd: i32| std::fs::read_link(format!("/proc/{child}/fd/{fd}")).unwrap();
    assert_eq!(link(0).to_str(), Some("anon_inode:[eventpoll]"));
    assert_eq!(link(5).to_str(), Some("anon_inode:[eventfd]"));
    let limits = std::fs::read_to_string(format!("/proc/{child}/limits")).unwrap();
    for (name, value) in [
        ("Max processes", "0"),
        ("Max file size", "0"),
        ("Max core file size", "0"),
        ("Max open files", "6"),
    ] {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        let soft_hard: Vec<&str> = line[name.len()..].split_whitespace().take(2).collect();
        assert_eq!(soft_hard, [value, value], "{name}");
    }
    // `ps` tells the children apart, and none keeps the master's stack.
    assert_children_titled_on_own_stack(server.pid(), &[&a, &b, &irc.0]);
    // And chat works through all of it.
    b.send("confined hello\n");
    a.expect(&format!("<{b_nick}> confined hello"));
    irc.expect(&format!(
        ":{b_nick}!{b_nick}@chatd PRIVMSG #chatd :confined hello"
    ));
}

#[test]
fn unprivileged_start_keeps_its_uid_and_drops_capabilities() {
    let (server, _) = Server::start_unprivileged(BIN, false);
    server.wait_log("not started as root");
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    let uid = if nix::unistd::geteuid().is_root() {
        NOBODY
    } else {
        nix::unistd::getuid().as_raw()
    };
    let master = server.pid(); // setpriv execs chatd in place
    let child = *common::children_of(master).first().expect("a child");
    for pid in [master, child] {
        assert_confined(pid, uid);
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(root, std::path::Path::new("/"), "no chroot without root");
    }
    assert_children_titled_on_own_stack(master, &[&a, &b]);
    b.send("still chatting\n");
    a.expect(&format!("<{b_nick}> still chatting"));
}

/// Runs chatd to completion; returns its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CHATD_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn root_without_the_service_user_refuses_with_status_67() {
    if !have_root("root_without_the_service_user_refuses_with_status_67") {
        return;
    }
    let (code, err) = run(&[
        "--no-config",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "no-such-chatd-user",
    ]);
    assert_eq!(code, Some(67), "{err}");
    assert!(
        err.contains("service user `no-such-chatd-user` does not exist"),
        "{err}"
    );
    assert!(err.contains("--user"), "says how to fix it: {err}");
    let (code, err) = run(&["--no-config", "--listen", "127.0.0.1:0", "--user", "root"]);
    assert_eq!(code, Some(67), "{err}");
    assert!(err.contains("uid 0"), "{err}");
}

#[test]
fn unsafe_empty_dirs_are_refused() {
    if !have_root("unsafe_empty_dirs_are_refused") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let writable = dir.0.join("writable");
    std::fs::create_dir(&writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let full = dir.0.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("planted"), "x").unwrap();
    let owned = dir.0.join("owned");
    std::fs::create_dir(&owned).unwrap();
    std::os::unix::fs::chown(&owned, Some(NOBODY), Some(NOBODY)).unwrap();
    for (d, why) in [
        (&writable, "writable by group or others"),
        (&full, "not empty"),
        (&owned, "not owned by root"),
    ] {
        let cfg = dir.0.join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:0\"]\nuser = \"nobody\"\nempty_dir = \"{}\"\n",
                d.display()
            ),
        )
        .unwrap();
        let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("empty_dir") && err.contains(why),
            "{why}: {err}"
        );
    }
}

/// The release binary (tests/all.sh builds it before the tests): its path
/// and bytes.
fn release_binary() -> (String, Vec<u8>) {
    let bin = std::env::var("CHATD_RELEASE_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/chatd", env!("CARGO_MANIFEST_DIR")));
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!("{bin}: {e}; build it first with `cargo build --release` (tests/all.sh does)")
    });
    (bin, bytes)
}

#[test]
fn release_binary_maps_within_4_mib() {
    // Each 2 MiB block of the address space a child touches costs it a
    // page-table page. Under 4 MiB, the binary lands across three blocks at
    // most, wherever address-space randomisation puts it (ARCHITECTURE.md,
    // "Memory"): fat LTO and one codegen unit keep it there. (Under 2 MiB
    // it was two, one page-table page less per child; rustls and ring took
    // it to 3.3 MiB: docs/decisions.md, "TLS".)
    let (bin, b) = release_binary();
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(&b[..5], b"\x7fELF\x02", "{bin}: not a 64-bit ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) == 1 {
            // PT_LOAD: p_vaddr at +0x10, p_memsz at +0x28.
            lo = lo.min(u64_at(ph + 0x10));
            hi = hi.max(u64_at(ph + 0x10) + u64_at(ph + 0x28));
        }
    }
    let span = hi.saturating_sub(lo & !0xfff);
    assert!(
        span <= 4 << 20,
        "{bin} maps {span} bytes, more than 4 MiB: children pay a page-table page more in some layouts"
    );
}

#[test]
fn release_binary_has_no_fault_hook() {
    let (bin, bytes) = release_binary();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !has(b"CHATD_FAULT_OPEN"),
        "release binary contains the fault hook"
    );
    assert!(
        !has(b"CHATD_FAULT_NO_SET_MM"),
        "release binary contains the fault hook"
    );
    assert!(
        !has(b"fault injection"),
        "release binary contains the fault hook"
    );

    let (server, _) = Server::start_unprivileged(&bin, true);
    let mut a = server.connect();
    a.send("/fault openat\n/who\n");
    let mut lines = Vec::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l.contains("1 online"))
    {
        lines.push(a.read_line().expect("a line"));
    }
    assert!(lines[0].contains("Welcome"), "{lines:?}");
    assert_eq!(
        lines[1], "! unknown command /fault; type /help",
        "{lines:?}"
    );
    assert_eq!(
        lines.len(),
        3,
        "no fault note from the environment: {lines:?}"
    );
}
