//! `tandem`: one binary for every role. Daemons run in the foreground like the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use blockd::admin::{self, Request, Status};
use blockd::daemon::{Daemon, Options};
use clap::{Parser, Subcommand};

/// `println!` for command output: a reader that went away (`tandem local status |
/// head -1`) ends the command quietly, as it ends other Unix tools, instead of a panic.
macro_rules! outln {
    () => { $crate::write_stdout(format_args!(""), true) };
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*), true) };
}

/// `print!` for command output, with `outln!`'s handling of a closed stdout.
macro_rules! out {
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*), false) };
}

mod client;
mod playground;

/// Writes command output. A closed pipe exits with success (the reader had what it
/// wanted); any other write error exits with a message instead of a panic.
fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing the output: {e}");
            std::process::exit(1);
        }
    }
}

const DEFAULT_RUN_DIR: &str = "/run/tandem";
const DEFAULT_CONFIG_DIR: &str = "/etc/tandem/resources";
/// Long enough for `down` to drain connections (blockd waits up to 30 s).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Replicated block storage for small clusters"
)]
struct Cli {
    /// Log filter for daemons: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info", env = "TANDEM_LOG")]
    log: String,
    #[command(flatten)]
    client: client::Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node data-plane daemon in the foreground.
    Blockd {
        /// Directory of resource files (*.toml), one per resource.
        #[arg(long, default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// Directory for the admin socket and the NBD sockets.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Admin socket path (default: RUN_DIR/admin.sock).
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// This node's name in replicated resources' [[node]] lists (default: the host name).
        #[arg(long, env = "TANDEM_NODE")]
        node: Option<String>,
    },
    /// Talk to the blockd of this node.
    Local {
        /// Admin socket of the blockd to talk to.
        #[arg(
            long,
            env = "TANDEM_ADMIN_SOCKET",
            default_value = "/run/tandem/admin.sock"
        )]
        admin_socket: PathBuf,
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Run the controller: LINSTOR's v1 REST API on the cluster model, kept in SQLite.
    /// With a verb (`version`, ...), ask the running controller instead.
    #[command(visible_alias = "c", args_conflicts_with_subcommands = true)]
    Controller {
        #[command(subcommand)]
        verb: Option<client::ControllerCmd>,
        /// Address for the REST API (port 0: any free port, printed on stdout).
        #[arg(long, default_value = controller::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// The controller's SQLite database (created if missing).
        #[arg(long, default_value = controller::DEFAULT_DB, env = "TANDEM_CONTROLLER_DB")]
        db: PathBuf,
    },
    /// Start a controller and three nodes (satellite + blockd each) on this machine,
    /// spawn a volume replicated on two of them with the third as tiebreaker, and print
    /// how to attach to it and a live status. Ctrl-C tears everything down.
    Playground {
        /// Directory for state and logs, kept afterwards and reused when given again
        /// (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the example volume.
        #[arg(long, default_value = "1G")]
        size: String,
        /// Also write data, kill the primary's node, read the data through another
        /// node, restart the killed node and wait for its resync (needs qemu-io).
        #[arg(long)]
        demo: bool,
    },
    /// Run the satellite: applies the controller's desired state to this node
    /// (storage volumes, blockd resource files) and reports what it observes.
    Satellite {
        /// This node's name, as the controller knows it (default: the host name).
        #[arg(long, env = "TANDEM_NODE")]
        node: Option<String>,
        /// Address the controller reaches the satellite on.
        #[arg(long, default_value = satellite::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Where the satellite keeps the desired state and its ledger of volumes.
        #[arg(long, default_value = satellite::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// blockd's resource directory, where the satellite writes resource files.
        #[arg(long, default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// blockd's admin socket.
        #[arg(long, default_value = "/run/tandem/admin.sock")]
        admin_socket: PathBuf,
    },
    /// The LINSTOR client's commands, against the controller's REST API (docs/cli.md).
    #[command(flatten)]
    Client(client::Command),
}

