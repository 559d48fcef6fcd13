//! Sizes as the linstor client reads them: a whole number and an optional unit, KiB on
//! the wire. `K`, `KiB`, `M`, `MiB`, ... are powers of 1024, `kB`, `MB`, ... powers of
//! 1000, `B` bytes and `S` 512-byte sectors; no unit means GiB (linstor-client
//! `_get_volume_size`). Units are case-insensitive; the result is rounded up to a KiB.

use anyhow::{Result, bail};

const UNITS: [(&str, u128); 17] = [
    ("b", 1),
    ("s", 512),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
    ("p", 1 << 50),
    ("pib", 1 << 50),
    ("pb", 1_000_000_000_000_000),
];

/// Parses `10G`, `10GiB`, `500M`, `2048K`, `10` (GiB) into KiB.
pub fn parse_kib(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        bail!("size {text:?} does not start with a number; write e.g. 10G, 500MiB or 1T");
    }
    let unit = unit.trim();
    if unit.starts_with(['.', ',']) {
        bail!("size {text:?}: only whole numbers are accepted; use a smaller unit (e.g. 1536M)");
    }
    let n: u128 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("size {text:?} is too large"))?;
    let factor = if unit.is_empty() {
        1 << 30
    } else {
        match UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) {
            Some((_, f)) => *f,
            None => bail!(
                "size {text:?}: {unit:?} is not a unit; use B, S, K, kB, KiB, M, MB, MiB, G, GB, \
                 GiB, T, TB, TiB, P, PB or PiB (no unit: GiB)"
            ),
        }
    };
    n.checked_mul(factor)
        .map(|b| b.div_ceil(1024))
        .and_then(|kib| u64::try_from(kib).ok())
        .ok_or_else(|| anyhow::anyhow!("size {text:?} is too large"))
}

/// A KiB count as the linstor client shows it: `1 GiB`, `200 MiB`, `1.50 GiB`.
pub fn show_kib(kib: u64) -> String {
    const NAMES: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut div: u64 = 1;
    while unit + 1 < NAMES.len() && kib / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    if kib.is_multiple_of(div) {
        format!("{} {}", kib / div, NAMES[unit])
    } else {
        format!("{:.2} {}", kib as f64 / div as f64, NAMES[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linstor_size_forms() {
        let cases = [
            ("10G", 10 << 20),
            ("10GiB", 10 << 20),
            ("10gib", 10 << 20),
            ("10", 10 << 20),
            ("500M", 500 << 10),
            ("200M", 200 << 10),
            ("500MiB", 500 << 10),
            ("1MB", 977), // 1,000,000 B rounded up to KiB
            ("1kB", 1),
            ("2048K", 2048),
            ("4KiB", 4),
            ("1T", 1 << 30),
            ("1TB", 976_562_500),
            ("1025B", 2),
            ("2S", 1),
            (" 1 G ", 1 << 20),
        ];
        for (text, want) in cases {
            assert_eq!(parse_kib(text).ok(), Some(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_to_write() {
        for bad in [
            "",
            "G",
            "1.5G",
            "10X",
            "-1G",
            "99999999999999999999999999999999999999P",
        ] {
            let e = parse_kib(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_kib("1.5G").unwrap_err().to_string().contains("1536M"));
    }

    #[test]
    fn sizes_show_like_linstor() {
        assert_eq!(show_kib(1 << 20), "1 GiB");
        assert_eq!(show_kib(200 << 10), "200 MiB");
        assert_eq!(show_kib(3 << 19), "1.50 GiB");
        assert_eq!(show_kib(4), "4 KiB");
        assert_eq!(show_kib(0), "0 KiB");
    }
}
