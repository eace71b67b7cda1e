//! TLS for both protocols, with clients nobody here wrote (`openssl
//! s_client`, `socat`) verifying chatd against a test CA: chat across TLS
//! and plain clients, garbage and silence on a TLS port, reloading the
//! certificate while clients stay, and bad pairs at start and on reload.

mod common;

use common::irc::Irc;
use common::tls::{served_serial, tls_addr, tls_config, Pki, Tool};
use common::{base_config, render, Server, TIMEOUT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(pki: &Pki, name: &str, extra: &str) -> (Server, common::tls::Issued) {
    let id = pki.issue(name, 30);
    let cfg = format!("{}{}{extra}", render(&base_config()), tls_config(&id));
    (Server::start_text(&cfg, &[]), id)
}

#[test]
fn line_and_irc_over_tls_chat_with_plain_clients() {
    let pki = Pki::new();
    let (server, _) = start(&pki, "s", "");
    let (tls_line, ircs) = (tls_addr(&server, "Line"), tls_addr(&server, "Irc"));

    let mut plain = server.connect();
    plain.greeting();
    let mut ssl = Tool::s_client(tls_line, &pki.ca);
    ssl.expect("Welcome");
    // A TLS line client is in the room once its handshake is done.
    let joined = plain.expect(" joined");
    let ssl_nick = joined.trim_start_matches("* ").trim_end_matches(" joined");
    ssl.send("/nick sslguy");
    ssl.expect("you are now sslguy");
    plain.expect(&format!("{ssl_nick} is now sslguy"));

    let mut socat = Tool::socat(tls_line, &pki.ca);
    socat.expect("Welcome");
    socat.send("/nick socatguy");
    socat.expect("you are now socatguy");

    let mut irc = Tool::s_client(ircs, &pki.ca);
    irc.send("NICK tlsirc");
    irc.send("USER u 0 * :TLS IRC");
    irc.expect(" 001 tlsirc ");
    irc.expect(" 366 tlsirc #chatd ");

    let mut plain_irc = Irc::register(&server, "plainirc");

    ssl.send("hello from s_client");
    plain.expect("<sslguy> hello from s_client");
    socat.expect("<sslguy> hello from s_client");
    irc.expect(":sslguy!sslguy@chatd PRIVMSG #chatd :hello from s_client");
    plain_irc.expect(":sslguy!sslguy@chatd PRIVMSG #chatd :hello from s_client");

    irc.send("PRIVMSG #chatd :hello from ircs");
    ssl.expect("<tlsirc> hello from ircs");
    socat.expect("<tlsirc> hello from ircs");
    plain.expect("<tlsirc> hello from ircs");
    plain_irc.expect(":tlsirc!tlsirc@chatd PRIVMSG #chatd :hello from ircs");

    plain.send("and from plain text\n");
    ssl.expect("and from plain text");
    irc.expect("PRIVMSG #chatd :and from plain text");

    // Private messages between TLS clients of both protocols.
    irc.send("PRIVMSG socatguy :psst");
    socat.expect("[private] <tlsirc> psst");
    socat.send("/msg tlsirc back");
    irc.expect(":socatguy!socatguy@chatd PRIVMSG tlsirc :back");

    irc.send("QUIT :tls bye");
    plain.expect("* tlsirc left (tls bye)");
    ssl.send("/quit");
    plain.expect("* sslguy left");
    // socat ends when the server closes the session after /quit.
    socat.send("/quit");
    plain.expect("* socatguy left");
    assert!(socat.finish().success());
}

/// Reads until the server closes; true if that happened within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed() <= limit,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn garbage_and_silence_on_a_tls_port_are_closed_logged_and_unseen() {
    let pki = Pki::new();
    let (server, _) = start(&pki, "s", "tls_handshake_timeout = 1.0\n");
    let (tls_line, ircs) = (tls_addr(&server, "Line"), tls_addr(&server, "Irc"));
    let mut watcher = server.connect();
    watcher.greeting();

    // Plain text and HTTP to TLS ports: closed with a reason in the log.
    for (addr, text) in [
        (tls_line, &b"hello, is this chat?\n"[..]),
        (ircs, b"NICK x\r\nUSER x 0 * :x\r\n"),
        (tls_line, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        // A truncated ClientHello (record header promising 512 bytes).
        (
            ircs,
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ][..],
        ),
    ] {
        // (The truncated hello waits for the rest: the timeout ends it.)
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(text).unwrap();
        assert!(
            closed_within(&mut s, TIMEOUT),
            "{text:?} to {addr} left open"
        );
    }
    server.wait_log_n("TLS handshake failed", 3);
    // Silence: closed after tls_handshake_timeout, not before.
    let mut s = TcpStream::connect(tls_line).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut s, TIMEOUT));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    server.wait_log_n("TLS handshake timeout", 2);
    // An unsupported version (TLS 1.1): refused with an alert, and the
    // log says why.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
        ])
        .arg(tls_line.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a TLS 1.1 handshake succeeded");
    server.wait_log("TLS handshake failed: peer is incompatible");
    // A client that vanishes mid-handshake costs nothing either.
    let s = TcpStream::connect(ircs).unwrap();
    drop(s);

    // The room saw none of it: the next thing the watcher reads is this.
    let mut other = server.connect();
    other.greeting();
    other.send("after the garbage\n");
    let lines = watcher.lines_until("after the garbage");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("left") || l.contains("after")),
        "the room noticed: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("joined")).count(),
        1,
        "{lines:?}"
    );
    // And TLS still works.
    let mut ssl = Tool::s_client(tls_line, &pki.ca);
    ssl.expect("Welcome");
}

