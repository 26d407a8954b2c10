//! The command line: subcommands, flags and their `ZHIVA_*` environment twins.

use std::path::PathBuf;
use std::time::Duration;

use std::process::ExitCode;

use crate::access::{self, Methods, Target};
use crate::cache;
use crate::front::Connections;
use crate::server::{self, Setup};
use crate::state::Options;
use crate::upstream::Timeouts;
use crate::{config, trust};

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Validate the config files and exit.
    CheckConfig,
    /// Probe a URL and exit 0 iff it answers 200.
    Healthcheck,
    /// Print the help.
    Help,
    /// Print the version.
    Version,
}

/// Every setting, after flags, environment and defaults are merged (flags win).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory with servers.json and models.json.
    pub config_dir: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// Inference worker threads.
    pub workers: usize,
    /// Inference requests that may wait for a worker before 503.
    pub queue: usize,
    /// Directory for persistent state (PACS tokens).
    pub state_dir: PathBuf,
    /// TLS certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    pub tls_key: PathBuf,
    /// Serve plain HTTP.
    pub no_tls: bool,
    /// Serve GET /status.
    pub status_page: bool,
    /// Origins allowed by CORS (`*` wildcards).
    pub allowed_origins: Vec<String>,
    /// Pause between health polls.
    pub health_interval: Duration,
    /// TCP/TLS connect timeout for every upstream.
    pub connect_timeout: Duration,
    /// Longest silence from a PACS (waiting for headers or between reads).
    pub pacs_timeout: Duration,
    /// Longest silence from a model (it may think this long before answering).
    pub model_timeout: Duration,
    /// Longest whole exchange with a PACS (one retrieval, body included).
    pub pacs_total_timeout: Duration,
    /// Longest whole exchange with a model (upload, thinking, answer).
    pub model_total_timeout: Duration,
    /// Longest exchange with the auth service.
    pub auth_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for upstream HTTPS, e.g. the local PACS's trusted.crt.
    pub ca_file: Option<PathBuf>,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// How long in-flight inferences may run on after SIGTERM.
    pub grace_period: Duration,
    /// Where cached answers live; `<state-dir>/cache` by default.
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the cache in bytes; 0 turns the cache off.
    pub cache_size: u64,
    /// How long a cached answer is served; 0 turns the cache off.
    pub cache_ttl: Duration,
    /// Threads running prefetches.
    pub prefetch_workers: usize,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Client connections open at once from one address.
    pub max_connections_per_client: usize,
    /// How long a kept-alive client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a request head may take to arrive.
    pub header_timeout: Duration,
    /// URL probed by `healthcheck`.
    pub url: String,
    /// Who may ask: the accepted inbound credentials.
    pub inbound_auth: Methods,
    /// The auth service's public key files (PEM).
    pub jwt_public_keys: Vec<PathBuf>,
    /// The API key file.
    pub api_keys: Option<PathBuf>,
    /// Where the audit trail goes.
    pub audit_log: Option<Target>,
    /// `/status` and `/metrics` without a credential.
    pub public_pages: bool,
    /// Inferences one caller may hold at once (0: no limit).
    pub caller_concurrency: usize,
}

impl Settings {
    /// What `serve` needs, decided here once so the core never sees the command line.
    pub fn setup(&self) -> Setup {
        Setup {
            listen: self.listen.clone(),
            tls: (!self.no_tls).then(|| (self.tls_cert.clone(), self.tls_key.clone())),
            state_dir: self.state_dir.clone(),
            allowed_origins: self.allowed_origins.clone(),
            ca_file: self.ca_file.clone(),
            timeouts: Timeouts {
                connect: self.connect_timeout,
                pacs: self.pacs_timeout,
                model: self.model_timeout,
                pacs_total: self.pacs_total_timeout,
                model_total: self.model_total_timeout,
                auth: self.auth_timeout,
            },
            options: Options {
                config_dir: self.config_dir.clone(),
                workers: self.workers,
                queue: self.queue,
                status_page: self.status_page,
                health_interval: self.health_interval,
                grace_period: self.grace_period,
                cache: (self.cache_size > 0 && !self.cache_ttl.is_zero()).then(|| {
                    cache::Settings {
                        dir: self
                            .cache_dir
                            .clone()
                            .unwrap_or_else(|| self.state_dir.join("cache")),
                        max_bytes: self.cache_size,
                        ttl: self.cache_ttl,
                        prefetch_workers: self.prefetch_workers,
                    }
                }),
            },
            connections: Connections {
                max: self.max_connections,
                per_client: self.max_connections_per_client,
                idle: self.idle_timeout,
                header: self.header_timeout,
                body: self.body_timeout,
            },
            access: self.access(),
        }
    }

