//! `agentplane mock`: a realistic, validating, stateful fake of any OpenAPI 3.0/3.1 API.
//!
//! Frontend teams build against it before the backend exists. It serves every operation of
//! a spec on one port; answers each with the operation's documented success response
//! (examples first, generated from the schema otherwise), or the response a Prism-style
//! `Prefer` header asks for; validates every request with the same
//! [`RequestValidator`](crate::validate::RequestValidator) the real server runs; answers a
//! broken request with the operation's own documented 400/422 response (RFC 7807 when it
//! documents none); speaks CORS; and, unlike Prism, can keep state (`--stateful`: what a
//! POST creates, a GET reads back). As a validation proxy (`--proxy`) it forwards to a real
//! server and judges both directions with the conformance checks.
//!
//! Everything costly happens at load ([`compile`]): schemas are compiled, static bodies and
//! headers rendered to bytes. A request costs a trie lookup, a validation and a copy, and
//! does not grow with the number of operations. When a spec file changes, the spec is
//! reloaded and swapped behind the same listener; a spec that no longer loads keeps the old
//! one serving.

pub mod answer;
pub mod compile;
pub mod proxy;
pub mod server;
pub mod state;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use poem::listener::{Acceptor, Listener, TcpListener};

pub use compile::MockSpec;

use crate::SpecError;

/// The default port, as Prism's.
pub const DEFAULT_PORT: u16 = 4010;

/// Latency added to every answer: fixed, or drawn from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub min: Duration,
    pub max: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "ms"), |i| (&text[..i], &text[i..]));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 50ms or 1s"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "us" | "µs" => value / 1_000_000.0,
        other => return Err(format!("unknown duration unit {other:?} (use ms or s)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

impl Delay {
    /// Parses `50ms`, `1s`, or a range `20ms..80ms` (also `20-80ms`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (lo, hi) = match text.split_once("..").or_else(|| text.split_once('-')) {
            Some((lo, hi)) => {
                let unit: String = hi
                    .chars()
                    .skip_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let lo = if lo.chars().all(|c| c.is_ascii_digit() || c == '.') {
                    format!("{lo}{unit}")
                } else {
                    lo.to_string()
                };
                (parse_duration(&lo)?, parse_duration(hi)?)
            }
            None => {
                let d = parse_duration(text)?;
                (d, d)
            }
        };
        if lo > hi {
            return Err(format!("the delay range {text:?} runs backwards"));
        }
        Ok(Self { min: lo, max: hi })
    }

    /// The delay for the `n`th request: spread over the range by a cheap hash of `n`.
    pub fn pick(&self, n: u64) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 31;
        let span = (self.max - self.min).as_micros() as u64;
        self.min + Duration::from_micros(x % (span + 1))
    }
}

/// How to run the mock.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// The spec file (YAML or JSON; may reference other files).
    pub spec: PathBuf,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Keep created resources in memory (`--stateful`).
    pub stateful: bool,
    /// Generate a fresh body per request unless `Prefer: dynamic=false`.
    pub dynamic: bool,
    /// Seed of dynamic generation.
    pub seed: u64,
    /// Forward to this server instead of mocking, validating both directions.
    pub proxy: Option<String>,
    /// In proxy mode, fail violating exchanges instead of reporting them.
    pub errors: bool,
    pub delay: Option<Delay>,
    pub cors: bool,
    /// Reload the spec when its files change.
    pub watch: bool,
    /// How often the spec files are checked for changes.
    pub watch_interval: Duration,
}

impl MockOptions {
    /// Defaults for `spec`: 127.0.0.1:4010, static, CORS on, watching.
    pub fn new(spec: impl Into<PathBuf>) -> Self {
        Self {
            spec: spec.into(),
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            stateful: false,
            dynamic: false,
            seed: 0,
            proxy: None,
            errors: false,
            delay: None,
            cors: true,
            watch: true,
            watch_interval: Duration::from_millis(300),
        }
    }
}

/// Why the mock cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

pub(crate) struct Shared {
    spec: RwLock<Arc<MockSpec>>,
    options: MockOptions,
    store: state::Store,
    /// Requests so far (spreads `--delay` over its range).
    counter: AtomicUsize,
    /// Dynamic bodies drawn so far (the index of the next draw for `--seed`).
    draws: AtomicUsize,
    client: reqwest::Client,
}

