//! A real ext4 filesystem on a tandem volume: nbdfuse turns the export into a file,
//! losetup into a block device. Needs root, /dev/fuse and loop devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// nbdfuse + loop device + mount, torn down in reverse order even when the test fails.
struct Attached {
    fuse_file: PathBuf,
    fuse: Option<Child>,
    loop_dev: Option<String>,
    mnt: PathBuf,
    mounted: bool,
}

impl Attached {
    fn new(dir: &Path, uri: &str) -> Self {
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
    fn dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap()
    }
    fn mount(&mut self) {
        run("mount", &[self.dev(), self.mnt.to_str().unwrap()]);
        self.mounted = true;
    }
    fn umount(&mut self) {
        run("umount", &[self.mnt.to_str().unwrap()]);
        self.mounted = false;
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
        let _ = Command::new("umount").arg(&self.fuse_file).status();
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

fn files() -> Vec<(String, Vec<u8>)> {
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

fn check_files(mnt: &Path) {
    for (name, data) in files() {
        let got = std::fs::read(mnt.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == data, "{name} differs");
    }
}

#[test]
fn ext4_mkfs_mount_fsck_and_survive_a_blockd_restart() {
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
    let mut b = Blockd::new();
    b.add_resource("fs", &[(0, "256M")]);
    b.start();
    let uri = b.uri("fs", 0);
    {
        let mut a = Attached::new(b.dir.path(), &uri);
        run("mkfs.ext4", &["-q", "-F", a.dev()]);
        a.mount();
        for (name, data) in files() {
            let p = a.mnt.join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
        }
        run("sync", &[]);
        a.umount();
        run("fsck.ext4", &["-fn", a.dev()]);
        a.mount();
        check_files(&a.mnt);
        a.umount();
    }
    // Stop blockd cleanly and start it again: the data is still there.
    b.stop();
    b.start();
    assert_eq!(b.volume("fs", 0)["previous_shutdown"], "clean");
    let mut a = Attached::new(b.dir.path(), &b.uri("fs", 0));
    run("fsck.ext4", &["-fn", a.dev()]);
    a.mount();
    check_files(&a.mnt);
}
