//! Webhook deliveries: signing, and the worker that drains the outbox.
//!
//! Every delivery is a row of `webhook_deliveries` (see [`crate::events::publish`]). A
//! [`DeliveryWorker`] runs in every replica: it claims due rows under a lease, POSTs the
//! event's JSON, and records the outcome; a failure (connection error, timeout, non-2xx) is
//! retried with exponential backoff and jitter until [`crate::events::MAX_ATTEMPTS`], then the
//! delivery is `failed`. A replica that dies mid-attempt leaves a lease that expires and is
//! claimed again, so deliveries are at least once: receivers deduplicate by
//! `X-Agentplane-Delivery`.
//!
//! Each request carries:
//! - `X-Agentplane-Event`: the event type;
//! - `X-Agentplane-Delivery`: the delivery id (stable across retries);
//! - `X-Agentplane-Timestamp`: Unix seconds when the attempt was signed;
//! - `X-Agentplane-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use crate::egress::EgressError;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::json;
use sha2::Sha256;

use crate::crypto::Crypto;
use crate::db::events::{self as events_db, EventRow};
use crate::db::webhooks::{self as store, AttemptOutcome, AttemptRow, DeliveryRow};
use crate::db::{DbConnection, Store, StoreError, StoreResult};
use crate::events::{EventBus, MAX_ATTEMPTS};

