//! TLS for the load generator: a fixed test CA and server certificate
//! (ECDSA P-256, as Let's Encrypt issues them; valid until 2126: a
//! benchmark fixture, never a secret), given to chatd with `--tls` and
//! trusted by the bench's rustls clients, which verify chatd's certificate
//! as real clients do.
//!
//! [`Tls`] drives one non-blocking client connection: ciphertext from the
//! socket in ([`Tls::feed`]), plaintext out; plaintext in ([`Tls::send`]),
//! ciphertext to the socket ([`Tls::flush`]).

use anyhow::Result;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

const CA: &str = r"-----BEGIN CERTIFICATE-----
MIIBiTCCAS+gAwIBAgIUdvjQ79VfpzL31y6EvA9Cr2KtyAcwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOY2hhdGQtYmVuY2ggQ0EwIBcNMjYxMjA2MTcyNjAwWhgPMjEy
NjExMTIxNzI2MDBaMBkxFzAVBgNVBAMMDmNoYXRkLWJlbmNoIENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEXiOg2YSoFfkPmj8g7b6cW1qZKiwrdQ8McyUs2Yfn
bmXQTmjU2aEQRVzgU91LdB0OQ6D6YGUL8wMYjfMHLUHBR6NTMFEwHQYDVR0OBBYE
FM1Q9BRdeW0yC1E97sNr85h/eIwgMB8GA1UdIwQYMBaAFM1Q9BRdeW0yC1E97sNr
85h/eIwgMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgT4Oz07p6
pqnJKJf46XljrMQMChdbtz+JIxLK0+tVf1wCIQDzAwncFHxmHuC7Qt0403eEho4G
k12bPHjVMy0fBOFg/A==
-----END CERTIFICATE-----
";
const CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBqjCCAVGgAwIBAgIBBzAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5jaGF0ZC1i
ZW5jaCBDQTAgFw0yNjEyMDYxNzI2MDFaGA8yMTI2MTExMjE3MjYwMVowFDESMBAG
A1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+XojEAIx
ndgNkwoCPRYYfpK+8KHCSeM0QUmIkn2niBgMYJ/xD4aiQLVV9RQXIvxnJuEAKsql
1EDr1P84Xwp9O6OBjDCBiTAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCQYD
VR0TBAIwADALBgNVHQ8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwHQYDVR0O
BBYEFFkfPML1QB0RykfSXfKmMo1RJjA2MB8GA1UdIwQYMBaAFM1Q9BRdeW0yC1E9
7sNr85h/eIwgMAoGCCqGSM49BAMCA0cAMEQCIFomMslHpAy6PdC4AWsBKBjstw17
CgYAuQfiRdoC086UAiA8ETkGAQj+x1XTXcNrLFVVewQoach51yZLhrCGfBsaTg==
-----END CERTIFICATE-----
";
const KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgret59CiEaDlvcAdB
ycK7yFpZ7KCcHhYb6z9JD4932cShRANCAAT5eiMQAjGd2A2TCgI9Fhh+kr7wocJJ
4zRBSYiSfaeIGAxgn/EPhqJAtVX1FBci/Gcm4QAqyqXUQOvU/zhfCn07
-----END PRIVATE KEY-----
";

static ON: AtomicBool = AtomicBool::new(false);

/// Turns TLS on for this process's scenarios (`--tls`).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Whether this process's scenarios use TLS.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Writes the server's certificate and key into `dir`; returns their paths.
pub fn write_server_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
    std::fs::write(&cert, CERT)?;
    std::fs::write(&key, KEY)?;
    Ok((cert, key))
}

fn config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(CA.as_bytes()) {
                roots.add(c.expect("the bench CA")).expect("the bench CA");
            }
            // ring with X25519 first, as chatd (docs/decisions.md, "TLS").
            let provider = Arc::new(chatd::tls::remote::provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.resumption = rustls::client::Resumption::disabled();
            Arc::new(cfg)
        })
        .clone()
}

/// One client connection's TLS state.
pub struct Tls(ClientConnection);

impl Tls {
    /// A new connection to chatd's TLS port (name: localhost).
    pub fn new() -> Tls {
        let name = ServerName::try_from("localhost").expect("a name");
        Tls(ClientConnection::new(config(), name).expect("a TLS client"))
    }

    /// Takes ciphertext read from the socket; appends the plaintext it
    /// yields to `plain`.
    pub fn feed(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) -> io::Result<()> {
        while !cipher.is_empty() {
            self.0.read_tls(&mut cipher)?;
            self.0
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.drain(plain)?;
        }
        Ok(())
    }

    fn drain(&mut self, plain: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.0.reader().read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues plaintext (sent once the handshake is done).
    pub fn send(&mut self, plain: &[u8]) {
        self.0.set_buffer_limit(None);
        let _ = self.0.writer().write_all(plain);
    }

    /// Writes what waits; true if some still waits (the socket is full).
    pub fn flush(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        while self.0.wants_write() {
            match self.0.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// A non-blocking client socket, over TLS when [`enabled`].
pub struct Stream {
    pub sock: TcpStream,
    tls: Option<Tls>,
    plain: Vec<u8>,
}

impl Stream {
    pub fn new(sock: TcpStream) -> Stream {
        Stream {
            sock,
            tls: enabled().then(Tls::new),
            plain: Vec::new(),
        }
    }

    /// Sends what TLS has to say (the ClientHello first); errors end it.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => t.flush(&mut self.sock).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Reads what is there: `Ok(Some(n))`, n plaintext bytes (0: none
    /// yet); `Ok(None)` at the end of the stream.
    pub fn pump(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut total = 0;
        loop {
            let n = match self.sock.read(buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(total)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match &mut self.tls {
                None => total += n,
                Some(t) => {
                    self.plain.clear();
                    t.feed(&buf[..n], &mut self.plain)?;
                    total += self.plain.len();
                    t.flush(&mut self.sock)?;
                }
            }
        }
    }
}
