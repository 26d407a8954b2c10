//! The open client connections: from where, doing what, since when; and, when
//! a new one would go over a cap, which one to close to make room for it.

use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::Shared;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for the next request (or the first).
    Idle = 0,
    /// Receiving a request head or body, or a TLS handshake.
    Reading = 1,
    /// Its request is with the server: never closed to make room.
    Backend = 2,
    /// Sending the answer.
    Writing = 3,
    /// Closed to make room (or closing): no longer counted.
    Closing = 4,
}

impl Phase {
    fn of(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::Reading,
            2 => Phase::Backend,
            3 => Phase::Writing,
            _ => Phase::Closing,
        }
    }
}

/// One open connection, as the table sees it.
pub struct Slot {
    id: u64,
    peer: IpAddr,
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch` of the last useful progress: becoming idle,
    /// starting a request, or sending part of an answer.
    since: AtomicU64,
    /// The connection's socket: its thread reads and writes through it, and
    /// eviction shuts it down from here.
    tcp: TcpStream,
}

impl Slot {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Enters `phase` now.
    pub fn set(&self, phase: Phase) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Part of the answer went out.
    pub fn progress(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
    }

    /// Only draining before it closes: the first to go when room is needed.
    pub fn lingering(&self) {
        self.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        Phase::of(self.phase.load(Ordering::Relaxed))
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// The caps on open connections.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// All connections.
    pub total: usize,
    /// Connections from one client address.
    pub per_client: usize,
}

/// Every open connection.
pub struct Table {
    slots: Mutex<Vec<Arc<Slot>>>,
    caps: Caps,
    epoch: Instant,
    next: AtomicU64,
    shared: Arc<Shared>,
}

/// A connection's place in the table, given up when dropped.
pub struct Seat {
    table: Arc<Table>,
    /// Its slot.
    pub slot: Arc<Slot>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut slots = self.table.lock();
        slots.retain(|s| s.id != self.slot.id);
        self.table.shared.set_open(slots.len());
    }
}

impl Table {
    /// An empty table with these caps.
    pub fn new(caps: Caps, shared: Arc<Shared>) -> Arc<Table> {
        Arc::new(Table {
            slots: Mutex::new(Vec::new()),
            caps,
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seats a new connection from `peer`. At a cap, the connection (of that
    /// client, for the per-client cap) that has made no progress for the longest
    /// is closed first; the socket comes back when every one of them is busy
    /// with the server.
    pub fn admit(self: &Arc<Self>, tcp: TcpStream, peer: IpAddr) -> Result<Seat, TcpStream> {
        let mut slots = self.lock();
        let live = |s: &&Arc<Slot>| s.phase() != Phase::Closing;
        let mine = slots.iter().filter(live).filter(|s| s.peer == peer).count();
        let room = if mine >= self.caps.per_client {
            self.evict(&slots, Some(peer))
        } else if slots.iter().filter(live).count() >= self.caps.total {
            self.evict(&slots, None)
        } else {
            Some(())
        };
        if room.is_none() {
            return Err(tcp);
        }
        let slot = Arc::new(Slot {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            peer,
            epoch: self.epoch,
            phase: AtomicU8::new(Phase::Reading as u8),
            since: AtomicU64::new(0),
            tcp,
        });
        slot.set(Phase::Reading);
        slots.push(slot.clone());
        self.shared.set_open(slots.len());
        Ok(Seat {
            table: self.clone(),
            slot,
        })
    }

    /// Closes the connection (of `peer`, if given) that has waited longest
    /// without progress, among those not waiting for the server.
    fn evict(&self, slots: &[Arc<Slot>], peer: Option<IpAddr>) -> Option<()> {
        let victim = slots
            .iter()
            .filter(|s| peer.is_none_or(|p| s.peer == p))
            .filter(|s| !matches!(s.phase(), Phase::Backend | Phase::Closing))
            .min_by_key(|s| (s.phase() != Phase::Idle, s.since.load(Ordering::Relaxed)))?;
        victim.phase.store(Phase::Closing as u8, Ordering::Relaxed);
        // Its thread wakes from its read or write and ends.
        let _ = victim.tcp.shutdown(Shutdown::Both);
        self.shared.evicted.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "closed a connection from {} to make room for a new one",
            victim.peer
        );
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn the_longest_idle_goes_first_and_busy_ones_stay() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = Arc::new(Shared::default());
        let table = Table::new(
            Caps {
                total: 3,
                per_client: 2,
            },
            shared.clone(),
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut keep = Vec::new();
        let (c1, s1) = pair(&l);
        let one = table.admit(s1, a).ok().unwrap();
        one.slot.set(Phase::Idle);
        let (c2, s2) = pair(&l);
        let two = table.admit(s2, a).ok().unwrap();
        two.slot.set(Phase::Backend);
        // A third from `a` closes its idle one, never the one with the server.
        let (_c3, s3) = pair(&l);
        let three = table.admit(s3, a).ok().unwrap();
        assert_eq!(one.slot.phase(), Phase::Closing);
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!(
            (&c1).read(&mut buf).unwrap_or(0),
            0,
            "the evicted socket is closed"
        );
        three.slot.set(Phase::Backend);
        // `a` has nothing left to give up.
        let (_c4, s4) = pair(&l);
        assert!(table.admit(s4, a).is_err());
        // `b` fits under the total (the evicted slot no longer counts) ...
        let (_c5, s5) = pair(&l);
        let five = table.admit(s5, b).ok().unwrap();
        five.slot.set(Phase::Writing);
        // ... and at the total, the oldest evictable (b's stalled writer) goes.
        let (_c6, s6) = pair(&l);
        let six = table.admit(s6, b);
        assert!(six.is_ok());
        assert_eq!(five.slot.phase(), Phase::Closing);
        drop(one);
        keep.push((c2, two, three, six));
        assert_eq!(shared.evicted.load(Ordering::Relaxed), 2);
        assert_eq!(shared.open(), 4, "seats are given up on drop");
    }
}
