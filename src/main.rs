//! The `agentplane` command: `serve` runs the API; `keys create` issues API keys;
//! `rotate-master-key` re-seals secrets at rest under a new key; `conform` contract-tests any
//! server against its OpenAPI spec; `mock` serves a fake of any spec.

use std::collections::BTreeSet;
use std::process::ExitCode;

use agentplane::server::{self, Config};
use agentplane_api::models::{Role, Scope};
use clap::{Parser, Subcommand};

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "agentplane",
    version,
    about = "The agentplane AI-agent platform API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (SQLite under ./data by default).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "AGENTPLANE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Database: a SQLite file path or URL, or postgres://user:pass@host/db.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "sqlite://./data/agentplane.db"
        )]
        database: String,
        /// Connections in the database pool (default: four per core, at least 8).
        #[arg(long)]
        pool_size: Option<u32>,
        /// The GitHub REST API that GitHub knowledge sources are synced from.
        #[arg(
            long,
            env = "AGENTPLANE_GITHUB_API_URL",
            default_value = "https://api.github.com"
        )]
        github_api_url: String,
        /// The master key for secrets at rest, base64 of 32 bytes (default: a key file).
        #[arg(long, env = "AGENTPLANE_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
        /// A file holding the master key (default: master.key in the data directory,
        /// generated 0600 at first start).
        #[arg(long)]
        master_key_file: Option<std::path::PathBuf>,
        /// Requests per hour an API key may make unless it has its own limit.
        #[arg(long, env = "AGENTPLANE_RATE_LIMIT_PER_HOUR", default_value_t = agentplane::ratelimit::Limits::default().requests_per_hour, value_parser = clap::value_parser!(i64).range(1..))]
        rate_limit_per_hour: i64,
        /// Requests per second (the burst limit) an API key may make unless it has its own.
        #[arg(long, env = "AGENTPLANE_RATE_LIMIT_BURST", default_value_t = agentplane::ratelimit::Limits::default().burst, value_parser = clap::value_parser!(i64).range(1..))]
        rate_limit_burst: i64,
        /// Failed authentications one client address may make in a minute before its requests
        /// with unknown keys are refused (429) until the minute ends; 0: never refused.
        #[arg(long, env = "AGENTPLANE_AUTH_FAILURES_PER_MINUTE", default_value_t = agentplane::security::failures::FailurePolicy::default().per_window)]
        auth_failures_per_minute: u32,
        /// Serve `/metrics` without an API key on a non-loopback address too.
        #[arg(long, env = "AGENTPLANE_METRICS_PUBLIC")]
        metrics_public: bool,
        /// Background jobs (executions) run at once by this server (default: 4 per core).
        #[arg(long, env = "AGENTPLANE_WORKERS")]
        workers: Option<usize>,
        /// The longest any call made on a tenant's behalf (API tool, webhook, source fetch,
        /// model endpoint) may take, in milliseconds, whatever the tenant configured.
        #[arg(long, env = "AGENTPLANE_EGRESS_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
        egress_timeout_ms: u64,
        /// What calls on a tenant's behalf may reach although the egress policy refuses it
        /// (loopback, private and link-local addresses): networks, addresses or host names,
        /// each with an optional port, comma-separated (`10.0.0.0/8,models.internal:8443`).
        #[arg(long, env = "AGENTPLANE_ALLOW_EGRESS", value_delimiter = ',', value_parser = parse_allowed)]
        allow_egress: Vec<agentplane::egress::Allowed>,
        /// The longest a client may take to send a request's head (line and headers), from
        /// its first byte: `10s`, `500ms`, `2m`.
        #[arg(long, env = "AGENTPLANE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        header_timeout: std::time::Duration,
        /// How long a keep-alive connection may wait for its next request.
        #[arg(long, env = "AGENTPLANE_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
        idle_timeout: std::time::Duration,
        /// The longest a client may take to send a request's body, from the end of its head.
        #[arg(long, env = "AGENTPLANE_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
        body_timeout: std::time::Duration,
        /// Client connections open at once; past it new ones wait in the listen queue.
        #[arg(long, env = "AGENTPLANE_MAX_CONNECTIONS", default_value_t = agentplane::server::ConnectionLimits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_connections: usize,
        /// Client connections open at once from one IP address (0: no bound); past it new
        /// ones are closed. Behind a proxy or load balancer, raise it or set 0.
        #[arg(long, env = "AGENTPLANE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = agentplane::server::ConnectionLimits::default().max_per_address)]
        max_connections_per_address: usize,
    },
    /// Contract-test a server against an OpenAPI spec (exit 0 passed, 1 failures, 2 usage).
    Conform(ConformArgs),
    /// Serve a validating, optionally stateful fake of any OpenAPI 3.0/3.1 spec (as Prism).
    Mock(MockArgs),
    /// Breaking changes between two OpenAPI specs (files, URLs or git:<rev>:<path>); exit 1
    /// when --fail-on finds one, 2 on bad arguments or an unloadable spec.
    Diff {
        /// The old spec: a file (YAML or JSON, may span files), an http(s) URL, or
        /// git:<rev>:<path>.
        old: String,
        /// The new spec, in the same forms.
        new: String,
        /// Output: text, json or markdown.
        #[arg(long)]
        format: Option<String>,
        /// Exit 1 when a change this bad is found: breaking, or potential (potentially
        /// breaking or worse).
        #[arg(long)]
        fail_on: Option<String>,
    },
    /// Re-encrypt every secret at rest under a new master key, in one transaction, then
    /// install the new key (stop the servers first; start them with the new key).
    RotateMasterKey(RotateArgs),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(clap::Args)]
