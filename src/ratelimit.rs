//! Rate limits per API key: an hourly window limit and a one-second burst limit.
//!
//! Counted in the database ([`crate::db::ratelimit`]), one upsert per request, so replicas
//! sharing a PostgreSQL enforce one limit between them. Every authenticated `/v1` response
//! carries `X-RateLimit-Limit`, `-Remaining`, `-Reset` and `-Window` of the hourly window; a
//! request past either limit answers 429 with `Retry-After` in the error envelope. When the
//! counters cannot be reached the request goes through (an outage of the limiter must not
//! become an outage of the API); the authentication that follows reports the database.

use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::auth::Keys;
use crate::db::Store;
use crate::error::{Kind, envelope};
use crate::http::RequestId;

/// Seconds in the window of the window limit.
pub const WINDOW_SECONDS: i64 = 3600;

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

/// Judges a request from the counts after it.
pub fn judge(limits: Limits, counts: crate::db::ratelimit::Counts, now: i64) -> Verdict {
    let reset = counts.window_start + WINDOW_SECONDS;
    let remaining = (limits.requests_per_hour - counts.window_count).max(0);
    let (exceeded, retry_after, first_excess) = if counts.window_count > limits.requests_per_hour {
        (
            Some("window"),
            Some((reset - now).max(1)),
            counts.window_count == limits.requests_per_hour + 1,
        )
    } else if counts.burst_count > limits.burst {
        (
            Some("burst"),
            Some(1),
            counts.burst_count == limits.burst + 1,
        )
    } else {
        (None, None, false)
    };
    Verdict {
        limit: limits.requests_per_hour,
        remaining,
        reset,
        retry_after,
        exceeded,
        first_excess,
    }
}

/// The middleware: looks up the request's key, counts the request and answers 429 past a
/// limit; `limits` apply to keys that have none of their own.
#[derive(Clone)]
pub struct RateLimit {
    pub keys: Keys,
    pub store: Store,
    pub limits: Limits,
}

impl<E: Endpoint> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RateLimitEndpoint {
            inner: ep,
            limiter: self.clone(),
        }
    }
}

impl RateLimit {
    /// Counts the request against its API key's limits: `None` when no live key is presented
    /// (authentication answers that) or the counters cannot be reached.
    async fn check(&self, req: &poem::Request) -> Option<Verdict> {
        let record = self.keys.live(req).await?;
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let limits = Limits {
            requests_per_hour: record
                .rate_limit_per_hour
                .unwrap_or(self.limits.requests_per_hour),
            burst: record.rate_limit_burst.unwrap_or(self.limits.burst),
        };
        let now = chrono::Utc::now().timestamp();
        let window_start = now - now.rem_euclid(WINDOW_SECONDS);
        let key_id = record.key_id.clone();
        let counts = match self
            .store
            .run(move |conn| crate::db::ratelimit::hit(conn, &key_id, window_start, now))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit counters unavailable; not limiting");
                return None;
            }
        };
        let verdict = judge(limits, counts, now);
        if verdict.first_excess {
            use crate::security::{Event, EventType, Severity};
            let which = verdict.exceeded.unwrap_or("window");
            tracing::warn!(key_id = %record.key_id, limit = which, "rate limit exceeded");
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
}

pub struct RateLimitEndpoint<E> {
    inner: E,
    limiter: RateLimit,
}

fn set(resp: &mut Response, name: &'static str, value: i64) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

impl<E: Endpoint> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if !req.uri().path().starts_with("/v1/") {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let verdict = match self.limiter.check(&req).await {
            Some(v) => v,
            None => return self.inner.call(req).await.map(IntoResponse::into_response),
        };
        let mut resp = match verdict.retry_after {
            Some(wait) => {
                let rid = req
                    .extensions()
                    .get::<RequestId>()
                    .map(|r| r.0.clone())
                    .unwrap_or_default();
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
                set(&mut resp, "retry-after", wait);
                resp
            }
            None => self.inner.call(req).await?.into_response(),
        };
        set(&mut resp, "x-ratelimit-limit", verdict.limit);
        set(&mut resp, "x-ratelimit-remaining", verdict.remaining);
        set(&mut resp, "x-ratelimit-reset", verdict.reset);
        set(&mut resp, "x-ratelimit-window", WINDOW_SECONDS);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ratelimit::Counts;

    fn counts(window_count: i64, burst_count: i64) -> Counts {
        Counts {
            window_start: 3600,
            window_count,
            burst_start: 4000,
            burst_count,
        }
    }

    #[test]
    fn window_and_burst_limits() {
        let limits = Limits {
            requests_per_hour: 10,
            burst: 3,
        };
        let ok = judge(limits, counts(4, 3), 4000);
        assert_eq!((ok.remaining, ok.reset, ok.retry_after), (6, 7200, None));
        let burst = judge(limits, counts(5, 4), 4000);
        assert_eq!(
            (burst.exceeded, burst.retry_after),
            (Some("burst"), Some(1))
        );
        assert!(burst.first_excess);
        assert!(!judge(limits, counts(6, 5), 4000).first_excess);
        let window = judge(limits, counts(11, 1), 4000);
        assert_eq!(window.exceeded, Some("window"));
        assert_eq!((window.remaining, window.retry_after), (0, Some(3200)));
    }
}
