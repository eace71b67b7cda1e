//! The master's side of TLS: the certificate and its private key.
//!
//! [`Sources`] pins the directories of the two files before the master
//! confines itself; [`Identity::load`] reads and checks the pair (in the
//! master's arena, which children do not inherit) and [`Identity::sign`]
//! makes the one handshake signature a child asks for. Nothing here runs in
//! a child. See [`crate::tls`] for the whole sequence.

use super::{Offer, SCHEMES};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::SignatureScheme;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroize;

/// File names in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
pub const CRED_CERT: &str = "tls.crt";
pub const CRED_KEY: &str = "tls.key";

/// Certificates that expire within this many days are warned about.
pub const WARN_DAYS: i64 = 14;

/// Why a certificate and key cannot be used; names the file and the step.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS is configured (a tls_listen or ircs_listen address) but tls_cert and tls_key are not set")]
    NotConfigured,
    #[error("cannot open the directory of {0}: {1}")]
    Pin(PathBuf, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: not a PEM certificate chain: {1}")]
    BadCertificate(PathBuf, String),
    #[error("{0}: no usable PEM private key in it (ECDSA P-256/P-384, Ed25519 or RSA): {1}")]
    BadKey(PathBuf, String),
    #[error("the key {key} does not match the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate {0} expired on {1}")]
    Expired(PathBuf, String),
    #[error("the certificate {0} is not valid before {1}")]
    NotYetValid(PathBuf, String),
    #[error(
        "the arena children do not inherit is unavailable, so the key cannot be kept out of them"
    )]
    NoArena,
}

/// One file, reachable after a chroot through its pinned directory
/// (`config::Pinned`), with its path for the errors.
pub struct Pinned {
    path: PathBuf,
    file: crate::config::Pinned,
}

impl Pinned {
    fn open(path: &Path) -> Result<Pinned, TlsError> {
        Ok(Pinned {
            path: path.into(),
            file: crate::config::Pinned::open(path).map_err(|e| TlsError::Pin(path.into(), e))?,
        })
    }

    /// Opens the file; returns it and its size.
    fn open_file(&self) -> Result<(std::fs::File, usize), TlsError> {
        let err = |e: std::io::Error| TlsError::Read(self.path.clone(), e);
        let f = self.file.open_file().map_err(err)?;
        let len = f.metadata().map_err(err)?.len() as usize;
        if len > MAX_FILE {
            return Err(err(std::io::Error::other("larger than 1 MiB")));
        }
        Ok((f, len))
    }

    /// Reads a public file (the certificate chain).
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        let (f, len) = self.open_file()?;
        let mut buf = Vec::with_capacity(len + 1);
        f.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| TlsError::Read(self.path.clone(), e))?;
        Ok(buf)
    }

    /// Reads a secret file (the key) into a [`SecretBuf`].
    fn read_secret(&self) -> Result<SecretBuf, TlsError> {
        let err = |e: std::io::Error| TlsError::Read(self.path.clone(), e);
        let (mut f, len) = self.open_file()?;
        let mut buf = SecretBuf::new(len).map_err(|e| err(e.into()))?;
        let mut got = 0;
        while got < len {
            match f.read(&mut buf.as_mut()[got..len]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        buf.len = got;
        Ok(buf)
    }
}

/// Largest certificate or key file read.
const MAX_FILE: usize = 1 << 20;

/// The key file's bytes, in a mapping of their own that children do not
/// inherit (`MADV_DONTFORK`), zeroed and unmapped when dropped. (The file
/// is read before the master drops its privileges, a root-only key too,
/// and before its heap is the arena.)
pub struct SecretBuf {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    cap: usize,
    len: usize,
}

impl SecretBuf {
    fn new(len: usize) -> nix::Result<SecretBuf> {
        use nix::sys::mman::{madvise, mmap_anonymous, MapFlags, MmapAdvise, ProtFlags};
        let cap = len.max(1).next_multiple_of(crate::shm::PAGE);
        let nz = std::num::NonZeroUsize::new(cap).expect("non-empty");
        // SAFETY: a fresh private anonymous mapping nothing else refers to.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }?;
        let buf = SecretBuf { ptr, cap, len: 0 };
        // SAFETY: the range is exactly the mapping just made.
        unsafe { madvise(ptr, cap, MmapAdvise::MADV_DONTFORK) }?;
        Ok(buf)
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `cap` bytes, readable and writable, and
        // owned by this value alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut u8, self.cap) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: as in `as_mut`; `len <= cap`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const u8, self.len) }
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.as_mut().zeroize();
        // SAFETY: the mapping was made in `new` and nothing refers to it.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.cap) };
    }
}

/// The files as read, not yet parsed.
pub struct Files {
    cert_pem: Vec<u8>,
    key_pem: SecretBuf,
}

/// Where the certificate and key come from, pinned at start-up.
pub struct Sources {
    pub cert: Pinned,
    pub key: Pinned,
}

impl Sources {
    /// `$CREDENTIALS_DIRECTORY/tls.crt` and `tls.key` where they exist
    /// (each on its own: a credential key with a certificate file that a
    /// renewal replaces and a reload reads), else the configured paths.
    pub fn open(cert: &Path, key: &Path) -> Result<Sources, TlsError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let pick = |name: &str, configured: &Path| match creds
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.exists())
        {
            Some(p) => Some(p),
            None if configured.as_os_str().is_empty() => None,
            None => Some(configured.to_path_buf()),
        };
        let (Some(cert), Some(key)) = (pick(CRED_CERT, cert), pick(CRED_KEY, key)) else {
            return Err(TlsError::NotConfigured);
        };
        Ok(Sources {
            cert: Pinned::open(&cert)?,
            key: Pinned::open(&key)?,
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert.path
    }

    /// Reads both files, with the privileges the process has now.
    pub fn read(&self) -> Result<Files, TlsError> {
        Ok(Files {
            cert_pem: self.cert.read()?,
            key_pem: self.key.read_secret()?,
        })
    }
}

/// A loaded, checked certificate and key. Lives in the master only.
pub struct Identity {
    key: Arc<dyn SigningKey>,
    /// The key as read (PKCS#8, SEC1 or PKCS#1 DER), zeroed on drop.
    der: PrivateKeyDer<'static>,
    /// What each child is given: the chain and the key's schemes.
    pub offer: Offer,
    /// The leaf certificate's end of validity (Unix seconds).
    pub not_after: i64,
    /// The leaf's serial number (hex) and subject, for the log.
    pub serial: String,
    pub subject: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("serial", &self.serial)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.der.zeroize();
    }
}

