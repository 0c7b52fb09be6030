//! `dingdong diag`: the field technician's checks, one line each (`ok` / `warn` / `FAIL`) with
//! the figure behind it and, when something is wrong, the cause and the fix. Changes no state:
//! the database is opened read-only, the broker sees a clean session with no will, and APNs
//! sees one push to a deliberately invalid token.

mod push;

use crate::app::config::Config;
use crate::app::service_user;
use crate::domain::Reason;
use crate::net::apns::http2::Probe;
use crate::store::Store;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A well-formed token Apple never issues: BadDeviceToken proves the credentials work.
pub const PROBE_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Certificates expiring sooner than this are a warning.
const EXPIRY_WARN_DAYS: i64 = 30;
/// Clock skew: a warning beyond this many seconds, a failure beyond `SKEW_FAIL`.
const SKEW_WARN: i64 = 5;
const SKEW_FAIL: i64 = 60;
/// Unbound presses younger than this are reported.
const UNBOUND_WINDOW_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    /// The measurement or fact behind the verdict.
    pub figure: String,
    /// For warnings and failures: a short name of the problem ("wrong key id", ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, figure: impl Into<String>) -> Check {
        Check { name, level: Level::Ok, figure: figure.into(), problem: None, fix: None }
    }
    fn bad(
        name: &'static str,
        level: Level,
        figure: impl Into<String>,
        problem: &str,
        fix: impl Into<String>,
    ) -> Check {
        Check { name, level, figure: figure.into(), problem: Some(problem.into()), fix: Some(fix.into()) }
    }
    fn fail(name: &'static str, figure: impl Into<String>, problem: &str, fix: impl Into<String>) -> Check {
        Self::bad(name, Level::Fail, figure, problem, fix)
    }
    fn warn(name: &'static str, figure: impl Into<String>, problem: &str, fix: impl Into<String>) -> Check {
        Self::bad(name, Level::Warn, figure, problem, fix)
    }
}

/// Everything diag found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: PathBuf,
    pub gateway: Option<String>,
    pub ok: bool,
    pub checks: Vec<Check>,
    pub rings: Vec<crate::store::rings::RingSummary>,
}

impl Report {
    /// 0 all good (warnings allowed), 1 a check failed, 2 could not run (no usable config).
    pub fn exit_code(&self) -> i32 {
        if self.gateway.is_none() {
            2
        } else if self.ok {
            0
        } else {
            1
        }
    }

    /// The human table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "dingdong diag: gateway {}, config {}\n",
            self.gateway.as_deref().unwrap_or("?"),
            self.config.display()
        );
        for c in &self.checks {
            let mut line = format!("{:<4}  {:<17} {}", c.level.label(), c.name, c.figure);
            if let Some(p) = &c.problem {
                line.push_str(&format!(" -- {p}"));
            }
            if let Some(f) = &c.fix {
                line.push_str(&format!("; fix: {f}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if !self.rings.is_empty() {
            out.push_str("last rings:\n");
            for r in &self.rings {
                out.push_str(&format!(
                    "      {}  {}  {:<16} {:<8} presses {}  phones {}: delivered {}, failed {}, pruned {}, pending {}, expired {}, muted {}, silenced {}{}\n",
                    r.ring_id,
                    ago(r.pressed_at),
                    r.doorbell,
                    r.state,
                    r.presses,
                    r.phones,
                    r.delivered,
                    r.failed,
                    r.pruned,
                    r.pending,
                    r.expired,
                    r.muted,
                    r.silenced,
                    r.answered_by.as_deref().map(|a| format!("; answered by {a}")).unwrap_or_default()
                ));
            }
        }
        let fails = self.checks.iter().filter(|c| c.level == Level::Fail).count();
        let warns = self.checks.iter().filter(|c| c.level == Level::Warn).count();
        out.push_str(&format!("{} checks: {} failed, {} warnings\n", self.checks.len(), fails, warns));
        out
    }
}

fn ago(ms: i64) -> String {
    let s = ((crate::domain::now_ms() - ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn date(unix_secs: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64))
}

/// Runs every check against the config at `path`.
pub async fn run(path: &Path) -> Report {
    let mut checks = Vec::new();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail(
                "config",
                path.display().to_string(),
                "config does not load",
                e.to_string().replace('\n', " "),
            ));
            return Report { config: path.into(), gateway: None, ok: false, checks, rings: vec![] };
        }
    };
    checks.push(Check::ok(
        "config",
        format!(
            "parses: broker {}, APNs {} via {:?}, {} auth",
            cfg.mqtt.url,
            cfg.apns.environment.as_str(),
            cfg.apns.transport,
            if cfg.apns.token.is_some() { "token" } else { "certificate" }
        )
        .to_lowercase(),
    ));
    let files_ok = files(&cfg, &mut checks);
    secrets(&cfg, &mut checks);
    let mut rings = vec![];
    database(&cfg, &mut checks, &mut rings);
    disk(&cfg, &mut checks);
    broker(&cfg, &mut checks).await;
    certificate(&cfg, &mut checks);
    if files_ok {
        let cert_expired = checks.iter().any(|c| c.problem.as_deref() == Some("expired certificate"));
        apns(&cfg, &mut checks, cert_expired).await;
    } else {
        checks.push(Check::warn("apns", "not tried", "credentials unreadable", "fix the files check above first"));
    }
    if files_ok {
        push::check(&cfg, &mut checks).await;
    }
    let ok = checks.iter().all(|c| c.level != Level::Fail);
    Report { config: path.into(), gateway: Some(cfg.gateway.id.clone()), ok, checks, rings }
}

