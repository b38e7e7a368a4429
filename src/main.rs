//! The `agentplane` command: `serve` runs the API; `keys create` issues API keys.

use std::collections::BTreeSet;
use std::process::ExitCode;

use agentplane::server::{self, Config};
use agentplane_api::models::{Role, Scope};
use clap::{Parser, Subcommand};

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
        /// Connections in the database pool (default: twice the cores, at least 4).
        #[arg(long)]
        pool_size: Option<u32>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("AGENTPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AGENTPLANE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Command::Serve {
            listen,
            database,
            pool_size,
        } => serve(listen, database, pool_size).await,
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

async fn serve(listen: String, database: String, pool_size: Option<u32>) -> anyhow::Result<()> {
    let defaults = Config::default();
    let config = Config {
        listen,
        database_url: database,
        pool_size: pool_size.unwrap_or(defaults.pool_size),
    };
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

fn create_key(
    database: String,
    org: String,
    user: String,
    email: Option<String>,
    role: String,
    name: String,
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
    let secret = store.run_blocking(|conn| {
        use diesel::Connection;
        conn.transaction(|conn| {
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
