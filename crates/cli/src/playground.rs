//! `tandem playground`: a controller and three nodes (satellite + blockd each) on this
//! machine, a FILE_THIN pool per node, a resource group with place-count 2 and
//! diskless-on-remaining, and one spawned volume. `--demo` then writes data, kills the
//! primary's node, reads the data through the survivor, restarts the node and waits for
//! the resync.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use model::satellite::ObservedState;
use serde::{Deserialize, Serialize};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const RESOURCE: &str = "demo";
const GROUP: &str = "playground";
const POOL: &str = "pool1";
/// How long the playground waits for the cluster to settle at each step.
const SETTLE: Duration = Duration::from_secs(60);

/// Ports chosen on first start and kept in the directory, so a reused directory finds
/// its nodes where the controller's database says they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ports {
    controller: u16,
    satellites: Vec<u16>,
    replication: Vec<u16>,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("finding a free port")?.port())
}

/// Child processes, stopped with SIGTERM (and waited for) when the playground ends.
#[derive(Debug)]
struct Procs {
    controller: Option<Child>,
    blockd: Vec<Option<Child>>,
    satellite: Vec<Option<Child>>,
}

fn signal(c: &Child, sig: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(c), sig);
}

fn stop(c: &mut Option<Child>, sig: rustix::process::Signal) {
    if let Some(mut c) = c.take() {
        signal(&c, sig);
        let _ = c.wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        use rustix::process::Signal;
        for c in self.satellite.iter_mut().chain(self.blockd.iter_mut()) {
            stop(c, Signal::TERM);
        }
        stop(&mut self.controller, Signal::TERM);
    }
}

#[derive(Debug)]
struct Playground {
    dir: PathBuf,
    exe: PathBuf,
    log: String,
    ports: Ports,
    procs: Procs,
    /// Set by SIGINT or SIGTERM.
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Playground {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(NODES[i])
    }

    fn controllers(&self) -> String {
        format!("127.0.0.1:{}", self.ports.controller)
    }

    fn spawn(&self, args: &[String], log: &Path) -> Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        Command::new(&self.exe)
            .arg("--log")
            .arg(&self.log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("opening the log")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting tandem {}", args.join(" ")))
    }

    fn start_controller(&mut self) -> Result<()> {
        let args = vec![
            "controller".to_owned(),
            "--listen".to_owned(),
            self.controllers(),
            "--db".to_owned(),
            self.dir.join("controller.sqlite").display().to_string(),
        ];
        let c = self.spawn(&args, &self.dir.join("controller.log"))?;
        self.procs.controller = Some(c);
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let d = self.node_dir(i);
        for sub in ["resources", "run", "pool", "state"] {
            let p = d.join(sub);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let s = |p: &Path| p.display().to_string();
        let blockd = vec![
            "blockd".to_owned(),
            "--node".to_owned(),
            NODES[i].to_owned(),
            "--config-dir".to_owned(),
            s(&d.join("resources")),
            "--run-dir".to_owned(),
            s(&d.join("run")),
        ];
        let b = self.spawn(&blockd, &d.join("blockd.log"))?;
        let satellite = vec![
            "satellite".to_owned(),
            "--node".to_owned(),
            NODES[i].to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.ports.satellites[i]),
            "--state-dir".to_owned(),
            s(&d.join("state")),
            "--config-dir".to_owned(),
            s(&d.join("resources")),
            "--admin-socket".to_owned(),
            s(&d.join("run/admin.sock")),
        ];
        let sat = self.spawn(&satellite, &d.join("satellite.log"))?;
        self.procs.blockd[i] = Some(b);
        self.procs.satellite[i] = Some(sat);
        Ok(())
    }

