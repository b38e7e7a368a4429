//! Rate limits per API key: an hourly window limit and a one-second burst limit, counted in
//! memory so that a request costs no database write.
//!
//! The middleware looks the request's key up once ([`Keys::look_up`]); authentication
//! takes the answer from the request rather than looking again.
//!
//! Every authenticated `/v1` response carries `X-RateLimit-Limit`, `-Remaining`, `-Reset` and
//! `-Window` of the hourly window; a request past either limit answers 429 with `Retry-After`
//! in the error envelope. The first request refused in a window (by any replica) and the
//! first past the burst limit in a second (per replica) record a `rate_limit_exceeded`
//! security event. When the database cannot be reached for a lease the request goes through
//! (an outage of the limiter must not become an outage of the API), and so do the key's
//! requests for a second before the next attempt; the authentication that follows reports the
//! database.
//!
//! # How it is counted
//!
//! - **Burst** (requests per second): a GCRA limiter per key in this replica's memory
//!   (`governor`), `burst` cells replenished at `burst` per second: `burst` requests at once,
//!   then one every `1/burst` seconds. A request past it consumes its hourly permit, as every
//!   answered request does.
//! - **Hourly window** (fixed windows aligned to the hour in Unix time): the database hands
//!   the window's permits out in blocks ([`crate::db::ratelimit`]). A replica leases the next
//!   `N` permits of a key in one write and serves requests from the block in memory; when the
//!   block is used up it leases the next. The database never grants more than the limit in a
//!   window; once it refuses, the replica answers the key's requests with 429 from memory
//!   until the window ends. A request only waits on the database for the rare lease (one per
//!   block and replica; the key's other requests on that replica wait for the same lease).
//!
//! # Lease size
//!
//! `N` starts at 1 and follows the key's rate: it doubles when a block lasted less than half
//! a second and halves when it lasted more than four, so a busy key leases about once a
//! second per replica and a quiet one a few permits at a time. It never exceeds
//! `c = max(1, ⌊L / 100⌋)` for a limit of `L` an hour ([`max_lease`]): keys limited to less
//! than 200 an hour lease one permit at a time and are counted exactly.
//!
//! # Tolerance with `R` replicas
//!
//! - Never more than `L` requests of a key pass in a window while the database answers.
//! - Unused leased permits are the tolerance, on the other side: when a replica is refused,
//!   each other replica holds at most `c − 1` unused permits, so at least
//!   `L − (R − 1)(c − 1)` requests have passed (within `(R − 1)%` of `L`: 10% with 11
//!   replicas; 298 of 300 with 2). The held permits still serve requests that reach their
//!   replica until the window ends, when every block lapses.
//! - The burst limit is per replica: up to `R × burst` requests in a second when a load
//!   balancer spreads a key over `R` replicas.
//! - A changed limit applies on a replica when its key cache refreshes (seconds); a lowered
//!   limit drops the replica's block, and no lease is granted past the new limit.
//! - `X-RateLimit-Remaining` is the limit less the window position of the request's permit:
//!   exact with one replica; with several, permits leased by the others count as used.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use poem::http::{HeaderName, HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::auth::Keys;
use crate::db::Store;
use crate::db::ratelimit::Grant;
use crate::error::{Kind, envelope};
use crate::http::RequestId;

/// Seconds in the window of the window limit.
pub const WINDOW_SECONDS: i64 = 3600;

/// A lease takes at most this fraction (1/`LEASE_SHARE`) of a key's hourly limit.
pub const LEASE_SHARE: i64 = 100;

/// How long a leased block should last; the lease size follows the key's rate toward it.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// After a lease failed, a key's requests go through unlimited for this long before the next
/// attempt, rather than queueing one after another behind leases that fail.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Server-wide limits for keys that have none of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per hour.
    pub requests_per_hour: i64,
    /// Requests within one second.
    pub burst: i64,
}

impl Default for Limits {
    /// Generous enough that no test suite, Schemathesis or conform run reaches them.
    fn default() -> Self {
        Limits {
            requests_per_hour: 1_000_000,
            burst: 10_000,
        }
    }
}

/// What one request left of a key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub limit: i64,
    pub remaining: i64,
    /// Unix second at which the hourly window ends.
    pub reset: i64,
    /// `Some(seconds to wait)` when the request is over a limit.
    pub retry_after: Option<i64>,
    /// Which limit was passed: `"window"` or `"burst"`.
    pub exceeded: Option<&'static str>,
    /// Whether this request is the first to pass that limit in its window.
    pub first_excess: bool,
}

