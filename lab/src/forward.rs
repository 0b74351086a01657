//! TCP forwarders from a host `127.0.0.1` port into a lab network namespace.

use std::fs;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{io_err, Result};

/// A TCP forwarder from a host `127.0.0.1` port into a network namespace.
pub(crate) struct Forward {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    pub(crate) fn start(netns: PathBuf, target: SocketAddr) -> Result<Forward> {
        // Fail early if the netns is not there.
        fs::File::open(&netns).map_err(io_err(format!("opening {}", netns.display())))?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_err("binding a forwarder port"))?;
        let addr = listener.local_addr().map_err(io_err("forwarder address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lab-fwd-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let netns = netns.clone();
                    let _ = std::thread::Builder::new()
                        .name("lab-fwd-conn".into())
                        .spawn(move || {
                            if let Err(e) = forward_one(client, &netns, target) {
                                let _ =
                                    writeln!(io::stderr(), "fleet-lab forwarder to {target}: {e}");
                            }
                        });
                }
            })
            .map_err(io_err("spawning the forwarder thread"))?;
        Ok(Forward {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `target` from inside `netns` (this thread enters it; the socket stays there), then
/// copies bytes both ways until either side closes.
fn forward_one(client: TcpStream, netns: &Path, target: SocketAddr) -> io::Result<()> {
    let ns = fs::File::open(netns)?;
    // SAFETY: setns on an fd we own; CLONE_NEWNET only changes this (short-lived) thread's netns.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let server = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::Builder::new()
        .name("lab-fwd-up".into())
        .spawn(move || {
            let _ = io::copy(&mut c_read, &mut s_write);
            let _ = s_write.shutdown(Shutdown::Write);
        })?;
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
