//! TLS test support: a test CA and certificates made with the `openssl`
//! command, and clients nobody here wrote (`openssl s_client`, `socat`)
//! driven through their stdin and stdout, verifying the server against the
//! test CA.

use super::{wait_for, Server, TempDir, TIMEOUT};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test certificate authority in a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// A certificate and its key, issued by the test CA.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The serial, upper-case hex as `openssl x509 -serial` prints it.
    pub serial: String,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let ca = dir.0.join("ca.pem");
        let ca_key = dir.0.join("ca-key.pem");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=chatd test CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca));
        std::fs::write(dir.0.join("index.txt"), "").unwrap();
        std::fs::write(
            dir.0.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n\
             rand_serial = yes\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n\
             unique_subject = no\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A server certificate for 127.0.0.1 and localhost, valid for `days`
    /// from now, with a new P-256 key. Files `NAME.pem`, `NAME-key.pem`.
    pub fn issue(&self, name: &str, days: u32) -> Issued {
        self.issue_dated(name, &["-days", &days.to_string()])
    }

    /// A new certificate for the key of `old` (a renewal that keeps the key).
    pub fn renew(&self, old: &Issued, name: &str) -> Issued {
        let d = &self.dir.0;
        let csr = d.join(format!("{name}.csr"));
        let cert = d.join(format!("{name}.pem"));
        run(Command::new("openssl")
            .args(["req", "-new", "-subj", "/CN=localhost"])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-key",
            ])
            .arg(&old.key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .current_dir(d)
            .args([
                "ca", "-batch", "-notext", "-config", "ca.cnf", "-days", "30", "-cert",
            ])
            .arg(&self.ca)
            .arg("-keyfile")
            .arg(&self.ca_key)
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert));
        let serial = cert_serial(&std::fs::read(&cert).unwrap());
        Issued {
            cert,
            key: old.key.clone(),
            serial,
        }
    }

    /// Like [`Pki::issue`], valid only in 2020 (expired).
    pub fn issue_expired(&self, name: &str) -> Issued {
        self.issue_dated(
            name,
            &[
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
            ],
        )
    }

    fn issue_dated(&self, name: &str, dates: &[&str]) -> Issued {
        let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        self.issue_key(name, dates, &p256)
    }

    /// A 30-day certificate with a new key made by these `openssl req`
    /// arguments (e.g. `-newkey rsa:2048`, `-newkey ed25519`).
    pub fn issue_with(&self, name: &str, newkey: &[&str]) -> Issued {
        self.issue_key(name, &["-days", "30"], newkey)
    }

    fn issue_key(&self, name: &str, dates: &[&str], newkey: &[&str]) -> Issued {
        let d = &self.dir.0;
        let key = d.join(format!("{name}-key.pem"));
        let csr = d.join(format!("{name}.csr"));
        let cert = d.join(format!("{name}.pem"));
        run(Command::new("openssl")
            .args(["req", "-new"])
            .args(newkey)
            .args(["-nodes", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .current_dir(d)
            .args(["ca", "-batch", "-notext", "-config", "ca.cnf", "-cert"])
            .arg(&self.ca)
            .arg("-keyfile")
            .arg(&self.ca_key)
            .args(dates)
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert));
        let serial = cert_serial(&std::fs::read(&cert).unwrap());
        Issued { cert, key, serial }
    }
}

/// `openssl x509 -serial` of a PEM certificate: the hex digits.
pub fn cert_serial(pem: &[u8]) -> String {
    let mut p = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(pem).unwrap();
    let out = p.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("no serial in {s:?}"))
        .to_string()
}

/// The serial of the certificate a new connection to `addr` is given
/// (verified against `ca`).
pub fn served_serial(addr: SocketAddr, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-verify_hostname", "localhost"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "verification failed: {text}"
    );
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    cert_serial(text[begin..end].as_bytes())
}

/// The TLS listener for a protocol ("Line" or "Irc"), from the log.
pub fn tls_addr(server: &Server, protocol: &str) -> SocketAddr {
    let needle = format!("protocol={protocol} tls=true");
    let l = server.wait_log(&needle);
    l.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .expect("address field")
        .parse()
        .unwrap()
}

/// The config lines for TLS listeners on ephemeral ports with `id`.
pub fn tls_config(id: &Issued) -> String {
    format!(
        "tls_listen = [\"127.0.0.1:0\"]\nircs_listen = [\"127.0.0.1:0\"]\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        id.cert.display(),
        id.key.display()
    )
}

/// A client program talking through its stdin and stdout; killed on drop.
pub struct Tool {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Tool {
    /// `openssl s_client -quiet`, verifying the server against `ca`.
    pub fn s_client(addr: SocketAddr, ca: &Path) -> Tool {
        Tool::s_client_with(addr, ca, &[])
    }

    /// [`Tool::s_client`] with more options (`-tls1_2`, `-tls1_3`).
    pub fn s_client_with(addr: SocketAddr, ca: &Path, extra: &[&str]) -> Tool {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-quiet",
            "-connect",
            &addr.to_string(),
            "-CAfile",
        ])
        .arg(ca)
        .args(["-verify_return_error", "-verify_hostname", "localhost"])
        .args(extra);
        Tool::spawn(c)
    }

    /// `socat - OPENSSL:...` with certificate verification on.
    pub fn socat(addr: SocketAddr, ca: &Path) -> Tool {
        let mut c = Command::new("socat");
        c.arg("-").arg(format!(
            "OPENSSL:{addr},cafile={},verify=1,commonname=localhost",
            ca.display()
        ));
        Tool::spawn(c)
    }

    fn spawn(mut cmd: Command) -> Tool {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the TLS client");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
        Tool {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Sends one line (LF added; IRC servers take it too).
    pub fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin open");
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        s.flush().unwrap();
    }

    /// The next line containing `needle`; panics at EOF or timeout.
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); seen {:?}", self.seen),
            }
        }
    }

    /// Every line until the server ends the connection (the program's
    /// output ends); panics after the timeout.
    pub fn read_to_end(&mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(e) => panic!("the connection did not end ({e}); seen {:?}", self.seen),
            }
        }
    }

    /// Closes stdin and waits for the program to end.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        wait_for(TIMEOUT, || self.child.try_wait().ok().flatten()).expect("client ended")
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The private scalar of an EC key file (`openssl ec -text`), big-endian.
pub fn ec_secret(key: &Path) -> Vec<u8> {
    let text = run(Command::new("openssl")
        .args(["ec", "-text", "-noout", "-in"])
        .arg(key));
    let hex: String = text
        .split("priv:")
        .nth(1)
        .and_then(|r| r.split("pub:").next())
        .expect("priv: in openssl's output")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    let mut bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    // openssl prints a leading zero byte when the top bit is set.
    while bytes.len() > 32 && bytes[0] == 0 {
        bytes.remove(0);
    }
    bytes
}

/// Whether any readable mapping of process `pid` holds `needle` (read as
/// root through /proc/PID/mem over /proc/PID/maps).
pub fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read as _, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if !f[1].starts_with('r') || l.ends_with("[vvar]") || l.ends_with("[vsyscall]") {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}
