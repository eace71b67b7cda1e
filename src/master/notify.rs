//! sd_notify messages (READY, STATUS, RELOADING, STOPPING, WATCHDOG) to the
//! service manager, and the fds it keeps for the next master (FDSTORE,
//! FDSTOREREMOVE; see `super::handover`).
//!
//! The messages are formatted by the sd-notify crate; they travel over a
//! datagram socket connected once at start-up, before the master confines
//! itself: after a chroot the `NOTIFY_SOCKET` path no longer resolves, and a
//! new socket per message (what `sd_notify::notify` does) would keep
//! `socket`+`connect` on the hot path. If a send fails (systemd re-executed
//! itself and re-created the socket), it reconnects by path once, which works
//! whenever the master is not chrooted. Without `NOTIFY_SOCKET` it does
//! nothing.

use sd_notify::NotifyState;
use std::ffi::OsString;
use std::fmt::Write;
use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    path: Option<OsString>,
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` if it is set.
    pub fn from_env() -> Notifier {
        let path = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty());
        let sock = path.as_ref().and_then(|p| match connect(p) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(event = "notify_failed", error = %e, "cannot reach NOTIFY_SOCKET: {e}");
                None
            }
        });
        Notifier { path, sock }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Sends the states as one datagram. Failures are logged at debug level
    /// and otherwise ignored: chatd must not stop because systemd is busy.
    pub fn send(&mut self, states: &[NotifyState]) {
        let Some(path) = &self.path else { return };
        let mut msg = String::new();
        for s in states {
            let _ = writeln!(msg, "{s}");
        }
        let ok = self
            .sock
            .as_ref()
            .is_some_and(|s| s.send(msg.as_bytes()).is_ok());
        if !ok {
            self.sock = connect(path).ok();
            if let Some(s) = &self.sock {
                if let Err(e) = s.send(msg.as_bytes()) {
                    tracing::debug!(event = "notify_failed", error = %e, "sd_notify: {e}");
                }
            }
        }
    }
}

impl Notifier {
    /// Hands `fd` to the service manager's fd store under `name`
    /// (`FDSTORE=1`, the fd as SCM_RIGHTS). False if it could not be sent.
    pub fn store_fd(&mut self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> bool {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let Some(sock) = &self.sock else { return false };
        let msg = format!("FDSTORE=1\nFDNAME={name}\n");
        let fds = [fd.as_raw_fd()];
        let iov = [std::io::IoSlice::new(msg.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None);
        if let Err(e) = &sent {
            tracing::warn!(event = "fdstore_failed", name, error = %e, "cannot hand {name} to the fd store: {e}");
        }
        sent.is_ok()
    }

    /// Takes every fd stored under `name` out of the store.
    pub fn remove_fd(&mut self, name: &str) {
        let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        if let Some(s) = &self.sock {
            let _ = s.send(msg.as_bytes());
        }
    }
}

fn connect(path: &OsString) -> std::io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(path)?;
    }
    Ok(sock)
}