#[test]
fn reload_serves_a_new_certificate_and_keeps_clients() {
    let pki = Pki::new();
    let (server, first) = start(&pki, "s", "");
    let tls_line = tls_addr(&server, "Line");
    assert_eq!(served_serial(tls_line, &pki.ca), first.serial);
    let mut staying = Tool::s_client(tls_line, &pki.ca);
    staying.expect("Welcome");
    staying.send("/nick stayer");
    staying.expect("you are now stayer");

    // Renewed: the same paths, new contents.
    let renewed = pki.issue("renewed", 30);
    std::fs::copy(&renewed.cert, &first.cert).unwrap();
    std::fs::copy(&renewed.key, &first.key).unwrap();
    if nix::unistd::geteuid().is_root() {
        // chatd read the root-only key as root at start; reloading, it is
        // the service user (nobody here), who cannot.
        server.signal(libc::SIGHUP);
        let err = server.wait_log("event=\"tls_reload_failed\"");
        assert!(err.contains("s-key.pem: Permission denied"), "{err}");
        assert_eq!(served_serial(tls_line, &pki.ca), first.serial);
    }
    // What an admin does: let the service user read it (here: anyone).
    let readable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    readable(&first.key);
    server.signal(libc::SIGHUP);
    server.wait_log(&format!(
        "TLS certificate reloaded: CN=localhost (serial {}",
        renewed.serial
    ));
    assert_eq!(served_serial(tls_line, &pki.ca), renewed.serial);
    let mut newcomer = Tool::s_client(tls_line, &pki.ca);
    newcomer.expect("Welcome");
    newcomer.send("hello stayer");
    staying.expect("hello stayer");

    // A bad pair (a key that is not the certificate's) keeps the old one.
    let other = pki.issue("other", 30);
    std::fs::copy(&other.key, &first.key).unwrap();
    readable(&first.key);
    let failed = server.count_log("event=\"tls_reload_failed\"");
    server.signal(libc::SIGHUP);
    let err = server.wait_log_n("event=\"tls_reload_failed\"", failed + 1);
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(served_serial(tls_line, &pki.ca), renewed.serial);
    // An expired certificate is refused too.
    let old = pki.issue_expired("old");
    std::fs::copy(&old.cert, &first.cert).unwrap();
    std::fs::copy(&old.key, &first.key).unwrap();
    readable(&first.key);
    server.signal(libc::SIGHUP);
    server.wait_log_n("event=\"tls_reload_failed\"", failed + 2);
    assert!(server.find_log("expired on").is_some());
    assert_eq!(served_serial(tls_line, &pki.ca), renewed.serial);
    staying.send("still here");
    newcomer.expect("still here");
}