/// Every file the config names must be readable by this user (under systemd: the service's).
/// Secret files readable by every user on the gateway.
fn secrets(cfg: &Config, checks: &mut Vec<Check>) {
    let open: Vec<String> = cfg
        .secret_files()
        .into_iter()
        .filter(|(_, p)| crate::domain::files::readable_by_others(p))
        .map(|(k, p)| format!("{k} = {}", p.display()))
        .collect();
    if open.is_empty() {
        checks.push(Check::ok("secrets", "no secret file is readable by other users"));
    } else {
        checks.push(Check::warn(
            "secrets",
            format!("readable by every user: {}", open.join(", ")),
            "secret files too open",
            "chmod o-rwx each of them (root:dingdong 0640 is enough for the service)",
        ));
    }
}

fn files(cfg: &Config, checks: &mut Vec<Check>) -> bool {
    let mut named: Vec<(&str, &Path)> = vec![];
    if let Some(t) = &cfg.apns.token {
        named.push(("apns.token.key_file", &t.key_file));
    }
    if let Some(c) = &cfg.apns.certificate {
        for (k, p) in [
            ("apns.certificate.file", &c.file),
            ("apns.certificate.password_file", &c.password_file),
            ("apns.certificate.cert_file", &c.cert_file),
            ("apns.certificate.key_file", &c.key_file),
        ] {
            if let Some(p) = p {
                named.push((k, p));
            }
        }
    }
    named.extend(cfg.push_files().into_iter().map(|(k, p, _)| (k, p)));
    for (k, p) in [
        ("apns.ca_file", &cfg.apns.ca_file),
        ("mqtt.ca_file", &cfg.mqtt.ca_file),
        ("mqtt.password_file", &cfg.mqtt.password_file),
    ] {
        if let Some(p) = p {
            named.push((k, p));
        }
    }
    let mut all = true;
    for (key, p) in &named {
        if let Err(e) = crate::domain::files::read_bounded(p, crate::domain::files::MAX_SMALL_FILE) {
            all = false;
            checks.push(Check::fail(
                "files",
                format!("{key} = {}: {e}", p.display()),
                "unreadable key file",
                format!(
                    "make {} readable by the dingdong service (chgrp dingdong FILE; chmod 0640 FILE) or fix {key}",
                    p.display()
                ),
            ));
        }
    }
    let service = service_view(cfg);
    if all {
        if let Some(account) = &service {
            all = as_service(cfg, account, &named, checks);
        }
    }
    if all {
        let who = match &service {
            Some(a) => format!(" by user {} (uid {}), database writable", a.name, a.uid),
            None => String::new(),
        };
        checks.push(Check::ok("files", format!("{} credential/CA files readable{who}", named.len())));
    }
    all
}

/// The service's account when diag runs as root on the service's own config: root reads any
/// file, so readability must be judged as the user the unit runs as.
fn service_view(cfg: &Config) -> Option<service_user::Account> {
    let ours = cfg.file == Path::new(crate::app::config::DEFAULT_PATH);
    (ours && service_user::running_as_root()).then(service_user::service_account).flatten()
}

