//! The child's side of TLS: a rustls server config whose signing key is a
//! stand-in that asks the master to sign (step 4 of [`crate::tls`]).
//!
//! rustls signs synchronously, in the middle of processing the client's
//! handshake, so [`RemoteSigner::sign`] sends `SIGN` on the control socket
//! and waits (in `epoll_wait` on the child's own epoll set) for `SIGNED`.
//! Other control messages that arrive meanwhile are kept in the
//! [`Mailbox`] for the child's loop, in order, and since that wait may have
//! consumed edge-triggered events for the loop, the mailbox tells the loop
//! to re-check everything.

use super::{sign_request, Offer};
use crate::ipc;
use rustls::pki_types::CertificateDer;
use rustls::server::{NoServerSessionStorage, ServerConfig};
use rustls::sign::{CertifiedKey, Signer, SigningKey, SingleCertAndKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a child waits for the master's signature.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the signer shares with the child's loop.
#[derive(Debug, Default)]
pub struct Mailbox {
    /// Control datagrams (tag and body) that arrived while waiting.
    held: Mutex<VecDeque<Vec<u8>>>,
    /// The signer waited in epoll: the loop must re-check every fd.
    waited: AtomicBool,
}

impl Mailbox {
    /// The next datagram kept for the loop.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.held.lock().ok()?.pop_front()
    }

    /// Whether the signer has waited since the last call.
    pub fn take_waited(&self) -> bool {
        self.waited.swap(false, Relaxed)
    }
}

/// The control socket and epoll set the signer uses, and its mailbox.
#[derive(Debug, Clone)]
pub struct Link {
    pub ctl: RawFd,
    pub epoll: RawFd,
    pub mailbox: Arc<Mailbox>,
}

/// Builds the child's rustls config from the master's [`Offer`]: TLS 1.2
/// and 1.3 with rustls's safe defaults and the ring provider, no client
/// certificates, no session resumption (each child serves one
/// connection, and tickets would need a key every child shares).
pub fn server_config(offer: &Offer, link: Link) -> Result<Arc<ServerConfig>, rustls::Error> {
    let key = Arc::new(RemoteKey {
        schemes: offer.schemes.clone(),
        link,
    });
    let chain = offer
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let provider = Arc::new(provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            chain, key,
        ))));
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// rustls's ring provider: it builds from the crates alone with the C
/// compiler any Rust toolchain has (rustls marks it deprecated for lacking
/// the post-quantum hybrid key exchange), with X25519 as the preferred key
/// exchange. (Its
/// default order puts P-384 first, which ring computes in portable code:
/// with it a handshake cost each side 1-2 ms of CPU, against about 0.1 ms
/// for X25519; docs/decisions.md, "TLS".)
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{default_provider, kx_group};
    rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    }
}

/// The stand-in for the private key.
#[derive(Debug)]
struct RemoteKey {
    schemes: Vec<SignatureScheme>,
    link: Link,
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = *self.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(RemoteSigner {
            scheme,
            link: self.link.clone(),
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.schemes.first() {
            Some(SignatureScheme::ED25519) => SignatureAlgorithm::ED25519,
            Some(
                SignatureScheme::ECDSA_NISTP256_SHA256
                | SignatureScheme::ECDSA_NISTP384_SHA384
                | SignatureScheme::ECDSA_NISTP521_SHA512,
            ) => SignatureAlgorithm::ECDSA,
            _ => SignatureAlgorithm::RSA,
        }
    }
}

/// Asks the master for one signature.
#[derive(Debug)]
struct RemoteSigner {
    scheme: SignatureScheme,
    link: Link,
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        ask_master(&self.link, self.scheme, message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Sends `SIGN` and waits for `SIGNED` (step 4 of [`crate::tls`]).
pub fn ask_master(
    link: &Link,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, rustls::Error> {
    let fail = |why: &str| rustls::Error::General(format!("signing by the master: {why}"));
    let mut msg = vec![ipc::SIGN];
    msg.extend_from_slice(&sign_request(scheme, message));
    if msg.len() > ipc::MAX_MSG {
        return Err(fail("message too long"));
    }
    let ctl = link.ctl;
    // SAFETY: the control socket stays open for the child's lifetime.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl) };
    match ipc::send_raw(fd, &msg) {
        Ok(true) => {}
        _ => return Err(fail("cannot send the request")),
    }
    link.mailbox.waited.store(true, Relaxed);
    let mut buf = vec![0u8; ipc::MAX_MSG];
    let deadline = Instant::now() + SIGN_TIMEOUT;
    loop {
        match ipc::recv_msg(fd, &mut buf) {
            Ok(Some(0)) | Err(_) => return Err(fail("the master is gone")),
            Ok(Some(n)) if buf[0] == ipc::SIGNED => {
                return match &buf[1..n] {
                    [] => Err(fail("refused")),
                    sig => Ok(sig.to_vec()),
                };
            }
            Ok(Some(n)) => {
                if let Ok(mut q) = link.mailbox.held.lock() {
                    q.push_back(buf[..n].to_vec());
                }
            }
            Ok(None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(fail("no answer"));
                }
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: `ev` is a valid buffer for one event and the
                // epoll fd is the child's own, open for its lifetime.
                let n = unsafe {
                    libc::epoll_pwait(
                        link.epoll,
                        &mut ev,
                        1,
                        left.as_millis().min(i32::MAX as u128) as i32 + 1,
                        std::ptr::null(),
                    )
                };
                if n < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                    return Err(fail("epoll failed"));
                }
            }
        }
    }
}