pub const EVENT_HEADER: &str = "X-Agentplane-Event";
pub const DELIVERY_HEADER: &str = "X-Agentplane-Delivery";
pub const TIMESTAMP_HEADER: &str = "X-Agentplane-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Agentplane-Signature";

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_header` (`v1=<hex>`, possibly several, comma-separated) holds a valid
/// signature of `timestamp` and `body` under `secret`. Compares in constant time. Receivers
/// should also refuse timestamps far from their clock (replays).
pub fn verify_signature(
    secret: &[u8], timestamp: &str, body: &[u8], signature_header: &str,
) -> bool {
    signature_header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h).ok())
        .any(|given| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(&given).is_ok()
        })
}

/// A new random signing secret, `whsec_` and 32 base-62 characters.
pub fn generate_secret() -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect();
    format!("whsec_{body}")
}

/// Queues `event` for a one-off target outside any subscription (a simulation's
/// `notification_webhook`), in the caller's transaction, signed with `secret` (sealed here).
/// Call [`EventBus::wake`] after the commit.
pub fn enqueue_adhoc(
    conn: &mut DbConnection, crypto: &Crypto, event: &EventRow, url: &str, secret: &str,
) -> StoreResult<DeliveryRow> {
    let target = json!({"url": url, "secret_encrypted": crypto.encrypt(secret.as_bytes())});
    let row = crate::events::new_delivery(event, None, Some(target.to_string()));
    store::insert_delivery(conn, &row)?;
    Ok(row)
}

/// How deliveries are attempted.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// The wait before the second attempt; each later wait doubles (with ±25 % jitter).
    pub base_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How long a claimed delivery stays leased (longer than `timeout`); after that another
    /// worker takes it over.
    pub lease: Duration,
    /// How often the outbox is polled when nothing wakes the worker (other replicas' events,
    /// retries coming due).
    pub poll: Duration,
    /// Attempts in flight at most.
    pub concurrency: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

impl DeliveryPolicy {
    /// The wait after the `attempts`-th failed attempt.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let base = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max_backoff);
        base.mul_f64(rand::rng().random_range(0.75..1.25))
    }
}

fn later(d: Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::seconds(3600));
    crate::ids::format_time(chrono::Utc::now() + d)
}

/// Drains the outbox; one per replica.
#[derive(Debug, Clone)]
pub struct DeliveryWorker {
    store: Store,
    crypto: Crypto,
    bus: EventBus,
    /// Deliveries go out through the operator's egress policy.
    egress: crate::egress::Egress,
    policy: DeliveryPolicy,
    /// This worker's lease owner name.
    owner: String,
}

/// Where and how one attempt is sent.
struct Target {
    url: String,
    secret: Vec<u8>,
}

impl DeliveryWorker {
    pub fn new(
        store: Store, crypto: Crypto, bus: EventBus, policy: DeliveryPolicy,
        egress: crate::egress::Egress,
    ) -> Self {
        Self {
            store,
            crypto,
            bus,
            egress,
            policy,
            owner: crate::ids::new_id("worker"),
        }
    }

    /// Runs until `shutdown` turns true; then waits for the attempts in flight (up to the
    /// timeout) and gives back the leases of any left.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut wake = self.bus.subscribe();
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let room = self.policy.concurrency.saturating_sub(in_flight.len());
            if room > 0 {
                match self.claim(room).await {
                    Ok(rows) => {
                        for row in rows {
                            let worker = self.clone();
                            in_flight.spawn(async move { worker.attempt(row).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
                }
            }
            let wait = self.policy.poll;
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(self.policy.timeout, drain)
            .await
            .is_err()
        {
            in_flight.abort_all();
        }
        let (owner, now) = (self.owner.clone(), crate::ids::now());
        if let Err(e) = self
            .store
            .run(move |conn| store::release_leases(conn, &owner, &now))
            .await
        {
            tracing::warn!(error = %e, "cannot release webhook delivery leases");
        }
    }

    async fn claim(&self, limit: usize) -> StoreResult<Vec<DeliveryRow>> {
        let owner = self.owner.clone();
        let lease = later(self.policy.lease);
        let limit = i64::try_from(limit).unwrap_or(16);
        self.store
            .run(move |conn| store::claim_due(conn, &owner, &crate::ids::now(), &lease, limit))
            .await
    }

    /// Where the delivery goes and the secret to sign with.
    fn target(
        &self, conn: &mut DbConnection, row: &DeliveryRow,
    ) -> StoreResult<Result<Target, String>> {
        let (url, sealed) = match (&row.webhook_id, &row.target) {
            (Some(id), _) => {
                let hook = store::get(conn, &row.org_id, id)?;
                (hook.content.url, hook.content.secret_encrypted)
            }
            (None, Some(target)) => {
                let v: serde_json::Value = serde_json::from_str(target)
                    .map_err(|e| StoreError::Corrupt(format!("delivery {}: {e}", row.id)))?;
                match (v["url"].as_str(), v["secret_encrypted"].as_str()) {
                    (Some(u), Some(s)) => (u.to_string(), s.to_string()),
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "delivery {}: a target without url or secret",
                            row.id
                        )));
                    }
                }
            }
            (None, None) => {
                return Err(StoreError::Corrupt(format!(
                    "delivery {} has no target",
                    row.id
                )));
            }
        };
        Ok(match self.crypto.decrypt(&sealed) {
            Ok(secret) => Ok(Target { url, secret }),
            Err(e) => Err(format!("the signing secret cannot be opened: {e}")),
        })
    }

    /// One attempt of one claimed delivery, and its outcome recorded.
    async fn attempt(&self, row: DeliveryRow) {
        let worker = self.clone();
        let loaded = {
            let row = row.clone();
            self.store
                .run(move |conn| {
                    let event = events_db::by_id(conn, &row.event_id)?;
                    let target = worker.target(conn, &row)?;
                    Ok((event, target))
                })
                .await
        };
        let started = std::time::Instant::now();
        let (status, error) = match loaded {
            Ok((event, Ok(target))) => self.send(&row, &event, &target).await,
            Ok((_, Err(reason))) => (None, Some(reason)),
            // The webhook or event is gone (its delivery goes with it), or the database is
            // down: the lease runs out and the row, if still there, is tried again.
            Err(e) => {
                tracing::warn!(delivery = %row.id, error = %e, "cannot load a webhook delivery");
                return;
            }
        };
        let now = crate::ids::now();
        let attempt = AttemptRow {
            delivery_id: row.id.clone(),
            attempt: row.attempts,
            org_id: row.org_id.clone(),
            started_at: row.last_attempt_at.clone().unwrap_or_else(|| now.clone()),
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            response_status: status,
            error: error.clone(),
        };
        let succeeded = status.is_some_and(|s| (200..300).contains(&s));
        let outcome = if succeeded {
            AttemptOutcome {
                attempt,
                response_status: status,
                error: None,
                status: store::SUCCEEDED,
                next_attempt_at: None,
                completed_at: Some(now),
            }
        } else if row.attempts >= MAX_ATTEMPTS {
            AttemptOutcome {
                attempt,
                response_status: status,
                error,
                status: store::FAILED,
                next_attempt_at: None,
                completed_at: Some(now),
            }
        } else {
            AttemptOutcome {
                attempt,
                response_status: status,
                error,
                status: store::PENDING,
                next_attempt_at: Some(later(self.policy.backoff(row.attempts))),
                completed_at: None,
            }
        };
        let (id, owner) = (row.id.clone(), self.owner.clone());
        match self
            .store
            .run(move |conn| store::finish_attempt(conn, &id, &owner, &outcome))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(delivery = %row.id, "a webhook delivery's lease was taken over")
            }
            Err(e) => {
                tracing::warn!(delivery = %row.id, error = %e, "cannot record a webhook attempt")
            }
        }
    }

    /// POSTs the event; the receiver's status, or why there is none, and what was wrong.
    async fn send(
        &self, row: &DeliveryRow, event: &EventRow, target: &Target,
    ) -> (Option<i64>, Option<String>) {
        let body = crate::events::to_json(event).to_string();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = format!("v1={}", sign(&target.secret, &timestamp, body.as_bytes()));
        let Ok(url) = url::Url::parse(&target.url) else {
            return (None, Some("the webhook URL is not valid".to_string()));
        };
        let request = self
            .egress
            .request(reqwest::Method::POST, url)
            .header("content-type", "application/json")
            .header(EVENT_HEADER, &event.event_type)
            .header(DELIVERY_HEADER, &row.id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(body);
        let sent = self.egress.send_once(request, self.policy.timeout).await;
        match sent {
            Ok(resp) => {
                let status = i64::from(resp.status().as_u16());
                if resp.status().is_success() {
                    (Some(status), None)
                } else {
                    (
                        Some(status),
                        Some(format!("the receiver answered {status}")),
                    )
                }
            }
            Err(EgressError::TimedOut(_)) => (
                None,
                Some(format!(
                    "no answer within {} ms",
                    self.policy.timeout.as_millis()
                )),
            ),
            Err(EgressError::Connect(_)) => (None, Some("the connection was refused".to_string())),
            Err(EgressError::Invalid(_)) => {
                (None, Some("the webhook URL is not valid".to_string()))
            }
            Err(EgressError::Refused(why)) => (None, Some(why)),
            Err(_) => (None, Some("the request failed".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_wrong_secrets_or_bodies_do_not() {
        let sig = format!("v1={}", sign(b"whsec_abc", "1700000000", b"{\"a\":1}"));
        assert!(verify_signature(
            b"whsec_abc",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_signature(
            b"whsec_abd",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_signature(
            b"whsec_abc",
            "1700000001",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_signature(
            b"whsec_abc",
            "1700000000",
            b"{\"a\":2}",
            &sig
        ));
        assert!(verify_signature(
            b"whsec_abc",
            "1700000000",
            b"{\"a\":1}",
            &format!("v1=00, {sig}")
        ));
        assert!(!verify_signature(
            b"whsec_abc",
            "1700000000",
            b"{\"a\":1}",
            "v1=zz"
        ));
    }

    #[test]
    fn a_known_vector_matches_rfc_4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our framing is "<timestamp>.<body>".
        assert_eq!(sign(b"Jefe", "what do ya want", b"for nothing?").len(), 64);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = DeliveryPolicy {
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(100),
            ..DeliveryPolicy::default()
        };
        let first = p.backoff(1).as_secs_f64();
        assert!((7.5..=12.5).contains(&first), "{first}");
        let third = p.backoff(3).as_secs_f64();
        assert!((30.0..=50.0).contains(&third), "{third}");
        let capped = p.backoff(40).as_secs_f64();
        assert!((75.0..=125.0).contains(&capped), "{capped}");
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with("whsec_") && a.len() == 38 && a != b);
    }
}
