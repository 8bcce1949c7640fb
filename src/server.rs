//! `mairust serve`: opens storage, builds the actor tree for the configured roles, and runs
//! until SIGTERM or SIGINT, then drains connections and stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::Actor;

use crate::actors::{ChildSpec, RootSupervisor, WriterHandle};
use crate::api::{ApiServer, ApiServerArgs, ApiState};
use crate::auth::{Authenticator, random_secret, verify_password_async};
use crate::cluster::Cluster;
use crate::config::{Config, Role};
use crate::delivery::connection_cache::ConnectionCache;
use crate::delivery::queue_manager::QueueManagerArgs;
use crate::delivery::routing::Router;
use crate::delivery::worker::{DeliveryContext, DestinationLimiter};
use crate::delivery::{QueueHandle, QueueManager};
use crate::imap::{ImapContext, ImapProtocol};
use crate::inbound::commit::Acceptor;
use crate::inbound::smtp::{SmtpContext, SmtpProtocol};
use crate::net::tls;
use crate::net::{ConnectionLimits, Listener, ListenerArgs, Protocol};
use crate::pop3::{Pop3Context, Pop3Protocol};
use crate::smtp::{Faults, ListenerKind, SessionContext};
use crate::store::Stores;
use crate::store::crypto::Cipher;
use crate::telemetry;

/// How long shutdown waits for open SMTP sessions to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Decrypts `delivery.relay_auth.password` when it was written sealed (`mairust key seal`), so
/// the smarthost password need not sit in plain text in a config file or environment.
fn unseal_relay_password(config: &mut Config, cipher: Option<&Cipher>) -> anyhow::Result<()> {
    let Some(auth) = config.delivery.relay_auth.as_mut() else {
        return Ok(());
    };
    if !Cipher::is_sealed_secret(&auth.password) {
        return Ok(());
    }
    let cipher = cipher.context(
        "delivery.relay_auth.password is encrypted but no master key is set; set MAIRUST_MASTER_KEY",
    )?;
    let plain = cipher.open_secret(&auth.password).context(
        "cannot decrypt delivery.relay_auth.password with this master key; seal it again with `mairust key seal`",
    )?;
    auth.password = String::from_utf8(plain)
        .context("delivery.relay_auth.password decrypts to invalid UTF-8; seal it again")?;
    Ok(())
}

