//! Real IRC clients against a real chatd: ii, WeeChat (headless) and irssi
//! (in tmux), each next to a line-protocol client (bob) and a raw IRC
//! client (carol). Each registers, is in the room, exchanges lines with
//! both, sees a nick change, sends /me, sends and receives a private
//! message, and quits with a reason the others see.
//!
//! tests/all.sh installs the clients (Debian's ii, weechat-headless, irssi,
//! tmux) when run as root; elsewhere a missing client skips its test with
//! a note, unless CHATD_TESTS_AS_ROOT says the clients must be there.

mod common;
use common::irc::{line_client, Irc};
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Whether `program` is installed; if not, the test is skipped (or fails
/// where tests/all.sh installed the clients).
fn have(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
    if !found {
        assert!(
            std::env::var_os("CHATD_TESTS_AS_ROOT").is_none(),
            "{program} is not installed (tests/all.sh installs it)"
        );
        eprintln!("note: {program} is not installed; test not run");
    }
    found
}

/// Waits until the file at `path` contains `needle`; returns its text.
fn wait_file(path: &Path, needle: &str) -> String {
    wait_for(TIMEOUT, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.contains(needle))
    })
    .unwrap_or_else(|| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        panic!("{} never contained {needle:?}:\n{text}", path.display())
    })
}