#[derive(Subcommand, Debug)]
enum LocalCmd {
    /// Show every resource and volume: size, backing, NBD endpoint, open or closed.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Bring a resource (default: all) up: open its volumes and serve them.
    Up { resource: Option<String> },
    /// Take a resource (default: all) down: end connections, flush, close.
    Down { resource: Option<String> },
    /// Re-read the resource files and apply the difference.
    Adjust { resource: Option<String> },
    /// Initialise metadata on a resource's backing files (the resource must be down).
    CreateMd {
        resource: String,
        /// Overwrite existing tandem metadata (resets replication state).
        #[arg(long)]
        force: bool,
    },
    /// Make this node primary for a replicated resource (NBD clients do it on connect).
    Primary {
        resource: String,
        /// Also without UpToDate data or quorum: this node's data becomes the truth.
        #[arg(long)]
        force: bool,
    },
    /// Make this node secondary (refused while NBD clients hold the volume open,
    /// unless --force).
    Secondary {
        resource: String,
        /// Also while NBD clients hold the volume open: their requests fail with an
        /// I/O error, including those held while I/O is suspended for lack of quorum
        /// (the way out of on-no-quorum suspend-io).
        #[arg(long)]
        force: bool,
    },
    /// Allow connecting to the peers again (after disconnect or a split brain).
    Connect {
        resource: String,
        /// Only this peer (node name).
        #[arg(long)]
        peer: Option<String>,
        /// If the nodes disagree, throw this node's changes away and resync from the peer.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Drop the connections and stay StandAlone until `connect`.
    Disconnect {
        resource: String,
        #[arg(long)]
        peer: Option<String>,
    },
    /// Discard this node's data and take a full resync from an UpToDate peer.
    Invalidate { resource: String },
    /// Compare this node's data with its UpToDate peers' block by block (online
    /// verify); blocks found different are resynced. Progress shows in status.
    Verify {
        resource: String,
        /// Only against this peer (node name).
        #[arg(long)]
        peer: Option<String>,
    },
    /// Use the local disk again after it was detached for an I/O error (on a
    /// secondary; a full resync follows).
    Attach { resource: String },
    /// Grow the volume online to SIZE backing bytes (metadata included, like `size`
    /// in the resource file) on every diskful node; every one must be connected and
    /// UpToDate. Shrinking is refused. On a resource that is down here, grows only
    /// this node's backing file.
    Resize {
        resource: String,
        /// New backing size: bytes, or e.g. "96MiB", "20G" (binary units).
        #[arg(long)]
        size: String,
        /// Only this volume (default: every volume of the resource).
        #[arg(long)]
        volume: Option<u32>,
    },
    /// Print state changes as they happen, one JSON object per line (docs/events.md).
    Events,
}

fn init_logs(level: &str) -> Result<()> {
    let level: tracing::Level = level.parse().map_err(|_| {
        anyhow::anyhow!("unknown log level {level:?}; use error, warn, info, debug or trace")
    })?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

/// blockd runs with at most two glibc malloc arenas. By default glibc gives a thread
/// that contends for the allocator an arena of its own (up to 8 per core), and what
/// a resync or a burst of writes freed in one stays mapped there: with 10 resources
/// after their initial sync, blockd's RSS was 34 MiB with the default and 25 MiB with
/// two (bench/replicated.sh, section rss). The limit must be in the environment
/// before the first allocation, so blockd sets it and executes itself again (same
/// PID); an explicit `MALLOC_ARENA_MAX` is left alone.
fn limit_malloc_arenas_for_blockd() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MALLOC_ARENA_MAX";
    if std::env::args_os().nth(1).is_none_or(|a| a != "blockd") || std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // exec returns only on failure: blockd then runs with glibc's default.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "2")
        .exec();
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas_for_blockd();
    let cli = Cli::parse();
    // Client commands print their own errors and exit as the linstor client does.
    let cli = match cli.cmd {
        Cmd::Client(cmd) => return client::main(&cli.client, cmd),
        Cmd::Controller {
            verb: Some(verb), ..
        } => return client::main_controller(&cli.client, verb),
        cmd => Cli { cmd, ..cli },
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Blockd {
            config_dir,
            run_dir,
            admin_socket,
            node,
        } => {
            init_logs(&cli.log)?;
            let mut opts = Options::new(config_dir, run_dir, admin_socket);
            if let Some(n) = node {
                opts.node = n;
            }
            run_blockd(opts, None)
        }
        Cmd::Local { admin_socket, cmd } => local(&admin_socket, cmd),
        Cmd::Client(_) | Cmd::Controller { verb: Some(_), .. } => {
            bail!("client commands are handled in main")
        }
        Cmd::Controller {
            listen,
            db,
            verb: None,
        } => {
            init_logs(&cli.log)?;
            Ok(controller::run(controller::Options { listen, db })?)
        }
        Cmd::Playground { dir, size, demo } => {
            init_logs(&cli.log)?;
            playground::run(dir, &size, demo, &cli.log)
        }
        Cmd::Satellite {
            node,
            listen,
            state_dir,
            config_dir,
            admin_socket,
        } => {
            init_logs(&cli.log)?;
            let opts = satellite::Options {
                node: node.unwrap_or_else(blockd::daemon::hostname),
                listen,
                state_dir,
                config_dir,
                admin_socket,
            };
            Ok(satellite::run(
                opts,
                std::sync::Arc::new(storage::SystemRunner),
            )?)
        }
    }
}

/// Runs blockd until SIGINT or SIGTERM. `ready` runs once the admin socket answers.
/// Called once blockd is ready (the playground prints how to attach).
type OnReady = Box<dyn FnOnce(&Daemon) + Send>;

fn run_blockd(opts: Options, ready: Option<OnReady>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let daemon = Daemon::new(opts, rt.handle().clone()).context("starting blockd")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Installed first so that a signal during start-up still shuts down cleanly.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let listener = daemon.bind_admin().context("admin socket")?;
        let d = daemon.clone();
        let up = tokio::task::spawn_blocking(move || d.up(None))
            .await
            .context("bringing resources up")?;
        if let Err(e) = up {
            tracing::warn!("some resources stay down (see `tandem local status`):\n{e}");
        }
        let admin = tokio::spawn(daemon.clone().serve_admin(listener));
        tracing::info!(admin = %daemon.options().admin_socket.display(), "blockd ready");
        if let Some(ready) = ready {
            ready(&daemon);
        }
        tokio::select! {
            r = admin => r.context("admin task")?,
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        let d = daemon.clone();
        tokio::task::spawn_blocking(move || d.shutdown())
            .await
            .context("shutting down")?;
        Ok::<(), anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn call(socket: &Path, req: Request) -> Result<admin::Response> {
    Ok(admin::call(socket, &req, ADMIN_TIMEOUT)?)
}

fn local(socket: &Path, cmd: LocalCmd) -> Result<()> {
    let req = match cmd {
        LocalCmd::Status { json } => {
            let resp = call(socket, Request::Status {})?;
            let status = resp.status.context("blockd answered without a status")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            return Ok(());
        }
        LocalCmd::Up { resource } => Request::Up { resource },
        LocalCmd::Down { resource } => Request::Down { resource },
        LocalCmd::Adjust { resource } => Request::Adjust { resource },
        LocalCmd::CreateMd { resource, force } => Request::CreateMd { resource, force },
        LocalCmd::Primary { resource, force } => Request::Primary { resource, force },
        LocalCmd::Secondary { resource, force } => Request::Secondary { resource, force },
        LocalCmd::Connect {
            resource,
            peer,
            discard_my_data,
        } => Request::Connect {
            resource,
            peer,
            discard_my_data,
        },
        LocalCmd::Disconnect { resource, peer } => Request::Disconnect { resource, peer },
        LocalCmd::Invalidate { resource } => Request::Invalidate { resource },
        LocalCmd::Verify { resource, peer } => Request::Verify { resource, peer },
        LocalCmd::Attach { resource } => Request::Attach { resource },
        LocalCmd::Resize {
            resource,
            size,
            volume,
        } => Request::Resize {
            resource,
            size: blockd::config::parse_size(&size).map_err(|e| anyhow::anyhow!("--size: {e}"))?,
            volume,
        },
        LocalCmd::Events => {
            let mut out = std::io::stdout().lock();
            return admin::stream_events(socket, &mut out).map_err(Into::into);
        }
    };
    let resp = call(socket, req)?;
    if resp.ok {
        if let Some(m) = resp.message {
            outln!("{m}");
        }
        Ok(())
    } else {
        bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "blockd refused without a reason".into())
        )
    }
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_status(s: &Status) {
    if s.resources.is_empty() {
        outln!(
            "no resources in {} (add a resource file, then `tandem local adjust`)",
            s.config_dir
        );
        return;
    }
    outln!(
        "{:<20} {:>3} {:<5} {:>10} {:>5}  {:<36} NBD",
        "RESOURCE",
        "VOL",
        "STATE",
        "SIZE",
        "CONNS",
        "BACKING"
    );
    for r in &s.resources {
        for v in &r.volumes {
            let size = v.size.map(human_size).unwrap_or_else(|| "?".into());
            let state = if v.open { "open" } else { "closed" };
            outln!(
                "{:<20} {:>3} {:<5} {:>10} {:>5}  {:<36} {}",
                r.name,
                v.number,
                state,
                size,
                v.connections,
                v.backing,
                v.nbd_uri
            );
            if let Some(e) = &v.error {
                outln!("    volume {}: {e}", v.number);
            }
            if let (Some(role), Some(disk)) = (&v.role, &v.disk_state) {
                outln!(
                    "    {}{role} {disk} quorum:{} may-promote:{}",
                    v.node
                        .as_ref()
                        .map(|n| format!("{n}: "))
                        .unwrap_or_default(),
                    if v.quorum == Some(true) { "yes" } else { "no" },
                    if v.may_promote == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
            if let Some(d) = &v.detached {
                outln!("    disk detached: {d}");
            }
            if let Some(o) = &v.writes_via {
                outln!("    second primary: writes ordered by {o}");
            }
            if let Some(why) = &v.suspended {
                outln!(
                    "    I/O suspended: {why} ({} request(s), {} held)",
                    v.held_requests,
                    human_size(v.held_bytes)
                );
            }
            if v.resync_left_bytes > 0 {
                outln!("    to receive: {}", human_size(v.resync_left_bytes));
            }
            for p in &v.peers {
                let mut line = format!(
                    "    peer {} ({}): {} {}",
                    p.name, p.address, p.connection, p.replication
                );
                if let (Some(r), Some(d)) = (&p.role, &p.disk_state) {
                    line.push_str(&format!(" {r} {d}"));
                }
                if p.out_of_sync_bytes > 0 {
                    line.push_str(&format!(" out-of-sync {}", human_size(p.out_of_sync_bytes)));
                }
                if let Some(pc) = p.resync_done_percent {
                    line.push_str(&format!(" resync {pc:.1}%"));
                    if let Some(r) = p.resync_rate_bytes_per_s {
                        line.push_str(&format!(" at {}/s", human_size(r)));
                    }
                }
                if let Some(pc) = p.verify_done_percent {
                    line.push_str(&format!(
                        " verify {}{pc:.1}% found {} different",
                        if p.verifying { "" } else { "done " },
                        human_size(p.verify_out_of_sync_bytes)
                    ));
                }
                if let Some(r) = &p.reason {
                    line.push_str(&format!(" ({r})"));
                }
                outln!("{line}");
            }
            if let Some(h) = &v.hint {
                outln!("    to resolve: {h}");
            }
        }
        if let Some(e) = &r.error {
            outln!("  {} is down: {e}", r.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_documented_interface() {
        Cli::try_parse_from(["tandem", "blockd", "--config-dir", "/c", "--run-dir", "/r"]).unwrap();
        Cli::try_parse_from([
            "tandem",
            "local",
            "--admin-socket",
            "/a",
            "status",
            "--json",
        ])
        .unwrap();
        Cli::try_parse_from(["tandem", "local", "create-md", "r0", "--force"]).unwrap();
        assert!(Cli::try_parse_from(["tandem", "local", "create-md"]).is_err());
        // `controller` without a verb is the daemon, with one a client call.
        let c = Cli::try_parse_from(["tandem", "controller", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Controller { verb: None, .. }));
        let c = Cli::try_parse_from(["tandem", "c", "version"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Controller { verb: Some(_), .. }));
        for args in [
            &["tandem", "-m", "n", "l"][..],
            &[
                "tandem",
                "sp",
                "c",
                "zfsthin",
                "pve01",
                "pool",
                "rpool/data",
            ],
            &[
                "tandem",
                "rg",
                "c",
                "--storage-pool",
                "p",
                "--place-count",
                "3",
                "--diskless-on-remaining",
                "true",
                "grp",
            ],
            &[
                "tandem",
                "rg",
                "opt",
                "--quorum=majority",
                "--protocol",
                "C",
                "grp",
            ],
            &["tandem", "r", "l", "--controllers", "a,b:1", "--no-utf8"],
        ] {
            let c = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(matches!(c.cmd, Cmd::Client(_)), "{args:?}");
        }
    }

    #[test]
    fn sizes_print_readably() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}
