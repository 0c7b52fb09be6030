//! The commands that only read and write the database: people, doorbells, shares, phones,
//! pairing windows, learning a button.

use super::{load, open, print_json, CliError, DoorbellCmd, PairCmd, PhoneCmd, UserCmd};
use crate::domain::{Environment, Platform};
use crate::store::import::ImportFormat;
use crate::store::phones::Registration;
use crate::store::{Store, Upsert};
use std::path::Path;

/// `FILE` or `-` (standard input), at most 8 KiB: a PushSubscription's JSON.
fn read_subscription(path: &Path) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let limit = crate::codec::push::webpush::MAX_SUBSCRIPTION_JSON as u64;
    if path == Path::new("-") {
        let mut data = Vec::new();
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| CliError::input(format!("cannot read the subscription from standard input: {e}")))?;
        return Ok(data);
    }
    crate::domain::files::read_bounded(path, limit)
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))
}

/// `dingdong webpush key`: the public half of the VAPID key, made first if there is none.
pub fn webpush_key(path: &Path) -> Result<(), CliError> {
    let cfg = load(path)?;
    let w = cfg.webpush.as_ref().ok_or_else(|| {
        CliError::input(format!(
            "config {}: no [webpush] table; add vapid_key_file and subject (see config.example.toml)",
            cfg.file.display()
        ))
    })?;
    if !w.vapid_key_file.exists() {
        let key = crate::codec::push::vapid::VapidKey::generate(&mut rand::thread_rng());
        write_secret(&w.vapid_key_file, key.to_pem().as_bytes())
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", w.vapid_key_file.display())))?;
        eprintln!("wrote a new VAPID key to {} (keep it: browsers subscribed with it)", w.vapid_key_file.display());
    }
    let key = crate::app::settings::vapid_key(&w.vapid_key_file).map_err(CliError::input)?;
    println!("{}", key.public_key_b64());
    Ok(())
}

/// Creates a file only its owner may read, refusing to replace one.
fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)
}

/// Fills each phone's `household`: what its person's rules for every doorbell do to a ring
/// now (`muted`, `silenced`, or an alert level other than the usual).
fn household_now(
    store: &Store,
    cfg: &crate::app::config::Config,
    phones: &mut [crate::store::PhoneRow],
) -> Result<(), CliError> {
    use crate::domain::household::{decide, Delivery, Profile};
    let rules = store.list_rules()?;
    let (now, tz) = (crate::domain::now_ms(), cfg.timezone());
    for p in phones {
        let Some(r) = rules.iter().find(|r| r.user == p.user && r.doorbell.is_none()) else { continue };
        p.household = match decide(&r.rules, None, now, &tz) {
            Delivery::Skip => Some("muted".into()),
            Delivery::Silent => Some("silenced".into()),
            Delivery::Send(profile) if profile != Profile::default() => Some(profile.level.as_str().into()),
            Delivery::Send(_) => None,
        };
    }
    Ok(())
}

