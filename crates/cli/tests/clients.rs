//! Real NBD clients nobody here wrote (qemu-io, qemu-img, nbdinfo, nbdcopy, fio) against
//! a real blockd process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[test]
fn qemu_io_patterns_at_many_offsets_and_sizes_read_back() {
    require("qemu-io", "qemu-utils");
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "64M")]);
    b.start();
    let uri = b.uri("r0", 0);
    let size = b.size("r0", 0);
    // Unaligned and aligned offsets, sizes from 1 byte to 4 MiB, and the very end; the
    // ranges do not overlap, so every pattern must survive.
    let cases: Vec<(u64, u64)> = vec![
        (0, 512),
        (700, 1),
        (4095, 2),
        (12345, 7777),
        (1 << 20, 4 << 20),
        (6 << 20, 65536),
        (10 << 20, 33 << 10),
        (size - 4097, 4096),
        (size - 1, 1),
    ];
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for (i, (off, len)) in cases.iter().enumerate() {
        args.push("-c".into());
        args.push(format!("write -P {} {off} {len}", 0x11 + i));
    }
    args.push(uri.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &a);
    // Read back in a new process, over a new connection.
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for (i, (off, len)) in cases.iter().enumerate() {
        args.push("-c".into());
        args.push(format!("read -P {} {off} {len}", 0x11 + i));
    }
    args.push("-c".into());
    args.push(format!("read -P 0 {} 4096", 20 << 20));
    args.push(uri);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("qemu-io", &a);
    let text = stdout(&out);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert_eq!(text.matches("read ").count(), cases.len() + 1, "{text}");
}

#[test]
fn qemu_img_convert_in_and_out_and_compare() {
    require("qemu-img", "qemu-utils");
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "48M")]);
    b.start();
    let uri = b.uri("r0", 0);
    let src = b.path("src.raw");
    random_file(&src, 32 << 20, 42);
    let src = src.to_str().unwrap().to_owned();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &src, &uri],
    );
    // The export is larger than the image; compare checks the rest reads as zeroes.
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &src, &uri],
    );
    let out = b.path("out.raw");
    let out = out.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, out],
    );
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &src, out],
    );
    // A changed byte is noticed: compare is not vacuous.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 1000 1", &uri],
    );
    let diff = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &src, &uri])
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(1), "{}", stdout(&diff));
}

#[test]
fn nbdinfo_reports_size_and_flags() {
    require("nbdinfo", "libnbd-bin");
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "32M"), (1, "16M")]);
    b.start();
    for vol in [0, 1] {
        let out = run("nbdinfo", &["--json", &b.uri("r0", vol)]);
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let e = &info["exports"][0];
        assert_eq!(e["export-name"], format!("r0/{vol}"));
        assert_eq!(e["export-size"].as_u64().unwrap(), b.size("r0", vol));
        for flag in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_multi_conn",
        ] {
            assert_eq!(e[flag], true, "{flag}: {e:#}");
        }
        assert_eq!(e["is_read_only"], false);
        assert_eq!(e["block_size_maximum"], 32 << 20);
    }
    let sizes = (b.size("r0", 0), b.size("r0", 1));
    assert!(sizes.0 > 31 << 20 && sizes.0 < 32 << 20, "{sizes:?}");
    assert!(sizes.1 > 15 << 20 && sizes.1 < 16 << 20, "{sizes:?}");
}

#[test]
fn nbdcopy_round_trips_256_mib() {
    require("nbdcopy", "libnbd-bin");
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "300M")]);
    b.start();
    let uri = b.uri("r0", 0);
    let src = b.path("src.raw");
    random_file(&src, 256 << 20, 7);
    let out = b.path("out.raw");
    run("nbdcopy", &[src.to_str().unwrap(), &uri]);
    run("nbdcopy", &[&uri, out.to_str().unwrap()]);
    let a = std::fs::read(&src).unwrap();
    let c = std::fs::read(&out).unwrap();
    assert_eq!(c.len() as u64, b.size("r0", 0));
    assert!(
        a == c[..a.len()],
        "data copied out differs from data copied in"
    );
    assert!(c[a.len()..].iter().all(|&x| x == 0));
    let written = b.volume("r0", 0)["written_bytes"].as_u64().unwrap();
    assert!(written >= 256 << 20, "status counts the writes: {written}");
}

#[test]
fn fio_verify_crc32c_with_several_jobs_and_depths() {
    require("fio", "fio");
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "128M")]);
    b.start();
    let uri = b.uri("r0", 0);
    for (bs, depth, jobs) in [
        ("4k-4k", "1", "2"),
        ("4k-4k", "32", "4"),
        ("4k-128k", "16", "3"),
    ] {
        fio_verify(
            &uri,
            &[
                &format!("--bsrange={bs}"),
                &format!("--iodepth={depth}"),
                &format!("--numjobs={jobs}"),
                "--size=24M",
                "--offset_increment=24M",
            ],
        );
    }
}

#[test]
fn blockd_runs_with_two_malloc_arenas_under_the_pid_it_was_started_with() {
    // It executes itself again with MALLOC_ARENA_MAX=2 (RSS; see main.rs): the PID a
    // supervisor started stays the one serving.
    let mut b = Blockd::new();
    b.add_resource("r0", &[(0, "16M")]);
    b.start();
    let pid = b.pid().unwrap();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        env.split(|c| *c == 0).any(|v| v == b"MALLOC_ARENA_MAX=2"),
        "{}",
        String::from_utf8_lossy(&env)
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("blockd"));
    assert!(
        b.status()["resources"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    );
}

#[test]
fn status_piped_into_a_reader_that_leaves_early_ends_quietly() {
    // `tandem local status --json | head -1`: the pipe closes while output remains.
    let mut b = Blockd::new();
    for i in 0..40 {
        b.add_resource(&format!("r{i}"), &[(0, "1M")]);
    }
    b.start();
    let mut child = std::process::Command::new(TANDEM)
        .arg("local")
        .arg("--admin-socket")
        .arg(b.admin())
        .args(["status", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