impl Identity {
    /// Reads, parses and checks the pair (step 2 of [`crate::tls`]). Must run
    /// on the master's arena heap (`crate::arena::in_arena`).
    pub fn load(src: &Sources, read: Files, now_unix: i64) -> Result<Identity, TlsError> {
        if !crate::arena::in_arena() {
            return Err(TlsError::NoArena);
        }
        let r = Self::parse(src, read, now_unix);
        scrub_stack();
        r
    }

    #[inline(never)]
    fn parse(src: &Sources, read: Files, now_unix: i64) -> Result<Identity, TlsError> {
        let cert_path = &src.cert.path;
        let key_path = &src.key.path;
        let Files { cert_pem, key_pem } = read;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::BadCertificate(cert_path.clone(), e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert_path.clone()));
        }
        let der = PrivateKeyDer::from_pem_slice(key_pem.bytes())
            .map_err(|e| TlsError::BadKey(key_path.clone(), e.to_string()))?;
        drop(key_pem);
        let key = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| TlsError::BadKey(key_path.clone(), e.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), key.clone());
        if certified.keys_match().is_err() {
            return Err(TlsError::Mismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            });
        }
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| TlsError::BadCertificate(cert_path.clone(), e.to_string()))?;
        let validity = leaf.validity();
        let not_after = validity.not_after.timestamp();
        if not_after < now_unix {
            return Err(TlsError::Expired(
                cert_path.clone(),
                validity.not_after.to_string(),
            ));
        }
        if validity.not_before.timestamp() > now_unix {
            return Err(TlsError::NotYetValid(
                cert_path.clone(),
                validity.not_before.to_string(),
            ));
        }
        let schemes: Vec<SignatureScheme> = SCHEMES
            .iter()
            .copied()
            .filter(|s| key.choose_scheme(&[*s]).is_some())
            .collect();
        if schemes.is_empty() {
            return Err(TlsError::BadKey(
                key_path.clone(),
                "no signature scheme".into(),
            ));
        }
        Ok(Identity {
            offer: Offer {
                schemes,
                chain: chain.iter().map(|c| c.to_vec()).collect(),
            },
            serial: serial_hex(leaf.raw_serial()),
            subject: leaf.subject().to_string(),
            not_after,
            key,
            der,
        })
    }

    /// Days until the certificate expires, if that is within [`WARN_DAYS`].
    pub fn expires_soon(&self, now_unix: i64) -> Option<i64> {
        let days = (self.not_after - now_unix) / 86_400;
        (days < WARN_DAYS).then_some(days)
    }

    /// Signs `message` with `scheme` (a child's one request, already
    /// checked by the caller). `None` if the key cannot use that scheme.
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Option<Vec<u8>> {
        let signer = self.key.choose_scheme(&[scheme])?;
        let sig = signer.sign(message).ok();
        scrub_stack();
        sig
    }

    /// The key as loaded (for the tests that look for it in memory).
    pub fn secret_der(&self) -> &[u8] {
        self.der.secret_der()
    }
}

/// Zeroes the stack below the caller's frame, where parsing or signing
/// left key material. (Children move to a stack of their own and unmap
/// this one, `crate::child::stack`; this covers kernels where they
/// cannot.)
#[inline(never)]
fn scrub_stack() {
    let mut area = [0u64; 8 << 10];
    for w in area.iter_mut() {
        // SAFETY: `w` is a valid, aligned element of a local array; the
        // volatile write keeps the compiler from eliding the stores.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    std::hint::black_box(&area);
}

/// A serial number as `openssl x509 -serial` prints it: upper-case hex
/// of its magnitude (DER's leading zero byte left out).
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The master's TLS state: where the pair comes from, and the pair in use
/// with its offer to children, encoded once.
pub struct Monitor {
    sources: Sources,
    pub identity: Identity,
    pub offer_bytes: Vec<u8>,
}

impl Monitor {
    /// Parses the pair read at start-up ([`Sources::read`], before the
    /// privilege drop).
    pub fn start(sources: Sources, read: Files) -> Result<Monitor, TlsError> {
        let identity = Identity::load(&sources, read, now_unix())?;
        let offer_bytes = identity.offer.encode();
        Ok(Monitor {
            sources,
            identity,
            offer_bytes,
        })
    }

    /// Loads the pair again (SIGHUP). On error the running pair stays.
    pub fn reload(&mut self) -> Result<&Identity, TlsError> {
        let read = self.sources.read()?;
        let identity = Identity::load(&self.sources, read, now_unix())?;
        self.offer_bytes = identity.offer.encode();
        self.identity = identity;
        Ok(&self.identity)
    }

    pub fn cert_path(&self) -> &Path {
        self.sources.cert_path()
    }
}