impl Shared {
    fn spec(&self) -> Arc<MockSpec> {
        self.spec
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A mock bound to its port, not yet serving.
pub struct Mock {
    shared: Arc<Shared>,
    acceptor: poem::listener::TcpAcceptor,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
}

/// Loads the spec and binds the listener.
pub async fn bind(options: MockOptions) -> Result<Mock, MockError> {
    if let Some(upstream) = &options.proxy
        && !(upstream.starts_with("http://") || upstream.starts_with("https://"))
    {
        return Err(MockError::Usage(format!(
            "--proxy wants an http(s) URL, got {upstream:?}"
        )));
    }
    let path = options.spec.clone();
    let spec = tokio::task::spawn_blocking(move || MockSpec::load(&path))
        .await
        .map_err(|e| MockError::Usage(format!("loading the spec failed: {e}")))??;
    let addr = format!("{}:{}", options.host, options.port);
    let acceptor = TcpListener::bind(addr.clone())
        .into_acceptor()
        .await
        .map_err(|source| MockError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| MockError::Listen {
            addr,
            source: std::io::Error::other("the listener has no address"),
        })?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| MockError::Usage(format!("cannot build the proxy client: {e}")))?;
    Ok(Mock {
        shared: Arc::new(Shared {
            spec: RwLock::new(Arc::new(spec)),
            options,
            store: state::Store::default(),
            counter: AtomicUsize::new(0),
            draws: AtomicUsize::new(0),
            client,
        }),
        acceptor,
        addr: bound,
    })
}

impl Mock {
    /// The start-up text: the mode and every operation with its URL.
    pub fn banner(&self) -> String {
        let spec = self.shared.spec();
        let o = &self.shared.options;
        let mode = match &o.proxy {
            Some(upstream) => format!(
                "validation proxy to {upstream}{}",
                if o.errors { ", violations fail" } else { "" }
            ),
            None => format!(
                "{}{}",
                if o.dynamic { "dynamic" } else { "static" },
                if o.stateful { ", stateful" } else { "" }
            ),
        };
        let mut out = format!(
            "agentplane mock: {} ({} operations compiled in {} ms; {mode}; CORS {}; {})\n",
            o.spec.display(),
            spec.len(),
            spec.load_time.as_millis(),
            if o.cors { "on" } else { "off" },
            if o.watch {
                "reloads on change"
            } else {
                "no reload"
            }
        );
        for (method, template) in &spec.listing {
            out.push_str(&format!("  {method:<7} http://{}{template}\n", self.addr));
        }
        out.push_str(&format!(
            "agentplane mock: listening on http://{}",
            self.addr
        ));
        out
    }

    /// Serves until `shutdown` resolves, reloading the spec on change when watching.
    pub async fn serve(
        self, shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let watcher = self
            .shared
            .options
            .watch
            .then(|| tokio::spawn(watch(self.shared.clone())));
        let endpoint = server::MockEndpoint {
            shared: self.shared.clone(),
        };
        let result = poem::Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(endpoint, shutdown, Some(Duration::from_secs(5)))
            .await;
        if let Some(w) = watcher {
            w.abort();
        }
        result
    }
}

fn stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Polls the spec's files and swaps in a freshly compiled spec when one changes.
async fn watch(shared: Arc<Shared>) {
    let mut files = shared.spec().files.clone();
    let mut seen = stamp(&files);
    loop {
        tokio::time::sleep(shared.options.watch_interval).await;
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let path = shared.options.spec.clone();
        match tokio::task::spawn_blocking(move || MockSpec::load(&path)).await {
            Ok(Ok(spec)) => {
                files = spec.files.clone();
                seen = stamp(&files);
                eprintln!(
                    "agentplane mock: reloaded {} ({} operations)",
                    shared.options.spec.display(),
                    spec.len()
                );
                *shared.spec.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(spec);
            }
            Ok(Err(e)) => {
                eprintln!("agentplane mock: reload failed, still serving the old spec: {e}")
            }
            Err(e) => eprintln!("agentplane mock: reload failed: {e}"),
        }
    }
}

/// Runs the command until Ctrl-C; returns the process exit code (0, or 2 when the spec or
/// the arguments are unusable).
pub async fn run_command(options: MockOptions) -> u8 {
    let mock = match bind(options).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("agentplane mock: {e}");
            return 2;
        }
    };
    println!("{}", mock.banner());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match mock.serve(shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agentplane mock: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delays() {
        let ms = Duration::from_millis;
        assert_eq!(
            Delay::parse("50ms"),
            Ok(Delay {
                min: ms(50),
                max: ms(50)
            })
        );
        assert_eq!(
            Delay::parse("1s"),
            Ok(Delay {
                min: ms(1000),
                max: ms(1000)
            })
        );
        assert_eq!(
            Delay::parse("20..80ms"),
            Ok(Delay {
                min: ms(20),
                max: ms(80)
            })
        );
        assert_eq!(
            Delay::parse("20-80ms"),
            Ok(Delay {
                min: ms(20),
                max: ms(80)
            })
        );
        assert_eq!(
            Delay::parse("20ms..1s"),
            Ok(Delay {
                min: ms(20),
                max: ms(1000)
            })
        );
        assert!(Delay::parse("80..20ms").is_err());
        assert!(Delay::parse("fast").is_err());
        let d = Delay::parse("10..20ms").expect("parses");
        assert!((0..100).all(|n| (ms(10)..=ms(20)).contains(&d.pick(n))));
    }
}
