//! Bans: who may not connect, or take a nick.
//!
//! An address or CIDR range refuses a connection at accept, before any
//! fork; a nick mask (`*` and `?`, any case) refuses a nick when it is
//! taken. A ban lasts until it is lifted or until its time is up (an
//! expired ban simply stops matching, and is dropped at the next write).
//!
//! Bans are kept in `state_dir/bans`, one per line
//! (`TARGET<TAB>UNTIL<TAB>SET<TAB>REASON`, times in seconds since the
//! epoch, UNTIL 0 for ever), rewritten whole on every change through a
//! directory fd opened at start-up (the master may chroot later): a new
//! file, fsync, then rename over the old one. At start the file is read
//! as untrusted input ([`parse_file`], fuzzed): a line that does not check
//! out is skipped and logged. So bans survive restarts, upgrades and
//! crashes.

use crate::master::clients::canonical_ip;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The file's name in `state_dir`.
pub const FILE: &str = "bans";
/// Most bans kept.
pub const MAX_BANS: usize = 10_000;

/// What a ban matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address range: the network address and the prefix length.
    Net(IpAddr, u8),
    /// A nick mask, lower-case.
    Nick(String),
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: Target,
    /// The target as written (`10.0.0.0/8`, `spam*`).
    pub text: String,
    /// Seconds since the epoch when it lapses; 0: never.
    pub until: u64,
    pub set: u64,
    pub reason: String,
}

impl Ban {
    pub fn active(&self, now: u64) -> bool {
        self.until == 0 || self.until > now
    }
}

/// Parses a ban target: an address, a CIDR range, or a nick mask.
pub fn parse_target(s: &str) -> Result<(Target, String), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        let ip = canonical_ip(ip);
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Ok((Target::Net(ip, bits), ip.to_string()));
    }
    if let Some((a, n)) = s.split_once('/') {
        let ip = canonical_ip(
            a.parse::<IpAddr>()
                .map_err(|_| format!("bad address {a:?}"))?,
        );
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let n: u8 = n
            .parse()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("bad prefix length {n:?}"))?;
        let net = mask(ip, n);
        return Ok((Target::Net(net, n), format!("{net}/{n}")));
    }
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_*?".contains(&b));
    if !ok {
        return Err(format!(
            "{s:?} is not an address, a CIDR range or a nick mask (letters, digits, - _ * ?)"
        ));
    }
    if s.bytes().all(|b| b == b'*' || b == b'?') {
        return Err("a nick mask must name something: it would match every nick".into());
    }
    let m = s.to_ascii_lowercase();
    Ok((Target::Nick(m.clone()), m))
}

/// `ip` with all but the first `bits` bits cleared.
fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Glob match with `*` and `?`, on lower-case ASCII.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == b'?' || c == s[i] => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

impl Target {
    pub fn matches_addr(&self, ip: IpAddr) -> bool {
        match self {
            Target::Net(net, bits) => {
                let ip = canonical_ip(ip);
                ip.is_ipv4() == net.is_ipv4() && mask(ip, *bits) == *net
            }
            Target::Nick(_) => false,
        }
    }

    pub fn matches_nick(&self, nick: &str) -> bool {
        match self {
            Target::Nick(m) => glob(m.as_bytes(), nick.to_ascii_lowercase().as_bytes()),
            Target::Net(..) => false,
        }
    }
}

/// Reads a bans file. Untrusted: each line that does not check out is
/// skipped, with its number and why.
pub fn parse_file(text: &str) -> (Vec<Ban>, Vec<String>) {
    let (mut bans, mut errors) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let parsed = (|| {
            let [t, until, set, reason] = f[..] else {
                return Err("not four fields".to_string());
            };
            let (target, text) = parse_target(t)?;
            let until = until.parse().map_err(|_| "bad expiry".to_string())?;
            let set = set.parse().map_err(|_| "bad time".to_string())?;
            if reason.len() > 256 || reason.chars().any(char::is_control) {
                return Err("bad reason".into());
            }
            Ok(Ban {
                target,
                text,
                until,
                set,
                reason: reason.to_string(),
            })
        })();
        match parsed {
            Ok(b) if bans.len() < MAX_BANS && !bans.iter().any(|x: &Ban| x.text == b.text) => {
                bans.push(b)
            }
            Ok(_) => errors.push(format!("line {}: a duplicate or one too many", n + 1)),
            Err(e) => errors.push(format!("line {}: {e}", n + 1)),
        }
    }
    (bans, errors)
}

/// The file's text for these bans.
pub fn render_file(bans: &[Ban]) -> String {
    bans.iter()
        .map(|b| format!("{}\t{}\t{}\t{}\n", b.text, b.until, b.set, b.reason))
        .collect()
}

/// The bans in force, and where they are kept.
#[derive(Default)]
pub struct Bans {
    list: Vec<Ban>,
    dir: Option<OwnedFd>,
}

