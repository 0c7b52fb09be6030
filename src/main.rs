//! The `dingdong` binary: parse, set up logging, dispatch, map errors to exit codes.
use clap::Parser;

fn main() {
    let cli = dingdong::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn,h2=warn,rustls=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = dingdong::cli::dispatch(cli) {
        eprintln!("error: {}", e.message);
        std::process::exit(e.code);
    }
}