/// The config, every file it names, and the database files, as the service's user sees them.
fn as_service(cfg: &Config, account: &service_user::Account, named: &[(&str, &Path)], checks: &mut Vec<Check>) -> bool {
    use service_user::Need;
    let db = &cfg.gateway.database;
    let mut wanted: Vec<(String, PathBuf, Need)> = vec![("config".into(), cfg.file.clone(), Need::Read)];
    wanted.extend(named.iter().map(|(k, p)| (k.to_string(), p.to_path_buf(), Need::Read)));
    if let Some(dir) = db.parent().filter(|d| d.exists()) {
        wanted.push(("gateway.database".into(), dir.to_path_buf(), Need::Directory));
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        if p.exists() {
            wanted.push(("gateway.database".into(), p, Need::ReadWrite));
        }
    }
    let mut all = true;
    for (key, p, need) in wanted {
        if let Err(d) = service_user::access(account, &p, need) {
            all = false;
            let problem =
                if key == "gateway.database" { "database not writable by the service" } else { "unreadable key file" };
            checks.push(Check::fail("files", format!("{key}: {}", d.why), problem, d.fix));
        }
    }
    all
}

fn database(cfg: &Config, checks: &mut Vec<Check>, rings: &mut Vec<crate::store::rings::RingSummary>) {
    let path = &cfg.gateway.database;
    let store = match Store::open_readonly(path) {
        Ok(s) => s,
        Err(e) if !path.exists() => {
            checks.push(Check::fail(
                "database",
                e.to_string(),
                "database missing",
                "start the daemon once (systemctl start dingdong) or fix gateway.database",
            ));
            return;
        }
        Err(e) => {
            checks.push(corrupt(path, &e.to_string()));
            return;
        }
    };
    let integrity = match store.integrity_check(5) {
        Ok(v) => v,
        Err(e) => vec![e.to_string()],
    };
    if integrity != ["ok"] {
        checks.push(corrupt(path, &integrity.join("; ")));
        return;
    }
    let version = store.schema_version().unwrap_or(0);
    let latest = crate::store::schema::MIGRATIONS.len() as u32;
    match store.counts() {
        Ok((users, doorbells, phones)) => {
            let figure = format!(
                "{}: integrity ok, schema {version}/{latest}, {users} users, {doorbells} doorbells, {phones} phones",
                path.display()
            );
            if version > latest {
                checks.push(Check::fail(
                    "database",
                    figure,
                    "schema newer than this binary",
                    "a newer dingdong wrote it: install that version again, or restore the backup taken before the upgrade (dingdong.db.v*.bak beside it)",
                ));
                return;
            }
            if version < latest {
                checks.push(Check::warn(
                    "database",
                    figure,
                    "schema older than this binary",
                    "restart the daemon: it migrates at start",
                ));
                return;
            }
            checks.push(Check::ok("database", figure));
        }
        Err(e) => {
            checks.push(corrupt(path, &e.to_string()));
            return;
        }
    }
    household(&store, cfg, checks);
    *rings = store.recent_rings(10).unwrap_or_default();
}

fn corrupt(path: &Path, why: &str) -> Check {
    Check::fail(
        "database",
        format!("{}: {why}", path.display()),
        "corrupt database",
        format!(
            "stop dingdong, move {} aside, restore a backup (or start fresh and re-add the household), start dingdong",
            path.display()
        ),
    )
}

