//! The command line: `serve`, admin helpers and `healthcheck`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use std::io::IsTerminal;

use crate::config::{Config, DEFAULT_CONFIG_PATH, StorageBackend};
use crate::store::{SqlStore, Stores};

/// MaiRust mail engine.
#[derive(Debug, Parser)]
#[command(name = "mairust", version, about)]
pub struct Cli {
    /// Configuration file (default /etc/mairust/config.yaml if present).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server with the roles in `server.roles`.
    Serve,
    /// Manage hosted domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Exit 0 if the local server's /health/ready answers 200 (for images without curl).
    Healthcheck {
        /// Address to probe; default 127.0.0.1 on server.api_port.
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Validate the configuration and print it.
    CheckConfig,
    /// Export or import the metadata database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Move message bodies between blob backends.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Master key for encryption at rest.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `mairust db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Write the configured database to a portable dump (consistent while the server runs).
    Export {
        /// New directory for the dump.
        #[arg(long)]
        output: PathBuf,
    },
    /// Load a dump into an empty database.
    Import {
        /// The dump directory.
        #[arg(long)]
        input: PathBuf,
        /// Target database URL (`sqlite://...` or `postgres://...`); default `database.url`.
        #[arg(long)]
        target: Option<String>,
        /// Replace the contents of a non-empty target.
        #[arg(long)]
        force: bool,
    },
}

/// `mairust storage ...`
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy every message body from one backend to the other (re-runnable).
    Migrate {
        /// Source backend.
        #[arg(long, value_parser = ["fs", "s3"])]
        from: String,
        /// Target backend.
        #[arg(long, value_parser = ["fs", "s3"])]
        to: String,
        /// Copies in flight at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
}

/// `mairust key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random master key.
    Generate,
    /// Encrypt a secret for the config file (`delivery.relay_auth.password`) with the master key.
    Seal {
        /// The secret; read from MAIRUST_SECRET when not given.
        #[arg(long, env = "MAIRUST_SECRET", hide_env_values = true)]
        value: String,
    },
    /// Re-encrypt all data under a new master key (refused while a server runs; re-runnable).
    Rotate {
        /// The new key (the current one comes from MAIRUST_MASTER_KEY, if data is encrypted).
        #[arg(long, env = "MAIRUST_NEW_MASTER_KEY")]
        new_key: String,
    },
}

/// `mairust domain ...`
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Host a domain.
    Add {
        /// Domain name.
        name: String,
    },
    /// List hosted domains.
    List,
    /// Stop hosting a domain (it must have no users).
    Remove {
        /// Domain name.
        name: String,
    },
}

/// `mairust user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated password unless --password is given.
    Add {
        /// Email address in a hosted domain.
        email: String,
        /// Password (at least 8 characters).
        #[arg(long, env = "MAIRUST_NEW_USER_PASSWORD")]
        password: Option<String>,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        /// Mailbox quota in bytes.
        #[arg(long)]
        quota_bytes: Option<i64>,
    },
    /// List users.
    List,
    /// Delete a user and their mailbox.
    Remove {
        /// Email address.
        email: String,
    },
    /// Set a user's password (an admin's generated first password is then deleted).
    Passwd {
        /// Email address.
        email: String,
        /// New password (at least 8 characters).
        #[arg(long, env = "MAIRUST_NEW_USER_PASSWORD")]
        password: String,
    },
    /// Print the first admin's generated password (`<data_dir>/initial-admin-password`),
    /// while it is still the account's password.
    InitialPassword,
}

/// Parses the command line and runs it; errors are printed with their causes.
pub fn main() -> ExitCode {
    crate::private::restrict_new_files();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Key(KeyCommand::Generate) = cli.command {
        println!("{}", crate::store::crypto::Cipher::generate_master_key());
        return Ok(());
    }
    crate::net::tls::install_crypto_provider();
    let config = Config::load(cli.config.as_deref())?;
    if needs_existing_database(&cli.command) {
        require_existing_database(&config, cli.config.as_deref())?;
    }
    match cli.command {
        Command::Healthcheck { addr } => healthcheck(
            addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], config.server.api_port))),
        ),
        Command::CheckConfig => {
            print!("{}", config.to_redacted_yaml());
            Ok(())
        }
        command => {
            crate::telemetry::init_logging(&config.log)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(async move {
                match command {
                    Command::Serve => crate::server::serve(config).await,
                    Command::Domain(cmd) => domain(&config, cmd).await,
                    Command::User(cmd) => user(&config, cmd).await,
                    Command::Db(cmd) => db(&config, cmd).await,
                    Command::Storage(cmd) => storage(&config, cmd).await,
                    Command::Key(cmd) => key(&config, cmd).await,
                    Command::Healthcheck { .. } | Command::CheckConfig => Ok(()),
                }
            })
        }
    }
}