/// Runs the server until a termination signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let metrics = telemetry::init_metrics()?;
    if config.server.roles.iter().all(|r| *r == Role::Web) {
        return serve_web_only(config, metrics).await;
    }
    let mut config = config;
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}; check server.data_dir",
            config.server.data_dir.display()
        )
    })?;
    // Created 0700 under the process umask; one left open by an earlier version is closed.
    crate::private::tighten(&config.server.data_dir)?;
    let stores = Stores::open(&config).await?;
    // Held for the life of the process: `key rotate` refuses to run next to a server.
    let _database_lock = crate::store::rekey::DatabaseLock::acquire(
        &config.database,
        crate::store::rekey::LockMode::Shared,
    )
    .await?;
    unseal_relay_password(&mut config, stores.cipher.as_ref())?;
    let config = Arc::new(config);
    bootstrap_admin(&config, &stores).await?;
    // Computed now so the first unknown-user login costs no more than any other.
    tokio::task::spawn_blocking(|| {
        crate::auth::dummy_hash();
    });

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Enough queued requests for every session and a few batches of API and queue writes.
    let writer = WriterHandle::new(
        config.database.commit_timeout,
        (config.smtp.max_connections + 4 * config.database.max_batch).max(64),
    );
    let queue = QueueHandle::default();
    let acceptor = Acceptor::new(
        config.clone(),
        stores.clone(),
        writer.clone(),
        queue.clone(),
    );
    // One chain of checks on incoming mail, for SMTP and the API's send path alike.
    let checks = Arc::new(crate::inbound::checks::Checks::standard());
    let recipients =
        crate::inbound::recipients::Recipients::new(config.clone(), stores.accounts.clone());
    let faults = Arc::new(Faults::default());
    let limits = ConnectionLimits::new(
        config.smtp.max_connections,
        config.smtp.max_connections_per_ip,
    );
    // One authentication path for SMTP AUTH and API Basic: guesses over both count together.
    let authenticator = Arc::new(Authenticator::new(
        stores.accounts.clone(),
        config.smtp.auth_failure_delay,
        config.smtp.auth_failures_free,
    ));
    let node_id = node_id(&config);
    let cluster = if config.cluster.enabled {
        let cluster = Cluster::start(
            &config.cluster,
            node_id.clone(),
            config.server.roles.clone(),
            Arc::new(queue.clone()),
        )
        .await
        .context("cannot start the cluster endpoint")?;
        let forwarder = queue.connect_cluster(cluster.clone(), stores.queue.clone());
        wait_for_peers(&config, &cluster).await;
        Some((cluster, forwarder))
    } else {
        None
    };
    // The forwarder runs until this function returns, after the partitions are released.
    let (cluster, _forwarder) = cluster.unzip();
    // Stopped in reverse order: the API and the listeners first, then the queue (which drains
    // its partitions and releases their leases), the storage writer last.
    let mut specs = vec![crate::actors::storage_writer::child_spec(
        &stores,
        config.database.max_batch,
        &writer,
    )];

    if config.server.has_role(Role::Queue) {
        let ctx = Arc::new(DeliveryContext {
            config: config.clone(),
            stores: stores.clone(),
            router: Router::new(&config.delivery)?,
            limiter: DestinationLimiter::new(config.delivery.concurrency_per_destination),
            connections: ConnectionCache::new(
                config.delivery.connection_cache_time,
                config.delivery.concurrency_per_destination,
                config.delivery.max_messages_per_connection,
            ),
            tls: tls::outbound_client_config(),
            queue: queue.clone(),
            writer: writer.clone(),
        });
        tracing::info!(node_id = %node_id, partitions = config.queue.partitions, "queue role enabled");
        let queue = queue.clone();
        let members = cluster.as_ref().map(|c| (c.subscribe(), c.admission()));
        let node_id = node_id.clone();
        specs.push(ChildSpec::new("queue_manager", move |sup| {
            let args = QueueManagerArgs {
                ctx: ctx.clone(),
                node_id: node_id.clone(),
                members: members.clone(),
            };
            let queue = queue.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(None, QueueManager, args, sup).await?;
                queue.set(actor.clone());
                Ok(actor.get_cell())
            }
        }));
        specs.push(purge_spec(&config, &stores));
    }

    if config.server.has_role(Role::Smtp) {
        let cert = tls::ensure_certificate(&config)?;
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&cert)?);
        let ctx = Arc::new(SmtpContext {
            config: config.clone(),
            stores: stores.clone(),
            recipients: recipients.clone(),
            acceptor: acceptor.clone(),
            authenticator: authenticator.clone(),
            checks: checks.clone(),
            session: Arc::new(SessionContext {
                config: config.clone(),
                tls: Some(tls_acceptor),
                shutdown: shutdown_rx.clone(),
                faults: faults.clone(),
            }),
        });
        for (name, kind, port) in [
            ("smtp_listener", ListenerKind::Mx, config.server.smtp_port),
            (
                "submission_listener",
                ListenerKind::Submission,
                config.server.submission_port,
            ),
        ] {
            let protocol = SmtpProtocol {
                ctx: ctx.clone(),
                kind,
            };
            let addr = SocketAddr::new(config.server.bind, port);
            specs.push(listener_spec(name, protocol, &limits, addr));
        }
    }

    if config.server.has_role(Role::Imap) {
        let cert = tls::ensure_certificate(&config)?;
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&cert)?);
        let ctx = Arc::new(ImapContext {
            config: config.clone(),
            stores: stores.clone(),
            authenticator: authenticator.clone(),
            acceptor: acceptor.clone(),
            tls: Some(tls_acceptor.clone()),
            shutdown: shutdown_rx.clone(),
            sessions: crate::imap::connection::UserSessions::default(),
        });
        for (name, implicit_tls, port) in [
            ("imap_listener", false, config.server.imap_port),
            ("imaps_listener", true, config.server.imaps_port),
        ] {
            let protocol = ImapProtocol {
                ctx: ctx.clone(),
                implicit_tls,
            };
            let addr = SocketAddr::new(config.server.bind, port);
            specs.push(listener_spec(name, protocol, &limits, addr));
        }
        let ctx = Arc::new(Pop3Context {
            config: config.clone(),
            stores: stores.clone(),
            authenticator: authenticator.clone(),
            tls: Some(tls_acceptor),
            shutdown: shutdown_rx.clone(),
        });
        for (name, implicit_tls, port) in [
            ("pop3_listener", false, config.server.pop3_port),
            ("pop3s_listener", true, config.server.pop3s_port),
        ] {
            let protocol = Pop3Protocol {
                ctx: ctx.clone(),
                implicit_tls,
            };
            let addr = SocketAddr::new(config.server.bind, port);
            specs.push(listener_spec(name, protocol, &limits, addr));
        }
    }

    // Health and metrics are served on the API port by every node; the REST API itself only
    // with the api role (see `api::router`).
    {
        // The web UI's pages on the same listener (all-in-one); with the api role its `/api`
        // is the local API, without it `/api` is proxied to `web.api_url`.
        let mut others = axum::Router::new();
        if config.server.has_role(Role::Web) {
            others = others.merge(crate::web::ui_router());
            if !config.server.has_role(Role::Api) {
                others = others.merge(crate::web::proxy::routes(crate::web::Proxy::new(&config)?));
            }
        }
        let state = ApiState {
            config: config.clone(),
            stores: stores.clone(),
            metrics,
            writer: writer.clone(),
            acceptor: acceptor.clone(),
            checks: checks.clone(),
            recipients: recipients.clone(),
            queue: queue.clone(),
            faults: faults.clone(),
            authenticator: authenticator.clone(),
            node_id: node_id.clone(),
            cluster: cluster.clone(),
            unknown_recipients: Arc::default(),
        };
        let addr = SocketAddr::new(config.server.bind, config.server.api_port);
        let shutdown = shutdown_rx.clone();
        specs.push(ChildSpec::new("api_server", move |sup| {
            let args = ApiServerArgs {
                state: state.clone(),
                addr,
                shutdown: shutdown.clone(),
                others: others.clone(),
            };
            async move {
                let (actor, _) = Actor::spawn_linked(None, ApiServer, args, sup).await?;
                Ok(actor.get_cell())
            }
        }));
    }

    let (root, root_handle) = Actor::spawn(None, RootSupervisor, specs)
        .await
        .map_err(|e| anyhow::anyhow!("{}", startup_error(&e)))?;
    tracing::info!(
        hostname = %config.server.hostname,
        roles = ?config.server.roles,
        "MaiRust started"
    );
    for warning in config.setup_warnings() {
        tracing::warn!(setup = true, "{warning}");
    }
    if !config.smtp.trusted_networks.is_empty() {
        let networks: Vec<String> = config
            .smtp
            .trusted_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::warn!(
            networks = %networks.join(", "),
            "clients in smtp.trusted_networks relay without AUTH"
        );
    }

    wait_for_signal().await?;
    tracing::info!("shutting down: draining connections");
    let _ = shutdown_tx.send(true);
    crate::net::drain(&limits, DRAIN_TIMEOUT).await;
    root.stop(crate::actors::ExitReason::Shutdown.stop());
    let _ = root_handle.await;
    // Only now, with every lease released: the others see this node leave and take its
    // partitions at once.
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A process with only the web role: the UI and `/api` proxied to `web.api_url`. It opens no
/// database or blob store, runs no migrations, creates no admin and joins no cluster, and
/// writes nothing (a read-only root filesystem is enough); it is ready when the API is.
async fn serve_web_only(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let proxy = crate::web::Proxy::new(&config)?;
    let config = Arc::new(config);
    let addr = SocketAddr::new(config.server.bind, config.server.api_port);
    let state = crate::web::WebState {
        config: config.clone(),
        metrics,
        proxy,
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::web::serve(state, addr, shutdown_rx, DRAIN_TIMEOUT));
    tracing::info!(
        hostname = %config.server.hostname,
        roles = ?config.server.roles,
        "MaiRust started"
    );
    let mut server = server;
    tokio::select! {
        result = &mut server => {
            // The listener stopped on its own: a bind failure or a fatal accept error.
            result
                .context("the web server task failed")?
                .with_context(|| format!(
                    "cannot listen on {addr} for the web UI; check server.bind and server.api_port"
                ))?;
            anyhow::bail!("the web server stopped unexpectedly");
        }
        signal = wait_for_signal() => signal?,
    }
    tracing::info!("shutting down: draining connections");
    let _ = shutdown_tx.send(true);
    server
        .await
        .context("the web server task failed")?
        .context("the web server failed while stopping")?;
    tracing::info!("stopped");
    Ok(())
}

