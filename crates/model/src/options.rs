//! `DrbdOptions/...` properties mapped onto tandem's resource options, and the other
//! property values the model understands.
//!
//! Keys and value sets are LINSTOR's (`linstor-common/drbdsetup.xml` options, namespaced
//! by `gendrbdoptions.py`: net options under `DrbdOptions/Net`, resource options under
//! `DrbdOptions/Resource`, peer-device options under `DrbdOptions/PeerDevice`). A value
//! DRBD would reject is refused when it is set, and values DRBD accepts but tandem cannot
//! honour (protocol B, numeric quorum) are refused too, with what to use instead: a
//! setting that is silently ignored is worse than an error. Other `DrbdOptions/...` keys
//! are stored and reported as ignored by [`ResourceOptions`].

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::props::{EffectiveProp, PropSource};
use crate::satellite;

pub const KEY_PROTOCOL: &str = "DrbdOptions/Net/protocol";
pub const KEY_ALLOW_TWO_PRIMARIES: &str = "DrbdOptions/Net/allow-two-primaries";
pub const KEY_AFTER_SB_0PRI: &str = "DrbdOptions/Net/after-sb-0pri";
pub const KEY_AFTER_SB_1PRI: &str = "DrbdOptions/Net/after-sb-1pri";
pub const KEY_AFTER_SB_2PRI: &str = "DrbdOptions/Net/after-sb-2pri";
pub const KEY_VERIFY_ALG: &str = "DrbdOptions/Net/verify-alg";
pub const KEY_CSUMS_ALG: &str = "DrbdOptions/Net/csums-alg";
pub const KEY_QUORUM: &str = "DrbdOptions/Resource/quorum";
pub const KEY_ON_NO_QUORUM: &str = "DrbdOptions/Resource/on-no-quorum";
pub const KEY_RESYNC_RATE: &str = "DrbdOptions/PeerDevice/resync-rate";
/// LINSTOR's switch for automatic tiebreakers (`consts.json`
/// KEY_DRBD_AUTO_ADD_QUORUM_TIEBREAKER, default True).
pub const KEY_AUTO_TIEBREAKER: &str = "DrbdOptions/auto-add-quorum-tiebreaker";
/// Node (or controller) property; `false` keeps the auto-placer away (`AutoplaceTarget`).
pub const KEY_AUTOPLACE_TARGET: &str = "AutoplaceTarget";
/// Controller property with the TCP port range for resources, `min-max` (`TcpPortAutoRange`).
pub const KEY_TCP_PORT_RANGE: &str = "TcpPortAutoRange";
pub const DEFAULT_TCP_PORT_RANGE: (u16, u16) = (7000, 7999);

/// DRBD's resync-rate limits in KiB/s (`drbdsetup.xml`: min 1, max 8388608, default 250).
pub const RESYNC_RATE_MIN_KIB: u64 = 1;
pub const RESYNC_RATE_MAX_KIB: u64 = 8_388_608;
pub const RESYNC_RATE_DEFAULT_KIB: u64 = 250;

/// Digests tandem can compute for online verify.
pub const VERIFY_ALGS: [&str; 1] = ["crc32c"];
/// Digests for checksum-based resync.
pub const CSUMS_ALGS: [&str; 1] = ["sha256"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// Ack when the local disk and every connected diskful peer have the write.
    C,
    /// Ack when the local disk has it and it is queued to the peers.
    A,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quorum {
    Off,
    Majority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoQuorum {
    IoError,
    SuspendIo,
}

/// `after-sb-0pri`: split brain with no primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb0Pri {
    Disconnect,
    DiscardYoungerPrimary,
    DiscardOlderPrimary,
    DiscardZeroChanges,
    DiscardLeastChanges,
    DiscardLocal,
    DiscardRemote,
}

/// `after-sb-1pri`: split brain with one primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb1Pri {
    Disconnect,
    Consensus,
    DiscardSecondary,
    CallPriLostAfterSb,
    ViolentlyAs0p,
}

