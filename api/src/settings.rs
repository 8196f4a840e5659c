//! Configuration: command-line flags, each with a `WALLET_*` environment
//! variable, and an optional TOML file (`--config`, keys named like the
//! flags with `_` for `-`). Precedence: flags, then the environment, then
//! the file, then the defaults.
//!
//! The file alone may also hold default risk rules, as `[[risk_rules]]`
//! tables in the shape `POST /v1/risk/rules` takes ([`RuleBody`]). At start,
//! each one whose name no stored rule has is created (see [`crate::risk`]):
//! an operator starts with rules in place, and later edits through the API
//! persist, since a configured rule that exists by name is left alone.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::assets::ConfiguredAsset;
use crate::domain::Secret;
use crate::wire::risk::RuleBody;

/// Shown at the end of `wallet --help` and `wallet serve --help`.
const CONFIG_HELP: &str = "\
Configuration file (--config): keys named like the flags, plus default risk rules
as [[risk_rules]] tables in the shape POST /v1/risk/rules takes. At start, each
configured rule whose name no stored rule has is created; later API edits persist
(a configured rule deleted through the API comes back unless it leaves the file).

    data_dir = \"/var/lib/wallet\"

    [[risk_rules]]
    name = \"ten a minute\"
    kind = \"velocity_count\"         # or max_amount, velocity_amount, blocked_account, new_account_limit
    scope = { type = \"global\" }     # or { type = \"user\", user_id = \"...\" }, { type = \"account\", account_id = \"...\" }
    action = \"reject\"               # or \"review\" (then timeout_seconds may be set)
    parameters = { window_seconds = 60, count = 10 }";

/// The `wallet` command line.
#[derive(Debug, Parser)]
#[command(
    name = "wallet",
    version,
    about = "A balance ledger: accounts in any asset, exactly-once transfers.",
    after_long_help = CONFIG_HELP
)]
pub struct Cli {
    /// How logs are written.
    #[arg(long, env = "WALLET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Which logs are written (tracing's `EnvFilter` syntax, e.g. `info,wallet_api=debug`).
    #[arg(long, env = "WALLET_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// A TOML file of settings, keys named like the flags (`data_dir = "/var/lib/wallet"`),
    /// and default risk rules (`[[risk_rules]]`; see the end of `--help`).
    #[arg(long, env = "WALLET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line or environment is wrong (clap's message).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// The file could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("parsing {path}: {detail}", path = path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// A `[[risk_rules]]` table is not a rule body.
    #[error("{path}: risk_rules: {detail}", path = path.display())]
    RiskRules {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// The file names a setting that does not exist, or gives it a table or array.
    #[error("{path}: unknown or unusable setting {key:?}", path = path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

impl Cli {
    /// Parses `args` (with the program name first) and the environment, then
    /// fills every setting given by neither from the `--config` file.
    pub fn load<I, T>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(args.clone())?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let secret_flags = secrets_given_as_flags(&matches);
        let Some(path) = cli.config.clone() else {
            cli.command.settings_mut().secrets_given_as_flags = secret_flags;
            return Ok(cli);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.clone(), detail: e.to_string() })?;
        // The subcommand's own settings (`serve` or `node`).
        let (serve, serve_command) = match matches.subcommand() {
            Some((name, sub)) => (Some(sub), Cli::command().find_subcommand(name).cloned()),
            None => (None, None),
        };
        let command = Cli::command();
        let serve_command = serve_command.as_ref();
        let mut risk_rules = Vec::new();
        for (key, value) in table {
            if key == "risk_rules" {
                risk_rules = value
                    .try_into::<Vec<RuleBody>>()
                    .map_err(|e| ConfigError::RiskRules { path: path.clone(), detail: e.to_string() })?;
                continue;
            }
            let long = key.replace('_', "-");
            let known = |c: Option<&clap::Command>| {
                c.is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some(long.as_str())))
            };
            let (in_root, in_serve) = (known(Some(&command)), known(serve_command));
            let unknown = || ConfigError::UnknownKey { path: path.clone(), key: key.clone() };
            // One file may serve `wallet node` and `wallet serve`: the
            // node's own keys mean nothing to `serve`.
            if !(in_root || in_serve) && known(command.find_subcommand("node")) {
                continue;
            }
            if long == "config" || !(in_root || in_serve) {
                return Err(unknown());
            }
            let id = key.as_str();
            let source =
                if in_root { matches.value_source(id) } else { serve.and_then(|m| m.value_source(id)) };
            if matches!(source, Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)) {
                continue;
            }
            let value = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(unknown()),
            };
            args.push(format!("--{long}={value}").into());
        }
        let mut cli = Cli::try_parse_from(args)?;
        let settings = cli.command.settings_mut();
        settings.risk_rules = risk_rules;
        settings.secrets_given_as_flags = secret_flags;
        Ok(cli)
    }
}

