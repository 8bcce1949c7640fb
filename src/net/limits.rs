//! Caps on concurrent connections, in total and per client address, shared by every
//! listener: a connection is counted (or refused) as it is accepted, before it reaches any
//! actor's mailbox, and its slot is freed however its session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Caps on concurrent connections, in total and per client address.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Which connection limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many connections in total.
    Total,
    /// Too many from this address.
    PerIp,
}

impl ConnectionLimits {
    /// Limits of `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Counts a new connection from `ip`, unless a limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, LimitExceeded> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(ConnectionGuard {
            limits: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it (also when a session panics) frees its slot.
#[derive(Debug)]
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_release() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let g1 = limits.try_acquire(a).expect("first");
        let _g2 = limits.try_acquire(a).expect("second");
        assert_eq!(limits.try_acquire(a).err(), Some(LimitExceeded::PerIp));
        let _g3 = limits.try_acquire(b).expect("other ip");
        assert_eq!(limits.try_acquire(b).err(), Some(LimitExceeded::Total));
        drop(g1);
        limits.try_acquire(a).expect("slot freed");
    }
}