/// `after-sb-2pri`: split brain with two primaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb2Pri {
    Disconnect,
    CallPriLostAfterSb,
    ViolentlyAs0p,
}

macro_rules! symbols {
    ($t:ty { $($s:literal => $v:ident),+ $(,)? }) => {
        impl $t {
            const SYMBOLS: &'static [(&'static str, $t)] = &[$(($s, <$t>::$v)),+];
            pub(crate) fn parse(key: &str, value: &str) -> Result<Self, ModelError> {
                Self::SYMBOLS
                    .iter()
                    .find(|(s, _)| s.eq_ignore_ascii_case(value.trim()))
                    .map(|(_, v)| *v)
                    .ok_or_else(|| bad(key, value, "not a value DRBD knows for this option",
                        &one_of(Self::SYMBOLS.iter().map(|(s, _)| *s))))
            }
            pub fn as_str(self) -> &'static str {
                Self::SYMBOLS.iter().find(|(_, v)| *v == self).map_or("", |(s, _)| *s)
            }
        }
    };
}

symbols!(AfterSb0Pri {
    "disconnect" => Disconnect,
    "discard-younger-primary" => DiscardYoungerPrimary,
    "discard-older-primary" => DiscardOlderPrimary,
    "discard-zero-changes" => DiscardZeroChanges,
    "discard-least-changes" => DiscardLeastChanges,
    "discard-local" => DiscardLocal,
    "discard-remote" => DiscardRemote,
});
symbols!(AfterSb1Pri {
    "disconnect" => Disconnect,
    "consensus" => Consensus,
    "discard-secondary" => DiscardSecondary,
    "call-pri-lost-after-sb" => CallPriLostAfterSb,
    "violently-as0p" => ViolentlyAs0p,
});
symbols!(AfterSb2Pri {
    "disconnect" => Disconnect,
    "call-pri-lost-after-sb" => CallPriLostAfterSb,
    "violently-as0p" => ViolentlyAs0p,
});

fn one_of<'a>(it: impl Iterator<Item = &'a str>) -> String {
    format!("use one of: {}", it.collect::<Vec<_>>().join(", "))
}

fn bad(key: &str, value: &str, reason: &str, allowed: &str) -> ModelError {
    ModelError::InvalidProperty {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
        allowed: allowed.to_owned(),
    }
}

fn parse_protocol(key: &str, v: &str) -> Result<Protocol, ModelError> {
    match v.trim() {
        "C" | "c" => Ok(Protocol::C),
        "A" | "a" => Ok(Protocol::A),
        "B" | "b" => Err(bad(
            key,
            v,
            "tandem does not implement protocol B (memory-synchronous)",
            "use C (synchronous, the default) or A (asynchronous)",
        )),
        _ => Err(bad(key, v, "not a DRBD protocol", "use C or A")),
    }
}

fn parse_quorum(key: &str, v: &str) -> Result<Quorum, ModelError> {
    let t = v.trim();
    if t.eq_ignore_ascii_case("majority") {
        Ok(Quorum::Majority)
    } else if t.eq_ignore_ascii_case("off") {
        Ok(Quorum::Off)
    } else if t.eq_ignore_ascii_case("all") || t.parse::<u8>().is_ok_and(|n| (1..=32).contains(&n))
    {
        Err(bad(
            key,
            v,
            "tandem's quorum is a majority of the diskful replicas (with a tiebreaker) or off; \
             'all' and fixed counts are not implemented",
            "use majority or off",
        ))
    } else {
        Err(bad(
            key,
            v,
            "not a DRBD quorum value",
            "use majority or off",
        ))
    }
}

fn parse_on_no_quorum(key: &str, v: &str) -> Result<OnNoQuorum, ModelError> {
    let t = v.trim();
    if t.eq_ignore_ascii_case("io-error") {
        Ok(OnNoQuorum::IoError)
    } else if t.eq_ignore_ascii_case("suspend-io") {
        Ok(OnNoQuorum::SuspendIo)
    } else {
        Err(bad(
            key,
            v,
            "not a DRBD on-no-quorum value",
            "use io-error or suspend-io",
        ))
    }
}