/// What the hourly budget says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hourly {
    /// A permit: its position in the window (1-based) and the window's start.
    Permit { position: i64, window_start: i64 },
    /// The window's budget is used up; `first` when this request is the first refused in it.
    Spent { window_start: i64, first: bool },
}

/// The most permits one lease takes for a key limited to `limit` an hour: a hundredth of the
/// limit, at least one.
pub fn max_lease(limit: i64) -> i64 {
    (limit / LEASE_SHARE).max(1)
}

/// The size of the next lease after a block of `size` permits was used up in `lasted`.
pub fn next_lease(size: i64, lasted: Duration, limit: i64) -> i64 {
    let size = if lasted < LEASE_LIFETIME / 2 {
        size.saturating_mul(2)
    } else if lasted > LEASE_LIFETIME * 4 {
        size / 2
    } else {
        size
    };
    size.clamp(1, max_lease(limit))
}

/// Judges a request from what its hourly budget said and, when it holds a permit, whether it
/// passed the burst limit (`Some(first excess in this second)`).
pub fn judge(limits: Limits, hourly: Hourly, burst_excess: Option<bool>, now: i64) -> Verdict {
    let limit = limits.requests_per_hour;
    let (window_start, remaining) = match hourly {
        Hourly::Permit {
            position,
            window_start,
        } => (window_start, (limit - position).max(0)),
        Hourly::Spent { window_start, .. } => (window_start, 0),
    };
    let reset = window_start + WINDOW_SECONDS;
    let (exceeded, retry_after, first_excess) = match (hourly, burst_excess) {
        (Hourly::Spent { first, .. }, _) => (Some("window"), Some((reset - now).max(1)), first),
        (_, Some(first)) => (Some("burst"), Some(1), first),
        _ => (None, None, false),
    };
    Verdict {
        limit,
        remaining,
        reset,
        retry_after,
        exceeded,
        first_excess,
    }
}

/// The permits of one key this replica holds.
#[derive(Debug)]
struct Block {
    /// The window they belong to (0 before the first lease).
    window_start: i64,
    /// The limit they were leased under.
    limit: i64,
    /// Position of the next permit to hand out, and one past the last.
    next: i64,
    end: i64,
    /// The database refused: nothing is left in `window_start`.
    spent: bool,
    /// Size of the last lease, and when it was granted.
    size: i64,
    granted_at: Instant,
}

impl Default for Block {
    fn default() -> Self {
        Block {
            window_start: 0,
            limit: 0,
            next: 0,
            end: 0,
            spent: false,
            size: 1,
            granted_at: Instant::now(),
        }
    }
}

impl Block {
    /// A permit for a request in the window starting at `window_start` under `limit`, or
    /// `None` when a lease is needed (nothing held, the window ended or the limit changed).
    /// A replica whose clock lags holds a newer window's block; it serves from it.
    fn take(&mut self, limit: i64, window_start: i64) -> Option<Hourly> {
        if self.limit != limit || self.window_start < window_start {
            return None;
        }
        if self.spent {
            return Some(Hourly::Spent {
                window_start: self.window_start,
                first: false,
            });
        }
        (self.next < self.end).then(|| {
            self.next += 1;
            Hourly::Permit {
                position: self.next - 1,
                window_start: self.window_start,
            }
        })
    }

    /// How many permits to lease next: more or fewer than last time when the last block was
    /// used up in this window, as fast as the key's rate says.
    fn want(&self, limit: i64, window_start: i64, now: Instant) -> i64 {
        if self.limit == limit && self.window_start >= window_start {
            next_lease(self.size, now.duration_since(self.granted_at), limit)
        } else {
            self.size.clamp(1, max_lease(limit))
        }
    }

    /// Holds what a lease of `want` granted, and takes the first permit of it.
    fn install(&mut self, grant: Grant, want: i64, limit: i64, now: Instant) -> Hourly {
        *self = Block {
            window_start: grant.window_start,
            limit,
            next: grant.first(),
            end: grant.leased + 1,
            spent: grant.granted <= 0,
            size: want,
            granted_at: now,
        };
        match self.take(limit, grant.window_start) {
            Some(permit @ Hourly::Permit { .. }) => permit,
            _ => Hourly::Spent {
                window_start: grant.window_start,
                first: grant.denials == 1,
            },
        }
    }
}

/// A key's hourly block on this replica, the one lease in flight for it and when a lease
/// last failed.
#[derive(Debug, Default)]
struct Budget {
    block: Mutex<Block>,
    lease: tokio::sync::Mutex<()>,
    failed_at: Mutex<Option<Instant>>,
}

