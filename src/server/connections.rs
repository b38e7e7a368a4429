//! Connection hygiene: the accept loop and per-connection timeouts.
//!
//! poem's `Server` offers only an inactivity timeout (any byte read or written keeps a
//! connection open, so a client dripping one header line a second holds it forever) and no
//! bound on connections; hyper's `header_read_timeout` is not reachable through it. So the
//! server runs its own accept loop on hyper-util's HTTP/1 + HTTP/2 connection builder, hands
//! every request to the poem endpoint unchanged, and watches each connection:
//!
//! - **header timeout**: from the first byte of a request until its head is complete;
//! - **idle timeout**: a keep-alive connection with no request in flight and no byte read;
//! - **body timeout**: from the end of a request's head until its body has fully arrived;
//! - at most `max_connections` open at once (the listener waits for a free slot) and at
//!   most `max_per_address` from one client address (more are closed as soon as accepted).
//!
//! A request being handled, or a response being written (an SSE stream, say), is never timed
//! out; an upgraded connection (a WebSocket) leaves the watch but keeps its slots.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use poem::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::api::AppEndpoint;
pub use crate::app::ConnectionLimits;

/// poem's body type, which its requests and responses convert to and from.
type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Serves `endpoint` on `listener` until `shutdown` resolves; connections then finish their
/// requests within `grace` (keep-alive ones close at once).
pub async fn serve(
    listener: TcpListener, endpoint: Arc<AppEndpoint>, limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send, grace: Duration,
) {
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: give closing connections a moment
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let Some(address) = AddressSlot::take(&per_address, remote.ip(), limits.max_per_address)
        else {
            tracing::debug!(%remote, "too many connections from this address: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = local.unwrap_or(remote);
        connections.spawn(connection(
            Slots {
                stream,
                _server: slot,
                _address: address,
            },
            local,
            remote,
            endpoint.clone(),
            limits,
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let finished = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!("connections still open after the grace period were closed");
    }
    connections.shutdown().await;
}

/// The socket with the slots it holds (released when the socket closes, after a WebSocket
/// too), and the activity it reports.
struct Slots {
    stream: TcpStream,
    _server: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// One connection from one address, counted while it lives.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What a connection is doing, as far as its timeouts go.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests whose response is not yet fully written.
    requests: usize,
    /// Requests whose body is still arriving.
    bodies: usize,
    /// When the connection last became idle (accepted, or its last response written).
    idle_since: Instant,
    /// When the first byte of the next request arrived, while idle.
    head_since: Option<Instant>,
    /// When the oldest body still arriving began.
    body_since: Instant,
}

impl Activity {
    /// When the connection times out as it is, and why (none while a request is handled).
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        if self.bodies > 0 {
            Some((self.body_since + limits.body_timeout, "body"))
        } else if self.requests > 0 {
            None
        } else if let Some(head) = self.head_since {
            Some((head + limits.header_timeout, "header"))
        } else {
            Some((self.idle_since + limits.idle_timeout, "idle"))
        }
    }
}

/// One connection's activity, shared by its socket, its requests and its watchdog. Changes
/// wake nobody: the watchdog looks when it wakes on its own ([`watchdog`]), so a request costs
/// a few uncontended locks, not three wake-ups and timer re-registrations.
#[derive(Clone)]
struct Tracker(Arc<Mutex<Activity>>);

impl Tracker {
    fn new() -> Self {
        let now = Instant::now();
        Self(Arc::new(Mutex::new(Activity {
            requests: 0,
            bodies: 0,
            idle_since: now,
            head_since: None,
            body_since: now,
        })))
    }

    fn update(&self, change: impl FnOnce(&mut Activity)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn now(&self) -> Activity {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: while idle, a request head has begun.
    fn read(&self) {
        self.update(|a| {
            if a.requests == 0 && a.head_since.is_none() {
                a.head_since = Some(Instant::now());
            }
        });
    }

    /// A request's head is in; `body` when its body is still to come.
    fn request(&self, body: bool) -> (Done, Option<Done>) {
        self.update(|a| {
            a.requests += 1;
            a.head_since = None;
            if body {
                if a.bodies == 0 {
                    a.body_since = Instant::now();
                }
                a.bodies += 1;
            }
        });
        let response = Done {
            tracker: self.clone(),
            what: Part::Response,
        };
        let body = body.then(|| Done {
            tracker: self.clone(),
            what: Part::Body,
        });
        (response, body)
    }
}

#[derive(Clone, Copy)]
enum Part {
    Body,
    Response,
}

/// Reports, when dropped, that a request's body has arrived or its response is written.
struct Done {
    tracker: Tracker,
    what: Part,
}

impl Drop for Done {
    fn drop(&mut self) {
        let what = self.what;
        self.tracker.update(|a| match what {
            Part::Body => a.bodies = a.bodies.saturating_sub(1),
            Part::Response => {
                a.requests = a.requests.saturating_sub(1);
                if a.requests == 0 {
                    a.idle_since = Instant::now();
                    a.head_since = None;
                }
            }
        });
    }
}

/// A body that reports when it ends (or is dropped unfinished).
struct Tracked {
    inner: BoxBody,
    done: Option<Done>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.done = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting reads to the connection's tracker.
struct Io {
    slots: Slots,
    tracker: Tracker,
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.slots.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.read();
        }
        polled
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.slots.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.slots.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.slots.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.slots.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.slots.stream).poll_shutdown(cx)
    }
}

/// Resolves, with the reason, when the connection's current phase outlasts its timeout.
///
/// It is not told of changes: it wakes at its phase's deadline, or sooner, after the shortest
/// timeout, since any phase that begins later ends no earlier than that; then it looks again.
/// A connection costs a wake-up every few seconds, a request nothing.
async fn watchdog(activity: Tracker, limits: ConnectionLimits) -> &'static str {
    let soonest = limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.body_timeout)
        .max(Duration::from_millis(1));
    loop {
        let now = Instant::now();
        let due = activity.now().deadline(&limits);
        if let Some((at, why)) = due
            && at <= now
        {
            return why;
        }
        let wake = due.map_or(now + soonest, |(at, _)| at.min(now + soonest));
        tokio::time::sleep_until(wake).await;
    }
}

