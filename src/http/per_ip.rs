//! Client connections counted by address (`server.max_connections_per_ip`), so that one client
//! cannot hold every `server.max_connections` slot while everyone else's connections wait.
//!
//! An IPv6 client is counted by its /64: one host is usually given a whole /64, and counting
//! each of its addresses apart would let it open `2^64` times the cap. An IPv4-mapped IPv6
//! address counts as its IPv4 address. This module only counts; the accept loop decides what
//! to do with a connection over the cap (close it). It must not know about requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The open connections of each client address (or /64).
pub struct PerIp {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count, given back when dropped.
pub struct Slot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(cap: usize) -> Arc<PerIp> {
        Arc::new(PerIp { cap: cap.max(1), open: Mutex::new(HashMap::new()) })
    }

    /// A slot for a connection from `addr`, or `None` when its address already has `cap`.
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let ip = client_of(addr);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            // Addresses seen once do not stay in the map.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The key a connection from `addr` is counted under.
fn client_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_slots_come_back_when_dropped() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = per_ip.take(a).expect("first");
        let _second = per_ip.take(a).expect("second");
        assert!(per_ip.take(a).is_none(), "a third is over the cap");
        assert!(per_ip.take(b).is_some(), "another address has its own count");
        drop(first);
        assert_eq!(per_ip.open.lock().unwrap().get(&a), Some(&1));
        assert!(per_ip.take(a).is_some(), "a closed connection's slot is free again");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let per_ip = PerIp::new(1);
        let _one = per_ip.take("2001:db8::1".parse().unwrap()).expect("first");
        assert!(per_ip.take("2001:db8::ffff:1".parse().unwrap()).is_none(), "the same /64");
        assert!(per_ip.take("2001:db8:0:1::1".parse().unwrap()).is_some(), "another /64");
        let _v4 = per_ip.take("127.0.0.1".parse().unwrap()).expect("v4");
        assert!(per_ip.take("::ffff:127.0.0.1".parse().unwrap()).is_none(), "mapped: the same client");
        assert!(per_ip.take("::1".parse().unwrap()).is_some(), "IPv6 loopback is its own");
    }

    #[test]
    fn a_forgotten_address_leaves_no_entry() {
        let per_ip = PerIp::new(3);
        drop(per_ip.take("127.0.0.9".parse().unwrap()));
        assert!(per_ip.open.lock().unwrap().is_empty());
    }
}