impl Budget {
    fn take(&self, limit: i64, window_start: i64) -> Option<Hourly> {
        self.block
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(limit, window_start)
    }

    /// Whether a lease failed less than [`LEASE_RETRY`] ago.
    fn failing(&self) -> bool {
        self.failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < LEASE_RETRY)
    }

    fn failed(&self, at: Option<Instant>) {
        *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = at;
    }
}

/// One key's counters on this replica.
struct KeyState {
    /// The burst limit `limiter` enforces.
    burst: i64,
    limiter: DefaultDirectRateLimiter,
    /// The Unix second of the last burst excess recorded as a security event.
    burst_event_at: AtomicI64,
    budget: Arc<Budget>,
}

impl KeyState {
    fn new(burst: i64, budget: Arc<Budget>) -> Self {
        let cells = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX).max(1))
            .unwrap_or(NonZeroU32::MIN);
        KeyState {
            burst,
            limiter: RateLimiter::direct(Quota::per_second(cells)),
            burst_event_at: AtomicI64::new(0),
            budget,
        }
    }

    /// `Some(first excess in this second)` when the request passes the burst limit.
    fn burst_excess(&self, now: i64) -> Option<bool> {
        self.limiter
            .check()
            .is_err()
            .then(|| self.burst_event_at.swap(now, Ordering::Relaxed) != now)
    }
}

/// The counters of every key this replica served lately.
#[derive(Default)]
pub struct Ledger {
    keys: DashMap<String, Arc<KeyState>>,
    /// The window in which keys of older windows were last dropped.
    pruned: AtomicI64,
}

impl Ledger {
    /// The counters of `key_id` under a burst limit of `burst`; a changed burst limit starts a
    /// new burst limiter and keeps the hourly block.
    fn state(&self, key_id: &str, burst: i64, window_start: i64) -> Arc<KeyState> {
        if let Some(state) = self.keys.get(key_id)
            && state.burst == burst
        {
            return state.clone();
        }
        if self.pruned.swap(window_start, Ordering::Relaxed) != window_start {
            // Once a window, forget keys unused since the window before.
            let since = window_start - WINDOW_SECONDS;
            self.keys.retain(|_, state| {
                let block = state.budget.block.lock();
                block.unwrap_or_else(PoisonError::into_inner).window_start >= since
            });
        }
        let mut entry = self
            .keys
            .entry(key_id.to_string())
            .or_insert_with(|| Arc::new(KeyState::new(burst, Arc::default())));
        if entry.burst != burst {
            let budget = entry.budget.clone();
            *entry = Arc::new(KeyState::new(burst, budget));
        }
        entry.clone()
    }
}

/// The middleware: looks up the request's key, counts the request and answers 429 past a
/// limit; `limits` apply to keys that have none of their own. Each endpoint it wraps keeps
/// its own [`Ledger`] of counters.
#[derive(Clone)]
pub struct RateLimit {
    pub keys: Keys,
    pub store: Store,
    pub limits: Limits,
    /// The paths whose operations need no key (`security: []`): a key presented to them is
    /// never refused for its address's failures (they document no 429).
    pub public: Arc<std::collections::HashSet<String>>,
}

impl<E: Endpoint> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RateLimitEndpoint {
            inner: ep,
            limiter: self.clone(),
            ledger: Arc::default(),
        }
    }
}

impl RateLimit {
    /// Counts the request against its API key's limits: `None` when no live key is presented
    /// (authentication answers that) or the database cannot lease permits.
    async fn check(&self, ledger: &Ledger, req: &mut poem::Request) -> Option<Verdict> {
        let record = self.keys.look_up(req).await?;
        let limits = Limits {
            requests_per_hour: record
                .rate_limit_per_hour
                .unwrap_or(self.limits.requests_per_hour),
            burst: record.rate_limit_burst.unwrap_or(self.limits.burst),
        };
        let now = chrono::Utc::now().timestamp();
        let window_start = now - now.rem_euclid(WINDOW_SECONDS);
        let state = ledger.state(&record.key_id, limits.burst, window_start);
        let hourly = match state.budget.take(limits.requests_per_hour, window_start) {
            Some(hourly) => hourly,
            None => {
                self.lease(
                    &state.budget,
                    &record.key_id,
                    limits.requests_per_hour,
                    window_start,
                )
                .await?
            }
        };
        let burst_excess = match hourly {
            Hourly::Permit { .. } => state.burst_excess(now),
            Hourly::Spent { .. } => None,
        };
        let verdict = judge(limits, hourly, burst_excess, now);
        if verdict.first_excess {
            use crate::security::{Event, EventType, Severity};
            let which = verdict.exceeded.unwrap_or("window");
            tracing::warn!(key_id = %record.key_id, limit = which, "rate limit exceeded");
            let request_id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default();
            let event = Event::new(
                EventType::RateLimitExceeded,
                Severity::Medium,
                format!("API key {} passed its {which} rate limit", record.key_id),
            )
            .by(&record.key_id, &record.user_id)
            .on("api_key", &record.key_id)
            .details(serde_json::json!({
                "limit": which,
                "requests_per_hour": limits.requests_per_hour,
                "burst": limits.burst,
            }))
            .request(&request_id);
            crate::security::record_detached(&self.store, Some(record.org_id.clone()), event).await;
        }
        Some(verdict)
    }