/// chatd with this pair: its exit status and log.
fn start_fails(cert: &std::path::Path, key: &std::path::Path) -> (i32, String) {
    let (mut cmd, _dir, _) = Server::command(&render(&base_config()));
    let out = cmd
        .arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_pair_at_start_is_one_clear_error_and_status_2() {
    let pki = Pki::new();
    let a = pki.issue("a", 30);
    let b = pki.issue("b", 30);
    let (code, log) = start_fails(&a.cert, &b.key);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("does not match the certificate"), "{log}");
    let old = pki.issue_expired("old");
    let (code, log) = start_fails(&old.cert, &old.key);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("expired on"), "{log}");
    let missing = pki.dir.0.join("missing.pem");
    let (code, log) = start_fails(&missing, &a.key);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("missing.pem"), "{log}");
    let (code, log) = start_fails(&a.key, &a.key);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("no PEM certificate"), "{log}");
    // TLS listeners without a certificate at all.
    let (mut cmd, _dir, _) = Server::command(&render(&base_config()));
    let out = cmd.args(["--tls-listen", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("tls_cert and tls_key are not set"), "{log}");
}

#[test]
fn a_certificate_that_expires_soon_is_warned_about() {
    let pki = Pki::new();
    let (server, _) = start(&pki, "soon", "");
    assert!(server.find_log("expires in").is_none());
    drop(server);
    let id = pki.issue("soon2", 5);
    let cfg = format!("{}{}", render(&base_config()), tls_config(&id));
    let server = Server::start_text(&cfg, &[]);
    let w = server.wait_log("event=\"tls_expiring\"");
    assert!(
        w.contains("expires in 4 days") || w.contains("expires in 5 days"),
        "{w}"
    );
}

#[test]
fn no_child_holds_the_private_key_and_the_master_does() {
    if !common::have_root("no_child_holds_the_private_key_and_the_master_does") {
        return;
    }
    let pki = Pki::new();
    let (server, id) = start(&pki, "s", "");
    let secret = common::tls::ec_secret(&id.key);
    assert_eq!(secret.len(), 32);
    let pem = std::fs::read_to_string(&id.key).unwrap();
    let pem_line = pem
        .lines()
        .nth(1)
        .expect("a base64 line")
        .as_bytes()
        .to_vec();
    let (tls_line, ircs) = (tls_addr(&server, "Line"), tls_addr(&server, "Irc"));
    let mut a = Tool::s_client(tls_line, &pki.ca);
    a.expect("Welcome");
    let mut b = Tool::socat(tls_line, &pki.ca);
    b.expect("Welcome");
    let mut c = Tool::s_client(ircs, &pki.ca);
    c.send("NICK memirc");
    c.send("USER u 0 * :u");
    c.expect(" 366 memirc ");
    let mut plain = server.connect();
    plain.greeting();
    a.send("a line to make every child render");
    b.expect("a line to make every child render");
    plain.expect("a line to make every child render");

    // The certificate's signature, which every TLS child does hold: the
    // search works in children's memory.
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&id.cert)
        .output()
        .unwrap()
        .stdout;
    let public = &der[der.len() - 32..];
    let children = server.children();
    assert_eq!(children.len(), 4, "{children:?}");
    let with_cert = children
        .iter()
        .filter(|p| common::tls::memory_holds(**p, public))
        .count();
    assert_eq!(with_cert, 3, "the three TLS children hold the certificate");
    for pid in &children {
        assert!(
            !common::tls::memory_holds(*pid, &secret),
            "child {pid} holds the key's secret scalar"
        );
        assert!(
            !common::tls::memory_holds(*pid, &pem_line),
            "child {pid} holds the key's PEM"
        );
    }
    // The search can find it: the master holds the key it signs with.
    assert!(
        common::tls::memory_holds(server.pid(), &secret),
        "the master's memory should hold the key (else this test proves nothing)"
    );
}