struct ConformArgs {
    /// The spec: a file (YAML or JSON, may span files) or an http(s) URL.
    #[arg(long)]
    spec: String,
    /// The server's base URL (default: the spec URL's origin or its first server).
    #[arg(long)]
    url: Option<String>,
    /// A header sent with every request, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A header of a second identity (another tenant), `Name: value` (repeatable): it
    /// replaces the credentials for the `cross_tenant_isolation` check.
    #[arg(long = "other-header")]
    other_headers: Vec<String>,
    /// More headers, one `Name: value` per line.
    #[arg(long, env = "AGENTPLANE_CONFORM_HEADERS", hide_env_values = true)]
    env_headers: Option<String>,
    /// Seed for the generated data (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Generated requests per operation and phase.
    #[arg(long, default_value_t = 20)]
    max_examples: usize,
    /// Operations tested concurrently.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Comma-separated phases: examples, coverage, fuzzing, negative, stateful (default: all).
    #[arg(long, value_delimiter = ',')]
    phases: Vec<String>,
    /// Comma-separated check names (default: all).
    #[arg(long, value_delimiter = ',')]
    checks: Vec<String>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<std::path::PathBuf>,
    /// Write a JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Record every interaction here as a Schemathesis-compatible VCR cassette (YAML;
    /// credentials redacted).
    #[arg(long)]
    cassette: Option<std::path::PathBuf>,
    /// Write the coverage report here: JSON for a `.json` name, else a static HTML page
    /// (repeatable, one per format). Per operation: statuses observed and never observed,
    /// parameters and body properties sent, response properties seen, links followed.
    #[arg(long)]
    coverage: Vec<std::path::PathBuf>,
    /// Exit 1 when fewer than N percent of the documented (operation, status) pairs were
    /// observed.
    #[arg(long, value_name = "N")]
    min_coverage: Option<f64>,
    /// Fail the `max_response_time` check for every answer slower than MS milliseconds
    /// (off by default).
    #[arg(long, value_name = "MS")]
    max_response_time: Option<u64>,
    /// Re-send a failure's request(s) and re-run the checks: its id (printed beside it),
    /// read from the run's --cassette, or a cassette's path for every failure in it.
    #[arg(long, value_name = "ID|CASSETTE")]
    replay: Option<String>,
}

