//! The command line: clap definitions and the glue from each command to the library.
//! Errors come back as [`CliError`] with the exit code CONTRACT.md fixes (2: bad input or
//! could not run; 1: ran and failed).

mod admin;
mod history;
mod household;
mod phone_sim;
mod tools;

pub use phone_sim::PhoneSimCmd;

pub use tools::{daemon_signals, stop_on_signal};

use crate::app::config::{Config, DEFAULT_PATH};
use crate::store::Store;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "dingdong", version, about = "Doorbell presses to every phone of a household, through APNs")]
pub struct Cli {
    /// The config file (also DINGDONG_CONFIG).
    #[arg(long, global = true, env = "DINGDONG_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run,
    /// A tour on one machine: embedded broker, temporary database, built-in simulator.
    Demo,
    /// People.
    #[command(subcommand)]
    User(UserCmd),
    /// Doorbells, each with exactly one owner.
    #[command(subcommand)]
    Doorbell(DoorbellCmd),
    /// Share a doorbell with a user.
    Share { id: String, user: String },
    /// Stop sharing a doorbell with a user.
    Unshare { id: String, user: String },
    /// Phones (push tokens).
    #[command(subcommand)]
    Phone(PhoneCmd),
    /// Pairing windows: one-time codes with which a phone joins a user.
    #[command(subcommand)]
    Pair(PairCmd),
    /// The reference phone: pairs as the app would and sends signed requests (one JSON line).
    #[command(subcommand)]
    PhoneSim(PhoneSimCmd),
    /// Publish a press of doorbell ID on the broker, exactly as a bridge would.
    Ring { id: String },
    /// One poll of the legacy feedback service; prunes as `run` does.
    Feedback,
    /// The built-in push simulator: APNs, and FCM and Web Push with --fcm and --webpush.
    ApnsSim(SimArgs),
    /// Web Push: the VAPID key of the web app.
    #[command(subcommand)]
    Webpush(WebpushCmd),
    /// The field technician's check: exit 0 all good, 1 a check failed, 2 could not run.
    Diag {
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Ring history: the latest rings with their outcome counts and latency, or one ring.
    Rings(RingsArgs),
    /// How a person's phones are alerted (for every doorbell, or one).
    Alert(household::AlertArgs),
    /// Quiet hours per person (and doorbell), in `[gateway] timezone`.
    #[command(subcommand)]
    Quiet(household::QuietCmd),
    /// Mute (or silence) a person's phones for a while; it ends by itself.
    Mute(household::MuteArgs),
    /// End a person's mute.
    Unmute {
        user: String,
        /// Only this doorbell's mute (else the one for every doorbell).
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
    },
    /// An online backup of the database to FILE (0600), safe while the daemon runs.
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RingsArgs {
    #[command(subcommand)]
    pub show: Option<RingsCmd>,
    /// Only the rings of this doorbell.
    #[arg(long, value_name = "ID")]
    pub doorbell: Option<String>,
    /// Only rings of the last DURATION (90m, 2h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = history::parse_since)]
    pub since: Option<std::time::Duration>,
    /// At most N rings, newest first.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RingsCmd {
    /// One ring with every phone it reached.
    Show {
        ring_id: String,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Show whole tokens instead of their first 8 hex characters.
        #[arg(long)]
        full: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    Add {
        name: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Rm {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DoorbellCmd {
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        owner: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Rm {
        id: String,
    },
    /// Give a doorbell another name (what notifications and Home Assistant say).
    Rename {
        id: String,
        #[arg(long)]
        name: String,
    },
    /// Bind a radio button to a doorbell.
    Bind {
        id: String,
        /// native, rtl_433, tasmota or zigbee2mqtt
        #[arg(long)]
        source: String,
        #[arg(long)]
        key: String,
    },
    /// With the daemon running: bind the next press of an unknown button to doorbell ID.
    Learn {
        id: String,
        /// How long to wait for the press.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PhoneCmd {
    /// `phone add USER TOKEN` (an iPhone), `--fcm TOKEN` (Android) or `--webpush FILE|-`
    /// (a browser's PushSubscription JSON).
    Add {
        user: String,
        /// The iPhone's APNs device token (hex).
        #[arg(required_unless_present_any = ["fcm", "webpush"])]
        token: Option<String>,
        /// An Android phone's FCM registration token (it may start with '-').
        #[arg(long, value_name = "TOKEN", allow_hyphen_values = true, conflicts_with_all = ["token", "webpush", "sandbox"])]
        fcm: Option<String>,
        /// A browser's PushSubscription JSON, from FILE or `-` (standard input).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "fcm", "sandbox"])]
        webpush: Option<PathBuf>,
        /// The token is from a development build (APNs sandbox).
        #[arg(long)]
        sandbox: bool,
        /// The app's bundle id, when it differs from apns.topic.
        #[arg(long, value_name = "BUNDLE_ID")]
        topic: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// `phone import USER FILE` (one phone a line) or `phone import --csv FILE` (user,token).
    /// A line is an APNs token (hex), an FCM token, or a PushSubscription's JSON.
    Import {
        user: Option<String>,
        file: Option<PathBuf>,
        #[arg(long, value_name = "FILE", conflicts_with_all = ["user", "file"])]
        csv: Option<PathBuf>,
        #[arg(long)]
        sandbox: bool,
    },
    List {
        #[arg(long)]
        json: bool,
        /// Show whole tokens instead of their first 8 hex characters.
        #[arg(long)]
        full: bool,
    },
    /// `phone rm TOKEN`: an APNs token, an FCM token or a Web Push endpoint URL; or
    /// `--webpush FILE|-` with the subscription's JSON.
    Rm {
        #[arg(required_unless_present = "webpush", allow_hyphen_values = true)]
        token: Option<String>,
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        webpush: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebpushCmd {
    /// Print the VAPID public key (base64url) the web app subscribes with; writes a new key to
    /// `webpush.vapid_key_file` first if there is none.
    Key,
}

#[derive(Subcommand, Debug)]
pub enum PairCmd {
    /// Open a pairing window for USER (created if new) and print its one-time code.
    Open {
        #[arg(long)]
        user: String,
        /// Share this doorbell with the user as well.
        #[arg(long, value_name = "DOORBELL")]
        share: Option<String>,
        /// How long the code is valid (1 to 60).
        #[arg(long, default_value_t = crate::codec::pairing::DEFAULT_MINUTES,
              value_parser = clap::value_parser!(u32).range(1..=crate::codec::pairing::MAX_MINUTES as i64))]
        minutes: u32,
    },
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Address of the HTTP/2 provider API.
    #[arg(long, value_name = "ADDR")]
    pub http2: Option<std::net::SocketAddr>,
    /// Where the CA, certificates and AuthKey are written.
    #[arg(long, value_name = "DIR", default_value = "apns-sim")]
    pub out: PathBuf,
    /// Known tokens (`TOKEN [sandbox|production] [unregistered[=MS]]` a line).
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Count only, record nothing: the benchmarks' accept-all mode.
    #[arg(long)]
    pub fast: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS to announce.
    #[arg(long, default_value_t = 1000)]
    pub max_streams: u32,
    /// The bundle id named in the generated client certificate.
    #[arg(long, default_value = "com.example.doorbell")]
    pub topic: String,
    /// Share (0 to 1) of notifications answered 500 or 503.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub fail_rate: f64,
    /// Send GOAWAY on a connection after every N requests.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub goaway_after: u64,
    /// Delay every answer by L milliseconds.
    #[arg(long, default_value_t = 0, value_name = "L")]
    pub latency_ms: u64,
    /// Close a connection abruptly (no GOAWAY) after N requests; the legacy gateway drops one
    /// connection, without an error-response, after N accepted notifications.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub drop_after: u64,
    /// Address of the legacy binary gateway (client certificate required).
    #[arg(long, value_name = "ADDR")]
    pub binary: Option<std::net::SocketAddr>,
    /// Address of the legacy feedback service (client certificate required).
    #[arg(long, value_name = "ADDR")]
    pub feedback: Option<std::net::SocketAddr>,
    /// The legacy gateway answers status 10 (shutdown) once, after N accepted notifications.
    #[arg(long, value_name = "N")]
    pub shutdown_after: Option<u64>,
    /// Fault: the simulator's clock (its `date` header) is off by SECS (may be negative).
    #[arg(long, value_name = "SECS", default_value_t = 0, allow_hyphen_values = true)]
    pub clock_skew: i64,
    /// Fault: generate an already expired client certificate (new credentials only).
    #[arg(long)]
    pub expired_cert: bool,
    /// Fault: generate a development (sandbox-only) client certificate, refused on the
    /// production host with BadCertificateEnvironment (new credentials only).
    #[arg(long)]
    pub sandbox_cert: bool,
    /// Address of the FCM simulator: the OAuth token endpoint and the HTTP v1 send API.
    #[arg(long, value_name = "ADDR")]
    pub fcm: Option<std::net::SocketAddr>,
    /// Address of the Web Push simulator: a push service that checks VAPID and decrypts.
    #[arg(long, value_name = "ADDR")]
    pub webpush: Option<std::net::SocketAddr>,
    /// Test phones to make for the FCM and Web Push simulators (registration tokens and
    /// subscriptions written into --out).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub push_phones: u32,
    /// The Web Push simulator speaks HTTP/1.1 only (as many real push services do).
    #[arg(long)]
    pub webpush_http1: bool,
}

/// A command's failure, with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn input(m: impl std::fmt::Display) -> CliError {
        CliError { code: 2, message: m.to_string() }
    }
    pub fn failed(m: impl std::fmt::Display) -> CliError {
        CliError { code: 1, message: m.to_string() }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::input(e)
    }
}

impl From<crate::app::config::ConfigError> for CliError {
    fn from(e: crate::app::config::ConfigError) -> Self {
        CliError::input(e)
    }
}

impl Cli {
    pub fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }
}

fn load(path: &Path) -> Result<Config, CliError> {
    Ok(Config::load(path)?)
}

fn open_store(cfg: &Config) -> Result<Store, CliError> {
    Ok(Store::open(&cfg.gateway.database)?)
}

/// The store of the config at `path`.
fn open(path: &Path) -> Result<Store, CliError> {
    open_store(&load(path)?)
}

/// Runs `fut` on a runtime: a multi-threaded one for the daemon, the demo and the simulator,
/// the current thread for the short tools.
fn block_on<T>(multi: bool, fut: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    let rt = if multi {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    rt.map_err(CliError::failed)?.block_on(fut)
}

/// Runs the parsed command line: one arm per command.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    let path = cli.config_path();
    match &cli.command {
        Command::Run => tools::run(&path),
        Command::Demo => demo(),
        Command::User(cmd) => admin::user(&path, cmd),
        Command::Doorbell(cmd) => admin::doorbell(&path, cmd),
        Command::Share { id, user } => admin::share(&path, id, user, true),
        Command::Unshare { id, user } => admin::share(&path, id, user, false),
        Command::Phone(cmd) => admin::phone(&path, cmd),
        Command::Pair(cmd) => admin::pair(&path, cmd),
        Command::PhoneSim(cmd) => phone_sim::run(&path, cmd),
        Command::Ring { id } => block_on(false, tools::ring(&path, id)),
        Command::Feedback => block_on(false, tools::feedback(&path)),
        Command::ApnsSim(args) => block_on(true, tools::apns_sim(args)),
        Command::Webpush(WebpushCmd::Key) => admin::webpush_key(&path),
        Command::Diag { json } => tools::diag(&path, *json),
        Command::Rings(args) => history::rings(&path, args),
        Command::Backup { file, force } => history::backup(&path, file, *force),
        Command::Alert(args) => household::alert(&path, args),
        Command::Quiet(cmd) => household::quiet(&path, cmd),
        Command::Mute(args) => household::mute(&path, args),
        Command::Unmute { user, doorbell } => household::unmute(&path, user, doorbell.as_deref()),
    }
}

#[cfg(all(feature = "sim", feature = "embedded-broker"))]
fn demo() -> Result<(), CliError> {
    block_on(true, async { crate::app::demo::run().await.map_err(CliError::failed) })
}

#[cfg(not(all(feature = "sim", feature = "embedded-broker")))]
fn demo() -> Result<(), CliError> {
    Err(CliError::input("this build has no demo (built without the `sim` and `embedded-broker` features)"))
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
