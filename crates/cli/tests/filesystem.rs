//! A real ext4 filesystem on a tandem volume: nbdfuse turns the export into a file,
//! losetup into a block device. Needs root, /dev/fuse and loop devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[test]
fn ext4_mkfs_mount_fsck_and_survive_a_blockd_restart() {
    require_filesystem_tools();
    let mut b = Blockd::new();
    b.add_resource("fs", &[(0, "256M")]);
    b.start();
    let uri = b.uri("fs", 0);
    {
        let mut a = Attached::new(b.dir.path(), &uri);
        run("mkfs.ext4", &["-q", "-F", a.dev()]);
        a.mount();
        for (name, data) in test_files() {
            let p = a.mnt.join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
        }
        run("sync", &[]);
        a.umount();
        run("fsck.ext4", &["-fn", a.dev()]);
        a.mount();
        check_test_files(&a.mnt);
        a.umount();
    }
    // Stop blockd cleanly and start it again: the data is still there.
    b.stop();
    b.start();
    assert_eq!(b.volume("fs", 0)["previous_shutdown"], "clean");
    let mut a = Attached::new(b.dir.path(), &b.uri("fs", 0));
    run("fsck.ext4", &["-fn", a.dev()]);
    a.mount();
    check_test_files(&a.mnt);
}