/// Commands that administer an installation: they work on its existing database, and never
/// create an empty one somewhere the server does not look.
fn needs_existing_database(command: &Command) -> bool {
    match command {
        Command::Domain(_) | Command::Storage(_) => true,
        Command::User(cmd) => !matches!(cmd, UserCommand::InitialPassword),
        Command::Db(cmd) => matches!(cmd, DbCommand::Export { .. }),
        Command::Key(cmd) => matches!(cmd, KeyCommand::Rotate { .. }),
        Command::Serve | Command::Healthcheck { .. } | Command::CheckConfig => false,
    }
}

/// Where the configuration came from, for messages that say where a command looked.
fn config_origin(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("--config {}", path.display()),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => DEFAULT_CONFIG_PATH.to_string(),
        None => format!(
            "the built-in defaults and the environment (no --config given, no {DEFAULT_CONFIG_PATH})"
        ),
    }
}

/// Fails, saying where it looked, when the configured SQLite database does not exist.
fn require_existing_database(config: &Config, path: Option<&Path>) -> anyhow::Result<()> {
    if let Some(file) = crate::store::sql::sqlite_path(&config.database.url)
        && !Path::new(file).exists()
    {
        anyhow::bail!(
            "no database at {file} (database.url from {}); admin commands work on the server's \
             existing database: give the server's configuration with --config, or set \
             DATABASE_URL",
            config_origin(path)
        );
    }
    Ok(())
}

/// `user initial-password`: the generated first-admin password, for images without `cat`.
fn initial_password(config: &Config) -> anyhow::Result<()> {
    let path = config
        .server
        .data_dir
        .join(crate::accounts::GENERATED_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(password) => {
            print!("{password}");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no generated admin password at {}: the admin's password was configured \
             (MAIRUST_ADMIN_PASSWORD) or has been changed since; set a new one with \
             `mairust user passwd <email>`",
            path.display()
        ),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

async fn domain(config: &Config, cmd: DomainCommand) -> anyhow::Result<()> {
    let stores = Stores::open(config).await?;
    let accounts = stores.accounts.as_ref();
    match cmd {
        DomainCommand::Add { name } => {
            let name = crate::accounts::validate_domain(&name)?;
            accounts.add_domain(&name).await?;
            println!("added domain {name}");
        }
        DomainCommand::List => {
            for d in accounts.list_domains().await? {
                println!("{}", d.name);
            }
        }
        DomainCommand::Remove { name } => {
            accounts.delete_domain(&name).await?;
            println!("removed domain {name}");
        }
    }
    Ok(())
}

async fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    if let UserCommand::InitialPassword = cmd {
        return initial_password(config);
    }
    let stores = Stores::open(config).await?;
    let accounts = stores.accounts.as_ref();
    match cmd {
        UserCommand::Add {
            email,
            password,
            admin,
            quota_bytes,
        } => {
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (crate::auth::random_secret(18), true),
            };
            let user = crate::accounts::add_user(
                accounts,
                crate::accounts::NewAccount {
                    email: &email,
                    password: &password,
                    is_admin: admin,
                    quota_bytes,
                },
            )
            .await?;
            let email = user.email;
            if generated {
                println!("added user {email} with password {password}");
            } else {
                println!("added user {email}");
            }
        }
        UserCommand::List => {
            for u in accounts.list_users().await? {
                println!(
                    "{}\t{}\t{} bytes used",
                    u.email,
                    if u.is_admin { "admin" } else { "user" },
                    u.used_bytes
                );
            }
        }
        UserCommand::Remove { email } => {
            let email = crate::accounts::normalize_address(&email);
            let orphans = accounts.delete_user(&email).await?;
            stores.delete_blobs(&orphans).await;
            println!("removed user {email}");
        }
        UserCommand::Passwd { email, password } => {
            let email = crate::accounts::normalize_address(&email);
            crate::accounts::set_password(accounts, &config.server.data_dir, &email, &password)
                .await?;
            println!("password changed for {email}");
        }
        UserCommand::InitialPassword => unreachable!("answered before the stores are opened"),
    }
    Ok(())
}