/// Doorbells nobody can ring, phones that fail, buttons pressed but bound to nothing.
fn household(store: &Store, cfg: &Config, checks: &mut Vec<Check>) {
    let bells = store.list_doorbells().unwrap_or_default();
    let rung = store.rings_per_doorbell().unwrap_or_default();
    if bells.is_empty() {
        checks.push(Check::fail(
            "doorbells",
            "0 doorbells",
            "no doorbell bound",
            "dingdong doorbell add ID --owner USER, then dingdong doorbell learn ID and press the button",
        ));
    }
    let unbound: Vec<&str> = bells
        .iter()
        .filter(|d| d.bindings.is_empty() && rung.get(&d.id).copied().unwrap_or(0) == 0)
        .map(|d| d.id.as_str())
        .collect();
    if !unbound.is_empty() {
        checks.push(Check::fail(
            "doorbells",
            format!("{} of {} without a binding and never pressed: {}", unbound.len(), bells.len(), unbound.join(", ")),
            "no doorbell bound",
            format!(
                "dingdong doorbell learn {} and press its button (or have the bridge publish {}/button/{}/press)",
                unbound[0], cfg.mqtt.topic_prefix, unbound[0]
            ),
        ));
    } else if !bells.is_empty() {
        let bound: usize = bells.iter().map(|d| d.bindings.len()).sum();
        checks.push(Check::ok("doorbells", format!("{} doorbells, {bound} bindings, all reachable", bells.len())));
    }

    match store.failing_phones() {
        Ok(f) if f.is_empty() => checks.push(Check::ok("phones", "no phone's last push failed")),
        Ok(f) => {
            let list: Vec<String> = f
                .iter()
                .take(5)
                .map(|p| format!("{} {}… ({}): {}", p.user, p.token, p.environment, p.last_outcome))
                .collect();
            checks.push(Check::warn(
                "phones",
                format!("{} phones whose last push failed: {}", f.len(), list.join("; ")),
                "failing phones",
                "re-pair those phones (dingdong pair open --user NAME) or remove them (dingdong phone rm TOKEN)",
            ));
        }
        Err(e) => checks.push(Check::warn("phones", e.to_string(), "cannot read phones", "see the database check")),
    }

    match store.unknown_presses(crate::domain::now_ms() - UNBOUND_WINDOW_MS) {
        Ok(u) if u.is_empty() => checks.push(Check::ok("unbound presses", "none in the last 24h")),
        Ok(u) => {
            let list: Vec<String> = u
                .iter()
                .take(5)
                .map(|p| format!("{}:{} x{} ({})", p.source, p.key, p.presses, ago(p.last_seen)))
                .collect();
            let first = &u[0];
            checks.push(Check::warn(
                "unbound presses",
                format!("{} buttons pressed but bound to nothing: {}", u.len(), list.join("; ")),
                "unbound buttons",
                format!(
                    "dingdong doorbell bind ID --source {} --key '{}' (or dingdong doorbell learn ID)",
                    first.source, first.key
                ),
            ));
        }
        Err(e) => checks.push(Check::warn("unbound presses", e.to_string(), "cannot read", "see the database check")),
    }
}

fn disk(cfg: &Config, checks: &mut Vec<Check>) {
    let dir = cfg.gateway.database.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = if dir.exists() { dir } else { Path::new("/") };
    match (fs4::available_space(dir), fs4::total_space(dir)) {
        (Ok(free), Ok(total)) => {
            let mb = free / (1024 * 1024);
            let pct = if total > 0 { free as f64 * 100.0 / total as f64 } else { 0.0 };
            let figure = format!("{}: {mb} MB free ({pct:.0}%)", dir.display());
            let fix = "free space on that filesystem (old logs: journalctl --vacuum-size=50M)";
            if mb < 10 {
                checks.push(Check::fail("disk", figure, "disk full", fix));
            } else if mb < 100 {
                checks.push(Check::warn("disk", figure, "disk nearly full", fix));
            } else {
                checks.push(Check::ok("disk", figure));
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            checks.push(Check::warn("disk", format!("{}: {e}", dir.display()), "cannot measure", "check the path"))
        }
    }
}

/// A publish/subscribe round trip through a broker on this machine takes well under a
/// millisecond; 40 ms and more is Nagle's algorithm on the broker's side meeting our delayed
/// acknowledgements.
const SLOW_ROUND_TRIP_MS: f64 = 20.0;

async fn broker(cfg: &Config, checks: &mut Vec<Check>) {
    if cfg.mqtt.url == "embedded" {
        checks.push(Check::ok("broker", "embedded broker: runs inside the daemon"));
        return;
    }
    let client_id = format!("dingdong-diag-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let settings = match crate::app::settings::mqtt_tool(cfg, client_id.clone()) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::fail("broker", e.to_string(), "broker settings unusable", "fix [mqtt] in the config"));
            return;
        }
    };
    let probe = format!("{}/diag/{client_id}", cfg.mqtt.topic_prefix);
    let status = format!("{}/status", cfg.mqtt.topic_prefix);
    match crate::net::mqtt::round_trip(settings, probe, status, Duration::from_secs(5)).await {
        Ok(rt) => {
            let figure = format!(
                "{}: connected in {:.1} ms, publish/subscribe round trip {:.1} ms (slowest of {} {:.1} ms)",
                cfg.mqtt.url,
                rt.connect_ms,
                rt.round_trip_ms,
                crate::net::mqtt::ROUND_TRIPS,
                rt.slowest_ms
            );
            if rt.round_trip_ms >= SLOW_ROUND_TRIP_MS {
                // Every press would wait as long on its way to the daemon.
                checks.push(Check::warn(
                    "broker",
                    figure,
                    "the broker holds small messages back (Nagle's algorithm): presses and outcomes wait tens of ms",
                    "put `set_tcp_nodelay true` in the broker's config: install -m 0644 /usr/share/dingdong/mosquitto.conf /etc/mosquitto/conf.d/dingdong.conf && systemctl restart mosquitto",
                ));
            } else {
                checks.push(Check::ok("broker", figure));
            }
            let state = rt.status.as_ref().and_then(|s| s["state"].as_str().map(str::to_string));
            match state.as_deref() {
                Some("online") => {
                    checks.push(Check::ok("daemon", "online (retained status on the broker)"));
                    if let Some(store) = rt.status.as_ref().and_then(|s| s.get("store")) {
                        let since = store["since"].as_i64().map(ago).unwrap_or_default();
                        checks.push(Check::fail(
                            "store faults",
                            format!("{} (since {since})", store["problem"].as_str().unwrap_or("?")),
                            "the daemon cannot write its database: presses are kept and retried",
                            "free disk space (df -h), or stop whatever holds the database open for writing",
                        ));
                    }
                }
                other => checks.push(Check::warn(
                    "daemon",
                    format!("status {}", other.unwrap_or("unknown")),
                    "daemon not running",
                    "systemctl start dingdong; journalctl -u dingdong -e shows why it stopped",
                )),
            }
        }
        Err(e) => checks.push(Check::fail(
            "broker",
            e.to_string(),
            "broker down",
            format!("start the broker (systemctl start mosquitto) or fix mqtt.url = \"{}\"", cfg.mqtt.url),
        )),
    }
}

