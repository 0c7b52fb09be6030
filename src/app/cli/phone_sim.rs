//! `dingdong phone-sim`: the reference phone. It pairs as the app does (SPAKE2 over the
//! gateway's broker, `codec::pairing::pake::phone`), keeps its phone id and secret in a state
//! file (0600), and sends signed requests with that secret. For tests, for app developers (its
//! messages are the ones `docs/pairing.md` describes), and for trying a gateway.
//!
//! Every subcommand prints exactly one JSON line on stdout: `{"ok":true,...}` and exit 0;
//! `{"ok":false,"error":"<code>","detail":...}` and exit 1 when the gateway (or the phone's own
//! check of the gateway) refused; exit 2, with `"error":"bad_input"`, when what it was given is
//! wrong. A later signed action (`answer`, `mute`, ...) is one more [`Action`] in the wire
//! codec and one more arm of [`run`]; a later registration (`--fcm`, `--webpush` are here
//! already) one more field of [`PushArgs`].

use super::{load, CliError};
use crate::app::config::Config;
use crate::codec::pairing::pake::phone::{self, Paired};
use crate::codec::pairing::pake::registration::{parse_registration, Registration};
use crate::codec::pairing::pake::{Code, PakeError};
use crate::codec::pairing::share;
use crate::codec::pairing::wire::{parse_phone_reply, Action, PhoneReply, SignedRequest};
use crate::domain::{normalize_token, Environment};
use crate::net::mqtt::{Conversation, MqttSettings};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Args, Subcommand};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How long each step waits for the gateway (docs/pairing.md tells apps about 10 s).
const STEP: Duration = Duration::from_secs(10);
/// The largest Web Push subscription file read.
const MAX_SUBSCRIPTION_FILE: u64 = 8 * 1024;