async fn db(config: &Config, cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Export { output } => {
            let store = SqlStore::connect(&config.database).await?;
            let manifest = crate::store::dump::export(&store, &output).await?;
            println!(
                "exported schema version {} to {}:",
                manifest.schema_version,
                output.display()
            );
            for (table, rows) in &manifest.tables {
                println!("  {table}: {rows} rows");
            }
        }
        DbCommand::Import {
            input,
            target,
            force,
        } => {
            let database = crate::config::DatabaseConfig {
                url: target.unwrap_or_else(|| config.database.url.clone()),
                ..config.database.clone()
            };
            let store = SqlStore::connect(&database).await?;
            let manifest = crate::store::dump::import(&store, &input, force).await?;
            let rows: u64 = manifest.tables.values().sum();
            println!(
                "imported {rows} rows in {} tables into {}; counts verified",
                manifest.tables.len(),
                crate::config::redact_url(&database.url)
            );
        }
    }
    Ok(())
}

async fn storage(config: &Config, cmd: StorageCommand) -> anyhow::Result<()> {
    let StorageCommand::Migrate { from, to, parallel } = cmd;
    if from == to {
        anyhow::bail!("--from and --to are both `{from}`; nothing to migrate");
    }
    let kind = |name: &str| match name {
        "s3" => StorageBackend::S3,
        _ => StorageBackend::Fs,
    };
    let deadline = tokio::time::Instant::now() + config.server.startup_timeout;
    let options = &config.storage.options;
    let source = Stores::backend_of(kind(&from), options, deadline).await?;
    let target = Stores::backend_of(kind(&to), options, deadline).await?;
    let store = SqlStore::connect(&config.database).await?;
    let cipher = config
        .security
        .master_key
        .as_deref()
        .map(crate::store::crypto::Cipher::from_master_key)
        .transpose()?;
    let keys = crate::store::blob_migrate::referenced_keys(&store).await?;
    println!(
        "migrating {} message bodies from {from} to {to}",
        keys.len()
    );
    let summary = crate::store::blob_migrate::migrate(
        keys,
        source,
        target,
        cipher,
        parallel,
        std::io::stderr().is_terminal(),
    )
    .await;
    println!(
        "copied {} ({} bytes), already there {}, failed {}",
        summary.copied,
        summary.bytes,
        summary.skipped,
        summary.failed.len()
    );
    for (key, reason) in summary.failed.iter().take(20) {
        println!("  failed {key}: {reason}");
    }
    if !summary.failed.is_empty() {
        anyhow::bail!(
            "{} bodies were not migrated; fix the cause and run the command again (it skips what is done)",
            summary.failed.len()
        );
    }
    println!("done: set storage.backend (STORAGE_BACKEND) to `{to}` and restart");
    Ok(())
}

async fn key(config: &Config, cmd: KeyCommand) -> anyhow::Result<()> {
    let new_key = match cmd {
        KeyCommand::Generate => return Ok(()),
        KeyCommand::Seal { value } => {
            let key = config
                .security
                .master_key
                .as_deref()
                .context("set MAIRUST_MASTER_KEY (or security.master_key) to seal a secret")?;
            let cipher = crate::store::crypto::Cipher::from_master_key(key)?;
            println!("{}", cipher.seal_secret(value.as_bytes()));
            return Ok(());
        }
        KeyCommand::Rotate { new_key } => new_key,
    };
    let new = crate::store::crypto::Cipher::from_master_key(&new_key)?;
    let old = config
        .security
        .master_key
        .as_deref()
        .map(crate::store::crypto::Cipher::from_master_key)
        .transpose()?;
    let deadline = tokio::time::Instant::now() + config.server.startup_timeout;
    let store = SqlStore::connect(&config.database).await?;
    // Held until the rotation is done: no server may run meanwhile.
    let _lock = crate::store::rekey::DatabaseLock::acquire(
        &config.database,
        crate::store::rekey::LockMode::Exclusive,
    )
    .await?;
    let blobs = Stores::blob_backend(config, deadline).await?;
    let done = crate::store::rekey::rotate(&store, blobs, old.as_ref(), &new).await?;
    println!(
        "re-encrypted {} bodies ({} already done) and {} secrets; start the server with the new MAIRUST_MASTER_KEY",
        done.bodies, done.already, done.secrets
    );
    Ok(())
}

/// A minimal HTTP/1.1 GET of /health/ready, so that images need no curl.
fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}; is the api role running?"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        println!("ready");
        Ok(())
    } else {
        anyhow::bail!("not ready: {status}")
    }
}
