//! `drbd-options`: DRBD option flags as the linstor client spells them, stored as
//! `DrbdOptions/<Section>/<option>` properties (`--unset-<option>` deletes one). The
//! controller validates the values it understands and reports the others as ignored.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// (option, property namespace under `DrbdOptions/`), from drbdsetup's option sections.
const OPTIONS: &[(&str, &str)] = &[
    // resource options
    ("auto-promote", "Resource"),
    ("auto-promote-timeout", "Resource"),
    ("cpu-mask", "Resource"),
    ("max-io-depth", "Resource"),
    ("on-no-data-accessible", "Resource"),
    ("on-no-quorum", "Resource"),
    ("on-suspended-primary-outdated", "Resource"),
    ("peer-ack-delay", "Resource"),
    ("peer-ack-window", "Resource"),
    ("quorum", "Resource"),
    ("quorum-minimum-redundancy", "Resource"),
    ("twopc-retry-timeout", "Resource"),
    ("twopc-timeout", "Resource"),
    // net options
    ("after-sb-0pri", "Net"),
    ("after-sb-1pri", "Net"),
    ("after-sb-2pri", "Net"),
    ("allow-remote-read", "Net"),
    ("allow-two-primaries", "Net"),
    ("always-asbp", "Net"),
    ("congestion-extents", "Net"),
    ("congestion-fill", "Net"),
    ("connect-int", "Net"),
    ("cram-hmac-alg", "Net"),
    ("csums-after-crash-only", "Net"),
    ("csums-alg", "Net"),
    ("data-integrity-alg", "Net"),
    ("fencing", "Net"),
    ("ko-count", "Net"),
    ("max-buffers", "Net"),
    ("max-epoch-size", "Net"),
    ("on-congestion", "Net"),
    ("ping-int", "Net"),
    ("ping-timeout", "Net"),
    ("protocol", "Net"),
    ("rcvbuf-size", "Net"),
    ("rr-conflict", "Net"),
    ("sndbuf-size", "Net"),
    ("socket-check-timeout", "Net"),
    ("tcp-cork", "Net"),
    ("timeout", "Net"),
    ("use-rle", "Net"),
    ("verify-alg", "Net"),
    // peer-device options
    ("bitmap", "PeerDevice"),
    ("c-delay-target", "PeerDevice"),
    ("c-fill-target", "PeerDevice"),
    ("c-max-rate", "PeerDevice"),
    ("c-min-rate", "PeerDevice"),
    ("c-plan-ahead", "PeerDevice"),
    ("resync-rate", "PeerDevice"),
    // disk options
    ("al-extents", "Disk"),
    ("al-updates", "Disk"),
    ("disable-write-same", "Disk"),
    ("discard-zeroes-if-aligned", "Disk"),
    ("disk-barrier", "Disk"),
    ("disk-drain", "Disk"),
    ("disk-flushes", "Disk"),
    ("disk-timeout", "Disk"),
    ("md-flushes", "Disk"),
    ("on-io-error", "Disk"),
    ("read-balancing", "Disk"),
    ("resync-after", "Disk"),
    ("rs-discard-granularity", "Disk"),
];

/// LINSTOR's own switches in the same command, directly under `DrbdOptions/`.
const LINSTOR_OPTIONS: &[(&str, &str)] = &[
    (
        "auto-add-quorum-tiebreaker",
        "DrbdOptions/auto-add-quorum-tiebreaker",
    ),
    ("auto-quorum", "DrbdOptions/auto-quorum"),
];

pub fn key(option: &str) -> Option<String> {
    if let Some((_, k)) = LINSTOR_OPTIONS.iter().find(|(o, _)| *o == option) {
        return Some((*k).to_owned());
    }
    OPTIONS
        .iter()
        .find(|(o, _)| *o == option)
        .map(|(o, s)| format!("DrbdOptions/{s}/{o}"))
}

/// What a `drbd-options` command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The positional arguments (object names), in order.
    pub names: Vec<String>,
    pub set: BTreeMap<String, String>,
    pub unset: Vec<String>,
}

pub fn parse(args: &[String]) -> Result<Change> {
    let mut c = Change::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else {
            c.names.push(a.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        if let Some(opt) = name.strip_prefix("unset-") {
            let Some(k) = key(opt) else {
                bail!(
                    "--{name}: {opt:?} is not a DRBD option this command knows (see docs/cli.md)"
                );
            };
            if inline.is_some() {
                bail!("--{name} takes no value");
            }
            c.unset.push(k);
            continue;
        }
        let Some(k) = key(name) else {
            bail!("--{name} is not a DRBD option this command knows (see docs/cli.md)");
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("--{name} needs a value"))?,
        };
        c.set.insert(k, value);
    }
    if c.set.is_empty() && c.unset.is_empty() {
        bail!("no DRBD option given; e.g. --protocol C, --quorum majority, --unset-quorum");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_seed_command_line() {
        let c = parse(&args(
            "--auto-promote=no --quorum=majority --on-suspended-primary-outdated=force-secondary \
             --on-no-quorum=io-error --on-no-data-accessible=io-error linstor-db-grp",
        ))
        .unwrap();
        assert_eq!(c.names, ["linstor-db-grp"]);
        assert_eq!(c.set["DrbdOptions/Resource/quorum"], "majority");
        assert_eq!(c.set["DrbdOptions/Resource/auto-promote"], "no");
        assert_eq!(c.set.len(), 5);
    }

    #[test]
    fn values_apart_unset_and_errors() {
        let c = parse(&args("grp --protocol C --unset-quorum")).unwrap();
        assert_eq!(c.set["DrbdOptions/Net/protocol"], "C");
        assert_eq!(c.unset, ["DrbdOptions/Resource/quorum"]);
        assert!(parse(&args("grp --bogus 1")).is_err());
        assert!(parse(&args("grp --protocol")).is_err());
        assert!(parse(&args("grp")).is_err());
        assert!(parse(&args("grp --unset-quorum=1")).is_err());
    }
}
