//! The daemon's listening socket: bound here, with a listen backlog of our choosing.
//!
//! `std`'s and tokio's `bind` ask the kernel for a backlog of 128 connections. A burst of
//! more new connections than that while the accept loop is busy (an upstream's retry storm,
//! a fleet of clients reconnecting after a restart, a load test's connection pool) had the
//! kernel drop the extra SYNs, and each of those clients waited for its kernel to send its
//! SYN again: 1 s later, then 2 s after that. Measured in the delivery bench: 256
//! publishers connecting at once, 9 dropped, a `/healthz` probe answered after 1.03 s. Past
//! the backlog the kernel still drops: the accept loop, not the queue, is what must keep up.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The listen backlog asked for. Linux caps it at `net.core.somaxconn` (4096 by default
/// since 5.4; 128 before, where raising that sysctl is the operator's call).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` as `TcpListener::bind` does (`SO_REUSEADDR` on Unix, so a restart does not
/// wait for the old connections' `TIME_WAIT`), with a backlog of [`LISTEN_BACKLOG`]. Must
/// be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What the kernel allows a backlog to be (Linux); `None` where it cannot be read.
    fn somaxconn() -> Option<usize> {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
    }

    /// 200 clients connect while nothing accepts: all are queued, none waits on a dropped
    /// SYN (with std's backlog of 128, the rest hang until the kernel gives up, minutes on).
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog_not_in_syn_retries() {
        let want = 200;
        let Some(max) = somaxconn() else { return };
        if max < want {
            eprintln!("net.core.somaxconn is {max}: a backlog of {want} cannot be shown here");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let addr = listener.local_addr().expect("its address");
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..want {
            connects.spawn(tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)));
        }
        let mut queued = Vec::new();
        while let Some(r) = connects.join_next().await {
            if let Ok(Ok(Ok(stream))) = r {
                queued.push(stream);
            }
        }
        assert_eq!(queued.len(), want, "connections queued without an accept");
        drop(listener);
    }

    #[tokio::test]
    async fn a_taken_address_is_refused_as_in_use() {
        let first = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let addr = first.local_addr().expect("its address");
        let err = bind(addr).expect_err("the address is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