/// The secret settings given on the command line, where every local user
/// can read them (`ps`, `/proc/<pid>/cmdline`).
fn secrets_given_as_flags(matches: &clap::ArgMatches) -> Vec<&'static str> {
    let Some((_, serve)) = matches.subcommand() else { return Vec::new() };
    ["jwt_secret", "jwt_previous_secret", "admin_password"]
        .into_iter()
        .filter(|id| serve.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the embedded single node: the ledger and the HTTP API in one process.
    #[command(after_long_help = CONFIG_HELP)]
    Serve(Settings),
    /// Runs a node whose ledger journal is on NATS JetStream (`--nats-url`,
    /// required): the ledger and the HTTP API in one process, every record
    /// stored on the stream before it is acknowledged, a restart replaying
    /// it. For now one node holds every shard (a second one waits for the
    /// first's leases, or with `--standby` until they are free); users,
    /// sessions, rules and a generated signing secret are shared by every
    /// node, on the same server.
    #[command(after_long_help = CONFIG_HELP)]
    Node(NodeSettings),
}

impl Command {
    /// The settings both subcommands take.
    pub fn settings_mut(&mut self) -> &mut Settings {
        match self {
            Command::Serve(settings) => settings,
            Command::Node(node) => &mut node.settings,
        }
    }

    /// The settings both subcommands take.
    pub fn into_settings(self) -> Settings {
        match self {
            Command::Serve(settings) => settings,
            Command::Node(node) => node.settings,
        }
    }
}