/// The client certificate's expiry and environment (certificate auth only).
fn certificate(cfg: &Config, checks: &mut Vec<Check>) {
    let Some(c) = &cfg.apns.certificate else {
        checks.push(Check::ok("certificate", "token auth: no certificate to expire"));
        return;
    };
    let der = match crate::app::settings::client_identity(c) {
        Ok(id) => match id.chain.first() {
            Some(d) => d.to_vec(),
            None => {
                checks.push(Check::fail("certificate", "no certificate", "certificate missing", "re-export the .p12"));
                return;
            }
        },
        Err(e) => {
            checks.push(Check::fail(
                "certificate",
                e.to_string(),
                "certificate unreadable",
                "check the file and its password",
            ));
            return;
        }
    };
    let info = match crate::net::apns::certinfo::parse(&der) {
        Ok(i) => i,
        Err(e) => {
            checks.push(Check::fail(
                "certificate",
                e.to_string(),
                "certificate unreadable",
                "re-export the push certificate",
            ));
            return;
        }
    };
    let days = (info.not_after - crate::domain::now_ms() / 1000) / 86400;
    let env = info.environment.map_or("both environments", |e| e.as_str());
    let figure = format!("{} ({env}), expires {} ({days} days)", info.subject, date(info.not_after));
    let renew = "create a new Apple Push Notification service certificate in Apple's developer account, export it as .p12 and point [apns.certificate] at it";
    if info.not_after <= crate::domain::now_ms() / 1000 {
        checks.push(Check::fail("certificate", figure, "expired certificate", renew));
    } else if days < EXPIRY_WARN_DAYS {
        checks.push(Check::warn("certificate", figure, "certificate expires soon", renew));
    } else if info.environment.is_some_and(|e| e != cfg.apns.environment) {
        checks.push(Check::fail(
            "certificate",
            figure,
            "wrong APNs environment",
            format!("set apns.environment = \"{env}\" or use a certificate for {}", cfg.apns.environment.as_str()),
        ));
    } else {
        checks.push(Check::ok("certificate", figure));
    }
}

async fn apns(cfg: &Config, checks: &mut Vec<Check>, cert_expired: bool) {
    let client = match crate::app::settings::http2(cfg) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail(
                "apns",
                e.to_string(),
                "credentials unusable",
                "check the key/certificate files named in [apns]",
            ));
            return;
        }
    };
    let env = cfg.apns.environment;
    let endpoint = cfg.apns.endpoint.clone().unwrap_or_else(|| format!("https://{}:443", crate::net::apns::host(env)));
    let probe = match client.probe(env, PROBE_TOKEN).await {
        Ok(p) => p,
        Err(e) => {
            let expired = cert_expired || (cfg.apns.certificate.is_some() && e.to_lowercase().contains("expired"));
            checks.push(Check::fail(
                "apns",
                format!("{endpoint}: {e}"),
                if expired { "expired certificate" } else { "APNs unreachable" },
                if expired {
                    "renew the push certificate (see the certificate check)".to_string()
                } else {
                    "check the network, DNS and firewall towards APNs (TCP 443), or apns.endpoint / apns.ca_file"
                        .to_string()
                },
            ));
            return;
        }
    };
    checks.push(Check::ok(
        "apns",
        format!(
            "{endpoint} ({}): TLS + HTTP/2 handshake {:.1} ms, max_concurrent_streams {}, answered in {:.1} ms",
            env.as_str(),
            probe.connected_ms,
            probe.max_streams,
            probe.answered_ms
        ),
    ));
    checks.push(credentials(cfg, &probe));
    checks.push(clock(&probe));
}