    /// Runs a client command against the playground's controller, printing it first.
    fn client(&self, args: &[&str]) -> Result<()> {
        outln!("$ tandem {}", args.join(" "));
        let out = Command::new(&self.exe)
            .arg("--controllers")
            .arg(self.controllers())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running tandem {}", args.join(" ")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("`tandem {}` failed:\n{text}{err}", args.join(" "));
        }
        Ok(())
    }

    fn wait_controller(&mut self) -> Result<()> {
        let url = format!("http://{}/v1/controller/version", self.controllers());
        let deadline = Instant::now() + SETTLE;
        loop {
            if ureq::get(&url).call().is_ok() {
                return Ok(());
            }
            if let Some(c) = &mut self.procs.controller
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!(
                    "the controller exited ({st}); see {}",
                    self.dir.join("controller.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not answer within {SETTLE:?}; see {}",
                    self.dir.join("controller.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates nodes, pools, the group and the volume through the controller.
    fn create_cluster(&self, size: &str) -> Result<()> {
        for (i, n) in NODES.iter().enumerate() {
            self.client(&[
                "node",
                "create",
                n,
                "127.0.0.1",
                "--port",
                &self.ports.satellites[i].to_string(),
            ])?;
            // Every node listens on 127.0.0.1 here, so each needs its own port.
            self.client(&[
                "node",
                "set-property",
                n,
                model::satellite::KEY_REPLICATION_PORT,
                &self.ports.replication[i].to_string(),
            ])?;
        }
        for (i, n) in NODES.iter().enumerate() {
            let pool = self.node_dir(i).join("pool").display().to_string();
            self.client(&["storage-pool", "create", "filethin", n, POOL, &pool])?;
        }
        self.client(&[
            "resource-group",
            "create",
            GROUP,
            "--storage-pool",
            POOL,
            "--place-count",
            "2",
            "--diskless-on-remaining",
            "true",
        ])?;
        self.client(&["volume-group", "create", GROUP])?;
        self.client(&["resource-group", "spawn-resources", GROUP, RESOURCE, size])?;
        Ok(())
    }

    fn observed(&self, i: usize) -> Option<ObservedState> {
        let url = format!(
            "http://127.0.0.1:{}/v1/satellite/observed",
            self.ports.satellites[i]
        );
        ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_json::<ObservedState>()
            .ok()
    }

    /// One line per node: role, disk state, connections; None for a node that does not
    /// answer.
    fn status_lines(&self) -> Vec<String> {
        (0..NODES.len())
            .map(|i| match self.observed(i) {
                None => format!("{}: satellite not answering", NODES[i]),
                Some(o) => match o.resources.iter().find(|r| r.name == RESOURCE) {
                    None => format!("{}: no {RESOURCE} yet", NODES[i]),
                    Some(r) => {
                        let v = r.volumes.first();
                        let disk = v.and_then(|v| v.disk_state.clone()).unwrap_or("-".into());
                        let peers: Vec<String> = r
                            .peers
                            .iter()
                            .map(|p| format!("{}:{}/{}", p.name, p.connection, p.replication))
                            .collect();
                        let mut line = format!(
                            "{}: {} {} peers {}",
                            NODES[i],
                            r.role.as_deref().unwrap_or("-"),
                            disk,
                            peers.join(" ")
                        );
                        if let Some(e) = &r.error {
                            line.push_str(&format!(" ({e})"));
                        }
                        line
                    }
                },
            })
            .collect()
    }

    fn nbd_uri(&self, i: usize) -> Option<String> {
        self.observed(i)?
            .resources
            .into_iter()
            .find(|r| r.name == RESOURCE)?
            .volumes
            .first()?
            .nbd_uri
            .clone()
    }

    /// Waits until every node in `nodes` reports the resource's disk state as one of
    /// `states` with all its peers connected.
    fn wait_state(&self, nodes: &[usize], states: &[&str], what: &str) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let ok = nodes.iter().all(|&i| {
                self.observed(i).is_some_and(|o| {
                    o.resources.iter().any(|r| {
                        r.name == RESOURCE
                            && r.volumes.first().is_some_and(|v| {
                                v.disk_state.as_deref().is_some_and(|d| states.contains(&d))
                            })
                            && r.peers.iter().all(|p| p.connection == "Connected")
                    })
                })
            });
            if ok {
                return Ok(());
            }
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not happen within {SETTLE:?}:\n{}\nlogs are in {}",
                    self.status_lines().join("\n"),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn print_attach(&self) {
        outln!();
        outln!("Volume {RESOURCE}/0 is served on every node (a client makes its node primary):");
        for i in 0..NODES.len() {
            if let Some(uri) = self.nbd_uri(i) {
                outln!("{uri}");
            }
        }
        if let Some(uri) = self.nbd_uri(0) {
            outln!();
            outln!("Attach with, for example:");
            outln!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '{uri}'");
            outln!("  touch /tmp/disk; nbdfuse /tmp/disk '{uri}' &");
            outln!("  losetup -f --show /tmp/disk");
        }
        outln!();
        outln!(
            "The cluster: tandem --controllers {} resource list",
            self.controllers()
        );
        outln!(
            "One node's blockd: tandem local --admin-socket {} status",
            self.node_dir(0).join("run/admin.sock").display()
        );
        outln!("Logs and state: {}", self.dir.display());
    }

    fn qemu_io(&self, uri: &str, cmds: &[String]) -> Result<String> {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.arg("-c").arg(x);
        }
        let out = c
            .arg(uri)
            .output()
            .context("running qemu-io (the demo needs it: apt-get install qemu-utils)")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success()
            || text.contains("failed")
            || text.contains("Pattern verification failed")
        {
            bail!("qemu-io {cmds:?} on {uri} failed:\n{text}");
        }
        Ok(text)
    }

    /// Writes through n1, kills n1's blockd and satellite, reads through n2, writes
    /// more, brings n1 back and waits until it caught up.
    fn demo(&mut self) -> Result<()> {
        let uri1 = self.nbd_uri(0).context("n1 has no NBD address")?;
        let uri2 = self.nbd_uri(1).context("n2 has no NBD address")?;
        outln!("\n[demo] writing 8 MiB of 0xab through n1 ...");
        self.qemu_io(&uri1, &["write -P 0xab 0 8M".into(), "flush".into()])?;
        outln!("[demo] killing n1's blockd and satellite (kill -9) ...");
        stop(&mut self.procs.blockd[0], rustix::process::Signal::KILL);
        stop(&mut self.procs.satellite[0], rustix::process::Signal::KILL);
        outln!("[demo] reading through n2 (it becomes primary on connect) ...");
        self.qemu_io(&uri2, &["read -P 0xab 0 8M".into()])?;
        outln!("[demo] the data is there; writing 4 MiB of 0xcd through n2 ...");
        self.qemu_io(&uri2, &["write -P 0xcd 8M 4M".into(), "flush".into()])?;
        outln!("[demo] restarting n1 ...");
        self.start_node(0)?;
        self.wait_state(&[0, 1], &["UpToDate"], "n1's resync")?;
        let received: u64 = blockd::admin::call(
            &self.node_dir(0).join("run/admin.sock"),
            &blockd::admin::Request::Status {},
            Duration::from_secs(10),
        )
        .ok()
        .and_then(|r| r.status)
        .into_iter()
        .flat_map(|s| s.resources)
        .filter(|r| r.name == RESOURCE)
        .flat_map(|r| r.volumes)
        .flat_map(|v| v.peers)
        .map(|p| p.resync_received_bytes)
        .sum();
        outln!(
            "[demo] n1 caught up, receiving {:.1} MiB: what changed while it was away and the extents it was writing when it died",
            received as f64 / f64::from(1 << 20)
        );
        outln!("[demo] reading everything back through n1 ...");
        self.qemu_io(
            &uri1,
            &["read -P 0xab 0 8M".into(), "read -P 0xcd 8M 4M".into()],
        )?;
        outln!("[demo] verified: n1 has the data written before and during its outage");
        self.wait_state(&[2], &["Diskless"], "n3 reconnecting to n1")?;
        Ok(())
    }
}

fn load_ports(dir: &Path) -> Result<Ports> {
    let file = dir.join("playground.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; remove the directory or pass another --dir",
                file.display()
            )
        });
    }
    let ports = Ports {
        controller: free_port()?,
        satellites: NODES.iter().map(|_| free_port()).collect::<Result<_>>()?,
        replication: NODES.iter().map(|_| free_port()).collect::<Result<_>>()?,
    };
    std::fs::write(&file, serde_json::to_vec_pretty(&ports)?)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(ports)
}