/// `user ...`.
pub fn user(path: &Path, cmd: &UserCmd) -> Result<(), CliError> {
    let mut store = open(path)?;
    match cmd {
        UserCmd::Add { name } => {
            store.add_user(name)?;
            println!("user {name} added");
        }
        UserCmd::List { json } => {
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
        UserCmd::Rm { name } => {
            store.remove_user(name)?;
            println!("user {name} removed");
        }
    }
    Ok(())
}

/// `doorbell ...`.
pub fn doorbell(path: &Path, cmd: &DoorbellCmd) -> Result<(), CliError> {
    let mut store = open(path)?;
    match cmd {
        DoorbellCmd::Add { id, name, owner } => {
            store.add_doorbell(id, name.as_deref(), owner)?;
            println!("doorbell {id} added, owned by {owner}");
        }
        DoorbellCmd::List { json } => {
            let bells = store.list_doorbells()?;
            if *json {
                print_json(&bells);
            } else {
                println!("{:<16} {:<24} {:<16} {:<24} BINDINGS", "ID", "NAME", "OWNER", "SHARED WITH");
                for d in bells {
                    println!(
                        "{:<16} {:<24} {:<16} {:<24} {}",
                        d.id,
                        crate::domain::printable(&d.name),
                        d.owner,
                        d.shared_with.join(","),
                        d.bindings.join(",")
                    );
                }
            }
        }
        DoorbellCmd::Rm { id } => {
            store.remove_doorbell(id)?;
            println!("doorbell {id} removed");
        }
        DoorbellCmd::Rename { id, name } => {
            store.rename_doorbell(id, name)?;
            println!("doorbell {id} is now called {name}");
        }
        DoorbellCmd::Bind { id, source, key } => {
            store.bind(id, source, key)?;
            println!("{source} button {key} now rings doorbell {id}");
        }
        DoorbellCmd::Learn { id, seconds } => learn(&mut store, id, *seconds)?,
    }
    Ok(())
}

/// `share ID USER` (`on`) and `unshare ID USER`.
pub fn share(path: &Path, id: &str, user: &str, on: bool) -> Result<(), CliError> {
    let mut store = open(path)?;
    if on {
        store.share(id, user)?;
        println!("doorbell {id} shared with {user}");
    } else {
        store.unshare(id, user)?;
        println!("doorbell {id} no longer shared with {user}");
    }
    Ok(())
}

/// `pair ...`.
pub fn pair(path: &Path, cmd: &PairCmd) -> Result<(), CliError> {
    let mut store = open(path)?;
    match cmd {
        PairCmd::Open { user, share, minutes } => {
            let opener = crate::store::pairing::Opener::Cli;
            let w = store.open_pair_window(user, share.as_deref(), *minutes, opener, crate::domain::now_ms())?;
            let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(w.expires_at as u64);
            // The one place a code is shown: on the terminal of whoever may open windows.
            println!("pairing code for {user}: {}", w.code.reveal_grouped());
            let shared = share.as_ref().map(|d| format!("; shares doorbell {d}")).unwrap_or_default();
            println!("valid once, for {minutes} minute(s), until {}{shared}", humantime::format_rfc3339_seconds(until));
        }
    }
    Ok(())
}

/// `phone ...`.
pub fn phone(path: &Path, cmd: &PhoneCmd) -> Result<(), CliError> {
    let mut store = open(path)?;
    let store = &mut store;
    let env = |sandbox: bool| if sandbox { Environment::Sandbox } else { Environment::Production };
    match cmd {
        PhoneCmd::Add { user, token, fcm, webpush, sandbox, topic, name } => {
            let reg = match (token, fcm, webpush) {
                (Some(t), None, None) => Registration::apns(t, env(*sandbox))?,
                (None, Some(t), None) => Registration::fcm(t)?,
                (None, None, Some(f)) => Registration::webpush(&read_subscription(f)?)?,
                _ => {
                    return Err(CliError::input("phone add takes USER TOKEN, USER --fcm TOKEN or USER --webpush FILE"))
                }
            };
            let r = store.register_phone(user, &reg, topic.as_deref(), name.as_deref())?;
            let (short, platform) = (reg.short(), reg.platform());
            match r {
                Upsert::Added(id) => println!("{platform} phone {id} ({short}…) added for {user}"),
                Upsert::Updated(id) => println!("{platform} phone {id} ({short}…) re-registered for {user}"),
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
            household_now(store, &load(path)?, &mut phones)?;
            if !full {
                for p in &mut phones {
                    let platform = Platform::parse(&p.platform).unwrap_or(Platform::Apns);
                    p.token = crate::domain::short_key(platform, &p.token);
                }
            }
            if *json {
                print_json(&phones);
            } else {
                println!(
                    "{:>6} {:<16} {:<8} {:<10} {:<11} {:<20} {:<14} LAST PROBLEM",
                    "ID", "USER", "PLATFORM", "TOKEN", "ENV", "NAME", "NOW"
                );
                for p in phones {
                    let env = if p.platform == "apns" { p.environment.as_str() } else { "-" };
                    println!(
                        "{:>6} {:<16} {:<8} {:<10} {:<11} {:<20} {:<14} {}",
                        p.id,
                        p.user,
                        p.platform,
                        p.token,
                        env,
                        crate::domain::printable(p.name.as_deref().unwrap_or_default()),
                        p.household.as_deref().unwrap_or("-"),
                        p.last_outcome.unwrap_or_default()
                    );
                }
            }
        }
        PhoneCmd::Rm { token, webpush } => {
            let n = match (token, webpush) {
                (Some(t), None) => store.unregister_phone(t)?,
                (None, Some(f)) => {
                    let reg = Registration::webpush(&read_subscription(f)?)?;
                    store.unregister_phone(reg.key())?
                }
                _ => return Err(CliError::input("phone rm takes TOKEN, or --webpush FILE")),
            };
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