/// A compromised child asking the master to sign: the master kills it and
/// says why; the room goes on.
#[cfg(feature = "fault-injection")]
#[test]
fn the_master_is_no_signing_oracle() {
    let pki = Pki::new();
    let (server, _) = start(&pki, "s", "");
    let tls_line = tls_addr(&server, "Line");
    let mut watcher = server.connect();
    watcher.greeting();
    let cases = [
        (
            false,
            "sign-handshake",
            "a signing request from a client without TLS",
        ),
        (
            true,
            "sign",
            "a signing request that is not a handshake message",
        ),
        (true, "sign-handshake", "a second signing request"),
    ];
    for (n, (tls, fault, why)) in cases.into_iter().enumerate() {
        let output = if tls {
            let mut c = Tool::s_client(tls_line, &pki.ca);
            c.expect("Welcome");
            c.send(&format!("/fault {fault}"));
            // Killed: s_client sees the connection end, never "survived".
            c.read_to_end()
        } else {
            let mut c = server.connect();
            c.greeting();
            c.send(&format!("/fault {fault}\n"));
            c.read_to_eof()
        };
        assert!(
            !output.iter().any(|l| l.contains("survived")),
            "{fault}: {output:?}"
        );
        let logged = server.wait_log_n("event=\"sign_refused\"", n + 1);
        assert!(logged.contains(why), "{fault}: {logged}");
        assert!(watcher
            .lines_until(" left")
            .last()
            .unwrap()
            .contains("killed by SIGKILL"));
    }
}

#[test]
fn systemd_credentials_take_precedence_one_by_one() {
    let pki = Pki::new();
    let id = pki.issue("s", 30);
    let other = pki.issue("other", 30);
    // The key as a credential; the certificate from tls_cert; tls_key
    // names another key, which the credential overrides.
    let creds = common::TempDir::new();
    std::fs::copy(&id.key, creds.0.join("tls.key")).unwrap();
    // systemd makes a credential readable by the service user (nobody
    // here, started as root by the tests).
    use std::os::unix::fs::PermissionsExt;
    let readable = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(creds.0.join("tls.key"), readable).unwrap();
    let cfg = format!(
        "{}tls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        render(&base_config()),
        id.cert.display(),
        other.key.display()
    );
    let (mut cmd, dir, path) = Server::command(&cfg);
    cmd.env("CREDENTIALS_DIRECTORY", &creds.0);
    let server = Server::spawn(cmd, dir, path);
    let tls_line = tls_addr(&server, "Line");
    assert_eq!(served_serial(tls_line, &pki.ca), id.serial);
    // A renewal that keeps the key: the certificate file is replaced and a
    // reload serves it, the key still from the credential.
    let renewed = pki.renew(&id, "renewed");
    std::fs::copy(&renewed.cert, &id.cert).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log(&format!(
        "TLS certificate reloaded: CN=localhost (serial {}",
        renewed.serial
    ));
    assert_eq!(served_serial(tls_line, &pki.ca), renewed.serial);
}

#[test]
fn every_key_type_signs_tls_1_2_and_1_3_handshakes() {
    let pki = Pki::new();
    let keys: [(&str, &[&str]); 4] = [
        (
            "p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        ("ed25519", &["-newkey", "ed25519"]),
        ("rsa", &["-newkey", "rsa:2048"]),
    ];
    for (name, newkey) in keys {
        let id = pki.issue_with(name, newkey);
        let cfg = format!("{}{}", render(&base_config()), tls_config(&id));
        let server = Server::start_text(&cfg, &[]);
        let addr = tls_addr(&server, "Line");
        for version in ["-tls1_2", "-tls1_3"] {
            let mut c = Tool::s_client_with(addr, &pki.ca, &[version]);
            c.expect("Welcome");
        }
        // Two handshakes, two signatures, nothing refused.
        assert!(server.find_log("sign_refused").is_none(), "{name}");
    }
}
