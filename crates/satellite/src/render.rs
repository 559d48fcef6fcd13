//! blockd resource files written from a desired resource (format: docs/resource-files.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use model::satellite::DesiredResource;

/// First line of every file the satellite writes; files without it are not ours and are
/// never changed or removed.
pub const HEADER: &str = "# Managed by tandem satellite:";

/// Whether a resource file's text was written by a satellite.
pub fn is_managed(text: &str) -> bool {
    text.starts_with(HEADER)
}

/// One volume as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVolume {
    pub number: u32,
    /// None on a diskless node.
    pub backing: Option<PathBuf>,
    /// Backing bytes (metadata included), the same on every node.
    pub size: u64,
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The resource file for `r` on `node`.
pub fn resource_file(node: &str, r: &DesiredResource, volumes: &[LocalVolume]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{HEADER} node {node}; edits here are overwritten. Change the resource with `tandem resource-definition ...` or `tandem resource ...` instead."
    );
    let _ = writeln!(s, "name = {}", quote(&r.name));
    // A resource placed on one node only is a local volume: no peers, no secret and
    // no replication options (blockd refuses them there).
    let replicated = r.nodes.len() >= 2;
    if replicated {
        let _ = writeln!(s, "secret = {}", quote(&r.secret));
        let _ = writeln!(s, "protocol = {}", quote(&r.protocol));
        let _ = writeln!(s, "quorum = {}", quote(&r.quorum));
        let _ = writeln!(s, "on-no-quorum = {}", quote(&r.on_no_quorum));
        let _ = writeln!(s, "allow-two-primaries = {}", r.allow_two_primaries);
        let _ = writeln!(s, "split-brain = {}", quote(&r.split_brain));
        let rate = r
            .resync_rate
            .map_or_else(|| "unlimited".to_owned(), |b| b.to_string());
        let _ = writeln!(s, "resync-rate = {}", quote(&rate));
        let _ = writeln!(s, "verify-alg = {}", quote(&r.verify_alg));
        if let Some(c) = &r.csums_alg {
            let _ = writeln!(s, "csums-alg = {}", quote(c));
        }
    }
    for v in volumes {
        let _ = writeln!(s, "\n[[volume]]\nnumber = {}", v.number);
        if let Some(b) = &v.backing {
            let _ = writeln!(s, "backing = {}", quote(&b.to_string_lossy()));
        }
        let _ = writeln!(s, "size = {}", v.size);
    }
    for n in r.nodes.iter().filter(|_| replicated) {
        let _ = writeln!(
            s,
            "\n[[node]]\nname = {}\nid = {}\naddress = {}\ndiskless = {}",
            quote(&n.name),
            n.id,
            quote(&n.address),
            n.diskless
        );
    }
    s
}

/// Checks a rendered file with blockd's own parser, so a value blockd refuses is
/// reported for this resource instead of making blockd refuse the whole directory.
pub fn check(path: &Path, text: &str) -> Result<(), String> {
    blockd::config::parse_resource(path, text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use model::satellite::DesiredNode;

    fn res() -> DesiredResource {
        DesiredResource {
            name: "vm-100-disk-0".into(),
            secret: "s3cret \"quoted\" \\ and more".into(),
            protocol: "C".into(),
            quorum: "majority".into(),
            on_no_quorum: "io-error".into(),
            allow_two_primaries: false,
            split_brain: "disconnect".into(),
            resync_rate: Some(100 << 20),
            verify_alg: "crc32c".into(),
            csums_alg: Some("sha256".into()),
            volumes: vec![],
            nodes: vec![
                DesiredNode {
                    name: "n1".into(),
                    id: 0,
                    address: "10.0.0.1:7000".into(),
                    diskless: false,
                },
                DesiredNode {
                    name: "n2".into(),
                    id: 1,
                    address: "10.0.0.2:7000".into(),
                    diskless: false,
                },
                DesiredNode {
                    name: "n3".into(),
                    id: 2,
                    address: "10.0.0.3:7000".into(),
                    diskless: true,
                },
            ],
            initial_generation: None,
            initial_nodes: vec![],
        }
    }

    #[test]
    fn rendered_files_parse_as_blockd_reads_them() {
        let r = res();
        let vols = [LocalVolume {
            number: 0,
            backing: Some("/var/lib/tandem/pool/vm-100-disk-0_00000.img".into()),
            size: 1 << 30,
        }];
        let text = resource_file("n1", &r, &vols);
        assert!(is_managed(&text));
        let cfg =
            blockd::config::parse_resource(Path::new("/x/vm-100-disk-0.toml"), &text).unwrap();
        let repl = cfg.repl.unwrap();
        assert_eq!(repl.secret, r.secret);
        assert_eq!(repl.nodes.len(), 3);
        assert!(repl.nodes[2].diskless);
        assert_eq!(repl.resync_rate, Some(100 << 20));
        assert_eq!(repl.on_no_quorum, blockd::config::OnNoQuorumOpt::IoError);
        assert_eq!(cfg.volumes[&0].size, Some(1 << 30));
        // DrbdOptions/Resource/on-no-quorum suspend-io reaches blockd as such.
        let mut suspend = r.clone();
        suspend.on_no_quorum = "suspend-io".into();
        let text = resource_file("n1", &suspend, &vols);
        let cfg =
            blockd::config::parse_resource(Path::new("/x/vm-100-disk-0.toml"), &text).unwrap();
        assert_eq!(
            cfg.repl.unwrap().on_no_quorum,
            blockd::config::OnNoQuorumOpt::SuspendIo
        );
        // A diskless node's file has no backing and parses too.
        let diskless = [LocalVolume {
            number: 0,
            backing: None,
            size: 1 << 30,
        }];
        check(
            Path::new("/x/vm-100-disk-0.toml"),
            &resource_file("n3", &r, &diskless),
        )
        .unwrap();
    }

    #[test]
    fn a_resource_on_one_node_is_a_local_volume() {
        let mut r = res();
        r.nodes.truncate(1);
        let vols = [LocalVolume {
            number: 0,
            backing: Some("/p/a.img".into()),
            size: 1 << 30,
        }];
        let text = resource_file("n1", &r, &vols);
        let cfg =
            blockd::config::parse_resource(Path::new("/x/vm-100-disk-0.toml"), &text).unwrap();
        assert!(cfg.repl.is_none(), "{text}");
    }

    #[test]
    fn values_blockd_refuses_are_caught_before_writing() {
        let mut r = res();
        r.allow_two_primaries = true;
        // The controller checks this combination too; blockd is the last line.
        r.protocol = "A".into();
        let vols = [LocalVolume {
            number: 0,
            backing: Some("/p/a.img".into()),
            size: 1 << 30,
        }];
        let e = check(
            Path::new("/x/vm-100-disk-0.toml"),
            &resource_file("n1", &r, &vols),
        )
        .unwrap_err();
        assert!(e.contains("allow-two-primaries"), "{e}");
    }
}