    /// The inbound access settings.
    pub fn access(&self) -> access::Settings {
        access::Settings {
            methods: self.inbound_auth,
            jwt_public_keys: self.jwt_public_keys.clone(),
            api_keys: self.api_keys.clone(),
            audit: self.audit_log.clone(),
            public_pages: self.public_pages,
            caller_concurrency: self.caller_concurrency,
        }
    }
}

struct Flag {
    name: &'static str,
    env: &'static str,
    value: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "config",
        env: "ZHIVA_CONFIG_DIR",
        value: "DIR",
        help: "directory holding servers.json and models.json [./config]",
    },
    Flag {
        name: "listen",
        env: "ZHIVA_LISTEN",
        value: "ADDR",
        help: "address to listen on [0.0.0.0:8002]",
    },
    Flag {
        name: "workers",
        env: "ZHIVA_WORKERS",
        value: "N",
        help: "inference worker threads [16]",
    },
    Flag {
        name: "queue",
        env: "ZHIVA_QUEUE",
        value: "N",
        help: "inference requests waiting for a worker before 503 [64]",
    },
    Flag {
        name: "state-dir",
        env: "ZHIVA_STATE_DIR",
        value: "DIR",
        help: "persistent state (PACS tokens) [./state]",
    },
    Flag {
        name: "tls-cert",
        env: "ZHIVA_TLS_CERT",
        value: "FILE",
        help: "TLS certificate chain, PEM [certs/zhiva.crt]",
    },
    Flag {
        name: "tls-key",
        env: "ZHIVA_TLS_KEY",
        value: "FILE",
        help: "TLS private key, PEM [certs/zhiva.key]",
    },
    Flag {
        name: "no-tls",
        env: "ZHIVA_NO_TLS",
        value: "",
        help: "serve plain HTTP",
    },
    Flag {
        name: "status-page",
        env: "ZHIVA_SHOW_STATUS_PAGE",
        value: "",
        help: "serve GET /status",
    },
    Flag {
        name: "allowed-origins",
        env: "ZHIVA_ALLOWED_ORIGINS",
        value: "LIST",
        help: "CORS origins, comma-separated, * wildcards [https://*.zhiva.ai]",
    },
    Flag {
        name: "health-interval",
        env: "ZHIVA_HEALTH_INTERVAL",
        value: "SECS",
        help: "seconds between health polls [30]",
    },
    Flag {
        name: "connect-timeout",
        env: "ZHIVA_CONNECT_TIMEOUT",
        value: "SECS",
        help: "upstream connect timeout [10]",
    },
    Flag {
        name: "pacs-timeout",
        env: "ZHIVA_PACS_TIMEOUT",
        value: "SECS",
        help: "longest PACS silence [60]",
    },
    Flag {
        name: "model-timeout",
        env: "ZHIVA_MODEL_TIMEOUT",
        value: "SECS",
        help: "longest model silence, thinking included [600]",
    },
    Flag {
        name: "pacs-total-timeout",
        env: "ZHIVA_PACS_TOTAL_TIMEOUT",
        value: "SECS",
        help: "longest whole PACS retrieval [1800]",
    },
    Flag {
        name: "model-total-timeout",
        env: "ZHIVA_MODEL_TOTAL_TIMEOUT",
        value: "SECS",
        help: "longest whole model exchange [3600]",
    },
    Flag {
        name: "auth-timeout",
        env: "ZHIVA_AUTH_TIMEOUT",
        value: "SECS",
        help: "longest auth service exchange [30]",
    },
    Flag {
        name: "ca-file",
        env: "ZHIVA_CA_FILE",
        value: "FILE",
        help: "extra CA certificates (PEM) for upstream HTTPS",
    },
    Flag {
        name: "body-timeout",
        env: "ZHIVA_BODY_TIMEOUT",
        value: "SECS",
        help: "longest a client may take to send a request body [30]",
    },
    Flag {
        name: "grace-period",
        env: "ZHIVA_GRACE_PERIOD",
        value: "SECS",
        help: "after SIGTERM, how long in-flight inferences may finish [30]",
    },
    Flag {
        name: "inbound-auth",
        env: "ZHIVA_INBOUND_AUTH",
        value: "MODES",
        help: "who may ask: none, zhiva-jwt, api-key or zhiva-jwt,api-key [none]",
    },
    Flag {
        name: "jwt-public-key",
        env: "ZHIVA_JWT_PUBLIC_KEY",
        value: "FILES",
        help: "the zhiva auth service's public key(s), PEM, comma-separated files",
    },
    Flag {
        name: "api-keys",
        env: "ZHIVA_API_KEYS",
        value: "FILE",
        help: "API key digests, labels and models (re-read on SIGHUP)",
    },
    Flag {
        name: "audit-log",
        env: "ZHIVA_AUDIT_LOG",
        value: "FILE",
        help: "audit trail, one JSON line per inference; - for stderr, off [- with inbound auth]",
    },
    Flag {
        name: "public-pages",
        env: "ZHIVA_PUBLIC_PAGES",
        value: "",
        help: "serve /status and /metrics without a credential under inbound auth",
    },
    Flag {
        name: "caller-concurrency",
        env: "ZHIVA_CALLER_CONCURRENCY",
        value: "N",
        help: "inferences one caller may hold at once; 0 = no limit [0]",
    },
    Flag {
        name: "cache-dir",
        env: "ZHIVA_CACHE_DIR",
        value: "DIR",
        help: "cached inference answers; replicas may share it [<state-dir>/cache]",
    },
    Flag {
        name: "cache-size",
        env: "ZHIVA_CACHE_SIZE",
        value: "BYTES",
        help: "cache size limit, K/M/G suffixes allowed; 0 turns the cache off [2G]",
    },
    Flag {
        name: "cache-ttl",
        env: "ZHIVA_CACHE_TTL",
        value: "SECS",
        help: "how long a cached answer is served; 0 turns the cache off [86400]",
    },
    Flag {
        name: "prefetch-workers",
        env: "ZHIVA_PREFETCH_WORKERS",
        value: "N",
        help: "threads running prefetches (PUT, POST /prefetch) [2]",
    },
    Flag {
        name: "max-connections",
        env: "ZHIVA_MAX_CONNECTIONS",
        value: "N",
        help: "client connections open at once [512]",
    },
    Flag {
        name: "max-connections-per-client",
        env: "ZHIVA_MAX_CONNECTIONS_PER_CLIENT",
        value: "N",
        help: "client connections open at once from one address [32]",
    },
    Flag {
        name: "idle-timeout",
        env: "ZHIVA_IDLE_TIMEOUT",
        value: "SECS",
        help: "longest a kept-alive connection waits for its next request [30]",
    },
    Flag {
        name: "header-timeout",
        env: "ZHIVA_HEADER_TIMEOUT",
        value: "SECS",
        help: "longest a request head may take to arrive [10]",
    },
    Flag {
        name: "url",
        env: "ZHIVA_HEALTHCHECK_URL",
        value: "URL",
        help: "healthcheck: URL to probe [http://127.0.0.1:8002/healthz]",
    },
];