#[derive(Subcommand, Debug)]
pub enum PhoneSimCmd {
    /// Pair with a one-time code, as the app does; keeps phone id and secret in --state.
    Pair {
        /// The 8-digit code (`pair open`, the pair button's code file, or a share code).
        #[arg(long)]
        code: String,
        #[command(flatten)]
        push: PushArgs,
        /// The APNs token is from a development build.
        #[arg(long)]
        sandbox: bool,
        /// The app's bundle id, when it differs from the config's apns.topic.
        #[arg(long, value_name = "BUNDLE_ID")]
        topic: Option<String>,
        /// The phone's name, shown by `phone list`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Replace this phone's APNs token (a signed request).
    Token {
        #[arg(value_name = "NEW_HEX")]
        token: String,
        #[arg(long)]
        sandbox: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Remove this phone from the gateway (a signed request); the state file goes too.
    Unpair {
        #[command(flatten)]
        state: StateArg,
    },
    /// Ask for a code that pairs a new person's phone, sharing a doorbell this phone's user
    /// owns (a signed request); prints the code, unsealed with this phone's secret.
    ShareCode {
        #[arg(long)]
        user: String,
        #[arg(long)]
        doorbell: String,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
        minutes: u32,
        #[command(flatten)]
        state: StateArg,
    },
    /// "I'm coming": answer a ring; the other phones are quieted (a signed request).
    Answer {
        ring_id: String,
        #[command(flatten)]
        state: StateArg,
    },
    /// How this phone's person is alerted (a signed request).
    Alert {
        /// passive, active, time-sensitive or critical.
        #[arg(long)]
        level: String,
        #[arg(long, value_name = "NAME")]
        sound: Option<String>,
        /// A critical alert's volume, 0 to 1.
        #[arg(long, value_name = "V")]
        volume: Option<f64>,
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Quiet hours of this phone's person (a signed request); without --from/--to, removes them.
    Quiet {
        #[arg(long, value_name = "HH:MM", requires = "to")]
        from: Option<String>,
        #[arg(long, value_name = "HH:MM", requires = "from")]
        to: Option<String>,
        #[arg(long, default_value = "all")]
        days: String,
        #[arg(long, default_value = "skip")]
        mode: String,
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Mute this phone's person for a while, or `--off` (a signed request).
    Mute {
        /// How long: 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration, required_unless_present = "off")]
        for_: Option<std::time::Duration>,
        /// Ends the mute.
        #[arg(long, conflicts_with = "for_")]
        off: bool,
        #[arg(long, default_value = "skip")]
        mode: String,
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
}

/// How the gateway is to reach the phone: exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PushArgs {
    /// An APNs device token (hex).
    #[arg(long, value_name = "HEX")]
    token: Option<String>,
    /// An FCM registration token (it may start with '-').
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    fcm: Option<String>,
    /// A Web Push subscription (the browser's PushSubscription JSON) in FILE, or `-` for stdin.
    #[arg(long, value_name = "FILE")]
    webpush: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StateArg {
    /// Where the phone keeps its id and secret (written 0600 by `pair`).
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
}

/// What the phone keeps: the Keychain entry of the app.
#[derive(Serialize, Deserialize)]
struct State {
    /// The gateway's topic prefix: the state is for that gateway only.
    gateway: String,
    phone_id: i64,
    /// The 32-byte secret, hex.
    secret: String,
    user: String,
    platform: String,
}

/// Prints the one JSON line.
fn emit(v: Value) {
    println!("{v}");
}

fn bad_input(detail: impl std::fmt::Display) -> CliError {
    emit(json!({"ok": false, "error": "bad_input", "detail": detail.to_string()}));
    CliError::input(detail)
}

fn refused(error: &str, detail: &str) -> CliError {
    emit(json!({"ok": false, "error": error, "detail": detail}));
    CliError::failed(format!("refused: {error}: {detail}"))
}

fn broker_failed(e: impl std::fmt::Display) -> CliError {
    refused("broker", &e.to_string())
}

/// `dingdong phone-sim ...`.
pub fn run(path: &Path, cmd: &PhoneSimCmd) -> Result<(), CliError> {
    let cfg = load(path).map_err(|e| bad_input(e.message))?;
    match cmd {
        PhoneSimCmd::Pair { code, push, sandbox, topic, name, state } => {
            let code = Code::parse(code).map_err(bad_input)?;
            let reg = registration(&cfg, push, *sandbox, topic.as_deref(), name.as_deref())?;
            super::block_on(false, pair(&cfg, &code, &reg, &state.state))
        }
        PhoneSimCmd::Token { token, sandbox, state } => {
            let token = normalize_token(token).map_err(bad_input)?;
            let environment = if *sandbox { Environment::Sandbox } else { Environment::Production };
            super::block_on(false, signed(&cfg, &state.state, Action::ReplaceToken { token, environment }))
        }
        PhoneSimCmd::Unpair { state } => super::block_on(false, signed(&cfg, &state.state, Action::Unpair)),
        PhoneSimCmd::ShareCode { user, doorbell, minutes, state } => {
            crate::domain::check_id("user", user).map_err(bad_input)?;
            crate::domain::check_id("doorbell", doorbell).map_err(bad_input)?;
            let action = Action::ShareCode { user: user.clone(), doorbell: doorbell.clone(), minutes: *minutes };
            super::block_on(false, signed(&cfg, &state.state, action))
        }
        PhoneSimCmd::Answer { ring_id, state } => {
            let action = checked("answer", json!({"ring_id": ring_id, "action": "coming"}))?;
            super::block_on(false, signed(&cfg, &state.state, action))
        }
        PhoneSimCmd::Alert { level, sound, volume, doorbell, state } => {
            let mut v = json!({"level": level, "doorbell": doorbell, "sound": sound, "volume": volume});
            strip_nulls(&mut v);
            super::block_on(false, signed(&cfg, &state.state, checked("alert", v)?))
        }
        PhoneSimCmd::Quiet { from, to, days, mode, doorbell, state } => {
            let mut v = json!({"from": from, "to": to, "days": days, "mode": mode, "doorbell": doorbell});
            strip_nulls(&mut v);
            super::block_on(false, signed(&cfg, &state.state, checked("quiet", v)?))
        }
        PhoneSimCmd::Mute { for_, off, mode, doorbell, state } => {
            let until = match (for_, off) {
                (_, true) => 0,
                (Some(d), false) => crate::domain::now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2),
                (None, false) => return Err(bad_input("give --for DURATION or --off")),
            };
            let mut v = json!({"until": until, "mode": mode, "doorbell": doorbell});
            strip_nulls(&mut v);
            super::block_on(false, signed(&cfg, &state.state, checked("mute", v)?))
        }
    }
}

/// The request's fields checked as the gateway checks them (exit 2 before anything is sent).
fn checked(action: &str, mut fields: Value) -> Result<Action, CliError> {
    fields["request_id"] = "check".into();
    fields["ts"] = 0.into();
    fields["nonce"] = "0".repeat(16).into();
    fields["sig"] = "0".repeat(64).into();
    crate::codec::pairing::wire::parse_signed(1, action, fields.to_string().as_bytes())
        .map(|r| r.action)
        .map_err(|r| bad_input(r.detail))
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
    }
}

/// The registration the phone seals, from the command line; checked now (exit 2).
fn registration(
    cfg: &Config,
    push: &PushArgs,
    sandbox: bool,
    topic: Option<&str>,
    name: Option<&str>,
) -> Result<Registration, CliError> {
    let mut v = match (&push.token, &push.fcm, &push.webpush) {
        (Some(t), _, _) => {
            let token = normalize_token(t).map_err(bad_input)?;
            let environment = if sandbox { "sandbox" } else { "production" };
            json!({"platform": "apns", "token": token, "environment": environment,
                "topic": topic.unwrap_or(&cfg.apns.topic)})
        }
        (_, Some(t), _) => json!({"platform": "fcm", "token": t}),
        (_, _, Some(file)) => {
            let text = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(std::io::stdin(), MAX_SUBSCRIPTION_FILE + 1),
                    &mut s,
                )
                .map_err(|e| bad_input(format!("--webpush -: {e}")))?;
                s
            } else {
                crate::domain::files::read_bounded(file, MAX_SUBSCRIPTION_FILE)
                    .map_err(|e| bad_input(format!("--webpush {}: {e}", file.display())))?
            };
            let sub: Value = serde_json::from_slice(&text).map_err(|_| bad_input("--webpush: not JSON"))?;
            json!({"platform": "webpush", "subscription": sub})
        }
        _ => return Err(bad_input("give --token, --fcm or --webpush")),
    };
    if let Some(n) = name {
        v["name"] = n.into();
    }
    parse_registration(v.to_string().as_bytes()).map_err(|e| bad_input(format!("registration: {e}")))
}

/// The broker and client id the phone uses: the config's broker, its own client id.
fn mqtt(cfg: &Config) -> Result<MqttSettings, CliError> {
    let mut c = cfg.clone();
    if c.mqtt.url == "embedded" {
        c.mqtt.url = "mqtt://127.0.0.1:1883".into();
    }
    let mut id = [0u8; 6];
    OsRng.fill_bytes(&mut id);
    crate::app::settings::mqtt_tool(&c, format!("dingdong-phone-sim-{}", hex::encode(id))).map_err(bad_input)
}

/// Waits for the message `step` accepts: others (another request's) are skipped.
async fn await_step<T>(
    conv: &mut Conversation,
    mut step: impl FnMut(&[u8]) -> Result<T, PakeError>,
) -> Result<T, CliError> {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((_, payload)) = conv.next(left).await.map_err(broker_failed)? else {
            return Err(refused("timeout", "no answer from the gateway within 10 s; is `dingdong run` running?"));
        };
        match step(&payload) {
            Ok(v) => return Ok(v),
            Err(PakeError::Unexpected) => continue,
            Err(PakeError::Refused { error, detail }) => return Err(refused(&error, &detail)),
            Err(PakeError::GatewayUnverified) => {
                return Err(refused(
                    "gateway_unverified",
                    "whoever answered did not prove that it knows the code; nothing was kept",
                ))
            }
            Err(e) => return Err(refused("bad_reply", &e.to_string())),
        }
    }
}

