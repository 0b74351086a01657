//! fleetd as a systemd service: socket activation (`LISTEN_FDS`) and readiness notification
//! (`NOTIFY_SOCKET`), the two halves of `sd_listen_fds(3)` and `sd_notify(3)`, in plain std.
//!
//! With `dist/fleet.socket` (`ListenStream=/var/run/fleet.sock`), systemd owns the API socket:
//! it exists before fleetd starts, connections made while fleetd (re)starts wait in the backlog
//! instead of failing, and fleetd never binds or removes it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The first passed file descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Listening sockets systemd passed to this process.
#[derive(Debug, Default)]
pub struct Activated {
    /// Unix stream sockets with their paths (empty path for an unnamed or abstract socket).
    pub unix: Vec<(std::os::unix::net::UnixListener, PathBuf)>,
    /// TCP sockets.
    pub tcp: Vec<std::net::TcpListener>,
}

impl Activated {
    /// Whether systemd passed nothing.
    pub fn is_empty(&self) -> bool {
        self.unix.is_empty() && self.tcp.is_empty()
    }
}

/// Takes the sockets systemd passed, when `LISTEN_PID` names this process and `LISTEN_FDS` counts
/// them (fds 3, 4, ...); otherwise nothing. The variables are removed from the environment so that
/// children do not take the sockets for theirs, and the descriptors are re-opened close-on-exec.
/// A passed descriptor that is neither a unix nor a TCP socket is an error.
pub fn take_listen_fds() -> io::Result<Activated> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Activated::default());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Activated::default());
    }
    let n: RawFd = fds.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS={fds:?} is not a number"),
        )
    })?;
    let mut out = Activated::default();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n.max(0) {
        // SAFETY: systemd's protocol hands these descriptors to this process (LISTEN_PID is us);
        // nothing else in fleetd uses them, and each is taken exactly once.
        let passed = unsafe { OwnedFd::from_raw_fd(fd) };
        // try_clone duplicates with F_DUPFD_CLOEXEC; the inheritable original is closed on drop.
        let owned = passed.try_clone()?;
        drop(passed);
        classify(owned, fd, &mut out)?;
    }
    Ok(out)
}

fn classify(fd: OwnedFd, n: RawFd, out: &mut Activated) -> io::Result<()> {
    let tcp = std::net::TcpListener::from(fd);
    if tcp.local_addr().is_ok() {
        tcp.set_nonblocking(true)?;
        out.tcp.push(tcp);
        return Ok(());
    }
    let unix = std::os::unix::net::UnixListener::from(OwnedFd::from(tcp));
    match unix.local_addr() {
        Ok(addr) => {
            unix.set_nonblocking(true)?;
            let path = addr.as_pathname().map(PathBuf::from).unwrap_or_default();
            out.unix.push((unix, path));
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("passed file descriptor {n} is neither a TCP nor a unix socket: {e}"),
        )),
    }
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`, newline-separated) to the service
/// manager when `NOTIFY_SOCKET` is set; returns whether it was sent. Without a manager this is a
/// no-op, so it is always safe to call.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), PathBuf::from(&path))?;
    }
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it (readiness is best effort).
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify systemd ({state:?}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_tells_tcp_from_unix() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Activated::default();
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = t.local_addr().unwrap();
        classify(OwnedFd::from(t), 3, &mut out).unwrap();
        let p = dir.path().join("s.sock");
        let u = std::os::unix::net::UnixListener::bind(&p).unwrap();
        classify(OwnedFd::from(u), 4, &mut out).unwrap();
        assert_eq!(out.tcp[0].local_addr().unwrap(), addr);
        assert_eq!(out.unix[0].1, p);
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = classify(OwnedFd::from(f), 5, &mut out).unwrap_err();
        assert!(e.to_string().contains("descriptor 5"), "{e}");
    }

    #[test]
    fn notify_sends_to_the_socket_and_is_a_no_op_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        // The environment is process-wide: set and unset within this one test.
        std::env::set_var("NOTIFY_SOCKET", &p);
        assert!(notify("READY=1\nSTATUS=serving").unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        assert!(!notify("READY=1").unwrap());
    }
}