/// DRBD booleans are yes/no; LINSTOR's own switches are True/False. Accept both.
fn parse_bool(key: &str, v: &str) -> Result<bool, ModelError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(bad(
            key,
            v,
            "not a boolean",
            "use yes or no (or true or false)",
        )),
    }
}

/// `resync-rate` in KiB/s: a number with DRBD's default unit k, or with a K/M/G suffix.
fn parse_resync_rate(key: &str, v: &str) -> Result<u64, ModelError> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "k" | "kib" | "kb" => 1,
        "m" | "mib" | "mb" => 1024,
        "g" | "gib" | "gb" => 1024 * 1024,
        _ => {
            return Err(bad(
                key,
                v,
                "unknown unit",
                "give KiB/s as a number, or a number with K, M or G (e.g. 100M)",
            ));
        }
    };
    let kib = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| bad(key, v, "not a number", "give KiB/s, e.g. 250 or 100M"))?;
    if !(RESYNC_RATE_MIN_KIB..=RESYNC_RATE_MAX_KIB).contains(&kib) {
        return Err(bad(
            key,
            v,
            &format!("{kib} KiB/s is outside DRBD's range"),
            &format!("use {RESYNC_RATE_MIN_KIB}..={RESYNC_RATE_MAX_KIB} KiB/s (8G)"),
        ));
    }
    Ok(kib)
}

fn parse_csums_alg(key: &str, v: &str) -> Result<String, ModelError> {
    let t = v.trim().to_ascii_lowercase();
    if CSUMS_ALGS.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(bad(
            key,
            v,
            "tandem cannot compute this digest for checksum-based resync",
            &one_of(CSUMS_ALGS.into_iter()),
        ))
    }
}

fn parse_verify_alg(key: &str, v: &str) -> Result<String, ModelError> {
    let t = v.trim().to_ascii_lowercase();
    if VERIFY_ALGS.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(bad(
            key,
            v,
            "tandem cannot compute this digest for online verify",
            &one_of(VERIFY_ALGS.into_iter()),
        ))
    }
}

/// `min-max` with 1 <= min <= max <= 65535.
pub fn parse_port_range(key: &str, v: &str) -> Result<(u16, u16), ModelError> {
    let parsed = v
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo >= 1 && lo <= hi => Ok((lo, hi)),
        _ => Err(bad(
            key,
            v,
            "not a port range",
            "use MIN-MAX with 1 <= MIN <= MAX <= 65535, e.g. 7000-7999",
        )),
    }
}

/// A TCP port, 1..=65535.
pub fn parse_port(key: &str, v: &str) -> Result<u16, ModelError> {
    match v.trim().parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(bad(key, v, "not a TCP port", "use a port of 1..=65535")),
    }
}

/// A replication generation: 1 to 16 hex digits, not zero.
pub fn parse_generation(key: &str, v: &str) -> Result<u64, ModelError> {
    let t = v.trim();
    match u64::from_str_radix(t, 16) {
        Ok(g) if g != 0 && !t.is_empty() && t.len() <= 16 && !t.starts_with('+') => Ok(g),
        _ => Err(bad(
            key,
            v,
            "not a generation",
            "use 16 hex digits, not all zero (the controller sets it; delete the property              instead of editing it)",
        )),
    }
}

/// The smallest shared secret blockd accepts.
pub const SECRET_MIN_LEN: usize = 8;

fn check_secret(key: &str, v: &str) -> Result<(), ModelError> {
    if v.chars().count() < SECRET_MIN_LEN || v.chars().any(char::is_whitespace) {
        return Err(bad(
            key,
            if v.is_empty() { "" } else { "(hidden)" },
            "a shared secret has at least 8 characters and no spaces",
            "use a longer secret, or delete the property and the controller makes one",
        ));
    }
    Ok(())
}