/// `phone-sim pair`.
async fn pair(cfg: &Config, code: &Code, reg: &Registration, file: &Path) -> Result<(), CliError> {
    let prefix = cfg.mqtt.topic_prefix.as_str();
    let (awaiting, request) = phone::start(code, prefix, reg, &mut OsRng).map_err(bad_input)?;
    let reply_topic = format!("{prefix}/pair/response/{}", awaiting.request_id());
    let mut conv = Conversation::open(mqtt(cfg)?, &[reply_topic], STEP).await.map_err(broker_failed)?;
    let t0 = Instant::now();
    conv.publish(format!("{prefix}/pair/request"), request).map_err(broker_failed)?;
    let (awaiting, finish) = await_step(&mut conv, |p| awaiting.on_offer(p)).await?;
    conv.publish(format!("{prefix}/pair/finish"), finish).map_err(broker_failed)?;
    let paired: Paired = await_step(&mut conv, |p| awaiting.on_done(p)).await?;
    let state = State {
        gateway: prefix.to_string(),
        phone_id: paired.phone_id,
        secret: hex::encode(paired.secret.expose()),
        user: paired.user.clone(),
        platform: reg.push.platform().as_str().into(),
    };
    write_state(file, &state).map_err(|e| bad_input(format!("--state {}: {e}", file.display())))?;
    let pairing_ms = t0.elapsed().as_secs_f64() * 1000.0;
    conv.close().await;
    let doorbells: Vec<Value> = paired.doorbells.iter().map(|d| json!({"id": d.id, "name": d.name})).collect();
    emit(json!({"ok": true, "action": "pair", "phone_id": paired.phone_id, "user": paired.user,
        "doorbells": doorbells, "platform": state.platform, "state": file.display().to_string(),
        "pairing_ms": (pairing_ms * 10.0).round() / 10.0}));
    Ok(())
}

