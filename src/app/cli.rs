//! The command line: clap definitions and the glue from each command to the library.
//! Errors come back as [`CliError`] with the exit code CONTRACT.md fixes (2: bad input or
//! could not run; 1: ran and failed).

use crate::app::config::{Config, DEFAULT_PATH};
use crate::domain::Environment;
use crate::store::import::ImportFormat;
use crate::store::{Store, Upsert};
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
    /// Publish a press of doorbell ID on the broker, exactly as a bridge would.
    Ring { id: String },
    /// One poll of the legacy feedback service; prunes as `run` does.
    Feedback,
    /// The built-in APNs simulator.
    ApnsSim(SimArgs),
    /// The field technician's check: exit 0 all good, 1 a check failed, 2 could not run.
    Diag {
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
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
    Add {
        user: String,
        token: String,
        /// The token is from a development build (APNs sandbox).
        #[arg(long)]
        sandbox: bool,
        /// The app's bundle id, when it differs from apns.topic.
        #[arg(long, value_name = "BUNDLE_ID")]
        topic: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// `phone import USER FILE` (one token a line) or `phone import --csv FILE` (user,token).
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
    Rm {
        token: String,
    },
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

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Runs a store-only command synchronously.
pub fn admin(cli: &Cli) -> Result<(), CliError> {
    let cfg = load(&cli.config_path())?;
    let mut store = open_store(&cfg)?;
    match &cli.command {
        Command::User(UserCmd::Add { name }) => {
            store.add_user(name)?;
            println!("user {name} added");
        }
        Command::User(UserCmd::List { json }) => {
            let users = store.list_users()?;
            if *json {
                print_json(&users);
            } else {
                println!("{:<24} {:>6} {:>9}", "USER", "PHONES", "DOORBELLS");
                for u in users {
                    println!("{:<24} {:>6} {:>9}", u.name, u.phones, u.doorbells);
                }
            }
        }
        Command::User(UserCmd::Rm { name }) => {
            store.remove_user(name)?;
            println!("user {name} removed");
        }
        Command::Doorbell(DoorbellCmd::Add { id, name, owner }) => {
            store.add_doorbell(id, name.as_deref(), owner)?;
            println!("doorbell {id} added, owned by {owner}");
        }
        Command::Doorbell(DoorbellCmd::List { json }) => {
            let bells = store.list_doorbells()?;
            if *json {
                print_json(&bells);
            } else {
                println!("{:<16} {:<24} {:<16} {:<24} BINDINGS", "ID", "NAME", "OWNER", "SHARED WITH");
                for d in bells {
                    println!(
                        "{:<16} {:<24} {:<16} {:<24} {}",
                        d.id,
                        d.name,
                        d.owner,
                        d.shared_with.join(","),
                        d.bindings.join(",")
                    );
                }
            }
        }
        Command::Doorbell(DoorbellCmd::Rm { id }) => {
            store.remove_doorbell(id)?;
            println!("doorbell {id} removed");
        }
        Command::Doorbell(DoorbellCmd::Bind { id, source, key }) => {
            store.bind(id, source, key)?;
            println!("{source} button {key} now rings doorbell {id}");
        }
        Command::Doorbell(DoorbellCmd::Learn { id, seconds }) => learn(&mut store, id, *seconds)?,
        Command::Share { id, user } => {
            store.share(id, user)?;
            println!("doorbell {id} shared with {user}");
        }
        Command::Unshare { id, user } => {
            store.unshare(id, user)?;
            println!("doorbell {id} no longer shared with {user}");
        }
        Command::Phone(cmd) => phone(&mut store, cmd)?,
        Command::Pair(PairCmd::Open { user, share, minutes }) => {
            let opener = crate::store::pairing::Opener::Cli;
            let w = store.open_pair_window(user, share.as_deref(), *minutes, opener, crate::domain::now_ms())?;
            let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(w.expires_at as u64);
            // The one place a code is shown: on the terminal of whoever may open windows.
            println!("pairing code for {user}: {}", w.code.reveal());
            let shared = share.as_ref().map(|d| format!("; shares doorbell {d}")).unwrap_or_default();
            println!("valid once, for {minutes} minute(s), until {}{shared}", humantime::format_rfc3339_seconds(until));
        }
        _ => unreachable!("not an admin command"),
    }
    Ok(())
}

fn phone(store: &mut Store, cmd: &PhoneCmd) -> Result<(), CliError> {
    let env = |sandbox: bool| if sandbox { Environment::Sandbox } else { Environment::Production };
    match cmd {
        PhoneCmd::Add { user, token, sandbox, topic, name } => {
            let r = store.add_phone(user, token, env(*sandbox), topic.as_deref(), name.as_deref())?;
            let short = crate::domain::normalize_token(token).map(|t| t[..8].to_string()).unwrap_or_default();
            match r {
                Upsert::Added(id) => println!("phone {id} ({short}…) added for {user}"),
                Upsert::Updated(id) => println!("phone {id} ({short}…) re-registered for {user}"),
            }
        }
        PhoneCmd::Import { user, file, csv, sandbox } => {
            let (format, path) = match (user, file, csv) {
                (Some(u), Some(f), None) => (ImportFormat::Tokens { user: u }, f),
                (None, None, Some(c)) => (ImportFormat::Csv, c),
                _ => return Err(CliError::input("phone import takes USER FILE, or --csv FILE")),
            };
            let f = std::fs::File::open(path)
                .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))?;
            let t0 = std::time::Instant::now();
            let r = store.import_phones(format, std::io::BufReader::new(f), env(*sandbox))?;
            for (line, why) in r.rejected.iter().take(20) {
                println!("line {line}: rejected: {why}");
            }
            if r.rejected.len() > 20 {
                println!("... and {} more rejected lines", r.rejected.len() - 20);
            }
            println!(
                "imported {}: {} added, {} updated, {} rejected, {} users created in {:.2}s",
                path.display(),
                r.added,
                r.updated,
                r.rejected.len(),
                r.users_created,
                t0.elapsed().as_secs_f64()
            );
        }
        PhoneCmd::List { json, full } => {
            let mut phones = store.list_phones()?;
            if !full {
                for p in &mut phones {
                    p.token = crate::domain::short_token(&p.token).to_string();
                }
            }
            if *json {
                print_json(&phones);
            } else {
                println!("{:>6} {:<16} {:<10} {:<11} {:<20} LAST PROBLEM", "ID", "USER", "TOKEN", "ENV", "NAME");
                for p in phones {
                    println!(
                        "{:>6} {:<16} {:<10} {:<11} {:<20} {}",
                        p.id,
                        p.user,
                        p.token,
                        p.environment,
                        p.name.unwrap_or_default(),
                        p.last_outcome.unwrap_or_default()
                    );
                }
            }
        }
        PhoneCmd::Rm { token } => {
            let n = store.remove_phone(token)?;
            println!("{n} phone registration(s) removed");
        }
    }
    Ok(())
}