/// The `--help` text.
pub fn help() -> String {
    let mut s = String::from(
        "model-proxy: between a DICOM viewer, DICOMweb PACS servers and AI model APIs\n\n\
         Usage:\n  model-proxy [serve] [OPTIONS]\n  model-proxy check-config [--config DIR] [--api-keys FILE] [--jwt-public-key FILES]\n  \
         model-proxy healthcheck [--url URL] [--ca-file FILE]\n  model-proxy --help | --version\n\nOptions (environment twin in brackets):\n",
    );
    for f in FLAGS {
        let left = format!("--{} {}", f.name, f.value);
        s.push_str(&format!("  {left:<26} {} (${})\n", f.help, f.env));
    }
    s
}

/// Parses arguments (without the program name) against an environment lookup.
pub fn parse(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Command, Settings), String> {
    let mut command = None;
    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        match a.as_str() {
            "-h" | "--help" | "help" => return Ok((Command::Help, settings(&[], &env)?)),
            "-V" | "--version" => return Ok((Command::Version, settings(&[], &env)?)),
            "serve" | "check-config" | "healthcheck" if command.is_none() => {
                command = Some(match a.as_str() {
                    "serve" => Command::Serve,
                    "check-config" => Command::CheckConfig,
                    _ => Command::Healthcheck,
                });
                continue;
            }
            _ => {}
        }
        let Some(body) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?} (see --help)"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            return Err(format!("unknown option --{name} (see --help)"));
        };
        let value = if flag.value.is_empty() {
            inline.unwrap_or_else(|| "true".into())
        } else if let Some(v) = inline {
            v
        } else if i < args.len() {
            i += 1;
            args[i - 1].clone()
        } else {
            return Err(format!("--{name} needs a value ({})", flag.value));
        };
        given.push((flag.name, value));
    }
    Ok((command.unwrap_or(Command::Serve), settings(&given, &env)?))
}

