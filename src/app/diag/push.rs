//! diag's checks of `[fcm]` and `[webpush]`: the service account is exchanged for an access
//! token at its token endpoint (what proves it, as a push to an invalid token proves APNs
//! credentials), and the VAPID key loads (its public half shown, to compare with the web app's).

use super::Check;
use crate::app::config::Config;

pub(super) async fn check(cfg: &Config, checks: &mut Vec<Check>) {
    if cfg.fcm.is_some() {
        checks.push(fcm(cfg).await);
    }
    if cfg.webpush.is_some() {
        checks.push(match crate::app::settings::webpush(cfg) {
            Ok(Some(c)) => Check::ok("webpush", format!("VAPID key loads; public key {}", c.public_key())),
            Ok(None) => Check::ok("webpush", "not configured"),
            Err(e) => Check::fail(
                "webpush",
                e.to_string(),
                "VAPID key unusable",
                "point webpush.vapid_key_file at a P-256 PEM key (`dingdong webpush key` makes one)",
            ),
        });
    }
}

async fn fcm(cfg: &Config) -> Check {
    let client = match crate::app::settings::fcm(cfg) {
        Ok(Some(c)) => c,
        Ok(None) => return Check::ok("fcm", "not configured"),
        Err(e) => {
            return Check::fail(
                "fcm",
                e.to_string(),
                "service account unusable",
                "download a new JSON key for the service account and point fcm.service_account_file at it",
            )
        }
    };
    let t0 = std::time::Instant::now();
    match client.probe().await {
        Ok(lifetime) => Check::ok(
            "fcm",
            format!(
                "project {}: access token obtained in {:.0} ms, valid {lifetime} s",
                client.project_id(),
                t0.elapsed().as_secs_f64() * 1000.0
            ),
        ),
        Err(why) => Check::fail(
            "fcm",
            why,
            "the token endpoint refused the service account",
            "check the key is current (not deleted in the Google Cloud console) and the gateway's clock",
        ),
    }
}
