//! A raw IRC client for tests: sends lines with CR LF, reads with the line
//! client's timeouts.

use super::{Client, Server};

/// An IRC client speaking raw protocol.
pub struct Irc(pub Client);

impl Irc {
    pub fn connect(server: &Server) -> Irc {
        Irc(Client::connect(server.irc_addr.expect("IRC listener")))
    }

    pub fn send(&mut self, line: &str) {
        self.0.send(&format!("{line}\r\n"));
    }

    /// The next line that contains `needle`, without CR LF.
    pub fn expect(&mut self, needle: &str) -> String {
        self.0.expect(needle).trim_end_matches('\r').to_string()
    }

    /// Lines up to and including the first that contains `needle`.
    pub fn until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        self.0.read_until(needle, &mut seen);
        seen.iter()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// Registers as `nick` the way WeeChat does (CAP LS, NICK, USER, CAP
    /// END) and reads up to the end of the automatic join.
    pub fn register(server: &Server, nick: &str) -> Irc {
        let mut c = Irc::connect(server);
        c.send("CAP LS 302");
        c.send(&format!("NICK {nick}"));
        c.send(&format!("USER {nick} 0 * :{nick} real"));
        c.send("CAP END");
        c.expect(&format!(" 001 {nick} :Welcome"));
        c.expect(" 366 ");
        c
    }
}

/// A line client with the nick `nick`.
pub fn line_client(server: &Server, nick: &str) -> Client {
    let (mut c, _) = server.join();
    c.send(&format!("/nick {nick}\n"));
    c.expect("you are now");
    c
}