#[derive(clap::Args)]
struct RotateArgs {
    /// Database: a SQLite file path or URL, or postgres://user:pass@host/db.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://./data/agentplane.db"
    )]
    database: String,
    /// The current master key, base64 of 32 bytes (default: the key file).
    #[arg(long, env = "AGENTPLANE_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// The file holding the current master key (default: master.key in the data directory);
    /// it receives the new key unless `--new-key-file` is given.
    #[arg(long)]
    master_key_file: Option<std::path::PathBuf>,
    /// The new key: read from this file when it exists, else generated and written to it
    /// (mode 0600). Required when the current key comes from `AGENTPLANE_MASTER_KEY`.
    #[arg(long)]
    new_key_file: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct MockArgs {
    /// The spec: a YAML or JSON file (may reference other files).
    spec: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(short, long, default_value_t = conformance::mock::DEFAULT_PORT)]
    port: u16,
    /// Keep what POST creates in memory: reads, lists, updates and deletes see it.
    #[arg(long)]
    stateful: bool,
    /// Generate a fresh body for every request (as `Prefer: dynamic=true`).
    #[arg(short, long)]
    dynamic: bool,
    /// Seed of the dynamic generation (the same seed gives the same sequence of answers).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Forward every request to this server and validate both directions against the spec.
    #[arg(long, value_name = "UPSTREAM")]
    proxy: Option<String>,
    /// With --proxy: answer a violating request or response with an error instead of
    /// reporting it in the `sl-violations` header.
    #[arg(long, requires = "proxy")]
    errors: bool,
    /// Latency added to every answer: `50ms`, `1s`, or a range `20ms..80ms`.
    #[arg(long, value_parser = conformance::mock::Delay::parse)]
    delay: Option<conformance::mock::Delay>,
    /// Do not answer CORS preflights or add CORS headers.
    #[arg(long)]
    no_cors: bool,
    /// Do not reload the spec when its files change.
    #[arg(long)]
    no_watch: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key, creating its organization and user if needed, and print it once.
    Create {
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "sqlite://./data/agentplane.db"
        )]
        database: String,
        /// Organization name.
        #[arg(long, default_value = "default")]
        org: String,
        /// User name.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Email of a user created by this command.
        #[arg(long)]
        email: Option<String>,
        /// Role of a user created by this command: admin, member or viewer.
        #[arg(long, default_value = "admin")]
        role: String,
        /// What the key is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated scopes (default: all the role allows).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
}

