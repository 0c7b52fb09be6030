//! The commands that talk to the network or run long: the daemon, `ring`, `feedback`, the
//! simulator, and the signals they answer.

use super::{block_on, load, open_store, print_json, CliError, SimArgs};
use std::path::Path;

/// `dingdong ring ID`: one QoS 1 press on the broker, waited for until the broker has it.
pub async fn ring(path: &Path, id: &str) -> Result<(), CliError> {
    let cfg = load(path)?;
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
pub async fn feedback(path: &Path) -> Result<(), CliError> {
    use crate::service::feedback::{poll_and_prune, FeedbackError};
    let cfg = load(path)?;
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

#[cfg(not(feature = "sim"))]
pub async fn apns_sim(_: &SimArgs) -> Result<(), CliError> {
    Err(CliError::input("this build has no simulator (built without the `sim` feature)"))
}

#[cfg(feature = "sim")]
pub async fn apns_sim(args: &SimArgs) -> Result<(), CliError> {
    if args.http2.is_none()
        && args.binary.is_none()
        && args.feedback.is_none()
        && args.fcm.is_none()
        && args.webpush.is_none()
    {
        return Err(CliError::input(
            "apns-sim: give at least one listener, e.g. --http2 127.0.0.1:8443, --fcm 127.0.0.1:8444 or --webpush 127.0.0.1:8445",
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
        fcm: args.fcm,
        webpush: args.webpush,
        push_phones: args.push_phones,
        webpush_http1: args.webpush_http1,
    };
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(CliError::input("--fail-rate must be between 0 and 1"));
    }
    let sim = crate::app::sim::Sim::start(opts).await.map_err(CliError::input)?;
    // One JSON line on stdout, for scripts and tests: where it listens and what it wrote.
    println!("{}", sim.info());
    // Under systemd (`systemd-run -p Type=notify`): started means listening, credentials written.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let stop = tokio_util::sync::CancellationToken::new();
    stop_on_signal(stop.clone()).await;
    tracing::info!(stats = %sim.state.stats(), "apns-sim stopping");
    if let Some(f) = &sim.fcm {
        tracing::info!(stats = %f.state.stats(), "fcm sim stopping");
    }
    if let Some(w) = &sim.webpush {
        tracing::info!(stats = %w.state.stats(), "webpush sim stopping");
    }
    Ok(())
}

/// `dingdong run`: the daemon until SIGTERM; SIGHUP reloads. Exit 2 for what a restart
/// cannot fix (the config, another instance, a damaged database).
pub fn run(path: &Path) -> Result<(), CliError> {
    // daemon::run checks the key files before opening anything (exit 2 below).
    let cfg = load(path)?;
    if let (Some(spec), Some(set)) = (&cfg.log.filter, crate::app::daemon::LOG_FILTER.get()) {
        set(spec).map_err(|e| CliError::input(format!("config {}: key `log.filter`: {e}", cfg.file.display())))?;
    }
    block_on(true, async {
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

/// `dingdong diag`: the report as a table or JSON; exit 0 all good, 1 a check failed, 2 could
/// not run.
pub fn diag(path: &Path, json: bool) -> Result<(), CliError> {
    let report = block_on(false, async { Ok(crate::app::diag::run(path).await) })?;
    if json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    match report.exit_code() {
        0 => Ok(()),
        code => Err(CliError {
            code,
            message: if code == 2 { "diag could not run: no usable config" } else { "diag: a check failed" }.into(),
        }),
    }
}
