//! What this replica has answered and what its process uses: the request counters a
//! middleware keeps, the process figures Linux's `/proc` gives, and both in Prometheus text
//! format for `/metrics`.

use std::sync::Arc;

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// Seconds of per-second counts kept for the recent rate.
const WINDOW: usize = 60;

/// Request counters, shared by the middlewares and the handlers. Cheap to clone.
///
/// Kept for the whole replica (`/metrics`, for operators) and per organization (what
/// `/v1/system/metrics` shows a tenant: its own requests, never the server's), by two
/// [`Track`] layers. Counting takes no lock shared by all requests: the replica's counters
/// are atomics, and an organization's are found in a sharded map by the organization the
/// rate-limit middleware already looked up.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    all: Counters,
    /// Per organization, at most [`MAX_ORGANIZATIONS`] of them.
    orgs: DashMap<String, Arc<Counters>>,
}

/// Organizations counted apart; requests of any further one count only server-wide.
const MAX_ORGANIZATIONS: usize = 100_000;

/// One set of counters (the replica's, or one organization's).
#[derive(Debug)]
struct Counters {
    total: AtomicU64,
    in_flight: AtomicU64,
    /// Answers by status class: 1xx..5xx at 0..4.
    classes: [AtomicU64; 5],
    /// One slot per second of the window: the second (high 32 bits) and the requests
    /// answered in it (low 32 bits), updated without a lock.
    recent: [AtomicU64; WINDOW],
}

/// A `recent` slot's second and count, packed.
fn slot(second: u64, count: u64) -> u64 {
    (second << 32) | (count & 0xffff_ffff)
}

/// A slot no second has used yet.
const EMPTY_SLOT: u64 = u64::MAX;

impl Counters {
    fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            classes: Default::default(),
            recent: std::array::from_fn(|_| AtomicU64::new(EMPTY_SLOT)),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer with `status` in second `now`.
    fn end(&self, status: u16, now: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let now = now & 0xffff_ffff;
        let cell = &self.recent[usize::try_from(now % WINDOW as u64).unwrap_or(0)];
        // A slot still holding an older second starts over at this one.
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            Some(if packed != EMPTY_SLOT && packed >> 32 == now {
                packed + 1
            } else {
                slot(now, 1)
            })
        });
    }

    fn figures(&self, now: u64) -> RequestFigures {
        let now = now & 0xffff_ffff;
        let last_minute = self
            .recent
            .iter()
            .map(|cell| cell.load(Ordering::Relaxed))
            .filter(|packed| *packed != EMPTY_SLOT)
            .filter(|packed| now.saturating_sub(packed >> 32) < WINDOW as u64)
            .map(|packed| packed & 0xffff_ffff)
            .sum();
        let by_class = (0..5)
            .map(|c| {
                (
                    format!("{}xx", c + 1),
                    self.classes[c].load(Ordering::Relaxed),
                )
            })
            .filter(|(name, n)| *n > 0 || name != "1xx")
            .collect();
        RequestFigures {
            total: self.total.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_minute,
            by_class,
        }
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot of the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFigures {
    pub total: u64,
    pub in_flight: u64,
    pub last_minute: u64,
    /// `(class, count)` for `2xx`.. `5xx` (and `1xx` when any).
    pub by_class: Vec<(String, u64)>,
}

impl RequestMetrics {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                all: Counters::new(),
                orgs: DashMap::new(),
            }),
        }
    }

    fn second(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    /// The counters of organization `org_id`, made on its first request.
    fn org(&self, org_id: &str) -> Option<Arc<Counters>> {
        if let Some(c) = self.inner.orgs.get(org_id) {
            return Some(c.clone());
        }
        if self.inner.orgs.len() >= MAX_ORGANIZATIONS {
            return None;
        }
        let entry = self.inner.orgs.entry(org_id.to_string());
        Some(entry.or_insert_with(|| Arc::new(Counters::new())).clone())
    }

    /// The replica's counters now (all organizations, and requests without a key).
    pub fn figures(&self) -> RequestFigures {
        self.inner.all.figures(self.second())
    }

    /// The counters of organization `org_id` now (zeros when it made no request here).
    pub fn org_figures(&self, org_id: &str) -> RequestFigures {
        let now = self.second();
        match self.inner.orgs.get(org_id).map(|c| c.clone()) {
            Some(c) => c.figures(now),
            None => Counters::new().figures(now),
        }
    }

    /// Seconds since the counters started (the server's uptime).
    pub fn uptime_seconds(&self) -> u64 {
        self.second()
    }
}

/// Which counters a [`Track`] middleware keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request and its answer's status, for the whole replica (the outermost layer).
    Replica,
    /// The request of the organization whose key it presents. Sits inside the rate-limit
    /// middleware, whose key lookup names the organization: requests that middleware refuses
    /// (429) count on the replica's counters only.
    Organization,
}

/// Counts requests and their answers' statuses in `.0`, for `.1`.
pub struct Track(pub RequestMetrics, pub Scope);

impl<E: Endpoint> Middleware<E> for Track {
    type Output = TrackEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        TrackEndpoint(ep, self.0.clone(), self.1)
    }
}

pub struct TrackEndpoint<E>(E, RequestMetrics, Scope);

impl<E: Endpoint> Endpoint for TrackEndpoint<E> {
    type Output = Response;