/// A duration as `500ms`, `10s`, `2m` or plain seconds (`10`); at least a millisecond.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s or 2m"))?;
    let duration = match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{text}`: the unit is ms, s or m")),
    };
    if duration.is_zero() {
        return Err("a timeout of zero would close every connection".into());
    }
    Ok(duration)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("AGENTPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AGENTPLANE_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colour only for a terminal: a log file full of escape codes is hard to grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conform(args) => return ExitCode::from(conform(args).await),
        Command::Mock(args) => return ExitCode::from(mock(args).await),
        Command::Diff {
            old,
            new,
            format,
            fail_on,
        } => {
            let options = conformance::diff::CommandOptions {
                old,
                new,
                format,
                fail_on,
            };
            return ExitCode::from(conformance::diff::run_command(options).await);
        }
        Command::Serve {
            listen,
            database,
            pool_size,
            github_api_url,
            master_key,
            master_key_file,
            rate_limit_per_hour,
            rate_limit_burst,
            auth_failures_per_minute,
            workers,
            metrics_public,
            egress_timeout_ms,
            allow_egress,
            header_timeout,
            idle_timeout,
            body_timeout,
            max_connections,
            max_connections_per_address,
        } => {
            let mut jobs = agentplane::jobs::PoolConfig::default();
            if let Some(n) = workers {
                jobs.workers = n.max(1);
            }
            serve(Config {
                listen,
                database_url: database,
                pool_size: pool_size.unwrap_or(Config::default().pool_size),
                github_api_url,
                master_key,
                master_key_file,
                rate_limits: agentplane::ratelimit::Limits {
                    requests_per_hour: rate_limit_per_hour,
                    burst: rate_limit_burst,
                },
                jobs,
                metrics_public,
                egress: agentplane::egress::Policy {
                    max_time: std::time::Duration::from_millis(egress_timeout_ms),
                    allow: allow_egress,
                },
                connections: agentplane::server::ConnectionLimits {
                    header_timeout,
                    idle_timeout,
                    body_timeout,
                    max_connections,
                    max_per_address: max_connections_per_address,
                },
                auth_failures: agentplane::security::failures::FailurePolicy {
                    per_window: auth_failures_per_minute,
                    ..Default::default()
                },
                ..Config::default()
            })
            .await
        }
        Command::RotateMasterKey(args) => rotate_master_key(args),
        Command::Keys {
            command:
                KeysCommand::Create {
                    database,
                    org,
                    user,
                    email,
                    role,
                    name,
                    scopes,
                },
        } => create_key(database, org, user, email, role, name, scopes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentplane: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (bound, bootstrap) = server::bind(&config).await?;
    let shutdown = server::shutdown_signal();
    if let Some(secret) = bootstrap {
        // Printed once, on stdout only: the database keeps its hash.
        println!("Created the first admin API key (shown once, store it now):\n\n    {secret}\n");
    }
    println!(
        "agentplane listening on http://{}  (docs: http://{}/docs/)",
        bound.addr, bound.addr
    );
    tracing::info!(addr = %bound.addr, "listening");
    bound.serve(shutdown).await
}

async fn conform(args: ConformArgs) -> u8 {
    let mut headers = args.headers;
    headers.extend(
        args.env_headers
            .iter()
            .flat_map(|h| h.lines())
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string),
    );
    conformance::conform::run_command(conformance::conform::CommandOptions {
        spec: args.spec,
        url: args.url,
        headers,
        other_headers: args.other_headers,
        seed: args.seed,
        max_examples: args.max_examples,
        workers: args.workers,
        phases: args.phases,
        checks: args.checks,
        junit: args.junit,
        report: args.report,
        cassette: args.cassette,
        coverage: args.coverage,
        min_coverage: args.min_coverage,
        max_response_time: args.max_response_time,
        replay: args.replay,
    })
    .await
}

async fn mock(args: MockArgs) -> u8 {
    let mut options = conformance::mock::MockOptions::new(args.spec);
    options.host = args.host;
    options.port = args.port;
    options.stateful = args.stateful;
    options.dynamic = args.dynamic;
    options.seed = args.seed;
    options.proxy = args.proxy;
    options.errors = args.errors;
    options.delay = args.delay;
    options.cors = !args.no_cors;
    options.watch = !args.no_watch;
    conformance::mock::run_command(options).await
}

/// The master key secrets are sealed under now, and the file it was read from (`None` when
/// it came from `AGENTPLANE_MASTER_KEY`).
fn current_master_key(
    args: &RotateArgs, data_dir: &std::path::Path,
) -> anyhow::Result<(agentplane::crypto::Crypto, Option<std::path::PathBuf>)> {
    use agentplane::crypto::Crypto;
    let env_key = args.master_key.as_deref().filter(|k| !k.trim().is_empty());
    if let Some(text) = env_key {
        return Ok((Crypto::from_base64(text)?, None));
    }
    let path = args
        .master_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("master.key"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read the master key {}: {e}", path.display()))?;
    let key = Crypto::from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((key, Some(path)))
}

/// A staged key file and the key file it replaces once the rotation committed.
type Staged = (std::path::PathBuf, std::path::PathBuf);

/// The new master key (base64), on disk before the database changes: staged beside the
/// current `key_file` (to replace it after), or in `--new-key-file` (generated there when the
/// file does not exist, which is then returned to be removed if the rotation fails).
fn new_master_key(
    args: &RotateArgs, key_file: Option<&std::path::PathBuf>,
) -> anyhow::Result<(String, Option<Staged>, Option<std::path::PathBuf>)> {
    use agentplane::crypto::Crypto;
    match &args.new_key_file {
        Some(p) if p.exists() => Ok((std::fs::read_to_string(p)?.trim().to_string(), None, None)),
        Some(p) => {
            let text = Crypto::new_key_base64();
            Crypto::write_key_file(p, &text)?;
            Ok((text, None, Some(p.clone())))
        }
        None => {
            let Some(path) = key_file else {
                anyhow::bail!(
                    "the master key comes from AGENTPLANE_MASTER_KEY or --master-key: pass \
                     --new-key-file to receive the new key"
                );
            };
            let text = Crypto::new_key_base64();
            let staged = path.with_extension("key.new");
            let _ = std::fs::remove_file(&staged);
            Crypto::write_key_file(&staged, &text)?;
            Ok((text, Some((staged, path.clone())), None))
        }
    }
}

/// `agentplane rotate-master-key`: the new key is on disk before the database changes, and
/// takes the old key file's place only after the re-encryption committed.
fn rotate_master_key(args: RotateArgs) -> anyhow::Result<()> {
    use agentplane::crypto::Crypto;
    let data_dir = Config {
        database_url: args.database.clone(),
        ..Config::default()
    }
    .data_dir();
    let (old, key_file) = current_master_key(&args, &data_dir)?;
    let (new_text, staged, generated) = new_master_key(&args, key_file.as_ref())?;
    let new = Crypto::from_base64(&new_text)?;
    let store = agentplane::db::Store::open(&args.database, 1)?;
    let rotation = match store
        .run_blocking(|conn| agentplane::db::sealed::rotate_master_key(conn, &old, &new))
    {
        Ok(r) => r,
        Err(e) => {
            if let Some((staged, _)) = &staged {
                let _ = std::fs::remove_file(staged);
            }
            if let Some(p) = &generated {
                let _ = std::fs::remove_file(p);
            }
            anyhow::bail!("rotation failed, nothing was changed: {e}");
        }
    };
    for (column, n) in &rotation.columns {
        eprintln!(
            "re-encrypted {n} value(s) of {}.{}",
            column.table, column.column
        );
    }
    match (staged, &args.new_key_file) {
        (Some((staged, path)), _) => {
            std::fs::rename(&staged, &path).map_err(|e| {
                anyhow::anyhow!(
                    "the secrets are now sealed under the key in {} but it could not replace {}: {e}; move it there by hand",
                    staged.display(),
                    path.display()
                )
            })?;
            eprintln!("the new master key is in {}", path.display());
        }
        (None, Some(p)) => eprintln!(
            "the new master key is in {}; start the servers with it",
            p.display()
        ),
        (None, None) => {}
    }
    println!("rotated {} sealed value(s)", rotation.total());
    Ok(())
}

fn create_key(
    database: String, org: String, user: String, email: Option<String>, role: String, name: String,
    scopes: Vec<String>,
) -> anyhow::Result<()> {
    let role = Role::from_wire(&role)
        .ok_or_else(|| anyhow::anyhow!("--role must be admin, member or viewer"))?;
    let allowed = agentplane::auth::role_scopes(role);
    let scopes: BTreeSet<Scope> = if scopes.is_empty() {
        allowed
    } else {
        let mut parsed = BTreeSet::new();
        for s in &scopes {
            let scope =
                Scope::from_wire(s).ok_or_else(|| anyhow::anyhow!("unknown scope {s:?}"))?;
            anyhow::ensure!(
                allowed.contains(&scope),
                "the {} role cannot hold {s}",
                role.as_str()
            );
            parsed.insert(scope);
        }
        parsed
    };
    let store = agentplane::db::Store::open(&database, 1)?;
    let email = email.unwrap_or_else(|| format!("{user}@localhost"));
    // The write lock up front: a running server writes the same file, and a transaction that
    // reads, then writes, fails at once when the server wrote in between.
    let secret = store.run_blocking(|conn| {
        agentplane::db::write_transaction(conn, |conn| {
            let user = agentplane::auth::ensure_user(conn, &org, &user, &email, role)?;
            agentplane::auth::insert_key(conn, &user, &name, &scopes, None)
        })
    })?;
    println!("{}", secret.1);
    eprintln!(
        "created key {} for {user} in {org} (shown once)",
        secret.0.id
    );
    Ok(())
}

/// One `--allow-egress` entry.
fn parse_allowed(text: &str) -> Result<agentplane::egress::Allowed, String> {
    text.parse()
}
