//! Accepting and policing connections. axum's `serve` has no header, idle or write timeouts and
//! no connection cap, and stops accepting the moment shutdown begins; so connections are served
//! here with hyper directly.
//!
//! - Every connection is wrapped in `Watched`, which records traffic and fails a write that
//!   makes no progress for `write_timeout` (a client that stopped reading): the connection ends,
//!   its response stream is dropped, and the worker frees its sequences.
//! - A watchdog per connection closes it when a request's headers take longer than
//!   `header_timeout` (counted from the first byte, or from accept for a new connection), or when
//!   no request is in flight and nothing moved for `idle_timeout`. Request bodies have their own
//!   timeout where they are read (`error::ApiJson`).
//! - At `max_connections`, a new connection evicts the connection that has been quiet longest
//!   among those with no request in flight (as nginx reuses idle keep-alive connections), so
//!   stalled clients cannot lock everyone out; when every connection is busy, the newcomer gets a
//!   bare 503 and is closed.
//! - Shutdown phases come through a `watch` channel: `Draining` stops accepting and lets each
//!   connection finish its request; `Closing` drops whatever is left.
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Sleep;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new connections; open ones finish their request and close.
    Draining,
    /// Every connection is dropped now.
    Closing,
}

/// What the watchdog and the eviction policy know of one connection. Times are milliseconds
/// since `epoch`, in atomics, because the stream, the service and the watchdog all touch them.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_traffic_ms: AtomicU64,
    /// When the request now being received began (u64::MAX: none).
    request_started_ms: AtomicU64,
    evict: Notify,
    /// Set once it has been asked to close, so that it is not picked twice.
    evicted: std::sync::atomic::AtomicBool,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_traffic_ms: AtomicU64::new(0),
            // A new connection owes its first request's headers from the start.
            request_started_ms: AtomicU64::new(0),
            evict: Notify::new(),
            evicted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn traffic(&self, read: bool) {
        let now = self.now_ms();
        self.last_traffic_ms.store(now, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.request_started_ms.compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_started_ms.store(NONE, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last_traffic_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Why the watchdog should close the connection now, if it should.
    fn overdue(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        if !self.idle() {
            return None;
        }
        let now = self.now_ms();
        let started = self.request_started_ms.load(Ordering::Relaxed);
        if started != NONE {
            return (now.saturating_sub(started) > limits.header_timeout.as_millis() as u64).then_some("header");
        }
        let quiet = now.saturating_sub(self.last_traffic_ms.load(Ordering::Relaxed));
        (quiet > limits.idle_timeout.as_millis() as u64).then_some("idle")
    }
}

/// A request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.request_began();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A TCP stream that reports traffic and times out writes that make no progress.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    write_timeout: Duration,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    fn poll_progress<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let deadline = self.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    metrics::counter!("recyclegpt_connections_timed_out_total", "phase" => "write").increment(1);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
                }
                Poll::Pending
            }
            ready => {
                self.write_deadline = None;
                self.activity.traffic(false);
                ready
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.traffic(true);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, data);
        self.poll_progress(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.poll_progress(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The open connections, for eviction and for waiting until all are closed.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // A poisoned map is still a valid map: connection bookkeeping never panics mid-update.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    async fn wait_below(&self, cap: usize, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let closed = self.closed.notified();
            if self.len() < cap {
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return;
            }
        }
    }

    /// Asks the quietest idle connection to close; false when every connection is busy.
    fn evict_one(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|a| a.idle() && !a.evicted.load(Ordering::Relaxed))
            .min_by_key(|a| a.epoch + Duration::from_millis(a.last_traffic_ms.load(Ordering::Relaxed)));
        match victim {
            Some(activity) => {
                activity.evicted.store(true, Ordering::Relaxed);
                activity.evict.notify_one();
                metrics::counter!("recyclegpt_connections_evicted_total").increment(1);
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until the phase leaves `Serving`; returns a handle that resolves
/// once every connection has closed.
pub fn spawn(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    phase: watch::Receiver<Phase>,
) -> Connections {
    let registry = Arc::new(Registry::default());
    let accept = tokio::spawn(accept_loop(listener, router, limits, phase, registry.clone()));
    Connections { registry, accept: Some(accept) }
}

pub struct Connections {
    registry: Arc<Registry>,
    /// The accept loop, until it has been seen to end.
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Connections {
    /// Waits until the accept loop has stopped and no connection is open.
    pub async fn closed(&mut self) {
        if let Some(accept) = self.accept.as_mut() {
            let _ = accept.await;
            self.accept = None;
        }
        loop {
            let notified = self.registry.closed.notified();
            if self.registry.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    mut phase: watch::Receiver<Phase>,
    registry: Arc<Registry>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p != Phase::Serving) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: free a slot
                // if one is idle, and pause briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                registry.evict_one();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if registry.len() >= limits.max_connections {
            if !registry.evict_one() {
                metrics::counter!("recyclegpt_connections_refused_total").increment(1);
                // Best effort: a client that cannot take these bytes now is simply closed.
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            // Wait (briefly) for the evicted connection to be gone, so that a burst of new
            // connections cannot take the count, and the descriptors, past the cap.
            registry.wait_below(limits.max_connections, Duration::from_millis(200)).await;
        }
        let id = registry.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        registry.lock().insert(id, activity.clone());
        let registry = registry.clone();
        let router = router.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, phase, activity).await;
            registry.lock().remove(&id);
            registry.closed.notify_waiters();
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: axum::Router,
    limits: ConnectionLimits,
    mut phase: watch::Receiver<Phase>,
    activity: Arc<Activity>,
) {
    let _ = stream.set_nodelay(true);
    let io = Watched { stream, activity: activity.clone(), write_timeout: limits.write_timeout, write_deadline: None };
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        // In flight from the headers until the response body is done or dropped: a stream
        // counts as busy for as long as it streams.
        let guard = InFlight::begin(service_activity.clone());
        async move {
            let response = tower::ServiceExt::oneshot(router, request.map(axum::body::Body::new)).await;
            response.map(|response| {
                response.map(|body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                        let _ = &guard;
                        frame
                    }))
                })
            })
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's own header timer is only a backstop: the watchdog below acts first and counts it.
        .header_read_timeout(limits.header_timeout * 2 + Duration::from_secs(1))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    let mut graceful = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = activity.evict.notified() => {
                // A request may have begun since the connection was picked: let it finish.
                if activity.idle() {
                    return;
                }
                activity.evicted.store(false, Ordering::Relaxed);
            }
            _ = watchdog.tick() => {
                if let Some(phase) = activity.overdue(&limits) {
                    metrics::counter!("recyclegpt_connections_timed_out_total", "phase" => phase).increment(1);
                    return;
                }
            }
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Closing {
                    return;
                }
                if now == Phase::Draining && !graceful {
                    graceful = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