/// `dingdong doorbell learn ID`: leaves a learn request in the database, which the running
/// daemon fulfils with the next unknown press, and waits for it (polling the database, the
/// one thing both processes share).
fn learn(store: &mut Store, id: &str, seconds: u64) -> Result<(), CliError> {
    store.request_learn(id, seconds, crate::domain::now_ms())?;
    println!("press the button for doorbell {id} now (waiting {seconds}s; the daemon must be running)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let result = loop {
        if let Some(found) = store.learn_result(id)? {
            break Some(found);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    store.end_learn(id)?;
    match result {
        Some((source, key)) => {
            println!("{source} button {key} now rings doorbell {id}");
            Ok(())
        }
        None => Err(CliError::failed(format!(
            "no unknown button was pressed within {seconds}s; is `dingdong run` running and the bridge publishing? \
             (dingdong diag lists recent unbound presses)"
        ))),
    }
}

/// `dingdong ring ID`: one QoS 1 press on the broker, waited for until the broker has it.
pub async fn ring(cli: &Cli, id: &str) -> Result<(), CliError> {
    let cfg = load(&cli.config_path())?;
    crate::domain::check_id("doorbell", id).map_err(CliError::input)?;
    if cfg.gateway.database.exists() {
        let store = open_store(&cfg)?;
        if store.resolve_button("native", id)?.is_none() {
            return Err(CliError::input(format!("no doorbell '{id}' (and no native binding for it)")));
        }
    }
    let url = if cfg.mqtt.url == "embedded" { "mqtt://127.0.0.1:1883".to_string() } else { cfg.mqtt.url.clone() };
    let mut c2 = cfg.clone();
    c2.mqtt.url = url;
    let client_id = format!("dingdong-ring-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let settings = crate::app::settings::mqtt_tool(&c2, client_id).map_err(CliError::input)?;
    let at = crate::domain::now_ms();
    let topic = format!("{}/button/{id}/press", cfg.mqtt.topic_prefix);
    crate::net::mqtt::publish_once(settings, topic, serde_json::json!({ "at": at }).to_string().into_bytes())
        .await
        .map_err(CliError::failed)?;
    println!("pressed {id}: ring {}", crate::service::ringer::ring_id(id, Some(at)));
    Ok(())
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Run => {
            // daemon::run checks the key files before opening anything (exit 2 below).
            let cfg = load(&cli.config_path())?;
            if let (Some(spec), Some(set)) = (&cfg.log.filter, crate::app::daemon::LOG_FILTER.get()) {
                set(spec)
                    .map_err(|e| CliError::input(format!("config {}: key `log.filter`: {e}", cfg.file.display())))?;
            }
            let rt = tokio::runtime::Runtime::new().map_err(CliError::failed)?;
            rt.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let reload = daemon_signals(stop.clone()).map_err(CliError::failed)?;
                let control = crate::app::daemon::Control { stop, reload: Some(reload), ..Default::default() };
                crate::app::daemon::run(cfg, control).await.map_err(|e| {
                    if e.is_input() {
                        CliError::input(e)
                    } else {
                        CliError::failed(e)
                    }
                })
            })
        }
        Command::Demo => {
            let rt = tokio::runtime::Runtime::new().map_err(CliError::failed)?;
            rt.block_on(crate::app::demo::run()).map_err(CliError::failed)
        }
        Command::Ring { id } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::failed)?;
            rt.block_on(ring(&cli, id))
        }
        Command::Diag { json } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::failed)?;
            let report = rt.block_on(crate::app::diag::run(&cli.config_path()));
            if *json {
                print_json(&report);
            } else {
                print!("{}", report.render());
            }
            match report.exit_code() {
                0 => Ok(()),
                code => Err(CliError {
                    code,
                    message: if code == 2 { "diag could not run: no usable config" } else { "diag: a check failed" }
                        .into(),
                }),
            }
        }
        Command::ApnsSim(args) => {
            let rt = tokio::runtime::Runtime::new().map_err(CliError::failed)?;
            rt.block_on(apns_sim(args))
        }
        Command::Feedback => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::failed)?;
            rt.block_on(feedback(&cli))
        }
        _ => admin(&cli),
    }
}

