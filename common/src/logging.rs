//! Process plumbing shared by the binaries: the tracing subscriber, the
//! shutdown signal, and running a server until it.

use crate::error::{Error, Result};

/// Stack of each server runtime thread. Statements are bounded before any
/// syntax tree is built (`sql::parse`), and the walks over those trees
/// recurse once per level; this leaves them a wide margin. (Only the pages
/// a thread touches are ever allocated.)
pub const SERVER_THREAD_STACK: usize = 32 << 20;

/// The runtime a server process runs on.
pub fn server_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(SERVER_THREAD_STACK).build()?)
}

/// Installs a tracing subscriber writing to stderr with `filter` (`info`,
/// `debug`, or tracing directives); `RUST_LOG` wins when set.
pub fn init(filter: &str) -> Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| Error::invalid(format!("bad log filter {filter:?}: {e}")))?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// Completes on SIGTERM or SIGINT, for a clean shutdown.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Binds a server's listening socket, with an error that names the address.
pub fn listen(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| Error::io(format!("cannot listen on {addr}: {e}")))
}

/// Makes every file and directory this process creates private to its
/// user (0600 and 0700): data, logs, certificates and configs hold what
/// no other local user should read.
pub fn private_files() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// Runs a server process: installs logging with `log` and runs
/// `serve(listener, shutdown)` on a new runtime until SIGTERM or SIGINT.
pub fn run_server<F, Fut>(log: &str, listener: std::net::TcpListener, serve: F) -> Result<()>
where
    F: FnOnce(tokio::net::TcpListener, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    private_files();
    init(log)?;
    let runtime = server_runtime()?;
    listener.set_nonblocking(true)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        serve(listener, Box::pin(terminated())).await
    })
}
