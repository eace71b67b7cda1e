//! The client's byte stream as the child's loop sees it: plain TCP, or TLS
//! over it (rustls, in this confined child; the private key stays in the
//! master, see `crate::tls`).
//!
//! [`Conn::read`] yields plaintext and [`Conn::write`] takes it, with the
//! socket's non-blocking semantics (`WouldBlock`), so the loop does not care
//! which it has. With TLS, `write` hands rustls at most one record's worth
//! of plaintext at a time and only once the previous records are on the
//! wire, so rustls never buffers more than one record of output (the send
//! queue stays the one place output waits, and `max_sendq` keeps meaning
//! what it says). [`Conn::pending`] says when encrypted bytes still wait.

use rustls::server::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

/// Most plaintext handed to rustls at once: one TLS record.
const RECORD: usize = 16 << 10;

/// The socket as rustls writes to it: one `send` per record. (std's
/// `write_vectored` on a TcpStream is `writev`, a call the child's seccomp
/// allowlist does not have; the default `write_vectored` writes the first
/// buffer with `write`, which is `send`.)
struct Sock<'a>(&'a TcpStream);

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A client connection.
pub struct Conn {
    sock: TcpStream,
    tls: Option<Box<ServerConnection>>,
    /// The handshake completed since [`Conn::take_established`] last asked.
    established: bool,
}

/// A TLS failure, carried in an `io::Error` so that the loop's read and
/// write paths stay the socket's; [`tls_reason`] gets it back out.
#[derive(Debug)]
struct TlsFailure(String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// The reason to log and show for an error from [`Conn`], if it is a TLS
/// failure rather than a socket error.
pub fn tls_reason(e: &io::Error) -> Option<String> {
    e.get_ref()?
        .downcast_ref::<TlsFailure>()
        .map(|t| t.0.clone())
}

impl Conn {
    pub fn plain(sock: TcpStream) -> Conn {
        Conn {
            sock,
            tls: None,
            established: false,
        }
    }

    /// Makes this a TLS server's connection (before anything was read).
    pub fn start_tls(&mut self, cfg: Arc<ServerConfig>) -> Result<(), rustls::Error> {
        self.tls = Some(Box::new(ServerConnection::new(cfg)?));
        Ok(())
    }

    /// Whether a TLS handshake is still in progress.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// Whether the TLS handshake completed since the last call.
    pub fn take_established(&mut self) -> bool {
        std::mem::take(&mut self.established)
    }

    /// Reads plaintext into `buf`; `Ok(0)` at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.read(buf);
        }
        loop {
            let c = self.tls.as_mut().expect("a TLS connection");
            match c.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if c.read_tls(&mut self.sock)? == 0 {
                return Ok(0);
            }
            let was_handshaking = c.is_handshaking();
            if let Err(e) = c.process_new_packets() {
                // rustls queued an alert saying why: try to send it.
                let _ = c.write_tls(&mut Sock(&self.sock));
                let what = if was_handshaking {
                    "TLS handshake failed"
                } else {
                    "TLS error"
                };
                return Err(io::Error::other(TlsFailure(format!("{what}: {e}"))));
            }
            if was_handshaking && !c.is_handshaking() {
                self.established = true;
            }
            // Handshake records to send; a full socket sends them later.
            match self.flush_pending() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Writes plaintext from `buf`; returns how much was taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.write(buf);
        }
        self.flush_pending()?;
        let c = self.tls.as_mut().expect("a TLS connection");
        if c.is_handshaking() {
            // Output waits in the send queue until the session is up.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = c.writer().write(&buf[..buf.len().min(RECORD)])?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.flush_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    /// Whether encrypted output still waits to be written.
    pub fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.wants_write())
    }

    /// Writes waiting encrypted output: `WouldBlock` if some still waits.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        let Some(c) = self.tls.as_mut() else {
            return Ok(());
        };
        while c.wants_write() {
            c.write_tls(&mut Sock(&self.sock))?;
        }
        Ok(())
    }

    /// Ends the stream: TLS's close_notify (best effort), then shutdown.
    pub fn close(&mut self) {
        if let Some(c) = self.tls.as_mut() {
            if !c.is_handshaking() {
                c.send_close_notify();
                let _ = self.flush_pending();
            }
        }
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