fn settings(
    given: &[(&'static str, String)],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    let get = |name: &str| -> Option<(String, String)> {
        if let Some((_, v)) = given.iter().rev().find(|(n, _)| *n == name) {
            return Some((format!("--{name}"), v.clone()));
        }
        let flag = FLAGS.iter().find(|f| f.name == name)?;
        env(flag.env)
            .filter(|v| !v.is_empty())
            .map(|v| (flag.env.to_string(), v))
    };
    let string =
        |name: &str, default: &str| get(name).map(|(_, v)| v).unwrap_or_else(|| default.into());
    let number = |name: &str, default: u64, min: u64| -> Result<u64, String> {
        match get(name) {
            None => Ok(default),
            Some((from, v)) => match v.trim().parse::<u64>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(format!(
                    "{from} must be a whole number of at least {min}, not {v:?}"
                )),
            },
        }
    };
    let boolean = |name: &str| -> Result<bool, String> {
        match get(name) {
            None => Ok(false),
            Some((from, v)) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("{from} must be true or false, not {v:?}")),
            },
        }
    };
    let secs = |name: &str, default: u64| number(name, default, 1).map(Duration::from_secs);
    let inbound_auth = match get("inbound-auth") {
        None => Methods::default(),
        Some((from, v)) => Methods::parse(&v).map_err(|e| format!("{from}: {e}"))?,
    };
    Ok(Settings {
        config_dir: string("config", "./config").into(),
        listen: string("listen", "0.0.0.0:8002"),
        workers: number("workers", 16, 1)? as usize,
        queue: number("queue", 64, 1)? as usize,
        state_dir: string("state-dir", "./state").into(),
        tls_cert: string("tls-cert", "certs/zhiva.crt").into(),
        tls_key: string("tls-key", "certs/zhiva.key").into(),
        no_tls: boolean("no-tls")?,
        status_page: boolean("status-page")?,
        allowed_origins: string("allowed-origins", "https://*.zhiva.ai")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        health_interval: secs("health-interval", 30)?,
        connect_timeout: secs("connect-timeout", 10)?,
        pacs_timeout: secs("pacs-timeout", 60)?,
        model_timeout: secs("model-timeout", 600)?,
        pacs_total_timeout: secs("pacs-total-timeout", 1800)?,
        model_total_timeout: secs("model-total-timeout", 3600)?,
        auth_timeout: secs("auth-timeout", 30)?,
        ca_file: get("ca-file").map(|(_, v)| v.into()),
        grace_period: number("grace-period", 30, 0).map(Duration::from_secs)?,
        body_timeout: secs("body-timeout", 30)?,
        cache_dir: get("cache-dir").map(|(_, v)| v.into()),
        cache_size: match get("cache-size") {
            None => 2 << 30,
            Some((from, v)) => bytes(&v).ok_or_else(|| {
                format!("{from} must be a size in bytes such as 2G, 512M or 0, not {v:?}")
            })?,
        },
        cache_ttl: number("cache-ttl", 86_400, 0).map(Duration::from_secs)?,
        prefetch_workers: number("prefetch-workers", 2, 1)? as usize,
        max_connections: number("max-connections", 512, 1)? as usize,
        max_connections_per_client: number("max-connections-per-client", 32, 1)? as usize,
        idle_timeout: secs("idle-timeout", 30)?,
        header_timeout: secs("header-timeout", 10)?,
        url: string("url", "http://127.0.0.1:8002/healthz"),
        inbound_auth,
        jwt_public_keys: string("jwt-public-key", "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        api_keys: get("api-keys").map(|(_, v)| v.into()),
        audit_log: match get("audit-log").map(|(_, v)| v) {
            None if inbound_auth.on() => Some(Target::Stderr),
            None => None,
            Some(v) if v == "-" => Some(Target::Stderr),
            Some(v) if v == "off" => None,
            Some(v) => Some(Target::File(v.into())),
        },
        public_pages: boolean("public-pages")?,
        caller_concurrency: number("caller-concurrency", 0, 0)? as usize,
    })
}