impl Bans {
    /// Opens `dir` (creating it if missing, and giving it to `owner` when
    /// chatd starts as root) and reads the bans kept there. Run before
    /// confinement. Returns the bans and what was wrong with the file.
    pub fn open(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<(Bans, Vec<String>)> {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let text = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (list, errors) = parse_file(&text);
        Ok((
            Bans {
                list,
                dir: Some(fd),
            },
            errors,
        ))
    }

    /// Whether they are written anywhere.
    pub fn kept(&self) -> bool {
        self.dir.is_some()
    }

    /// The bans in force at `now`.
    pub fn active(&self, now: u64) -> impl Iterator<Item = &Ban> {
        self.list.iter().filter(move |b| b.active(now))
    }

    pub fn banning_addr(&self, ip: IpAddr, now: u64) -> Option<&Ban> {
        self.active(now).find(|b| b.target.matches_addr(ip))
    }

    pub fn banning_nick(&self, nick: &str, now: u64) -> Option<&Ban> {
        self.active(now).find(|b| b.target.matches_nick(nick))
    }

    /// Adds (or replaces) a ban and writes the file; if the file cannot
    /// be written, the ban is not added either.
    pub fn add(&mut self, ban: Ban, now: u64) -> Result<(), String> {
        let before = self.list.clone();
        self.list.retain(|b| b.text != ban.text && b.active(now));
        if self.list.len() >= MAX_BANS {
            self.list = before;
            return Err(format!("already {MAX_BANS} bans"));
        }
        self.list.push(ban);
        self.save().inspect_err(|_| self.list = before)
    }

    /// Lifts the ban on `text` (as `bans` lists it); false if none.
    pub fn remove(&mut self, text: &str, now: u64) -> Result<bool, String> {
        let key = match parse_target(text) {
            Ok((_, k)) => k,
            Err(_) => text.to_string(),
        };
        let before = self.list.len();
        self.list.retain(|b| b.text != key);
        let found = self.list.len() != before;
        self.list.retain(|b| b.active(now));
        if found {
            self.save()?;
        }
        Ok(found)
    }

    /// Writes the file: a new one, fsync, rename over the old.
    fn save(&self) -> Result<(), String> {
        self.write_file(FILE, &render_file(&self.list))
            .map_err(|e| format!("cannot write the bans file: {e}"))
    }

    /// Replaces `name` in the state directory with `text`: a new file
    /// (`name.new`), fsync, then rename over the old one, so that a crash
    /// leaves the old file or the new one. Nothing if no directory is kept.
    pub fn write_file(&self, name: &str, text: &str) -> nix::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let tmp = format!("{name}.new");
        let fd = openat(
            dir.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(text.as_bytes())
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        nix::unistd::fsync(&f)?;
        renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        parse_target(s).unwrap().0
    }

    #[test]
    fn targets_match() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(t("10.1.2.3").matches_addr(ip("10.1.2.3")));
        assert!(!t("10.1.2.3").matches_addr(ip("10.1.2.4")));
        assert!(t("10.1.2.3").matches_addr(ip("::ffff:10.1.2.3")));
        assert!(t("10.0.0.0/8").matches_addr(ip("10.200.0.1")));
        assert!(!t("10.0.0.0/8").matches_addr(ip("11.0.0.1")));
        assert!(t("2001:db8::/32").matches_addr(ip("2001:db8:1::5")));
        assert!(!t("2001:db8::/32").matches_addr(ip("10.0.0.1")));
        assert_eq!(parse_target("10.9.9.9/8").unwrap().1, "10.0.0.0/8");
        assert!(t("spam*").matches_nick("SpamBot"));
        assert!(t("*bot").matches_nick("spambot"));
        assert!(t("b?b").matches_nick("bob"));
        assert!(!t("b?b").matches_nick("bobby"));
        assert!(!t("spam*").matches_addr(ip("10.0.0.1")));
        for bad in ["", "*", "**?", "10.0.0.0/33", "a b", "x/y", "ni!ck"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_round_trip_and_bad_lines() {
        let bans = vec![
            Ban {
                target: t("10.0.0.0/8"),
                text: "10.0.0.0/8".into(),
                until: 0,
                set: 5,
                reason: "spam".into(),
            },
            Ban {
                target: t("spam*"),
                text: "spam*".into(),
                until: 99,
                set: 6,
                reason: String::new(),
            },
        ];
        let text = render_file(&bans);
        assert_eq!(parse_file(&text), (bans.clone(), vec![]));
        let bad = format!("{text}nonsense\n1.2.3.4\tx\t0\t\n1.2.3.4\t0\t0\tbell\x07\n{text}");
        let (got, errors) = parse_file(&bad);
        assert_eq!(got, bans);
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn kept_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("chatd-bans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut b, _) = Bans::open(&dir, None).unwrap();
        let (target, text) = parse_target("192.0.2.0/24").unwrap();
        let ban = Ban {
            target,
            text,
            until: 0,
            set: 1,
            reason: "test".into(),
        };
        b.add(ban.clone(), 10).unwrap();
        let (again, errors) = Bans::open(&dir, None).unwrap();
        assert!(errors.is_empty());
        assert_eq!(again.active(10).cloned().collect::<Vec<_>>(), vec![ban]);
        assert!(b.remove("192.0.2.7/24", 10).unwrap());
        let (again, _) = Bans::open(&dir, None).unwrap();
        assert_eq!(again.active(10).count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
