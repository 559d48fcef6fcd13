//! Harness for multi-process tests: a real `tandem blockd` process in a scratch
//! directory, and helpers to run the real NBD clients against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Runs qemu-io; returns its output and whether every command succeeded (a pattern
/// mismatch counts as a failure).
pub fn qemu_io_try(uri: &str, cmds: &[&str]) -> (String, bool) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    qemu_io_outcome(&Command::new("qemu-io").args(&args).output().unwrap())
}

/// A finished qemu-io's output (stdout then stderr) and whether every command
/// succeeded.
pub fn qemu_io_outcome(out: &Output) -> (String, bool) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && !text.contains("failed");
    (text, ok)
}

/// qemu-io that must succeed.
pub fn qemu_io_ok(uri: &str, cmds: &[&str]) {
    let (text, ok) = qemu_io_try(uri, cmds);
    assert!(ok, "qemu-io {cmds:?}: {text}");
}

/// Fails the test with an install hint when a client is missing: a test that cannot
/// run must not pass.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (or run .ci/run)"
    );
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Blockd {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// `--node` given to blockd (replicated resources).
    pub node: Option<String>,
    /// Network namespace blockd runs in (`ip netns exec`); the admin and NBD sockets
    /// are Unix sockets, reachable from outside it.
    pub netns: Option<String>,
}

impl Blockd {
    /// A scratch directory with `conf/`, `run/` and `data/`; nothing started yet.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        for d in ["conf", "run", "data"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Blockd {
            dir,
            child: None,
            node: None,
            netns: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes conf/NAME.toml with one volume per (number, size) on data/NAME-N.img.
    pub fn add_resource(&self, name: &str, volumes: &[(u32, &str)]) {
        let mut text = String::new();
        for (n, size) in volumes {
            text.push_str(&format!(
                "[[volume]]\nnumber = {n}\nbacking = \"{}\"\nsize = \"{size}\"\n\n",
                self.path(&format!("data/{name}-{n}.img")).display()
            ));
        }
        self.write_conf(name, &text);
    }

    pub fn write_conf(&self, name: &str, text: &str) {
        std::fs::write(self.path(&format!("conf/{name}.toml")), text).unwrap();
    }