/// A size: whole bytes, or with a K, M, G or T suffix (powers of 1024; `KiB`, `MB` and the like too).
fn bytes(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_uppercase();
    let v = v.strip_suffix('B').unwrap_or(&v);
    let v = v.strip_suffix('I').unwrap_or(v);
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'K') => (&v[..i], 10),
        (i, 'M') => (&v[..i], 20),
        (i, 'G') => (&v[..i], 30),
        (i, 'T') => (&v[..i], 40),
        _ => (v, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The whole program: parses `args` (without the program name) and the
/// environment, then serves, checks the config or probes a URL.
pub fn run(args: Vec<String>) -> ExitCode {
    let (command, settings) = match parse(&args, |k| std::env::var(k).ok()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("model-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match command {
        Command::Help => {
            print!("{}", help());
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

fn check_config(settings: &Settings) -> ExitCode {
    // Key files named are checked even when --inbound-auth does not ask for them yet.
    let mut inbound = settings.access();
    inbound.methods.jwt |= !inbound.jwt_public_keys.is_empty();
    inbound.methods.api_key |= inbound.api_keys.is_some();
    match access::credentials(&inbound) {
        Ok((jwt, keys)) if inbound.methods.on() => println!(
            "ok: {} JWT public key(s), {} API key(s)",
            jwt.len(),
            keys.len()
        ),
        Ok(_) => {}
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
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

fn healthcheck(settings: &Settings) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_beat_env_beat_defaults() {
        let env = |k: &str| match k {
            "ZHIVA_LISTEN" => Some("127.0.0.1:9".to_string()),
            "ZHIVA_WORKERS" => Some("3".to_string()),
            "ZHIVA_SHOW_STATUS_PAGE" => Some("true".to_string()),
            _ => None,
        };
        let (c, s) = parse(&args("serve --workers=5 --no-tls --config /etc/mp"), env).unwrap();
        assert_eq!(c, Command::Serve);
        assert_eq!((s.listen.as_str(), s.workers), ("127.0.0.1:9", 5));
        assert!(s.no_tls && s.status_page);
        assert_eq!(s.config_dir, PathBuf::from("/etc/mp"));
        assert_eq!(s.allowed_origins, vec!["https://*.zhiva.ai"]);
    }

    #[test]
    fn subcommands_and_errors() {
        let none = |_: &str| None;
        assert_eq!(
            parse(&args("check-config --config x"), none).unwrap().0,
            Command::CheckConfig
        );
        assert_eq!(
            parse(&args("healthcheck --url http://a"), none)
                .unwrap()
                .1
                .url,
            "http://a"
        );
        assert_eq!(parse(&args("--version"), none).unwrap().0, Command::Version);
        assert!(parse(&args("--bogus"), none).is_err());
        assert!(parse(&args("--workers 0"), none).is_err());
        assert!(parse(&args("--workers"), none).is_err());
        let bad = |k: &str| (k == "ZHIVA_NO_TLS").then(|| "maybe".to_string());
        assert!(parse(&[], bad).unwrap_err().contains("ZHIVA_NO_TLS"));
    }

    #[test]
    fn cache_flags() {
        let none = |_: &str| None;
        let c = |a: &str| parse(&args(a), none).unwrap().1.setup().options.cache;
        let on = c("--state-dir /var/lib/mp").unwrap();
        assert_eq!(on.dir, PathBuf::from("/var/lib/mp/cache"));
        assert_eq!(
            (on.max_bytes, on.ttl.as_secs(), on.prefetch_workers),
            (2 << 30, 86_400, 2)
        );
        let s =
            c("--cache-dir /shared --cache-size 512M --cache-ttl 60 --prefetch-workers 1").unwrap();
        assert_eq!(
            (s.dir.to_str(), s.max_bytes, s.ttl.as_secs()),
            (Some("/shared"), 512 << 20, 60)
        );
        assert!(c("--cache-size 0").is_none());
        assert!(c("--cache-ttl 0").is_none());
        assert_eq!(bytes("3GiB"), Some(3 << 30));
        assert_eq!(bytes("10 kb"), Some(10 << 10));
        assert_eq!(bytes("1234"), Some(1234));
        assert_eq!(bytes("2X"), None);
        assert_eq!(bytes("99999999999T"), None);
        assert!(parse(&args("--cache-size lots"), none)
            .unwrap_err()
            .contains("--cache-size"));
    }
}
