//! model-proxy: between a DICOM viewer, DICOMweb PACS servers and AI model APIs.

use std::process::ExitCode;

use model_proxy::cli::{self, Command};
use model_proxy::{config, server, trust};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, settings) = match cli::parse(&args, |k| std::env::var(k).ok()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("model-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match command {
        Command::Help => {
            print!("{}", cli::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("model-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => check_config(&settings),
        Command::Healthcheck => healthcheck(&settings),
        Command::Serve => match server::serve(settings.setup()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging() {
    let level = std::env::var("ZHIVA_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    // ureq logs request details at debug level; keep it at warn whatever ZHIVA_LOG says.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("ureq", log::LevelFilter::Warn)
        .with_module_level("ureq_proto", log::LevelFilter::Warn)
        .with_module_level("rustls", log::LevelFilter::Warn)
        .init();
}

fn check_config(settings: &cli::Settings) -> ExitCode {
    match config::load(&settings.config_dir) {
        Ok(c) => {
            println!(
                "ok: {} server(s) (default {}), {} model(s) in {}",
                c.servers.len(),
                c.default_server,
                c.models.len(),
                settings.config_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(settings: &cli::Settings) -> ExitCode {
    // A proxy on its own self-signed pair is checked against that pair unless told otherwise.
    let own = (settings.url.starts_with("https://") && settings.tls_cert.exists())
        .then_some(settings.tls_cert.as_path());
    let tls = match trust::client_config(settings.ca_file.as_deref().or(own)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(3)))
        .build();
    let agent = trust::agent(config, tls);
    match agent.get(&settings.url).call() {
        Ok(r) if r.status() == 200 => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {} answered {}", settings.url, r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {}: {e}", settings.url);
            ExitCode::FAILURE
        }
    }
}