/// Refuses a value for a key the model understands; other keys pass.
pub fn check_known_prop(key: &str, value: &str) -> Result<(), ModelError> {
    match key {
        KEY_PROTOCOL => parse_protocol(key, value).map(drop),
        KEY_ALLOW_TWO_PRIMARIES | KEY_AUTO_TIEBREAKER | KEY_AUTOPLACE_TARGET => {
            parse_bool(key, value).map(drop)
        }
        KEY_AFTER_SB_0PRI => AfterSb0Pri::parse(key, value).map(drop),
        KEY_AFTER_SB_1PRI => AfterSb1Pri::parse(key, value).map(drop),
        KEY_AFTER_SB_2PRI => AfterSb2Pri::parse(key, value).map(drop),
        KEY_VERIFY_ALG => parse_verify_alg(key, value).map(drop),
        KEY_CSUMS_ALG => parse_csums_alg(key, value).map(drop),
        KEY_QUORUM => parse_quorum(key, value).map(drop),
        KEY_ON_NO_QUORUM => parse_on_no_quorum(key, value).map(drop),
        KEY_RESYNC_RATE => parse_resync_rate(key, value).map(drop),
        KEY_TCP_PORT_RANGE => parse_port_range(key, value).map(drop),
        satellite::KEY_REPLICATION_PORT => parse_port(key, value).map(drop),
        satellite::KEY_INITIAL_GENERATION => parse_generation(key, value).map(drop),
        satellite::KEY_SHARED_SECRET => check_secret(key, value),
        _ => Ok(()),
    }
}

/// A property as a boolean with a default, for LINSTOR's True/False switches.
pub(crate) fn flag(p: Option<&EffectiveProp>, default: bool) -> bool {
    p.and_then(|e| parse_bool("", &e.value).ok())
        .unwrap_or(default)
}

/// tandem's options for one resource, from its effective `DrbdOptions/...` properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceOptions {
    pub protocol: Protocol,
    pub quorum: Quorum,
    pub on_no_quorum: OnNoQuorum,
    pub allow_two_primaries: bool,
    pub after_sb_0pri: AfterSb0Pri,
    pub after_sb_1pri: AfterSb1Pri,
    pub after_sb_2pri: AfterSb2Pri,
    pub resync_rate_kib: u64,
    pub verify_alg: Option<String>,
    /// Checksum-based resync's digest; None: copy every out-of-sync block.
    pub csums_alg: Option<String>,
    /// Where each option's value came from, keyed by the property key.
    pub sources: Vec<(String, PropSource)>,
    /// `DrbdOptions/...` keys that are set but mean nothing to tandem.
    pub ignored: Vec<String>,
}