/// A signed request with the state file's secret, and its reply.
async fn signed(cfg: &Config, file: &Path, action: Action) -> Result<(), CliError> {
    let state = read_state(file)?;
    let prefix = cfg.mqtt.topic_prefix.as_str();
    if state.gateway != prefix {
        return Err(bad_input(format!(
            "--state {} is for the gateway at {}, the config names {prefix}",
            file.display(),
            state.gateway
        )));
    }
    let secret = Zeroizing::new(hex::decode(&state.secret).map_err(|_| bad_input("--state: secret is not hex"))?);
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let rid = URL_SAFE_NO_PAD.encode(bytes);
    OsRng.fill_bytes(&mut bytes);
    let nonce = hex::encode(bytes);
    let (id, name) = (state.phone_id, action.name());
    let req = SignedRequest::signed(id, &secret, action, &rid, crate::domain::now_ms(), &nonce);
    let mut conv = Conversation::open(mqtt(cfg)?, &[format!("{prefix}/phone-response/{id}")], STEP)
        .await
        .map_err(broker_failed)?;
    conv.publish(format!("{prefix}/phone/{id}/{name}"), req.encode()).map_err(broker_failed)?;
    let reply = await_step(&mut conv, |p| match parse_phone_reply(p) {
        Ok(PhoneReply::Done { request_id, fields, .. }) if request_id == rid => Ok(Ok(fields)),
        Ok(PhoneReply::Refused { request_id: Some(r), error, detail }) if r == rid => Ok(Err((error, detail))),
        Ok(_) => Err(PakeError::Unexpected),
        Err(e) => Err(PakeError::BadMessage(e)),
    })
    .await?;
    conv.close().await;
    let fields = match reply {
        Ok(fields) => fields,
        Err((error, detail)) => return Err(refused(error.as_str(), &detail)),
    };
    let mut out = json!({"ok": true, "action": name, "phone_id": id});
    match name {
        "unpair" => {
            let _ = std::fs::remove_file(file);
        }
        "share-code" => {
            let sealed = fields.get("sealed_code").and_then(Value::as_str).unwrap_or_default();
            let code = share::open_code(&secret, id, &rid, sealed).map_err(|e| refused("bad_reply", &e.to_string()))?;
            out["code"] = code.reveal().into();
            out["user"] = fields.get("user").cloned().unwrap_or(Value::Null);
            out["expires_at"] = fields.get("expires_at").cloned().unwrap_or(Value::Null);
        }
        _ => {
            for k in ["rules", "ring_id", "answered_by", "answered_at"] {
                if let Some(v) = fields.get(k) {
                    out[k] = v.clone();
                }
            }
        }
    }
    emit(out);
    Ok(())
}

fn read_state(file: &Path) -> Result<State, CliError> {
    let text = crate::domain::files::read_bounded(file, 4096)
        .map_err(|e| bad_input(format!("--state {}: {e} (pair first)", file.display())))?;
    serde_json::from_slice(&text)
        .map_err(|_| bad_input(format!("--state {}: not a phone-sim state file", file.display())))
}

/// Writes the state readable by its owner only, replacing any older one atomically.
fn write_state(file: &Path, state: &State) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let text = Zeroizing::new(serde_json::to_string(state).expect("plain struct serializes"));
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}