/// What the answer to the invalid-token probe says about the credentials.
fn credentials(cfg: &Config, p: &Probe) -> Check {
    let answer =
        format!("probe answered {} {}", p.status, p.reason.as_ref().map(|r| r.to_string()).unwrap_or_default());
    let env = cfg.apns.environment.as_str();
    match &p.reason {
        Some(Reason::BadDeviceToken) => Check::ok("apns credentials", format!("{answer}: key/certificate accepted")),
        None if p.status == 200 => Check::ok("apns credentials", format!("{answer}: accepted")),
        Some(Reason::InvalidProviderToken) | Some(Reason::UnrelatedKeyIdInToken) => {
            let t = cfg.apns.token.as_ref();
            let file_kid = t.and_then(|t| {
                let name = t.key_file.file_stem()?.to_str()?;
                name.strip_prefix("AuthKey_").map(str::to_string)
            });
            match (t, file_kid) {
                (Some(t), Some(kid)) if kid != t.key_id => Check::fail(
                    "apns credentials",
                    format!("{answer}: apns.token.key_id = {} but the key file is AuthKey_{kid}.p8", t.key_id),
                    "wrong key id",
                    format!("set apns.token.key_id = \"{kid}\" (the Key ID next to the key in Apple's developer account)"),
                ),
                _ => Check::fail(
                    "apns credentials",
                    answer,
                    "wrong team id or key",
                    "check apns.token.team_id (Membership page) and apns.token.key_id against the .p8; a revoked key needs a new one",
                ),
            }
        }
        Some(Reason::ExpiredProviderToken) => Check::fail(
            "apns credentials",
            answer,
            "clock skew",
            "the JWT looks too old to Apple: fix the clock (timedatectl set-ntp true)",
        ),
        Some(Reason::BadCertificateEnvironment) => Check::fail(
            "apns credentials",
            format!("{answer}: the certificate is not for {env}"),
            "wrong APNs environment",
            "use the certificate issued for this environment, or set apns.environment to the certificate's",
        ),
        Some(Reason::BadCertificate) | Some(Reason::Forbidden) => Check::fail(
            "apns credentials",
            answer,
            "certificate refused",
            "export the push certificate again with its private key (.p12) and point [apns.certificate] at it",
        ),
        Some(Reason::BadTopic) | Some(Reason::TopicDisallowed) | Some(Reason::MissingTopic) => Check::fail(
            "apns credentials",
            format!("{answer} for topic {}", cfg.apns.topic),
            "wrong topic",
            "set apns.topic to the app's bundle id",
        ),
        _ => Check::fail(
            "apns credentials",
            answer,
            "unexpected APNs answer",
            "see Apple's status table; retry later if it is a 5xx",
        ),
    }
}

/// Our clock against the server's `date` header (1 s resolution).
fn clock(p: &Probe) -> Check {
    let Some(server) = p.date.as_deref().and_then(|d| httpdate::parse_http_date(d).ok()) else {
        return Check::warn("clock", "the server sent no date header", "cannot measure skew", "nothing to do");
    };
    let server = server.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let skew = crate::domain::now_ms() / 1000 - server;
    let figure = format!(
        "local clock {} s {} APNs ({})",
        skew.abs(),
        if skew >= 0 { "ahead of" } else { "behind" },
        p.date.as_deref().unwrap_or("")
    );
    let fix = "enable time sync (timedatectl set-ntp true) and check the RTC battery";
    if skew.abs() > SKEW_FAIL {
        Check::fail("clock", figure, "clock skew", fix)
    } else if skew.abs() > SKEW_WARN {
        Check::warn("clock", figure, "clock skew", fix)
    } else {
        Check::ok("clock", figure)
    }
}
