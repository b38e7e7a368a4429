//! Failed authentications, counted in memory per source address so that a flood of bad keys
//! costs nothing durable: the first failure of a source in a window is recorded as a security
//! event at once (with its reason, like any other), the rest of that window are summed into
//! one `authentication_failed` event when the window ends; and a source past
//! [`FailurePolicy::per_window`] failures is refused (429) before its key is looked up.
//!
//! The source is the peer address of the connection: behind a reverse proxy every client
//! shares the proxy's, so raise the limit (or turn it off with 0) there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Event, EventType, Severity};
use crate::db::Store;

/// How failed authentications are counted and throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures one source may make in a window before its requests with unknown keys are
    /// refused until the window ends; 0 turns the refusal off (failures are still summed).
    pub per_window: u32,
    /// The window: a minute.
    pub window: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            per_window: 60,
            window: Duration::from_secs(60),
        }
    }
}

/// Sources tracked at once; failures of further sources in a window share one bucket.
const MAX_SOURCES: usize = 10_000;
/// Distinct key prefixes a summary names at most.
const MAX_PREFIXES: usize = 5;

/// A source's failures in the current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    started_at: String,
    /// Failures (and refusals) in the window, the first (recorded at once) included.
    failures: u64,
    /// What is not recorded yet, summed into one event when the window ends.
    pending: Pending,
}

#[derive(Debug, Default)]
struct Pending {
    count: u64,
    /// The organization the failed keys belonged to, when every one named the same.
    org: Option<Option<String>>,
    prefixes: BTreeSet<String>,
    reasons: BTreeMap<String, u64>,
}

impl Pending {
    fn add(&mut self, org: Option<&str>, prefix: Option<String>, reason: &str) {
        self.count += 1;
        let org = org.map(str::to_string);
        self.org = match self.org.take() {
            None => Some(org),
            Some(same) if same == org => Some(same),
            Some(_) => Some(None),
        };
        if let Some(p) = prefix
            && self.prefixes.len() < MAX_PREFIXES
        {
            self.prefixes.insert(p);
        }
        *self.reasons.entry(reason.to_string()).or_default() += 1;
    }
}

/// A summary owed to the security log.
#[derive(Debug)]
struct Summary {
    source: String,
    org: Option<String>,
    started_at: String,
    pending: Pending,
}

impl Summary {
    fn event(self) -> (Option<String>, Event) {
        let Pending {
            count,
            prefixes,
            reasons,
            ..
        } = self.pending;
        let event = Event::new(
            EventType::AuthenticationFailed,
            Severity::Medium,
            format!(
                "{count} more failed authentications from {} in the window from {}",
                self.source, self.started_at
            ),
        )
        .details(json!({
            "count": count,
            "source": self.source,
            "window_start": self.started_at,
            "key_prefixes": prefixes,
            "reasons": reasons,
        }));
        (self.org, event)
    }
}

/// The per-source counts, shared by every request of the replica.
#[derive(Debug, Clone)]
pub struct FailedAuth {
    policy: FailurePolicy,
    store: Store,
    sources: Arc<Mutex<HashMap<Option<IpAddr>, Window>>>,
    /// Windows at or past the limit: while none is, [`FailedAuth::wait`] answers without
    /// taking the lock (it runs on every request).
    over: Arc<AtomicUsize>,
}

/// What [`FailedAuth::failed`] decided about one failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its window: record it as an event now.
    Record,
    /// Counted for the window's summary.
    Counted,
}

impl FailedAuth {
    pub fn new(store: Store, policy: FailurePolicy) -> Self {
        Self {
            policy,
            store,
            sources: Arc::default(),
            over: Arc::default(),
        }
    }