    // One `await` of the inner endpoint, in this function: a nested `async fn` taking the
    // request (a `count()` helper did) holds a second copy of it and of the inner future,
    // and the stack's future is kilobytes, moved whenever it is built.
    async fn call(&self, req: Request) -> poem::Result<Response> {
        let metrics = &self.1;
        let org;
        let counters = match self.2 {
            Scope::Replica => Some(&metrics.inner.all),
            Scope::Organization => {
                org = crate::auth::looked_up_org(&req).and_then(|org| metrics.org(org));
                org.as_deref()
            }
        };
        if let Some(counters) = counters {
            counters.begin();
        }
        let answer = self.0.call(req).await.map(IntoResponse::into_response);
        if let Some(counters) = counters {
            let status = match &answer {
                Ok(r) => r.status(),
                Err(e) => e.status(),
            };
            counters.end(status.as_u16(), metrics.second());
        }
        answer
    }
}

/// The process's CPU time (seconds) and resident memory (bytes), where `/proc` has them.
pub fn process_usage() -> (Option<f64>, Option<i64>) {
    (cpu_seconds(), rss_bytes())
}

/// Seconds since the process started (not the server: tests run several in one process).
pub fn process_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22, `starttime`, in ticks after boot.
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some((boot_uptime - start as f64 / 100.0).max(0.001))
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, at Linux's USER_HZ of 100 ticks a second.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_bytes(&status)
}

fn parse_rss_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The replica's figures in Prometheus text exposition format (version 0.0.4), encoded by
/// `prometheus-client`.
pub fn prometheus_text(
    requests: &RequestFigures, uptime_seconds: u64, process: (Option<f64>, Option<i64>),
    jobs_queued: i64, deliveries_pending: i64,
) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape {
        requests: requests.clone(),
        uptime_seconds,
        process,
        jobs_queued,
        deliveries_pending,
    }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// One scrape's figures, as the collector `prometheus-client` encodes: the values are
/// read once per scrape (from the counters, `/proc` and the database), so they are constants
/// here rather than live metrics.
#[derive(Debug)]
struct Scrape {
    requests: RequestFigures,
    uptime_seconds: u64,
    process: (Option<f64>, Option<i64>),
    jobs_queued: i64,
    deliveries_pending: i64,
}

/// Encodes one unlabelled gauge.
fn gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder, name: &str, help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    let g = prometheus_client::metrics::gauge::ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(
        &self, mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;

        // Counters are named without `_total`: the encoder adds it.
        let mut answered = encoder.encode_descriptor(
            "agentplane_http_requests",
            "Requests answered, by status class.",
            None,
            MetricType::Counter,
        )?;
        for (class, n) in &self.requests.by_class {
            let labels = [("class", class.as_str())];
            ConstCounter::new(*n).encode(answered.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "agentplane_http_requests_in_flight",
            "Requests being answered now.",
            self.requests.in_flight,
        )?;
        gauge(
            &mut encoder,
            "agentplane_uptime_seconds",
            "Seconds since the server started.",
            self.uptime_seconds,
        )?;
        if let Some(cpu) = self.process.0 {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                None,
                counter.metric_type(),
            )?)?;
        }
        if let Some(rss) = self.process.1 {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            )?;
        }
        gauge(
            &mut encoder,
            "agentplane_jobs_queued",
            "Jobs (executions) due and waiting for a worker, across every server.",
            self.jobs_queued,
        )?;
        gauge(
            &mut encoder,
            "agentplane_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered nor given up.",
            self.deliveries_pending,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_parse_even_with_spaces_in_the_command() {
        let stat =
            "1234 (agent plane) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        let status = "Name:\tagentplane\nVmRSS:\t   48234 kB\nThreads:\t9\n";
        assert_eq!(parse_rss_bytes(status), Some(48234 * 1024));
        assert_eq!(parse_rss_bytes("Name: x\n"), None);
    }

    #[test]
    fn counters_count_answers_by_class_and_recent_second() {
        let m = RequestMetrics::new();
        for status in [200, 201, 404, 503] {
            m.inner.all.begin();
            m.inner.all.end(status, m.second());
        }
        m.inner.all.begin();
        let f = m.figures();
        assert_eq!((f.total, f.in_flight, f.last_minute), (4, 1, 4));
        let class = |c: &str| f.by_class.iter().find(|(n, _)| n == c).map(|(_, n)| *n);
        assert_eq!(
            (class("2xx"), class("4xx"), class("5xx"), class("1xx")),
            (Some(2), Some(1), Some(1), None)
        );
        let text = prometheus_text(&f, 7, (Some(1.5), Some(1024)), 2, 3);
        assert!(
            text.contains("agentplane_http_requests_total{class=\"2xx\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("process_cpu_seconds_total 1.5\n"));
        assert!(text.contains("agentplane_jobs_queued 2\n"));
        assert!(text.contains("# TYPE agentplane_http_requests_in_flight gauge\n"));
        assert!(text.contains(
            "# HELP agentplane_http_requests_total Requests answered, by status class.\n\
             # TYPE agentplane_http_requests_total counter\n"
        ));
        assert!(text.contains("process_resident_memory_bytes 1024\n"));
        assert!(text.contains("agentplane_uptime_seconds 7\n"));
        assert!(text.contains("agentplane_webhook_deliveries_pending 3\n"));
    }
}
