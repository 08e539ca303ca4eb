//! Start-up plumbing shared by Veil's programs: the async runtime, logs, and the shutdown signal.
//!
use std::future::Future;
use std::process::ExitCode;

/// How a Veil daemon starts: logs on stderr (`text` or `json`, filtered by `RUST_LOG`, else
/// `default_filter`), then `main` on a tokio runtime. One worker thread means a current-thread runtime,
/// where waking a task never crosses threads; `None` means one worker per core. Errors are printed with
/// their chain, prefixed by the program's name, and give a failing exit code.
pub fn run_daemon<E, F>(
    program: &str,
    log_format: &str,
    default_filter: &str,
    worker_threads: Option<u16>,
    main: impl FnOnce() -> F,
) -> ExitCode
where
    E: std::fmt::Display,
    F: Future<Output = Result<(), E>>,
{
    init_logs(log_format, default_filter);
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: `json` for machines, anything else for people.
pub fn init_logs(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: how operators, systemd and `veil dev` stop Veil's programs.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