    pub fn admin(&self) -> PathBuf {
        self.path("run/admin.sock")
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("blockd.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TANDEM]);
                c
            }
            None => Command::new(TANDEM),
        };
        let child = cmd
            .args(["blockd", "--config-dir"])
            .arg(self.path("conf"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .args(self.node.iter().flat_map(|n| ["--node", n.as_str()]))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while self.try_status().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "blockd did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            run("kill", &["-TERM", &c.id().to_string()]);
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "blockd exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of the running blockd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("blockd.log")).unwrap_or_default()
    }

    /// Runs `tandem local --admin-socket ... ARGS`.
    pub fn local(&self, args: &[&str]) -> Output {
        Command::new(TANDEM)
            .arg("local")
            .arg("--admin-socket")
            .arg(self.admin())
            .args(args)
            .output()
            .unwrap()
    }

    fn try_status(&self) -> Option<Value> {
        let out = self.local(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed; log:\n{}", self.log()))
    }

    pub fn volume(&self, res: &str, vol: u64) -> Value {
        let s = self.status();
        let r = s["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == res)
            .cloned();
        let r = r.unwrap_or_else(|| panic!("no resource {res} in {s:#}"));
        r["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["number"] == vol)
            .cloned()
            .unwrap()
    }

    pub fn uri(&self, res: &str, vol: u64) -> String {
        self.volume(res, vol)["nbd_uri"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn size(&self, res: &str, vol: u64) -> u64 {
        self.volume(res, vol)["size"].as_u64().unwrap()
    }
}

/// A TCP port nobody listens on right now.
/// Random writes by fio with crc32c verification, then a read-back of everything
/// written; `extra` sets the block sizes, depth, jobs and region. Jobs write disjoint
/// regions (`--offset_increment`) so each verifies its own data. Panics unless fio
/// reports no error and both phases moved data.
pub fn fio_verify(uri: &str, extra: &[&str]) {
    let uri = format!("--uri={uri}");
    let mut args = vec![
        "--name=verify",
        "--ioengine=nbd",
        uri.as_str(),
        "--rw=randwrite",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--group_reporting",
        "--output-format=json",
    ];
    args.extend_from_slice(extra);
    let out = run("fio", &args);
    // fio's nbd engine prints "connected" lines ahead of the JSON.
    let text = stdout(&out);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("fio printed no JSON: {text}"));
    let r: Value = serde_json::from_str(&text[start..]).unwrap();
    let job = &r["jobs"][0];
    assert_eq!(job["error"], 0, "{job:#}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() > 0, "{job:#}");
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() > 0,
        "verify phase read nothing: {job:#}"
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node of a test cluster: name, id, address, diskless.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub id: u8,
    pub host: String,
    pub port: u16,
    pub diskless: bool,
}

/// Several blockd processes on 127.0.0.1, each with its own directory, sharing the
/// replicated resources written by [`Cluster::add_resource`].
pub struct Cluster {
    pub nodes: Vec<Blockd>,
    pub specs: Vec<NodeSpec>,
    /// Declared after `nodes`: the namespaces go after the processes in them.
    pub net: Option<Mesh>,
}

impl Cluster {
    /// `diskless[i]` says whether node i has no disk. Node names are n0, n1, ...
    pub fn new(diskless: &[bool]) -> Self {
        let specs: Vec<NodeSpec> = diskless
            .iter()
            .enumerate()
            .map(|(i, d)| NodeSpec {
                name: format!("n{i}"),
                id: i as u8,
                host: "127.0.0.1".into(),
                port: free_port(),
                diskless: *d,
            })
            .collect();
        let nodes = specs
            .iter()
            .map(|s| {
                let mut b = Blockd::new();
                b.node = Some(s.name.clone());
                b
            })
            .collect();
        Cluster {
            nodes,
            specs,
            net: None,
        }
    }

    /// Like [`Cluster::new`], but every node runs in a network namespace of its own,
    /// with a veth link to each other node (see [`Mesh`]).
    pub fn in_netns(diskless: &[bool]) -> Self {
        let mut c = Self::new(diskless);
        let mesh = Mesh::new(diskless.len());
        for (i, s) in c.specs.iter_mut().enumerate() {
            s.host = mesh.addr(i);
            s.port = 7788;
            c.nodes[i].netns = Some(mesh.ns(i));
        }
        c.net = Some(mesh);
        c
    }

    pub fn mesh(&self) -> &Mesh {
        self.net
            .as_ref()
            .expect("the cluster runs in network namespaces")
    }

    /// The resource file text for node `i` (`extra` goes at the top, e.g. options).
    pub fn resource_text(
        &self,
        i: usize,
        name: &str,
        size: &str,
        secret: &str,
        extra: &str,
    ) -> String {
        let all: Vec<usize> = (0..self.specs.len()).collect();
        self.resource_text_of(i, name, size, secret, extra, &all)
    }

    /// Like [`Cluster::resource_text`] with only the nodes in `members` listed.
    pub fn resource_text_of(
        &self,
        i: usize,
        name: &str,
        size: &str,
        secret: &str,
        extra: &str,
        members: &[usize],
    ) -> String {
        let mut t = format!("secret = \"{secret}\"\n{extra}\n");
        for s in members.iter().map(|m| &self.specs[*m]) {
            t.push_str(&format!(
                "[[node]]\nname = \"{}\"\nid = {}\naddress = \"{}:{}\"\ndiskless = {}\n\n",
                s.name, s.id, s.host, s.port, s.diskless
            ));
        }
        t.push_str(&format!("[[volume]]\nnumber = 0\nsize = \"{size}\"\n"));
        if !self.specs[i].diskless {
            t.push_str(&format!(
                "backing = \"{}\"\n",
                self.nodes[i].path(&format!("data/{name}.img")).display()
            ));
        }
        t
    }

    pub fn add_resource(&self, name: &str, size: &str) {
        for i in 0..self.nodes.len() {
            let t = self.resource_text(i, name, size, "test-secret-1234", "");
            self.nodes[i].write_conf(name, &t);
        }
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    /// Waits until `f` holds for node i's volume 0 of `res`; panics with its status.
    pub fn wait(&self, i: usize, res: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.nodes[i].volume(res, 0);
            if f(&v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node {i}: timed out waiting for {what}; volume status:\n{v:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- log of node {i}:\n{}", n.log()))
            .collect()
    }

    /// Waits until node i sees every peer connected and in sync, and is UpToDate
    /// (or Diskless).
    /// Waits until node `i` sees every peer of `res` connected; returns its status.
    pub fn wait_connected(&self, i: usize, res: &str) -> Value {
        self.wait(i, res, "peers connected", |v| {
            v["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["connection"] == "Connected"))
        })
    }

    pub fn wait_in_sync(&self, i: usize, res: &str) -> Value {
        self.wait(i, res, "connected and in sync", |v| {
            let disk_ok = v["disk_state"] == "UpToDate" || v["disk_state"] == "Diskless";
            disk_ok
                && v["peers"].as_array().is_some_and(|ps| {
                    ps.iter().all(|p| {
                        p["connection"] == "Connected"
                            && p["replication"] == "Established"
                            && p["out_of_sync_bytes"] == 0
                    })
                })
        })
    }

    pub fn local_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.nodes[i].local(args);
        assert!(
            out.status.success(),
            "node {i}: tandem local {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    }
}

/// nbdfuse + loop device + mount, torn down in reverse order even when the test fails.
pub struct Attached {
    pub fuse_file: PathBuf,
    fuse: Option<Child>,
    loop_dev: Option<String>,
    pub mnt: PathBuf,
    mounted: bool,
}

impl Attached {
    pub fn new(dir: &Path, uri: &str) -> Self {
        let fuse_file = dir.join("disk");
        std::fs::write(&fuse_file, b"").unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(&fuse_file)
            .arg(uri)
            .spawn()
            .unwrap();
        let mut a = Attached {
            fuse_file,
            fuse: Some(fuse),
            loop_dev: None,
            mnt: dir.join("mnt"),
            mounted: false,
        };
        let start = Instant::now();
        while std::fs::metadata(&a.fuse_file)
            .map(|m| m.len())
            .unwrap_or(0)
            == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdfuse did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run("losetup", &["-f", "--show", a.fuse_file.to_str().unwrap()]);
        a.loop_dev = Some(stdout(&out).trim().to_owned());
        std::fs::create_dir_all(&a.mnt).unwrap();
        a
    }
    pub fn dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap()
    }
    pub fn mount(&mut self) {
        run("mount", &[self.dev(), self.mnt.to_str().unwrap()]);
        self.mounted = true;
    }
    pub fn umount(&mut self) {
        run("umount", &[self.mnt.to_str().unwrap()]);
        self.mounted = false;
    }
    /// The node under the client died: drop the mount, the FUSE daemon and the loop
    /// device without waiting for any of them to write anything back.
    pub fn crash(mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            self.mounted = false;
        }
        if let Some(mut f) = self.fuse.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.fuse_file)
            .status();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        // The loop device lets go of the file asynchronously: until it does, the
        // FUSE mount is busy.
        umount_patiently(&self.fuse_file);
        if let Some(mut f) = self.fuse.take() {
            let start = Instant::now();
            while f.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

/// The files the filesystem tests write: names in three directories, sizes up to 700 KB.
pub fn test_files() -> Vec<(String, Vec<u8>)> {
    (0..20u64)
        .map(|i| {
            let len = 1000 + (i as usize * 37_331) % 700_000;
            let data: Vec<u8> = (0..len)
                .map(|j| ((j as u64 * 31 + i * 7) % 251) as u8)
                .collect();
            (format!("dir{}/file{i}.bin", i % 3), data)
        })
        .collect()
}

/// Every file of [`test_files`] is under `mnt` with its content.
pub fn check_test_files(mnt: &Path) {
    for (name, data) in test_files() {
        let got = std::fs::read(mnt.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == data, "{name} differs");
    }
}

/// Network namespaces, one per node, joined by a full mesh of veth pairs. Node i
/// owns 10.77.0.(i+1) on its loopback and reaches node j through the link to j only,
/// so a link cut with `ip link set down` partitions exactly that pair. Removed on drop.
pub struct Mesh {
    prefix: String,
    n: usize,
}

impl Mesh {
    pub fn new(n: usize) -> Self {
        require("ip", "iproute2");
        let m = Mesh {
            prefix: format!(
                "tnd{}x{}",
                std::process::id(),
                MESH_SEQ.fetch_add(1, SeqCst)
            ),
            n,
        };
        for i in 0..n {
            run("ip", &["netns", "add", &m.ns(i)]);
            m.exec(i, &["ip", "link", "set", "lo", "up"]);
            m.exec(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/32", m.addr(i)),
                    "dev",
                    "lo",
                ],
            );
        }
        for i in 0..n {
            for j in i + 1..n {
                run(
                    "ip",
                    &[
                        "link",
                        "add",
                        &m.link(i, j),
                        "netns",
                        &m.ns(i),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &m.link(j, i),
                        "netns",
                        &m.ns(j),
                    ],
                );
                m.up(i, j);
            }
        }
        m
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    fn link(&self, i: usize, j: usize) -> String {
        format!("veth{i}to{j}")
    }

    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        let ns = self.ns(i);
        let mut a = vec!["netns", "exec", ns.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Brings the link between i and j up (both ends) with a route each way.
    pub fn up(&self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            self.exec(a, &["ip", "link", "set", &self.link(a, b), "up"]);
        }
        for (a, b) in [(i, j), (j, i)] {
            self.exec(
                a,
                &[
                    "ip",
                    "route",
                    "replace",
                    &format!("{}/32", self.addr(b)),
                    "dev",
                    &self.link(a, b),
                    "src",
                    &self.addr(a),
                ],
            );
        }
    }

    /// Cuts the link between i and j: packets between them go nowhere.
    pub fn cut(&self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            self.exec(a, &["ip", "link", "set", &self.link(a, b), "down"]);
        }
    }
}

static MESH_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
use std::sync::atomic::Ordering::SeqCst;

impl Drop for Mesh {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
    }
}

/// Unmounts `path`, retrying while it is busy for up to 10 s, then lazily.
fn umount_patiently(path: &Path) {
    let start = Instant::now();
    while !Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = Command::new("umount").arg("-l").arg(path).status();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test unless nbdfuse, loop devices, mkfs.ext4 and FUSE are there.
pub fn require_filesystem_tools() {
    for (tool, pkg) in [
        ("nbdfuse", "libnbd-bin"),
        ("losetup", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
    ] {
        require(tool, pkg);
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE"
    );
}

/// A peer field of a volume status.
pub fn peer<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no peer {name} in {v:#}"))
}

impl Drop for Blockd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A file of `len` pseudo-random bytes (xorshift; fast and reproducible per seed).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).unwrap();
}

/// A backing file that fails on demand: nbdkit's file plugin with its error filter
/// serves `raw`, and nbdfuse shows that export as the file `path`. While the trigger
/// file exists, every read and write of `path` fails with EIO.
pub struct FailingDisk {
    pub path: PathBuf,
    pub trigger: PathBuf,
    nbdkit: Option<Child>,
    fuse: Option<Child>,
}

impl FailingDisk {
    /// Moves the file at `path` aside (to `path.raw`) and puts the failing disk in
    /// its place, with the same content.
    pub fn replace(path: &Path) -> Self {
        require("nbdkit", "nbdkit");
        require("nbdfuse", "libnbd-bin");
        let raw = path.with_extension("raw");
        let sock = path.with_extension("sock");
        let trigger = path.with_extension("fail");
        std::fs::rename(path, &raw).unwrap();
        let nbdkit = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .args(["--filter=error", "file"])
            .arg(format!("file={}", raw.display()))
            .args(["error-rate=100%", "error=EIO"])
            .arg(format!("error-file={}", trigger.display()))
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdkit did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(path, b"").unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(path)
            .arg(format!("nbd+unix:///?socket={}", sock.display()))
            .spawn()
            .unwrap();
        let want = std::fs::metadata(&raw).unwrap().len();
        while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) != want {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdfuse did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FailingDisk {
            path: path.to_owned(),
            trigger,
            nbdkit: Some(nbdkit),
            fuse: Some(fuse),
        }
    }

    pub fn fail(&self) {
        std::fs::write(&self.trigger, b"").unwrap();
    }

    pub fn heal(&self) {
        let _ = std::fs::remove_file(&self.trigger);
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        self.heal();
        umount_patiently(&self.path);
        for c in [self.fuse.take(), self.nbdkit.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real `tandem satellite` beside a [`Blockd`]: it writes into the blockd's `conf/`
/// and talks to its admin socket; its own state is in `sat-state/`.
pub struct Satellite {
    pub node: String,
    pub port: u16,
    pub state_dir: PathBuf,
    pub conf: PathBuf,
    pub admin: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Satellite {
    pub fn new(b: &Blockd, node: &str) -> Self {
        Satellite {
            node: node.to_owned(),
            port: free_port(),
            state_dir: b.path("sat-state"),
            conf: b.path("conf"),
            admin: b.admin(),
            log: b.path("satellite.log"),
            child: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(TANDEM)
            .args(["satellite", "--node", &self.node, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config-dir")
            .arg(&self.conf)
            .arg("--admin-socket")
            .arg(&self.admin)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while ureq::get(&self.url("/health")).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "satellite did not come up; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PUTs a desired state; returns the HTTP status and the answer.
    pub fn push(&self, body: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .put(&self.url("/v1/satellite/desired"))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        let v = r.body_mut().read_json::<Value>().unwrap_or_default();
        (status, v)
    }

    pub fn observed(&self) -> Value {
        ureq::get(&self.url("/v1/satellite/observed"))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap()
    }
}

impl Drop for Satellite {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A hand-written NBD client for requests the real clients never send, or send in an
/// order that needs controlling.
pub mod nbd_raw {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
    pub const REQ_MAGIC: u32 = 0x2560_9513;

    pub fn connect(path: &str) -> UnixStream {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        s
    }

    pub fn option(s: &mut UnixStream, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m).unwrap();
    }

    /// Reads one option reply: (reply type, data).
    pub fn opt_reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        (kind, d)
    }

    /// Handshakes with GO and returns the stream in transmission phase.
    pub fn go(path: &str) -> UnixStream {
        let mut s = connect(path);
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&0u16.to_be_bytes());
        option(&mut s, 7, &d);
        loop {
            let (kind, _) = opt_reply(&mut s);
            assert!(kind < 1 << 31, "GO refused");
            if kind == 1 {
                return s;
            }
        }
    }

    pub fn request(s: &mut UnixStream, kind: u16, cookie: u64, offset: u64, len: u32) {
        let mut m = REQ_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        s.write_all(&m).unwrap();
    }

    /// Reads a simple reply: (errno, cookie).
    pub fn reply(s: &mut UnixStream) -> (u32, u64) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(&h[0..4], &0x6744_6698u32.to_be_bytes());
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }
}