/// Serves one connection: HTTP/1.1 (with upgrades) or HTTP/2, each request through the poem
/// endpoint, until it closes, times out, or the server stops.
async fn connection(
    slots: Slots, local: SocketAddr, remote: SocketAddr, endpoint: Arc<AppEndpoint>,
    limits: ConnectionLimits, mut stopping: watch::Receiver<bool>,
) {
    let tracker = Tracker::new();
    let activity = tracker.clone();
    let io = Io {
        slots,
        tracker: tracker.clone(),
    };
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let endpoint = endpoint.clone();
        let tracker = tracker.clone();
        async move {
            let (response_done, body_done) = tracker.request(!req.body().is_end_stream());
            let mut req: poem::Request = (
                req,
                poem::web::LocalAddr(local.into()),
                poem::web::RemoteAddr(remote.into()),
                poem::http::uri::Scheme::HTTP,
            )
                .into();
            if let Some(done) = body_done {
                let inner: BoxBody = req.take_body().into();
                req.set_body(poem::Body::from(BoxBody::new(Tracked {
                    inner,
                    done: Some(done),
                })));
            }
            let response: hyper::Response<BoxBody> = endpoint.get_response(req).await.into();
            Ok::<_, Infallible>(response.map(|inner| Tracked {
                inner,
                done: Some(response_done),
            }))
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http2().max_header_list_size(16 * 1024);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let timeout = watchdog(activity, limits);
    tokio::pin!(timeout);
    tokio::select! {
        _ = conn.as_mut() => return,
        why = &mut timeout => {
            tracing::debug!(%remote, timeout = why, "connection closed: timed out");
            return;
        }
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        _ = timeout => {}
    }
}