/// ractor wraps a child's startup error in the root's; show the innermost message.
fn startup_error(e: &ractor::SpawnErr) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = s.to_string();
        source = s.source();
    }
    format!("cannot start: {message}")
}

/// This process's name as a lease owner. In a cluster, `cluster.node_id` (default the host
/// name): a restarted node adopts the leases its predecessor still holds, with a new epoch.
/// Alone, the host name plus a per-process suffix, so that several processes on one database
/// without a cluster never share a name.
fn node_id(config: &Config) -> String {
    if config.cluster.enabled {
        config.cluster.node_id(&config.server.hostname)
    } else {
        format!("{}-{:08x}", config.server.hostname, rand::random::<u32>())
    }
}

/// How long a starting node waits to hear from its seeds before it claims partitions.
const JOIN_WAIT: Duration = Duration::from_secs(3);

/// Gives membership a moment to learn the other nodes, so that a node joining a running
/// cluster does not first claim every free partition as if it were alone. A lone first node
/// (no seed answers) goes on after the wait; a node every answering peer refused waits
/// too, and owns nothing until one accepts it (see [`crate::cluster::admission`]).
async fn wait_for_peers(config: &Config, cluster: &Cluster) {
    if !config.cluster.seeds.is_empty() || config.cluster.seed_dns.is_some() {
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        while tokio::time::Instant::now() < deadline {
            if cluster.members().len() > 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    match cluster.refusal() {
        Some(reason) => tracing::error!(
            %reason,
            "no cluster peer accepted this node: it is not ready and owns no partition until one does"
        ),
        None => {
            cluster.no_peer_answered();
            tracing::info!("no cluster peer answered yet; starting as the first node");
        }
    }
}

/// Periodically deletes finished queue rows older than `delivery.retention`, and the messages
/// and blobs nothing refers to any more.
fn purge_spec(config: &Config, stores: &Stores) -> ChildSpec {
    let stores = stores.clone();
    let retention = config.delivery.retention;
    ChildSpec::new("queue_purger", move |sup| {
        let stores = stores.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(
                None,
                crate::delivery::purger::Purger,
                crate::delivery::purger::PurgerArgs { stores, retention },
                sup,
            )
            .await?;
            Ok(actor.get_cell())
        }
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// Makes sure an administrator exists.
///
/// With `admin.email` and `admin.password` set, that account exists and has that password
/// (idempotent; a changed password revokes the account's tokens). Without them, if there is
/// no admin yet, one is created with a generated password, which is written to
/// `<data_dir>/initial-admin-password` (mode 0600), never to the log. Creation is atomic in
/// the database, so replicas starting together create exactly one admin.
pub async fn bootstrap_admin(config: &Config, stores: &Stores) -> anyhow::Result<()> {
    let accounts = stores.accounts.as_ref();
    match (&config.admin.email, &config.admin.password) {
        (Some(email), Some(password)) => {
            crate::accounts::validate_password(password)
                .map_err(|e| anyhow::anyhow!("MAIRUST_ADMIN_PASSWORD (admin.password): {e}"))?;
            // Twice at most: a replica starting at the same time may create the account
            // between our lookup and our insert.
            for _ in 0..2 {
                match accounts.credentials(email).await? {
                    Some(creds) if creds.user.is_admin => {
                        if !verify_password_async(password, &creds.password_hash).await {
                            accounts
                                .set_password(email, &crate::accounts::hash(password).await?)
                                .await?;
                            tracing::info!(email = %email, "bootstrap admin password updated from configuration; its tokens are revoked");
                        }
                        return Ok(());
                    }
                    Some(_) => anyhow::bail!(
                        "admin.email {email} belongs to an existing non-admin user; choose another address"
                    ),
                    None => match accounts
                        .add_user(email, &crate::accounts::hash(password).await?, true, None)
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(email = %email, "bootstrap admin created");
                            return Ok(());
                        }
                        Err(crate::store::StoreError::AlreadyExists(_)) => continue,
                        Err(e) => return Err(e.into()),
                    },
                }
            }
            anyhow::bail!("cannot create the bootstrap admin {email}: the account keeps changing")
        }
        (None, None) => {
            if accounts.admin_exists().await? {
                return Ok(());
            }
            let email = format!("admin@{}", config.server.hostname);
            let password = random_secret(18);
            // The file is staged before the account exists, so a created account always has
            // its password on disk; a replica that loses the race discards its file.
            let staged = stage_secret_file(&config.server.data_dir, &format!("{password}\n"))?;
            match accounts
                .create_first_admin(&email, &crate::accounts::hash(&password).await?)
                .await
            {
                Ok(true) => {
                    let path = config
                        .server
                        .data_dir
                        .join(crate::accounts::GENERATED_PASSWORD_FILE);
                    staged.persist(&path).with_context(|| {
                        format!(
                            "cannot write the first admin's password to {}",
                            path.display()
                        )
                    })?;
                    sync_dir(&config.server.data_dir)?;
                    tracing::warn!(
                        email = %email,
                        password_file = %path.display(),
                        "created the first admin account with a generated password; read it from \
                         the file (readable only by this user), sign in, change it \
                         (PUT /api/v1/users/{{email}}/password) and delete the file"
                    );
                }
                Ok(false) => {
                    tracing::info!("another process created the first admin account");
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => anyhow::bail!(
            "set both MAIRUST_ADMIN_EMAIL and MAIRUST_ADMIN_PASSWORD (admin.email, admin.password), or neither"
        ),
    }
    Ok(())
}

/// A temporary file in `dir` holding `contents`, created with mode 0600 (never readable by
/// others, not even for a moment) and fsynced; persist it to give it its final name.
fn stage_secret_file(
    dir: &std::path::Path,
    contents: &str,
) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut file = tempfile::Builder::new()
        .prefix(".initial-admin-password")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "cannot create a file in {}; check server.data_dir",
                dir.display()
            )
        })?;
    file.write_all(contents.as_bytes())?;
    file.as_file().sync_all()?;
    Ok(file)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// The supervisor's spec of a listener serving `protocol` on `addr` (restarted, it binds
/// again).
fn listener_spec<P: Protocol>(
    name: &'static str,
    protocol: P,
    limits: &Arc<ConnectionLimits>,
    addr: SocketAddr,
) -> ChildSpec {
    let protocol = Arc::new(protocol);
    let limits = limits.clone();
    ChildSpec::new(name, move |sup| {
        let args = ListenerArgs {
            protocol: protocol.clone(),
            limits: limits.clone(),
            addr,
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Listener::<P>::default(), args, sup).await?;
            Ok(actor.get_cell())
        }
    })
}
