//! A stand-in for systemd's notify socket and fd store, for restart tests
//! without systemd: it receives chatd's sd_notify datagrams (with the fds of
//! `FDSTORE=1`, by name; `FDSTOREREMOVE=1` drops them, as systemd does), and
//! starts chatd the way systemd does, with a listening socket and the
//! stored fds in `LISTEN_FDS`/`LISTEN_FDNAMES` and `LISTEN_PID` set to
//! chatd's own pid. The real thing is tested in tests/e2e.rs.

use super::*;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};

type Stored = Arc<Mutex<Vec<(String, OwnedFd)>>>;

/// The fake service manager.
pub struct FdStore {
    pub dir: TempDir,
    sock_path: PathBuf,
    pub listener: TcpListener,
    pub irc_listener: TcpListener,
    pub stored: Stored,
    stop: Arc<AtomicBool>,
    config: String,
}

impl FdStore {
    pub fn new(config: &str) -> FdStore {
        let dir = TempDir::new();
        let sock_path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stored: Stored = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stored.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 16]);
            while !sp.load(Ordering::Relaxed) {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    continue;
                };
                let mut fds = Vec::new();
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: the fds just received are ours alone.
                        fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                let mut s = st.lock().unwrap();
                if text.lines().any(|l| l == "FDSTORE=1") {
                    s.extend(fds.into_iter().map(|f| (name.clone(), f)));
                } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                    s.retain(|(n, _)| n != &name);
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let irc_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        FdStore {
            irc_listener,
            dir,
            sock_path,
            listener,
            stored,
            stop,
            config: config.to_string(),
        }
    }

    /// Names in the store now.
    pub fn names(&self) -> Vec<String> {
        self.stored
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Starts chatd with the listener and every stored fd.
    pub fn start(&self) -> Server {
        let path = self.dir.0.join("chatd.toml");
        std::fs::write(&path, with_irc_port(&self.config)).unwrap();
        let mut fds: Vec<RawFd> = vec![self.listener.as_raw_fd(), self.irc_listener.as_raw_fd()];
        let mut names = vec!["line".to_string(), "irc".to_string()];
        for (n, f) in self.stored.lock().unwrap().iter() {
            fds.push(f.as_raw_fd());
            names.push(n.clone());
        }
        // sh sets LISTEN_PID to its own pid, which exec keeps.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ exec {BIN} --config {}",
                path.display()
            ))
            .env("NOTIFY_SOCKET", &self.sock_path)
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let count = fds.len() as RawFd;
        // SAFETY: between fork and exec only dup2 and fcntl, which are
        // async-signal-safe; the fds are open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                // Move them above the target range first, then into 3...
                let high = 1000;
                for (i, &fd) in fds.iter().enumerate() {
                    if libc::dup2(fd, high + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..count {
                    if libc::dup2(high + i, 3 + i) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(high + i);
                }
                Ok(())
            });
        }
        let dir = TempDir::new();
        Server::spawn(cmd, dir, path)
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
