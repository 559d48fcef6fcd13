//! A live cluster of real processes: a controller and three nodes, each a blockd with a
//! satellite beside it. The flow of ../shared/seeds/004 typed with `tandem`, failover
//! through NBD, deletes that reach nodes that were away, `node lost`, a controller
//! killed at random points, and python-linstor against it all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Blockd, Satellite, TANDEM, free_port, require, run};
use serde_json::Value;

struct Node {
    name: String,
    blockd: Blockd,
    sat: Satellite,
    repl_port: u16,
}

struct Live {
    dir: tempfile::TempDir,
    ctl: Option<Child>,
    ctl_addr: String,
    nodes: Vec<Node>,
}

impl Live {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tandem-live-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let nodes = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                let mut blockd = Blockd::new();
                blockd.node = Some((*n).to_owned());
                std::fs::create_dir_all(blockd.path("pool")).unwrap();
                let sat = Satellite::new(&blockd, n);
                Node {
                    name: (*n).to_owned(),
                    blockd,
                    sat,
                    repl_port: free_port(),
                }
            })
            .collect();
        let mut live = Live {
            dir,
            ctl: None,
            ctl_addr: format!("127.0.0.1:{}", free_port()),
            nodes,
        };
        live.start_controller();
        for n in &mut live.nodes {
            n.blockd.start();
            n.sat.start();
        }
        live
    }

    fn start_controller(&mut self) {
        assert!(self.ctl.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .unwrap();
        let child = Command::new(TANDEM)
            .args(["controller", "--listen", &self.ctl_addr, "--db"])
            .arg(self.dir.path().join("ctl.sqlite"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.ctl = Some(child);
        let url = format!("http://{}/v1/controller/version", self.ctl_addr);
        let start = Instant::now();
        while ureq::get(&url).call().is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "controller down");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_controller(&mut self) {
        if let Some(mut c) = self.ctl.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tandem(&self, args: &[&str]) -> Output {
        Command::new(TANDEM)
            .env_remove("LS_CONTROLLERS")
            .env("HOME", self.dir.path())
            .args(["--controllers", &self.ctl_addr])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.tandem(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "tandem {args:?}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn logs(&self) -> String {
        let mut s = format!(
            "controller:\n{}\n",
            std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
        );
        for n in &self.nodes {
            s.push_str(&format!(
                "--- {} satellite:\n{}\n--- {} blockd:\n{}\n",
                n.name,
                n.sat.logs(),
                n.name,
                n.blockd.log()
            ));
        }
        s
    }

    /// Nodes, FILE_THIN pools and a resource group with place-count 2 and
    /// diskless-on-remaining, as in seed 004.
    fn create_cluster(&self) {
        for n in &self.nodes {
            let port = n.sat.port.to_string();
            self.ok(&["node", "create", &n.name, "127.0.0.1", "--port", &port]);
            self.ok(&[
                "node",
                "set-property",
                &n.name,
                "Tandem/ReplicationPort",
                &n.repl_port.to_string(),
            ]);
        }
        for n in &self.nodes {
            let pool = n.blockd.path("pool").display().to_string();
            self.ok(&[
                "storage-pool",
                "create",
                "filethin",
                &n.name,
                "pool1",
                &pool,
            ]);
        }
        self.ok(&[
            "resource-group",
            "create",
            "grp",
            "--storage-pool",
            "pool1",
            "--place-count",
            "2",
            "--diskless-on-remaining",
            "true",
        ]);
        self.ok(&["volume-group", "create", "grp"]);
    }

    fn view(&self) -> Vec<Value> {
        let url = format!("http://{}/v1/view/resources", self.ctl_addr);
        ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json::<Vec<Value>>()
            .unwrap_or_default()
    }

    /// Disk states of `rsc` per node from the controller's view.
    fn states(&self, rsc: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .view()
            .iter()
            .filter(|r| r["name"] == rsc)
            .map(|r| {
                (
                    r["node_name"].as_str().unwrap_or("").to_owned(),
                    r["volumes"][0]["state"]["disk_state"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn replicated(&self, rsc: &str) -> bool {
        let s = self.states(rsc);
        s.len() == 3
            && s.iter().filter(|(_, d)| d == "UpToDate").count() == 2
            && s.iter()
                .filter(|(_, d)| d == "TieBreaker" || d == "Diskless")
                .count()
                == 1
    }

    fn wait(&self, what: &str, limit: Duration, f: impl Fn(&Live) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < limit,
                "{what} did not happen within {limit:?}; view:\n{:#?}\n{}",
                self.view(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn connection(&self, node: &str) -> String {
        let url = format!("http://{}/v1/nodes/{node}", self.ctl_addr);
        let v: Value = ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap_or_default();
        let v = if v.is_array() { v[0].clone() } else { v };
        v["connection_status"].as_str().unwrap_or("").to_owned()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Nodes holding `rsc` with a disk.
    fn diskful(&self, rsc: &str) -> Vec<String> {
        self.states(rsc)
            .into_iter()
            .filter(|(_, d)| d == "UpToDate")
            .map(|(n, _)| n)
            .collect()
    }

    /// Whether a node still has anything of `rsc`: resource file or backing volume.
    fn leftovers(&self, node: &str, rsc: &str) -> Vec<PathBuf> {
        let n = self.node(node);
        [
            n.blockd.path(&format!("conf/{rsc}.toml")),
            n.blockd.path(&format!("pool/{rsc}_00000.img")),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.kill_controller();
    }
}

fn nbd_uri(n: &Node, rsc: &str) -> String {
    let v = n.blockd.volume(rsc, 0);
    v["nbd_uri"].as_str().unwrap().to_owned()
}

#[test]
fn seed_004_flow_replicates_and_fails_over() {
    require("qemu-io", "qemu-utils");
    let mut live = Live::new();
    live.create_cluster();
    let out = live.ok(&[
        "resource-group",
        "spawn-resources",
        "grp",
        "vm-100-disk-0",
        "1G",
    ]);
    assert!(out.contains("SUCCESS"), "{out}");
    let took = live.wait(
        "two UpToDate replicas and a tiebreaker",
        Duration::from_secs(10),
        |l| l.replicated("vm-100-disk-0"),
    );
    eprintln!("spawned 1G resource replicated in {took:?}");
    // `tandem r l` says the same.
    let rl = live.ok(&["resource", "list"]);
    assert_eq!(rl.matches("UpToDate").count(), 2, "{rl}");
    let nodes = live.states("vm-100-disk-0");
    let names: std::collections::BTreeSet<_> = nodes.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 3, "{nodes:?}");

    let disk = live.diskful("vm-100-disk-0");
    let (a, b) = (disk[0].clone(), disk[1].clone());
    let uri_a = nbd_uri(live.node(&a), "vm-100-disk-0");
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x3c 0 4M",
            "-c",
            "flush",
            &uri_a,
        ],
    );
    live.node_mut(&a).blockd.kill9();
    let uri_b = nbd_uri(live.node(&b), "vm-100-disk-0");
    let text = common::stdout(&run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x3c 0 4M", &uri_b],
    ));
    assert!(!text.contains("failed"), "{text}");
    // The controller tells the truth about the dead node's replica.
    live.wait(
        "the view showing the killed node",
        Duration::from_secs(15),
        |l| {
            l.states("vm-100-disk-0")
                .iter()
                .any(|(n, d)| *n == a && d != "UpToDate")
        },
    );
}

#[test]
fn deletes_reach_a_node_that_was_away_and_lost_nodes_are_cleaned() {
    let mut live = Live::new();
    live.create_cluster();
    for r in ["r1", "r2"] {
        live.ok(&["resource-group", "spawn-resources", "grp", r, "64M"]);
    }
    live.wait("both replicated", Duration::from_secs(30), |l| {
        l.replicated("r1") && l.replicated("r2")
    });
    // A satellite is away while r1 is deleted; blockd keeps serving meanwhile.
    let away = live.diskful("r1")[0].clone();
    live.node_mut(&away).sat.kill9();
    live.ok(&["resource-definition", "delete", "r1"]);
    assert!(!live.leftovers(&away, "r1").is_empty());
    live.node_mut(&away).sat.start();
    live.wait(
        "r1 removed from the returning node",
        Duration::from_secs(30),
        |l| l.leftovers(&away, "r1").is_empty(),
    );
    live.wait("r1 removed everywhere", Duration::from_secs(30), |l| {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| l.leftovers(n, "r1").is_empty())
    });
    // A node declared lost while its satellite is down is cleaned when it returns.
    let lost = live.diskful("r2")[0].clone();
    live.node_mut(&lost).sat.kill9();
    live.wait("the node shown OFFLINE", Duration::from_secs(30), |l| {
        l.connection(&lost) == "OFFLINE"
    });
    live.ok(&["node", "lost", &lost]);
    live.node_mut(&lost).sat.start();
    live.wait(
        "the lost node's leftovers removed",
        Duration::from_secs(30),
        |l| l.leftovers(&lost, "r2").is_empty(),
    );
    // The others still hold r2.
    assert!(live.states("r2").iter().all(|(n, _)| *n != lost));
}

/// A small xorshift so the kill points differ per run but can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn a_controller_killed_during_spawns_and_deletes_converges() {
    let mut live = Live::new();
    live.create_cluster();
    let seed = std::env::var("TANDEM_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill seed {seed} (TANDEM_KILL_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut live_set = std::collections::BTreeSet::new();
    let mut tried_delete = std::collections::BTreeSet::new();
    let mut deleted = std::collections::BTreeSet::new();
    for round in 0..4 {
        // A background killer: the controller dies at a random point of this round.
        let delay = Duration::from_millis(50 + rng.next() % 400);
        let pid = live.ctl.as_ref().unwrap().id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        for i in 0..4 {
            let name = format!("k{round}x{i}");
            let out = live.tandem(&["resource-group", "spawn-resources", "grp", &name, "16M"]);
            if out.status.success() {
                live_set.insert(name);
            }
            if rng.next().is_multiple_of(3)
                && let Some(victim) = live_set.iter().next().cloned()
            {
                tried_delete.insert(victim.clone());
                let out = live.tandem(&["resource-definition", "delete", &victim]);
                if out.status.success() {
                    live_set.remove(&victim);
                    deleted.insert(victim);
                }
            }
        }
        killer.join().unwrap();
        live.kill_controller();
        live.start_controller();
    }
    // Whatever the database holds now is the truth: wait until the nodes match it.
    let listed: Vec<String> = {
        let url = format!("http://{}/v1/resource-definitions", live.ctl_addr);
        let v: Vec<Value> = ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        v.iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    };
    eprintln!("resources after the kills: {listed:?}");
    // Every acknowledged spawn survived the kills, every acknowledged delete too.
    for r in live_set.iter().filter(|r| !tried_delete.contains(*r)) {
        assert!(
            listed.contains(r),
            "{r} was spawned but is gone: {listed:?}"
        );
    }
    for r in &deleted {
        assert!(
            !listed.contains(r),
            "{r} was deleted but is back: {listed:?}"
        );
    }
    live.wait("every resource replicated", Duration::from_secs(60), |l| {
        listed.iter().all(|r| l.replicated(r))
    });
    // Nothing of a resource the controller does not know is left on any node.
    live.wait("no leftovers", Duration::from_secs(30), |l| {
        l.nodes.iter().all(|n| {
            std::fs::read_dir(n.blockd.path("conf"))
                .unwrap()
                .flatten()
                .all(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    listed.iter().any(|r| f == format!("{r}.toml"))
                })
        })
    });
    let _ = live.nodes.len();
}

#[test]
fn python_linstor_spawns_on_a_live_cluster_and_reaches_up_to_date() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let live = Live::new();
    let spec: Vec<Value> = live
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({"name": n.name, "port": n.sat.port,
                "replication_port": n.repl_port, "pool": n.blockd.path("pool")})
        })
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/live_cluster.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(format!("linstor://{}", live.ctl_addr))
        .arg(Value::from(spec).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python-linstor on a live cluster failed:\nstdout:\n{stdout}\nstderr:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        live.logs()
    );
    // The delete reached every node.
    live.wait(
        "vm-101-disk-0 removed everywhere",
        Duration::from_secs(30),
        |l| {
            ["n1", "n2", "n3"]
                .iter()
                .all(|n| l.leftovers(n, "vm-101-disk-0").is_empty())
        },
    );
}

#[test]
fn a_volume_definition_grown_online_grows_every_replica_without_closing_clients() {
    require("qemu-io", "qemu-utils");
    let mut live = Live::new();
    live.create_cluster();
    live.ok(&["resource-group", "spawn-resources", "grp", "g1", "64M"]);
    live.wait("replicated", Duration::from_secs(30), |l| {
        l.replicated("g1")
    });
    let disk = live.diskful("g1");
    let uri = nbd_uri(live.node(&disk[0]), "g1");
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x77 0 1M", &uri]);
    let before: Vec<u64> = live.nodes.iter().map(|n| n.blockd.size("g1", 0)).collect();
    assert!(before.iter().all(|s| *s >= 64 << 20), "{before:?}");
    live.ok(&["volume-definition", "set-size", "g1", "0", "128M"]);
    live.wait("every node at the new size", Duration::from_secs(30), |l| {
        l.nodes.iter().all(|n| n.blockd.size("g1", 0) >= 128 << 20)
    });
    // The data stayed, the new area reads as zeros, and it is all in sync.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x77 0 1M",
            "-c",
            "read -P 0 100M 1M",
            &uri,
        ],
    );
    live.wait("replicated after the grow", Duration::from_secs(30), |l| {
        l.replicated("g1")
    });
    // blockd recorded the new size instead of closing the volume.
    for n in &live.nodes {
        let log = n.sat.logs();
        assert!(log.contains("g1/0: new size recorded"), "{log}");
        assert!(!log.contains("g1/0: reopened"), "{log}");
    }
    let _ = live.node_mut(&disk[0]);
}