pub fn run(dir: Option<PathBuf>, size: &str, demo: bool, log: &str) -> Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("tandem-playground-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stopping = watch_signals()?;
    let dir = std::path::absolute(&dir).context("resolving the playground directory")?;
    let fresh = !dir.join("controller.sqlite").exists();
    let ports = load_ports(&dir)?;
    let mut pg = Playground {
        dir: dir.clone(),
        exe: std::env::current_exe().context("finding the tandem binary")?,
        log: log.to_owned(),
        ports,
        procs: Procs {
            blockd: NODES.iter().map(|_| None).collect(),
            satellite: NODES.iter().map(|_| None).collect(),
            controller: None,
        },
        stopping,
    };
    outln!("tandem playground in {}", dir.display());
    pg.start_controller()?;
    for i in 0..NODES.len() {
        pg.start_node(i)?;
    }
    pg.wait_controller()?;
    if fresh {
        pg.create_cluster(size)?;
    }
    pg.wait_state(
        &[0, 1],
        &["UpToDate"],
        "the volume becoming UpToDate on n1 and n2",
    )?;
    pg.print_attach();
    if demo {
        pg.demo()?;
    }
    outln!("\nLive status (changes only); stop everything with Ctrl-C.");
    let mut last = Vec::new();
    while !pg.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        let now = pg.status_lines();
        if now != last {
            outln!("--");
            for l in &now {
                outln!("{l}");
            }
            last = now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    outln!("stopping the playground ...");
    drop(pg);
    Ok(())
}

/// A flag set by SIGINT or SIGTERM; the handlers are installed before it returns.
fn watch_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("installing signal handlers")?;
    let f = flag.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    });
    Ok(flag)
}