    /// Leases the next block of `key_id`'s permits (one lease at a time per key: a request
    /// that waited for another's lease takes from its block) and takes a permit from it.
    async fn lease(
        &self, budget: &Budget, key_id: &str, limit: i64, window_start: i64,
    ) -> Option<Hourly> {
        if budget.failing() {
            return None;
        }
        let _turn = budget.lease.lock().await;
        if budget.failing() {
            return None;
        }
        let want = {
            let mut block = budget.block.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hourly) = block.take(limit, window_start) {
                return Some(hourly);
            }
            block.want(limit, window_start, Instant::now())
        };
        let key = key_id.to_string();
        let grant = self
            .store
            .run(move |conn| crate::db::ratelimit::lease(conn, &key, window_start, want, limit))
            .await;
        match grant {
            Ok(grant) => {
                budget.failed(None);
                let mut block = budget.block.lock().unwrap_or_else(PoisonError::into_inner);
                Some(block.install(grant, want, limit, Instant::now()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit leases unavailable; not limiting");
                budget.failed(Some(Instant::now()));
                None
            }
        }
    }
}

pub struct RateLimitEndpoint<E> {
    inner: E,
    limiter: RateLimit,
    ledger: Arc<Ledger>,
}

/// A 429 with the error envelope saying `message` and `Retry-After: wait`.
fn too_many(req: &Request, message: String, wait: i64) -> Response {
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let body = envelope(
        Kind::TooManyRequests,
        "RATE_LIMIT_EXCEEDED",
        message,
        Vec::new(),
        &rid,
    );
    let mut resp = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .content_type("application/json; charset=utf-8")
        .body(
            poem_openapi::types::ToJSON::to_json(&body)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    set(&mut resp, header::RETRY_AFTER, wait);
    resp
}

/// The headers every counted answer carries, parsed once.
static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static WINDOW: HeaderName = HeaderName::from_static("x-ratelimit-window");

fn set(resp: &mut Response, name: HeaderName, value: i64) {
    resp.headers_mut().insert(name, HeaderValue::from(value));
}

impl<E: Endpoint> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        if !req.uri().path().starts_with("/v1/") {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let throttled = self.limiter.keys.throttled(&req);
        // Checked only when throttled: the path lookup stays off the common path.
        if let Some(wait) = throttled.filter(|_| !self.limiter.public.contains(req.uri().path())) {
            // Too many failed authentications from this source: refused before its key is
            // looked up.
            self.limiter.keys.refused_for_failures(&req);
            let message = format!(
                "too many requests with invalid API keys from this address; retry in {wait} seconds"
            );
            return Ok(too_many(
                &req,
                message,
                i64::try_from(wait).unwrap_or(i64::MAX),
            ));
        }
        let verdict = match self.limiter.check(&self.ledger, &mut req).await {
            Some(v) => v,
            None => return self.inner.call(req).await.map(IntoResponse::into_response),
        };
        let mut resp = match verdict.retry_after {
            Some(wait) => {
                let message = match verdict.exceeded {
                    Some("burst") => {
                        "the API key passed its burst limit (requests per second); retry in 1 second"
                            .to_string()
                    }
                    _ => format!(
                        "the API key made more than {} requests in this hour; retry in {wait} seconds",
                        verdict.limit
                    ),
                };
                too_many(&req, message, wait)
            }
            None => self.inner.call(req).await?.into_response(),
        };
        set(&mut resp, LIMIT.clone(), verdict.limit);
        set(&mut resp, REMAINING.clone(), verdict.remaining);
        set(&mut resp, RESET.clone(), verdict.reset);
        set(&mut resp, WINDOW.clone(), WINDOW_SECONDS);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        requests_per_hour: 10,
        burst: 3,
    };

    fn permit(position: i64) -> Hourly {
        Hourly::Permit {
            position,
            window_start: 3600,
        }
    }

    #[test]
    fn window_and_burst_limits() {
        let ok = judge(LIMITS, permit(4), None, 4000);
        assert_eq!((ok.remaining, ok.reset, ok.retry_after), (6, 7200, None));
        let burst = judge(LIMITS, permit(5), Some(true), 4000);
        assert_eq!(
            (burst.exceeded, burst.retry_after, burst.remaining),
            (Some("burst"), Some(1), 5)
        );
        assert!(burst.first_excess);
        assert!(!judge(LIMITS, permit(6), Some(false), 4000).first_excess);
        let spent = Hourly::Spent {
            window_start: 3600,
            first: true,
        };
        let window = judge(LIMITS, spent, None, 4000);
        assert_eq!(window.exceeded, Some("window"));
        assert_eq!((window.remaining, window.retry_after), (0, Some(3200)));
        assert!(window.first_excess);
    }

    #[test]
    fn leases_follow_the_rate_within_a_hundredth_of_the_limit() {
        assert_eq!(
            (max_lease(6), max_lease(300), max_lease(1_000_000)),
            (1, 3, 10_000)
        );
        let fast = Duration::from_millis(10);
        assert_eq!(next_lease(1, fast, 1_000_000), 2);
        assert_eq!(next_lease(8_000, fast, 1_000_000), 10_000);
        assert_eq!(next_lease(3, fast, 300), 3);
        assert_eq!(next_lease(1, fast, 150), 1);
        assert_eq!(next_lease(8, Duration::from_secs(1), 1_000_000), 8);
        assert_eq!(next_lease(8, Duration::from_secs(60), 1_000_000), 4);
        assert_eq!(next_lease(1, Duration::from_secs(60), 1_000_000), 1);
    }

    fn grant(window_start: i64, leased: i64, granted: i64, denials: i64) -> Grant {
        Grant {
            window_start,
            leased,
            granted,
            denials,
        }
    }

    #[test]
    fn a_block_serves_its_permits_then_asks_for_a_lease() {
        let now = Instant::now();
        let mut block = Block::default();
        assert_eq!(block.take(1_000, 3600), None);
        assert_eq!(
            block.install(grant(3600, 7, 3, 0), 3, 1_000, now),
            permit(5)
        );
        assert_eq!(block.take(1_000, 3600), Some(permit(6)));
        assert_eq!(block.take(1_000, 3600), Some(permit(7)));
        assert_eq!(block.take(1_000, 3600), None);
        // Used up within the second: the next lease is larger, up to a hundredth of the limit.
        assert_eq!(block.want(1_000, 3600, now), 6);
        assert_eq!(block.want(200, 3600, now), 2);
        // A changed limit or a new window needs a lease; a newer window's block serves a
        // replica whose clock lags.
        block.install(grant(7200, 2, 2, 0), 2, 10, now);
        assert_eq!(block.take(11, 7200), None);
        assert_eq!(block.take(10, 10_800), None);
        assert_eq!(
            block.take(10, 3600),
            Some(Hourly::Permit {
                position: 2,
                window_start: 7200
            })
        );
        // Refused: spent until the window ends, the first refusal told so once.
        let spent = block.install(grant(7200, 10, 0, 1), 2, 10, now);
        assert_eq!(
            spent,
            Hourly::Spent {
                window_start: 7200,
                first: true
            }
        );
        assert_eq!(
            block.take(10, 7200),
            Some(Hourly::Spent {
                window_start: 7200,
                first: false
            })
        );
        assert_eq!(block.take(10, 10_800), None);
    }

    #[test]
    fn a_failed_lease_lets_requests_through_for_a_while() {
        let budget = Budget::default();
        assert!(!budget.failing());
        budget.failed(Some(Instant::now()));
        assert!(budget.failing());
        budget.failed(Instant::now().checked_sub(LEASE_RETRY));
        assert!(!budget.failing());
    }

    #[test]
    fn the_burst_limiter_allows_the_burst_then_refuses_once_a_second() {
        let ledger = Ledger::default();
        let state = ledger.state("key_1", 2, 3600);
        assert_eq!(state.burst_excess(4000), None);
        assert_eq!(state.burst_excess(4000), None);
        assert_eq!(state.burst_excess(4000), Some(true));
        assert_eq!(state.burst_excess(4000), Some(false));
        // The same counters for the same key; a new burst limit keeps the hourly block.
        assert!(Arc::ptr_eq(&ledger.state("key_1", 2, 3600), &state));
        let changed = ledger.state("key_1", 5, 3600);
        assert!(Arc::ptr_eq(&changed.budget, &state.budget));
        assert_eq!(changed.burst_excess(4000), None);
    }
}
