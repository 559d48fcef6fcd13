//! `cargo run -p sim -- --seed N [--trace]` replays one seed; `--seeds N [--start S]`
//! runs many and stops at the first violation.

use std::process::ExitCode;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number(args: &[String], name: &str) -> Result<Option<u64>, String> {
    match arg(args, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} wants a number, got {v:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!("usage: sim --seed N [--trace]   replay one seed with a readable trace");
        println!(
            "       sim --seeds N [--start S] [--keep-going]   run N seeds from S (default 0);"
        );
        println!("           stops at the first violation unless --keep-going");
        println!("       --diskless-primaries  chaos also promotes diskless nodes (not in CI yet)");
        println!(
            "       --disk-failures       chaos also fails disks, which detach (not in CI yet)"
        );
        println!(
            "       --suspend-io PERCENT  share of seeds run with on-no-quorum suspend-io (default 25)"
        );
        println!(
            "       --two-primaries PERCENT  share of seeds run with allow-two-primaries, where a failover is a live migration (default 0)"
        );
        println!(
            "       --verify PERCENT      share of seeds whose chaos also runs online verify (default 0)"
        );
        return ExitCode::SUCCESS;
    }
    let parsed = (|| {
        let suspend = number(&args, "--suspend-io")?;
        if suspend.is_some_and(|p| p > 100) {
            return Err("--suspend-io wants a percentage, 0 to 100".to_owned());
        }
        let two = number(&args, "--two-primaries")?;
        if two.is_some_and(|p| p > 100) {
            return Err("--two-primaries wants a percentage, 0 to 100".to_owned());
        }
        let ops = number(&args, "--verify")?;
        if ops.is_some_and(|p| p > 100) {
            return Err("--verify wants a percentage, 0 to 100".to_owned());
        }
        Ok::<_, String>((
            number(&args, "--seed")?,
            number(&args, "--seeds")?,
            number(&args, "--start")?,
            suspend,
            two,
            ops,
        ))
    })();
    let (seed, seeds, start, suspend, two, ops) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let trace = args.iter().any(|a| a == "--trace");
    let opts = sim::Options {
        trace,
        diskless_primaries: args.iter().any(|a| a == "--diskless-primaries"),
        disk_failures: args.iter().any(|a| a == "--disk-failures"),
        suspend_io_percent: suspend.unwrap_or(sim::Options::default().suspend_io_percent),
        two_primaries_percent: two.unwrap_or(0),
        verify_percent: ops.unwrap_or(0),
        ..sim::Options::default()
    };
    if let Some(seed) = seed {
        return match sim::run(seed, &opts) {
            Ok(o) => {
                for l in &o.trace {
                    println!("{l}");
                }
                println!(
                    "seed {seed}: ok ({} diskful + {} diskless, {} events, {} writes acked, {} reads checked, {} promotions, {} crashes, {} links cut, {} resync blocks, healed in {:.1}s)",
                    o.diskful,
                    o.diskless,
                    o.events,
                    o.writes_acked,
                    o.reads_checked,
                    o.promotions,
                    o.crashes,
                    o.cuts,
                    o.resync_blocks,
                    o.healed_after_us as f64 / 1e6
                );
                ExitCode::SUCCESS
            }
            Err(v) => {
                println!("{v}");
                ExitCode::FAILURE
            }
        };
    }
    let count = seeds.unwrap_or(100);
    let start = start.unwrap_or(0);
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let t = std::time::Instant::now();
    let mut totals = sim::Outcome::default();
    let mut failed: Vec<String> = Vec::new();
    for s in start..start + count {
        match sim::run(s, &opts) {
            Ok(o) => {
                totals.events += o.events;
                totals.writes_acked += o.writes_acked;
                totals.reads_checked += o.reads_checked;
                totals.promotions += o.promotions;
                totals.crashes += o.crashes;
                totals.cuts += o.cuts;
                totals.resync_blocks += o.resync_blocks;
            }
            Err(v) => {
                if keep_going {
                    failed.push(format!(
                        "seed {}: invariant {}: {}",
                        v.seed,
                        v.invariant,
                        v.message.chars().take(150).collect::<String>()
                    ));
                    continue;
                }
                println!("{v}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !failed.is_empty() {
        for f in &failed {
            println!("{f}");
        }
        println!(
            "{} of {count} seeds from {start} violated an invariant",
            failed.len()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "{count} seeds from {start}: all invariants held ({} events, {} writes acked, {} reads checked, {} promotions, {} crashes, {} links cut, {} resync blocks) in {:.1}s",
        totals.events,
        totals.writes_acked,
        totals.reads_checked,
        totals.promotions,
        totals.crashes,
        totals.cuts,
        totals.resync_blocks,
        t.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