/// Everything `wallet node` needs: `serve`'s settings and the node's id.
#[derive(Clone, Debug, Args)]
pub struct NodeSettings {
    /// This node's id in the cluster, unique among its nodes (0 is the
    /// embedded node's). Required (here, in the environment or in the file).
    #[arg(long, env = "WALLET_NODE_ID", value_parser = clap::value_parser!(u32).range(1..))]
    pub node_id: Option<u32>,
    /// Replicas of the journal stream `WALLET_JOURNAL` (3 with a
    /// three-server NATS cluster). A stream that has more keeps them.
    #[arg(long, env = "WALLET_JOURNAL_REPLICAS", default_value_t = 1)]
    pub journal_replicas: usize,
    /// Waits as long as it takes for the shards another node holds, and
    /// serves once that node is gone (its leases expire 3 s after it dies):
    /// a standby. Without it a start gives up after 6 s.
    #[arg(long, env = "WALLET_STANDBY", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub standby: bool,
    /// The settings `serve` takes.
    #[command(flatten)]
    pub settings: Settings,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `wallet serve` needs.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// Where the journal and the user store live.
    #[arg(long, env = "WALLET_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address to listen on for HTTP (port 0 picks a free port).
    #[arg(long, env = "WALLET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Number of ledger shards; fixed when the data directory is created.
    #[arg(long, env = "WALLET_SHARDS", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub shards: u16,
    /// Secret for signing access tokens (HS256, at least 32 bytes). When
    /// unset, one is generated at first start and kept in the data directory.
    /// Prefer the environment variable: a flag's value is visible to every
    /// local user in `ps`.
    #[arg(long, env = "WALLET_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// A secret whose tokens are still accepted, though none is signed with it: while
    /// rotating, the old `--jwt-secret` (or the old `<data-dir>/jwt_secret`), kept for one
    /// access-token lifetime so no one is logged out. Prefer the environment variable (`ps`).
    #[arg(long, env = "WALLET_JWT_PREVIOUS_SECRET", hide_env_values = true)]
    pub jwt_previous_secret: Option<Secret>,
    /// The `iss` claim of access tokens, required on every token.
    #[arg(long, env = "WALLET_JWT_ISSUER", default_value = "wallet")]
    pub jwt_issuer: String,
    /// The `aud` claim of access tokens, required on every token.
    #[arg(long, env = "WALLET_JWT_AUDIENCE", default_value = "wallet-api")]
    pub jwt_audience: String,
    /// `iss` of an external OAuth2/OIDC issuer whose access tokens are accepted too
    /// (needs `--oidc-audience`, and `--oidc-jwks-url` or `--oidc-jwks-file`).
    #[arg(long, env = "WALLET_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The `aud` the external issuer's tokens must carry.
    #[arg(long, env = "WALLET_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The external issuer's public keys as a JWKS file, re-read when a token names an
    /// unknown key (at most every 30 s). Give this or `--oidc-jwks-url`, not both.
    #[arg(long, env = "WALLET_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// The external issuer's JWKS URL (its `jwks_uri`; https, or http on a loopback address;
    /// redirects are not followed). Fetched at start (the
    /// start fails if it cannot be), every `--oidc-jwks-refresh-seconds`, and when a token
    /// names an unknown key (at most every 10 s); a fetch has a 5 s timeout and a 1 MiB cap,
    /// and a failed one keeps the keys held. Give this or `--oidc-jwks-file`, not both.
    #[arg(long, env = "WALLET_OIDC_JWKS_URL", value_parser = jwks_url)]
    pub oidc_jwks_url: Option<reqwest::Url>,
    /// How often the keys at `--oidc-jwks-url` are fetched again in the background.
    #[arg(long, env = "WALLET_OIDC_JWKS_REFRESH_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub oidc_jwks_refresh_seconds: u64,
    /// Lifetime of an access token.
    #[arg(long, env = "WALLET_ACCESS_TOKEN_TTL_SECONDS", default_value_t = 900)]
    pub access_token_ttl_seconds: u64,
    /// A refresh token unused for this long expires (each refresh hands out a new one).
    #[arg(long, env = "WALLET_REFRESH_TOKEN_TTL_SECONDS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_seconds: u64,
    /// A session ends this long after its login, however often it is refreshed; then
    /// the user logs in again.
    #[arg(long, env = "WALLET_SESSION_LIFETIME_SECONDS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub session_lifetime_seconds: u64,
    /// Email of the administrator, created at start if missing.
    #[arg(long, env = "WALLET_ADMIN_EMAIL", default_value = "admin@wallet.local")]
    pub admin_email: String,
    /// Password of the administrator. When unset and the administrator does
    /// not exist yet, a random one is generated and printed once. Prefer the
    /// environment variable: a flag's value is visible to every local user in `ps`.
    #[arg(long, env = "WALLET_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// Largest request body accepted; larger bodies get 413.
    #[arg(long, env = "WALLET_BODY_LIMIT_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// How long a request may take before it gets 504.
    #[arg(long, env = "WALLET_REQUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub request_timeout_ms: u64,
    /// Most connections served at once; beyond, new connections wait in the backlog.
    #[arg(long, env = "WALLET_CONNECTIONS_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub connections_max: u32,
    /// How long a client may take to send a request's head (line and headers) before it
    /// is disconnected, so slow clients cannot hold every socket.
    #[arg(long, env = "WALLET_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests before dropping their connections.
    #[arg(long, env = "WALLET_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// How long the ledger waits for a shard or the journal.
    #[arg(long, env = "WALLET_LEDGER_TIMEOUT_MS", default_value_t = 10_000)]
    pub ledger_timeout_ms: u64,
    /// Most transfers in flight at once; past it requests get 429.
    #[arg(long, env = "WALLET_IN_FLIGHT_MAX", default_value_t = 1 << 16)]
    pub in_flight_max: usize,
    /// Most transfers of one user in flight at once, so one user cannot take the whole
    /// `--in-flight-max`; past it their requests get 429 `overloaded`. Default: a quarter
    /// of `--in-flight-max`.
    #[arg(long, env = "WALLET_USER_IN_FLIGHT_MAX")]
    pub user_in_flight_max: Option<usize>,
    /// Most accounts one user may open for themselves (an admin may open more for them);
    /// beyond, 409 `too_many_accounts`. Per-account limits and velocity rules mean little if
    /// anyone can open accounts without end.
    #[arg(long, env = "WALLET_ACCOUNTS_PER_USER_MAX", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts_per_user_max: u32,
    /// Assets accounts may be opened in besides the ISO 4217 currencies, each with its scale
    /// (`BTC:8,XAU:3`); any other gets 400 `asset_not_allowed` (each asset opens a
    /// settlement account that stays for ever).
    #[arg(long, env = "WALLET_ASSETS", value_delimiter = ',')]
    pub assets: Vec<ConfiguredAsset>,
    /// Requests per second allowed from one client address (sustained), on every route.
    #[arg(long, env = "WALLET_RATE_LIMIT_PER_SECOND", default_value_t = 2000.0)]
    pub rate_limit_per_second: f64,
    /// Requests one client address may send in a burst.
    #[arg(long, env = "WALLET_RATE_LIMIT_BURST", default_value_t = 4000)]
    pub rate_limit_burst: u32,
    /// Requests per second allowed to one authenticated user, whatever their tokens (sustained).
    #[arg(long, env = "WALLET_USER_RATE_LIMIT_PER_SECOND", default_value_t = 500.0)]
    pub user_rate_limit_per_second: f64,
    /// Requests one authenticated user may send in a burst.
    #[arg(long, env = "WALLET_USER_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub user_rate_limit_burst: u32,
    /// Sign-ups, logins and refreshes per minute from one client address (sustained).
    #[arg(long, env = "WALLET_LOGIN_RATE_LIMIT_PER_MINUTE", default_value_t = 10.0)]
    pub login_rate_limit_per_minute: f64,
    /// Sign-ups, logins and refreshes one client address may send in a burst.
    #[arg(long, env = "WALLET_LOGIN_RATE_LIMIT_BURST", default_value_t = 10)]
    pub login_rate_limit_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client, as addresses or networks
    /// (`10.0.0.0/8,192.0.2.7`). From anyone else the header is ignored; without
    /// this, behind a proxy every client is the proxy's address.
    #[arg(long, env = "WALLET_TRUSTED_PROXIES", value_delimiter = ',', value_parser = network)]
    pub trusted_proxies: Vec<IpNet>,
    /// Failed logins in a row for one email that cost nothing; each further one locks
    /// that email's logins for 1 s, 2 s, 4 s, ... (429 login_throttled).
    #[arg(long, env = "WALLET_LOGIN_FAILURES_BEFORE_DELAY", default_value_t = 5)]
    pub login_failures_before_delay: u32,
    /// The longest delay after failed logins for one email.
    #[arg(long, env = "WALLET_LOGIN_DELAY_MAX_SECONDS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub login_delay_max_seconds: u64,
    /// An email's count of failed logins starts over after this long without one.
    #[arg(long, env = "WALLET_LOGIN_FAILURES_RESET_SECONDS", default_value_t = 12 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub login_failures_reset_seconds: u64,
    /// Seconds after which a metric series that was not updated is forgotten
    /// (dropped from `/metrics` until it is updated again).
    #[arg(long, env = "WALLET_METRICS_IDLE_TIMEOUT_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_idle_timeout_seconds: u64,
    /// Argon2id memory cost in KiB (OWASP: 19456).
    #[arg(long, env = "WALLET_PASSWORD_MEMORY_KIB", default_value_t = 19_456, hide = true)]
    pub password_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    #[arg(long, env = "WALLET_PASSWORD_ITERATIONS", default_value_t = 2, hide = true)]
    pub password_iterations: u32,
    /// NATS server to publish ledger events to (`nats://host:port`, stream
    /// `WALLET_EVENTS`), or several separated by commas (the members of one
    /// NATS cluster); without it nothing is published. A node keeps its
    /// journal and shared directory there too.
    #[arg(long, env = "WALLET_NATS_URL")]
    pub nats_url: Option<String>,
    /// Replicas of the events stream (3 with a three-server NATS cluster).
    #[arg(long, env = "WALLET_EVENTS_REPLICAS", default_value_t = 1)]
    pub events_replicas: usize,
    /// JetStream's duplicate window for the events stream, in milliseconds.
    #[arg(long, env = "WALLET_EVENTS_DUPLICATE_WINDOW_MS", default_value_t = 120_000)]
    pub events_duplicate_window_ms: u64,
    /// Most durable events waiting for NATS in memory.
    #[arg(long, env = "WALLET_EVENTS_QUEUE_MAX", default_value_t = 1_000_000)]
    pub events_queue_max: usize,
    /// How often a Server-Sent Events stream with nothing to send sends a
    /// heartbeat comment, in milliseconds (proxies close idle connections).
    #[arg(long, env = "WALLET_EVENTS_HEARTBEAT_MS", default_value_t = 15_000)]
    pub events_heartbeat_ms: u64,
    /// Server-Sent Events streams open on this node at once; past it a new
    /// one gets 503.
    #[arg(long, env = "WALLET_EVENTS_STREAMS_MAX", default_value_t = 10_000)]
    pub events_streams_max: usize,
    /// Password hashes computed at once (each takes the memory cost above and a thread);
    /// as many more may wait, and a request beyond gets 503 `hashing_busy` with
    /// `Retry-After`. Default: the number of cores.
    #[arg(long, env = "WALLET_PASSWORD_HASHES_MAX", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub password_hashes_max: Option<u32>,
    /// The secret settings given as flags (visible in `ps`), to warn about.
    #[arg(skip)]
    pub secrets_given_as_flags: Vec<&'static str>,
    /// Default risk rules: the configuration file's `[[risk_rules]]` (no flag
    /// or variable sets them). Created at start unless a stored rule has the name.
    #[arg(skip)]
    pub risk_rules: Vec<RuleBody>,
}

