//! Fair connection handling: who holds a connection slot, and who gives it up.
//!
//! A connection cap alone lets idle or trickling sockets lock every client out: eight sockets
//! that each sent one byte and went silent once held all six slots of a server, health probes
//! included. Here every open connection has a [`Tracker`] with what it is doing, and:
//! - a new connection must deliver its first complete request head within
//!   `header_read_timeout`, and so must any request head once its first byte has arrived; only
//!   a connection idle between requests may wait longer (`keep_alive_idle`, enforced by hyper);
//! - at the cap, a new connection evicts the open connection that has been idle or stuck in a
//!   request head the longest (a connection with a request being served is never evicted);
//!   only when every slot serves a request is the new one refused;
//! - optionally, one address may hold at most `max_connections_per_peer` connections.
//!
//! An HTTP/2 connection multiplexes requests and exchanges frames (pings, settings, window
//! updates) between them, so once its first request has arrived its bytes no longer start a
//! "request head" deadline; it is still evicted at the cap when it is the idlest.
//!
//! The sweeper that enforces the head deadlines runs a few times a second over the trackers;
//! the hot path of a request only updates a few atomics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What one connection is doing, updated by its IO and its requests.
#[derive(Debug)]
pub struct Tracker {
    id: u64,
    peer: IpAddr,
    epoch: Instant,
    accepted_ms: u64,
    /// Requests being served (their response not yet finished).
    in_flight: AtomicUsize,
    /// Requests whose head was complete.
    served: AtomicU64,
    /// Last read or write, ms since `epoch`.
    last_active_ms: AtomicU64,
    /// HTTP/2: bytes between requests are frames, not the start of a request head.
    multiplexed: AtomicBool,
    /// When the first byte of a request head arrived while nothing was in flight (ms since
    /// `epoch`, plus one; 0 = no head being read).
    head_started_ms: AtomicU64,
    kill: Notify,
}

impl Tracker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: a request head has started if nothing is in flight (HTTP/1).
    fn read(&self) {
        self.touch();
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.multiplexed.load(Ordering::Acquire)
        {
            let _ = self.head_started_ms.compare_exchange(
                0,
                self.now_ms() + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The connection speaks HTTP/2 (known from its first request).
    pub fn multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Release);
    }

    /// A request head is complete: the request is being served.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Release);
        self.touch();
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.touch();
    }

    /// Idle between requests or stuck in a head: may be evicted.
    fn evictable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Why this connection must be closed now, if it must.
    fn overdue(&self, now_ms: u64, head_timeout_ms: u64) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        if self.served.load(Ordering::Relaxed) == 0
            && now_ms.saturating_sub(self.accepted_ms) > head_timeout_ms
        {
            return Some("no complete request head since the connection opened");
        }
        let started = self.head_started_ms.load(Ordering::Acquire);
        if started != 0 && now_ms.saturating_sub(started - 1) > head_timeout_ms {
            return Some("a request head did not complete in time");
        }
        None
    }

    /// Resolves when the connection is asked to close.
    pub async fn killed(&self) {
        self.kill.notified().await;
    }
}

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct Fairness {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub header_read_timeout: Duration,
}

/// Every open connection of one listener.
#[derive(Debug)]
pub struct Connections {
    open: Mutex<HashMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    epoch: Instant,
    limits: Fairness,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot serves a request.
    Full,
    /// This address holds its share already.
    PerPeer,
}

impl Connections {
    pub fn new(limits: Fairness) -> Arc<Connections> {
        Arc::new(Connections {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracker>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `peer`, evicting the longest-idle one at the cap.
    pub fn admit(&self, peer: IpAddr) -> Result<Arc<Tracker>, Refused> {
        let mut open = self.lock();
        if self.limits.max_per_peer > 0
            && open.values().filter(|t| t.peer == peer).count() >= self.limits.max_per_peer
        {
            return Err(Refused::PerPeer);
        }
        if open.len() >= self.limits.max_connections {
            let victim = open
                .values()
                .filter(|t| t.evictable())
                .min_by_key(|t| t.last_active_ms.load(Ordering::Relaxed))
                .cloned()
                .ok_or(Refused::Full)?;
            open.remove(&victim.id);
            victim.kill.notify_one();
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let tracker = Arc::new(Tracker {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            epoch: self.epoch,
            accepted_ms: now,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(now),
            head_started_ms: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        open.insert(tracker.id, Arc::clone(&tracker));
        Ok(tracker)
    }

    /// Forgets a connection that ended.
    pub fn release(&self, tracker: &Tracker) {
        self.lock().remove(&tracker.id);
    }

    /// Closes every connection whose request head is overdue. Returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let timeout = self.limits.header_read_timeout.as_millis() as u64;
        let mut open = self.lock();
        let overdue: Vec<u64> = open
            .values()
            .filter_map(|t| t.overdue(now, timeout).map(|why| (t.id, why)))
            .map(|(id, why)| {
                tracing::debug!(connection = id, why, "closing a connection");
                id
            })
            .collect();
        for id in &overdue {
            if let Some(t) = open.remove(id) {
                t.kill.notify_one();
            }
        }
        overdue.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A socket that reports its reads and writes to its tracker.
pub struct Tracked<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, tracker: Arc<Tracker>) -> Tracked<S> {
        Tracked { inner, tracker }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.read();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.tracker.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.tracker.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_peer: usize) -> Fairness {
        Fairness {
            max_connections: max,
            max_per_peer: per_peer,
            header_read_timeout: Duration::from_millis(50),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let c = Connections::new(limits(2, 0));
        let first = c.admit(A).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = c.admit(A).unwrap();
        second.touch();
        let third = c.admit(B).unwrap();
        assert_eq!(c.len(), 2);
        // The first was idle longest: it was told to close.
        assert!(futures_ready(first.killed()));
        assert!(!futures_ready(second.killed()));
        // Busy connections are never evicted: with both slots serving, a newcomer is refused.
        second.request_started();
        third.request_started();
        assert_eq!(c.admit(B).err(), Some(Refused::Full));
        third.request_finished();
        assert!(c.admit(B).is_ok());
    }

    #[test]
    fn heads_must_complete_in_time() {
        let c = Connections::new(limits(10, 0));
        let silent = c.admit(A).unwrap();
        let served = c.admit(A).unwrap();
        served.request_started();
        served.request_finished();
        std::thread::sleep(Duration::from_millis(80));
        // Idle keep-alive connections are left to hyper's idle timeout; a connection that never
        // sent a complete head is closed.
        assert_eq!(c.sweep(), 1);
        assert!(futures_ready(silent.killed()));
        // A head started on the keep-alive connection and left unfinished is closed too.
        served.read();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.sweep(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn http2_frames_between_requests_start_no_head_deadline() {
        let c = Connections::new(limits(10, 0));
        let h2 = c.admit(A).unwrap();
        h2.multiplexed();
        h2.request_started();
        h2.request_finished();
        // A ping answered while idle is a frame, not a request head: the connection stays.
        h2.read();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.sweep(), 0);
        assert!(!futures_ready(h2.killed()));
    }

    #[test]
    fn a_peer_holds_at_most_its_share() {
        let c = Connections::new(limits(10, 2));
        let _a1 = c.admit(A).unwrap();
        let _a2 = c.admit(A).unwrap();
        assert_eq!(c.admit(A).err(), Some(Refused::PerPeer));
        assert!(c.admit(B).is_ok());
    }

    /// Whether a notification is already waiting (polls the future once).
    fn futures_ready(fut: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx).is_ready()
    }
}