/// A client process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// weechat-headless with its home in `dir`, running `script` (`-r`).
fn weechat(dir: &TempDir, script: &str) -> Proc {
    Proc(
        Command::new("weechat-headless")
            .arg("--dir")
            .arg(&dir.0)
            .args(["-r", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weechat-headless"),
    )
}

/// bob (line protocol) and carol (raw IRC) in the room.
fn others(server: &Server) -> (Client, Irc) {
    let mut bob = line_client(server, "bob");
    let carol = Irc::register(server, "carol");
    bob.expect("* carol joined");
    (bob, carol)
}

#[test]
fn ii_chats_with_line_and_irc_users() {
    if !have("ii") {
        return;
    }
    let server = Server::start(&[]);
    let (mut bob, mut carol) = others(&server);
    let port = server.irc_addr.unwrap().port().to_string();
    let dir = TempDir::new();
    let _ii = Proc(
        Command::new("ii")
            .args(["-s", "127.0.0.1", "-p", &port, "-n", "iiuser", "-i"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ii"),
    );
    let srv = dir.0.join("127.0.0.1");
    let chan = srv.join("#chatd");
    bob.expect("* iiuser joined");
    carol.expect(":iiuser!iiuser@chatd JOIN");
    wait_file(&chan.join("out"), "has joined #chatd");
    let say = |fifo: &Path, line: &str| {
        std::fs::write(fifo, format!("{line}\n")).expect("write to ii's fifo");
    };
    bob.send("hello ii\n");
    wait_file(&chan.join("out"), "<bob> hello ii");
    carol.send("PRIVMSG #chatd :hello from carol");
    wait_file(&chan.join("out"), "<carol> hello from carol");
    say(&chan.join("in"), "hi everyone");
    bob.expect("<iiuser> hi everyone");
    carol.expect(":iiuser!iiuser@chatd PRIVMSG #chatd :hi everyone");
    // A nick change it sees (ii shows it in its server window).
    bob.send("/nick bobby\n");
    wait_file(&srv.join("out"), "bob changed nick to bobby");
    // /me: ii has no command for it; a raw CTCP ACTION (a line starting
    // with / that is not an ii command goes to the server as it is).
    say(&srv.join("in"), "/PRIVMSG #chatd :\x01ACTION waves\x01");
    bob.expect("* iiuser waves");
    // Private messages both ways.
    bob.send("/msg iiuser psst from bobby\n");
    wait_file(&srv.join("bobby").join("out"), "psst from bobby");
    say(&srv.join("in"), "/j carol a secret for carol");
    carol.expect(":iiuser!iiuser@chatd PRIVMSG carol :a secret for carol");
    say(&srv.join("in"), "/n iinew");
    bob.expect("* iiuser is now iinew");
    say(&srv.join("in"), "/q off to lunch");
    bob.expect("* iinew left (off to lunch)");
    carol.expect(":iinew!iinew@chatd QUIT :off to lunch");
}

#[test]
fn weechat_chats_with_line_and_irc_users() {
    if !have("weechat-headless") {
        return;
    }
    let server = Server::start(&[]);
    let (mut bob, mut carol) = others(&server);
    let port = server.irc_addr.unwrap().port();
    let dir = TempDir::new();
    // WeeChat's own timeline (/wait N runs N s after start); the test
    // polls for each step instead of sleeping.
    let script = format!(
        "/set logger.file.flush_delay 0; \
         /set irc.server_default.anti_flood_prio_high 0; \
         /set irc.server_default.anti_flood_prio_low 0; \
         /server add t 127.0.0.1/{port} -notls; /set irc.server.t.nicks wc; /connect t; \
         /wait 3 /msg -server t #chatd hi from weechat; \
         /wait 4 /command -buffer irc.t.#chatd irc /me waves; \
         /wait 5 /msg -server t carol psst carol; \
         /wait 6 /command -buffer irc.server.t irc /nick wc2; \
         /wait 8 /quit bye from weechat"
    );
    let mut wc = weechat(&dir, &script);
    bob.expect("* wc joined");
    carol.expect(":wc!wc@chatd JOIN");
    // Once WeeChat speaks it has set its channel up: talk to it then.
    bob.expect("<wc> hi from weechat");
    carol.expect(":wc!wc@chatd PRIVMSG #chatd :hi from weechat");
    bob.send("hello weechat\n");
    carol.send("PRIVMSG #chatd :carol says hi");
    bob.send("/msg wc private for wc\n");
    bob.send("/nick bobby\n");
    bob.expect("* wc waves");
    carol.expect(":wc!wc@chatd PRIVMSG carol :psst carol");
    bob.expect("* wc is now wc2");
    bob.expect("* wc2 left (bye from weechat)");
    carol.expect(":wc2!wc2@chatd QUIT :bye from weechat");
    let status = wait_for(TIMEOUT, || wc.0.try_wait().ok().flatten()).expect("weechat exits");
    assert!(status.success(), "weechat-headless: {status}");
    let logs = dir.0.join("logs");
    let chan = wait_file(&logs.join("irc.t.#chatd.weechatlog"), "disconnected");
    for seen in [
        "bob\thello weechat",
        "carol\tcarol says hi",
        "bob is now known as bobby",
    ] {
        assert!(chan.contains(seen), "WeeChat's log lacks {seen:?}:\n{chan}");
    }
    wait_file(&logs.join("irc.t.bob.weechatlog"), "private for wc");
}

/// irssi in a tmux session, killed on drop.
struct Tmux(String);

impl Tmux {
    fn keys(&self, keys: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys, "Enter"])
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }

    /// Waits until the visible window shows `needle`.
    fn wait_screen(&self, needle: &str) {
        let mut last = String::new();
        let found = wait_for(TIMEOUT, || {
            let out = Command::new("tmux")
                .args(["capture-pane", "-p", "-t", &self.0])
                .output()
                .ok()?;
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            last.contains(needle).then_some(())
        });
        assert!(found.is_some(), "irssi never showed {needle:?}:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn irssi_chats_with_line_and_irc_users() {
    if !have("irssi") || !have("tmux") {
        return;
    }
    let server = Server::start(&[]);
    let (mut bob, mut carol) = others(&server);
    let port = server.irc_addr.unwrap().port();
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("startup"),
        format!(
            "/network add -nick ir t\n\
             /server add -network t -cmdspeed 0 -cmdmax 1000 127.0.0.1 {port}\n\
             /channel add -auto #chatd t\n\
             /connect t\n"
        ),
    )
    .unwrap();
    let session = format!("chatd-irssi-{}", std::process::id());
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-x", "200", "-y", "50", "-s", &session])
        .arg(format!("irssi --home {}", dir.0.display()))
        .env("TERM", "xterm")
        .status()
        .expect("tmux");
    assert!(started.success());
    let irssi = Tmux(session);
    bob.expect("* ir joined");
    carol.expect(":ir!ir@chatd JOIN");
    irssi.keys("/window goto #chatd");
    bob.send("hello irssi\n");
    irssi.wait_screen("hello irssi");
    carol.send("PRIVMSG #chatd :carol to irssi");
    irssi.wait_screen("carol to irssi");
    irssi.keys("hi from irssi");
    bob.expect("<ir> hi from irssi");
    carol.expect(":ir!ir@chatd PRIVMSG #chatd :hi from irssi");
    irssi.keys("/me waves");
    bob.expect("* ir waves");
    bob.send("/nick bobby\n");
    irssi.wait_screen("bob is now known as bobby");
    irssi.keys("/msg carol psst carol");
    carol.expect(":ir!ir@chatd PRIVMSG carol :psst carol");
    bob.send("/msg ir private for irssi\n");
    irssi.keys("/window goto bobby");
    irssi.wait_screen("private for irssi");
    irssi.keys("/nick ir2");
    bob.expect("* ir is now ir2");
    irssi.keys("/quit bye from irssi");
    bob.expect("* ir2 left (bye from irssi)");
    carol.expect(":ir2!ir2@chatd QUIT :bye from irssi");
}

#[test]
fn weechat_over_tls_verifies_chatd_and_chats() {
    if !have("weechat-headless") {
        return;
    }
    let pki = common::tls::Pki::new();
    let id = pki.issue("s", 30);
    let cfg = format!("{}{}", render(&base_config()), common::tls::tls_config(&id));
    let server = Server::start_text(&cfg, &[]);
    let port = common::tls::tls_addr(&server, "Irc").port();
    let (mut bob, mut carol) = others(&server);
    let dir = TempDir::new();
    // Verification on (WeeChat's default), against the test CA only.
    // WeeChat 3.8 (Debian 12) calls the options ssl, 4.0 and later tls:
    // both are set, one of them is unknown.
    let script = format!(
        "/set logger.file.flush_delay 0; \
         /set irc.server_default.anti_flood_prio_high 0; \
         /set irc.server_default.anti_flood_prio_low 0; \
         /set weechat.network.gnutls_ca_system off; \
         /set weechat.network.gnutls_ca_user {}; \
         /server add t 127.0.0.1/{port}; \
         /set irc.server.t.ssl on; /set irc.server.t.tls on; \
         /set irc.server.t.ssl_verify on; /set irc.server.t.tls_verify on; \
         /set irc.server.t.nicks wctls; /connect t; \
         /wait 3 /msg -server t #chatd hi over tls; \
         /wait 5 /quit bye over tls",
        pki.ca.display()
    );
    let mut wc = weechat(&dir, &script);
    bob.expect("* wctls joined");
    bob.expect("<wctls> hi over tls");
    carol.expect(":wctls!wctls@chatd PRIVMSG #chatd :hi over tls");
    bob.send("hello tls weechat\n");
    bob.expect("* wctls left (bye over tls)");
    let status = wait_for(TIMEOUT, || wc.0.try_wait().ok().flatten()).expect("weechat exits");
    assert!(status.success(), "weechat-headless: {status}");
    let chan = wait_file(&dir.0.join("logs/irc.t.#chatd.weechatlog"), "disconnected");
    assert!(chan.contains("bob\thello tls weechat"), "{chan}");
    server.wait_log("protocol=Irc tls=true nick=guest-");
}