impl ResourceOptions {
    /// `lookup(key)` gives the effective value of a key; `keys` are all effective
    /// `DrbdOptions/...` keys (to report the ignored ones). `auto_quorum` is whether
    /// quorum is feasible (a tiebreaker or at least three diskful replicas): then an
    /// unset `quorum` means majority, as LINSTOR's auto-quorum sets it; otherwise off.
    pub fn from_props(
        lookup: impl Fn(&str) -> Option<EffectiveProp>,
        keys: impl IntoIterator<Item = String>,
        auto_quorum: bool,
    ) -> Result<Self, ModelError> {
        let mut sources = Vec::new();
        let mut get = |key: &str| -> Option<String> {
            let e = lookup(key);
            sources.push((
                key.to_owned(),
                e.as_ref().map_or(PropSource::Default, |e| e.source.clone()),
            ));
            e.map(|e| e.value)
        };
        let protocol = get(KEY_PROTOCOL)
            .map(|v| parse_protocol(KEY_PROTOCOL, &v))
            .transpose()?
            .unwrap_or(Protocol::C);
        let quorum = get(KEY_QUORUM)
            .map(|v| parse_quorum(KEY_QUORUM, &v))
            .transpose()?
            .unwrap_or(if auto_quorum {
                Quorum::Majority
            } else {
                Quorum::Off
            });
        let on_no_quorum = get(KEY_ON_NO_QUORUM)
            .map(|v| parse_on_no_quorum(KEY_ON_NO_QUORUM, &v))
            .transpose()?
            .unwrap_or(OnNoQuorum::IoError);
        let allow_two_primaries = get(KEY_ALLOW_TWO_PRIMARIES)
            .map(|v| parse_bool(KEY_ALLOW_TWO_PRIMARIES, &v))
            .transpose()?
            .unwrap_or(false);
        let after_sb_0pri = get(KEY_AFTER_SB_0PRI)
            .map(|v| AfterSb0Pri::parse(KEY_AFTER_SB_0PRI, &v))
            .transpose()?
            .unwrap_or(AfterSb0Pri::Disconnect);
        let after_sb_1pri = get(KEY_AFTER_SB_1PRI)
            .map(|v| AfterSb1Pri::parse(KEY_AFTER_SB_1PRI, &v))
            .transpose()?
            .unwrap_or(AfterSb1Pri::Disconnect);
        let after_sb_2pri = get(KEY_AFTER_SB_2PRI)
            .map(|v| AfterSb2Pri::parse(KEY_AFTER_SB_2PRI, &v))
            .transpose()?
            .unwrap_or(AfterSb2Pri::Disconnect);
        let resync_rate_kib = get(KEY_RESYNC_RATE)
            .map(|v| parse_resync_rate(KEY_RESYNC_RATE, &v))
            .transpose()?
            .unwrap_or(RESYNC_RATE_DEFAULT_KIB);
        let verify_alg = get(KEY_VERIFY_ALG)
            .map(|v| parse_verify_alg(KEY_VERIFY_ALG, &v))
            .transpose()?;
        let csums_alg = get(KEY_CSUMS_ALG)
            .map(|v| parse_csums_alg(KEY_CSUMS_ALG, &v))
            .transpose()?;
        if allow_two_primaries && protocol != Protocol::C {
            return Err(bad(
                KEY_ALLOW_TWO_PRIMARIES,
                "yes",
                "two primaries need protocol C (both must hold every write before it completes)",
                "set DrbdOptions/Net/protocol to C, or allow-two-primaries to no",
            ));
        }
        let known = [
            KEY_PROTOCOL,
            KEY_QUORUM,
            KEY_ON_NO_QUORUM,
            KEY_ALLOW_TWO_PRIMARIES,
            KEY_AFTER_SB_0PRI,
            KEY_AFTER_SB_1PRI,
            KEY_AFTER_SB_2PRI,
            KEY_RESYNC_RATE,
            KEY_VERIFY_ALG,
            KEY_CSUMS_ALG,
        ];
        let mut ignored: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                // LINSTOR's own switches in the namespace (no section) steer the controller.
                k.starts_with("DrbdOptions/")
                    && k.matches('/').count() >= 2
                    && !known.contains(&k.as_str())
            })
            .collect();
        ignored.sort();
        ignored.dedup();
        Ok(Self {
            protocol,
            quorum,
            on_no_quorum,
            allow_two_primaries,
            after_sb_0pri,
            after_sb_1pri,
            after_sb_2pri,
            resync_rate_kib,
            verify_alg,
            csums_alg,
            sources,
            ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn opts(pairs: &[(&str, &str)], auto_quorum: bool) -> Result<ResourceOptions, ModelError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ResourceOptions::from_props(
            |k| {
                m.get(k).map(|v| EffectiveProp {
                    value: v.clone(),
                    source: PropSource::Controller,
                })
            },
            m.keys().cloned(),
            auto_quorum,
        )
    }

    #[test]
    fn defaults() {
        let o = opts(&[], false).unwrap();
        assert_eq!(o.protocol, Protocol::C);
        assert_eq!(o.quorum, Quorum::Off);
        assert_eq!(o.on_no_quorum, OnNoQuorum::IoError);
        assert!(!o.allow_two_primaries);
        assert_eq!(o.after_sb_0pri, AfterSb0Pri::Disconnect);
        assert_eq!(o.resync_rate_kib, 250);
        assert_eq!(o.verify_alg, None);
        assert!(o.sources.iter().all(|(_, s)| *s == PropSource::Default));
        assert_eq!(opts(&[], true).unwrap().quorum, Quorum::Majority);
    }

    #[test]
    fn every_option_maps() {
        let o = opts(
            &[
                (KEY_PROTOCOL, "A"),
                (KEY_QUORUM, "off"),
                (KEY_ON_NO_QUORUM, "suspend-io"),
                (KEY_AFTER_SB_0PRI, "discard-zero-changes"),
                (KEY_AFTER_SB_1PRI, "discard-secondary"),
                (KEY_AFTER_SB_2PRI, "call-pri-lost-after-sb"),
                (KEY_RESYNC_RATE, "100M"),
                (KEY_VERIFY_ALG, "crc32c"),
                ("DrbdOptions/Net/max-buffers", "8192"),
                (KEY_AUTO_TIEBREAKER, "False"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(o.protocol, Protocol::A);
        assert_eq!(o.quorum, Quorum::Off); // explicit beats auto
        assert_eq!(o.on_no_quorum, OnNoQuorum::SuspendIo);
        assert_eq!(o.after_sb_0pri, AfterSb0Pri::DiscardZeroChanges);
        assert_eq!(o.after_sb_1pri, AfterSb1Pri::DiscardSecondary);
        assert_eq!(o.after_sb_2pri, AfterSb2Pri::CallPriLostAfterSb);
        assert_eq!(o.resync_rate_kib, 100 * 1024);
        assert_eq!(o.verify_alg.as_deref(), Some("crc32c"));
        assert_eq!(o.ignored, ["DrbdOptions/Net/max-buffers"]);
        let two = opts(&[(KEY_ALLOW_TWO_PRIMARIES, "yes")], false).unwrap();
        assert!(two.allow_two_primaries);
    }

    #[test]
    fn bad_values_say_what_to_use() {
        let cases: &[(&str, &str, &str)] = &[
            (KEY_PROTOCOL, "B", "use C"),
            (KEY_PROTOCOL, "D", "use C or A"),
            (KEY_QUORUM, "2", "majority or off"),
            (KEY_QUORUM, "all", "majority or off"),
            (KEY_QUORUM, "most", "majority or off"),
            (KEY_ON_NO_QUORUM, "freeze", "io-error or suspend-io"),
            (KEY_ALLOW_TWO_PRIMARIES, "maybe", "yes or no"),
            (KEY_AFTER_SB_0PRI, "discard-node-x", "discard-zero-changes"),
            (KEY_AFTER_SB_2PRI, "consensus", "violently-as0p"),
            (KEY_RESYNC_RATE, "0", "1..=8388608"),
            (KEY_RESYNC_RATE, "9G", "1..=8388608"),
            (KEY_RESYNC_RATE, "fast", "KiB/s"),
            (KEY_RESYNC_RATE, "10T", "K, M or G"),
            (KEY_VERIFY_ALG, "md5", "crc32c"),
            (KEY_VERIFY_ALG, "sha256", "crc32c"),
            (KEY_CSUMS_ALG, "md5", "sha256"),
        ];
        for (k, v, hint) in cases {
            let e = opts(&[(k, v)], false).unwrap_err();
            assert!(e.correction().contains(hint), "{k}={v}: {}", e.correction());
            assert!(e.to_string().contains(k), "{e}");
            // The same value is refused when it is set.
            assert!(check_known_prop(k, v).is_err());
        }
        let e = opts(
            &[(KEY_ALLOW_TWO_PRIMARIES, "yes"), (KEY_PROTOCOL, "A")],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("protocol C"), "{e}");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("k", "7000-7999").unwrap(), (7000, 7999));
        assert_eq!(parse_port_range("k", "100-100").unwrap(), (100, 100));
        for bad in ["", "7000", "7999-7000", "0-10", "1-70000", "a-b"] {
            assert!(parse_port_range("k", bad).is_err(), "{bad}");
        }
    }
}