impl Settings {
    /// Settings from flags alone, as `wallet serve ARGS` would read them
    /// (environment variables still apply to flags not given).
    pub fn from_args<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let all = ["wallet".into(), "serve".into()].into_iter().chain(args.into_iter().map(Into::into));
        let cli = Cli::try_parse_from(all.collect::<Vec<std::ffi::OsString>>())?;
        Ok(cli.command.into_settings())
    }
}

/// An absolute `http` or `https` URL.
/// An https URL, or an http one on this host: keys fetched in the clear
/// from elsewhere could be swapped by anyone on the path.
fn jwks_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or_default();
    let address = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
    let loopback = address.map_or(host.eq_ignore_ascii_case("localhost"), |address| address.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err("the scheme must be https (http only for a loopback address)".to_string()),
        other => Err(format!("the scheme must be https, not {other}")),
    }
}

/// An address (a /32 or /128) or a network in CIDR notation.
fn network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    match text.parse::<IpNet>() {
        Ok(network) => Ok(network.trunc()),
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("not an address or a network: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_readme() {
        let settings = Settings::from_args(Vec::<String>::new()).map_err(|e| e.to_string());
        let settings = match settings {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.shards, 64);
    }

    #[test]
    fn a_config_file_fills_what_flags_and_environment_leave() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wallet.toml");
        std::fs::write(&path, "shards = 8\nlisten = \"127.0.0.1:9000\"\nlog_format = \"json\"\n")?;
        let config = path.to_string_lossy().to_string();
        let cli = Cli::load(["wallet", "--config", config.as_str(), "serve", "--shards", "16"])?;
        assert_eq!(cli.log_format, LogFormat::Json);
        let settings = cli.command.into_settings();
        assert_eq!(settings.shards, 16, "the flag wins");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9000");

        std::fs::write(&path, "no_such_setting = 1\n")?;
        let error = Cli::load(["wallet", "--config", config.as_str(), "serve"]).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("no_such_setting")));
        Ok(())
    }

    #[test]
    fn a_node_takes_its_id_and_settings_from_the_file_too() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wallet.toml");
        std::fs::write(&path, "node_id = 3\njournal_replicas = 3\nstandby = true\nshards = 8\n")?;
        let config = path.to_string_lossy().to_string();
        let cli = Cli::load(["wallet", "--config", config.as_str(), "node", "--nats-url", "nats://x:4222"])?;
        let Command::Node(node) = cli.command else { panic!("not a node") };
        assert_eq!((node.node_id, node.journal_replicas, node.settings.shards), (Some(3), 3, 8));
        assert!(node.standby);
        assert_eq!(node.settings.nats_url.as_deref(), Some("nats://x:4222"));
        // The same file serves `wallet serve`, which has no use for the
        // node's keys.
        let cli = Cli::load(["wallet", "--config", config.as_str(), "serve"])?;
        assert_eq!(cli.command.into_settings().shards, 8);
        Ok(())
    }

    #[test]
    fn a_config_file_may_hold_default_risk_rules() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wallet.toml");
        let rule = "[[risk_rules]]\nname = \"ten a minute\"\nkind = \"velocity_count\"\n\
                    scope = { type = \"global\" }\naction = \"reject\"\n\
                    parameters = { window_seconds = 60, count = 10 }\n";
        std::fs::write(&path, format!("shards = 8\n{rule}"))?;
        let config = path.to_string_lossy().to_string();
        let settings = Cli::load(["wallet", "--config", config.as_str(), "serve"])?.command.into_settings();
        assert_eq!(settings.shards, 8);
        assert_eq!(settings.risk_rules.len(), 1);
        let parsed = settings.risk_rules[0].clone().into_rule(wallet_actors::risk::RuleId::new(1)?);
        assert!(parsed.is_ok_and(|r| r.name == "ten a minute"));

        std::fs::write(&path, rule.replace("name =", "title ="))?;
        let error = Cli::load(["wallet", "--config", config.as_str(), "serve"]).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("risk_rules")), "an unknown field is refused");
        Ok(())
    }

    #[test]
    fn a_jwks_url_is_https_or_on_this_host() {
        for good in
            ["https://idp.example/jwks", "http://127.0.0.1:9/jwks", "http://[::1]:9/", "http://localhost/"]
        {
            assert!(jwks_url(good).is_ok(), "{good}");
        }
        for bad in
            ["http://idp.example/jwks", "http://10.0.0.1/", "ftp://idp.example/", "http://127.0.0.1.nip.io/"]
        {
            assert!(jwks_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() -> Result<(), clap::Error> {
        let settings = Settings::from_args(["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,2001:db8::/32"])?;
        let shown: Vec<String> = settings.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(Settings::from_args(["--trusted-proxies", "proxy.example.com"]).is_err());
        Ok(())
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(..)");
    }
}
