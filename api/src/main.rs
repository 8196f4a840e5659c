//! The `wallet` binary: parses the command line, sets up logging, and runs
//! the library's [`wallet_api::Application`] until SIGINT or SIGTERM.

// Records are freed on another thread than the one that made them; glibc's
// malloc contends on that (seen in profiles), mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use wallet_actors::ids::NodeId;
use wallet_api::{Application, Cli, Command, Mode, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = match Cli::load(std::env::args_os()) {
        Ok(cli) => cli,
        Err(wallet_api::settings::ConfigError::Cli(error)) => error.exit(),
        Err(error) => return Err(error).context("reading the configuration"),
    };
    wallet_api::telemetry::init_tracing(cli.log_format, &cli.log_filter)
        .map_err(anyhow::Error::msg)
        .context("setting up logging")?;
    let (settings, mode) = match cli.command {
        Command::Serve(settings) => (settings, Mode::Embedded),
        Command::Node(node) => {
            let id = node
                .node_id
                .context("wallet node needs --node-id (or WALLET_NODE_ID, or node_id in the file)")?;
            let mode = Mode::Node {
                node: NodeId(id),
                journal_replicas: node.journal_replicas,
                standby: node.standby,
            };
            (node.settings, mode)
        }
    };
    run(settings, mode).await
}

/// Builds the application and serves until SIGINT or SIGTERM.
async fn run(settings: Settings, mode: Mode) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    for name in &settings.secrets_given_as_flags {
        tracing::warn!(
            setting = name,
            "a secret given as a flag is visible to every local user in `ps`; \
             set WALLET_{} in the environment instead",
            name.to_uppercase()
        );
    }
    // Listening from the first moment: a standby waits for its shards in
    // the start, maybe for hours, and a rolling restart stops it there.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut stop_rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone: never stop for that.
        if stop_rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let app = tokio::select! {
        app = Application::build_as(settings, mode) => {
            app.with_context(|| format!("starting the node in {}", data_dir.display()))?
        }
        () = stopped(stop_rx.clone()) => {
            // Nothing of this start serves yet; what it took (a node's
            // leases) expires, and what it wrote is recovered as after a
            // crash. Exit now: returning would wait for whatever blocking
            // step of the start is under way (a replay, an image import),
            // after the data directory's lock was dropped with the start.
            tracing::info!("stopped before serving");
            std::process::exit(0);
        }
    };
    if let Some(password) = app.generated_admin_password() {
        // Shown once (only its hash is stored), on stderr: stdout may
        // be kept where others read it.
        eprintln!(
            "generated admin password for {} (shown once; change it with \
             POST /v1/users/me/password, or by starting with WALLET_ADMIN_PASSWORD set): {password}",
            app.admin_email()
        );
    }
    app.run_until(stopped(stop_rx)).await.context("serving")?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