/// The daemon's signals, registered before anything else runs: SIGTERM and SIGINT cancel
/// `stop`; each SIGHUP is a message on the returned channel (a reload).
pub fn daemon_signals(stop: tokio_util::sync::CancellationToken) -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // A burst of SIGHUPs is one reload: a full queue drops the extra ones.
                _ = hup.recv() => { let _ = tx.try_send(()); }
            }
        }
        stop.cancel();
    });
    Ok(rx)
}

/// Cancels `stop` at SIGTERM or SIGINT.
pub async fn stop_on_signal(stop: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    stop.cancel();
}

/// `dingdong feedback`: one poll of the legacy feedback service, pruned as `run` prunes.
pub async fn feedback(cli: &Cli) -> Result<(), CliError> {
    use crate::service::feedback::{poll_and_prune, FeedbackError};
    let cfg = load(&cli.config_path())?;
    cfg.check_files()?;
    let client = crate::app::settings::feedback_client(&cfg).map_err(CliError::input)?;
    let store = crate::store::StoreHandle::spawn(open_store(&cfg)?);
    let r = poll_and_prune(&client, &store).await.map_err(|e| match e {
        FeedbackError::Store(e) => CliError::input(e),
        e => CliError::failed(e),
    })?;
    println!(
        "feedback: {} tuples read, {} phones pruned, {} kept (registered again after Apple's timestamp), {} unknown, {} malformed",
        r.read, r.pruned, r.kept, r.unknown, r.malformed
    );
    Ok(())
}

async fn apns_sim(args: &SimArgs) -> Result<(), CliError> {
    if args.http2.is_none() && args.binary.is_none() && args.feedback.is_none() {
        return Err(CliError::input(
            "apns-sim: give at least one listener, e.g. --http2 127.0.0.1:8443 or --binary 127.0.0.1:2195",
        ));
    }
    let opts = crate::app::sim::SimOptions {
        http2: args.http2,
        out_dir: args.out.clone(),
        tokens: args.tokens.clone(),
        fast: args.fast,
        max_streams: args.max_streams,
        certs: crate::app::sim::CertOptions {
            topic: args.topic.clone(),
            expired_client_cert: args.expired_cert,
            sandbox_client_cert: args.sandbox_cert,
        },
        faults: crate::app::sim::Faults {
            fail_rate: args.fail_rate,
            goaway_after: args.goaway_after,
            latency: std::time::Duration::from_millis(args.latency_ms),
            drop_after: args.drop_after,
        },
        binary: args.binary,
        feedback: args.feedback,
        shutdown_after: args.shutdown_after,
        binary_drop_after: (args.drop_after > 0).then_some(args.drop_after),
        clock_skew_secs: args.clock_skew,
    };
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(CliError::input("--fail-rate must be between 0 and 1"));
    }
    let sim = crate::app::sim::Sim::start(opts).await.map_err(CliError::input)?;
    // One JSON line on stdout, for scripts and tests: where it listens and what it wrote.
    println!(
        "{}",
        serde_json::json!({
            "http2": sim.http2_addr.map(|a| a.to_string()),
            "binary": sim.binary_addr.map(|a| a.to_string()),
            "feedback": sim.feedback_addr.map(|a| a.to_string()),
            "credentials": sim.credentials,
        })
    );
    // Under systemd (`systemd-run -p Type=notify`): started means listening, credentials written.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let stop = tokio_util::sync::CancellationToken::new();
    stop_on_signal(stop.clone()).await;
    tracing::info!(stats = %sim.state.stats(), "apns-sim stopping");
    Ok(())
}