    /// Counts a failure of `source` (a key of organization `org`, if known, starting with
    /// `prefix`): whether to record it now or leave it to the window's summary.
    pub fn failed(
        &self, source: Option<IpAddr>, org: Option<&str>, prefix: Option<String>, reason: &str,
    ) -> Verdict {
        let due = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            let due = self.take_ended(&mut sources, Instant::now());
            let key = if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
                None
            } else {
                source
            };
            let window = sources.entry(key).or_insert_with(|| Window {
                started: Instant::now(),
                started_at: crate::ids::now(),
                failures: 0,
                pending: Pending::default(),
            });
            window.failures += 1;
            if self.policy.per_window > 0 && window.failures == u64::from(self.policy.per_window) {
                self.over.fetch_add(1, Ordering::Relaxed);
            }
            let verdict = if window.failures == 1 {
                Verdict::Record
            } else {
                window.pending.add(org, prefix, reason);
                Verdict::Counted
            };
            (due, verdict)
        };
        let (due, verdict) = due;
        self.write(due);
        verdict
    }

    /// Seconds until `source` may try keys again, when it has failed too often in its window.
    pub fn wait(&self, source: Option<IpAddr>) -> Option<u64> {
        if self.policy.per_window == 0 || self.over.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let window = sources.get(&source)?;
        let elapsed = window.started.elapsed();
        if window.failures < u64::from(self.policy.per_window) || elapsed >= self.policy.window {
            return None;
        }
        let left = self.policy.window.saturating_sub(elapsed);
        Some(left.as_secs().max(1))
    }

    /// Counts a request of `source` refused for its failures, for the window's summary.
    pub fn refused(&self, source: Option<IpAddr>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = sources.get_mut(&source) {
            window.failures += 1;
            window
                .pending
                .add(None, None, "too many failed authentications");
        }
    }

    /// Writes the summaries of every window that has ended (the flusher calls it once a
    /// window, so counts are never held longer while the server is idle).
    pub fn flush(&self) {
        let due = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            self.take_ended(&mut sources, Instant::now())
        };
        self.write(due);
    }

    /// Flushes once a window until `stopped` turns true, then a last time.
    pub async fn run(self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.policy.window.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = stopped.changed() => break,
            }
        }
        self.flush();
    }

    /// Removes the windows that ended by `now`, returning the summaries they owe.
    fn take_ended(
        &self, sources: &mut HashMap<Option<IpAddr>, Window>, now: Instant,
    ) -> Vec<Summary> {
        let window = self.policy.window;
        let ended: Vec<Option<IpAddr>> = sources
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) >= window)
            .map(|(k, _)| *k)
            .collect();
        ended
            .into_iter()
            .filter_map(|k| {
                let w = sources.remove(&k)?;
                if self.policy.per_window > 0 && w.failures >= u64::from(self.policy.per_window) {
                    self.over.fetch_sub(1, Ordering::Relaxed);
                }
                (w.pending.count > 0).then(|| Summary {
                    source: k.map_or_else(|| "other sources".to_string(), |ip| ip.to_string()),
                    org: w.pending.org.clone().flatten(),
                    started_at: w.started_at,
                    pending: w.pending,
                })
            })
            .collect()
    }

    /// Records the summaries, off the request path.
    fn write(&self, due: Vec<Summary>) {
        if due.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            for summary in due {
                let (org, event) = summary.event();
                super::record_detached(&store, org, event).await;
            }
        });
    }
}

/// The first characters of a presented secret, enough to tell keys apart in a summary and
/// never enough to use one.
pub fn prefix_of(secret: &str) -> String {
    secret.chars().take(7).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(per_window: u32, window: Duration) -> FailedAuth {
        let store = Store::open(":memory:", 1).expect("an in-memory store");
        FailedAuth::new(store, FailurePolicy { per_window, window })
    }

    #[tokio::test]
    async fn the_first_failure_is_recorded_the_rest_summed_and_the_source_throttled() {
        let f = failures(3, Duration::from_secs(60));
        let ip: Option<IpAddr> = "10.0.0.1".parse().ok();
        let other: Option<IpAddr> = "10.0.0.2".parse().ok();
        assert_eq!(
            f.failed(ip, None, Some("ap_aaaa".into()), "unknown API key"),
            Verdict::Record
        );
        assert_eq!(f.wait(ip), None);
        for _ in 0..2 {
            assert_eq!(
                f.failed(ip, None, Some("ap_bbbb".into()), "unknown API key"),
                Verdict::Counted
            );
        }
        let wait = f.wait(ip).expect("throttled after 3 failures");
        f.refused(ip);
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(f.wait(other), None, "another source is not");
        assert_eq!(
            f.failed(other, None, None, "unknown API key"),
            Verdict::Record
        );

        let mut sources = f.sources.lock().expect("lock");
        let later = Instant::now() + Duration::from_secs(61);
        let mut due = f.take_ended(&mut sources, later);
        assert_eq!(
            due.len(),
            1,
            "only the source with more than its first failure owes one"
        );
        let (org, event) = due.remove(0).event();
        assert_eq!(org, None);
        let details = &event.0.details.0;
        assert_eq!(
            details["count"], 3,
            "two failures and one refusal: {details}"
        );
        assert_eq!(details["key_prefixes"], json!(["ap_bbbb"]));
        assert_eq!(details["reasons"]["unknown API key"], 2);
        assert!(sources.is_empty(), "ended windows are forgotten");
        assert_eq!(f.over.load(Ordering::Relaxed), 0, "and no longer throttle");
    }

    #[tokio::test]
    async fn zero_turns_the_refusal_off_and_sources_stay_bounded() {
        let f = failures(0, Duration::from_secs(60));
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let ip = Some(IpAddr::from(i.to_be_bytes()));
            f.failed(ip, Some("org_1"), None, "revoked API key");
            assert_eq!(f.wait(ip), None);
        }
        let sources = f.sources.lock().expect("lock");
        assert!(sources.len() <= MAX_SOURCES + 1, "{}", sources.len());
        let shared = sources.get(&None).expect("the overflow bucket");
        assert_eq!(shared.failures, 50);
        assert_eq!(shared.pending.org, Some(Some("org_1".to_string())));
    }
}
