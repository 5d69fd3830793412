//! Instruction-count benchmark of gimmm's hot paths (BENCHMARKS.md,
//! "Instruction counts"; `bench/icount/README.md`).
//!
//! `icount <case> <iterations>` sets the case up, runs its per-message work
//! `iterations` times and exits. `bench/icount/run` runs every case under
//! callgrind twice, with `iterations` = N and = 0, and divides the
//! difference of the two totals by N: setup, process start and exit cancel
//! out, whatever threads they use, and nothing needs symbols or
//! `--toggle-collect` (which would miss work inlined across crates by thin
//! LTO, and the store's writer threads).
//!
//! Each iteration checks its result and the binary fails on a wrong one: a
//! case that silently took an error path would measure the wrong thing.
//! The cases mirror what the gateway does per message; where the gateway's
//! own function lives in the `gateway` crate (DOWNSTREAM preparation, the
//! v1 request body), the same library calls are made here in the same
//! order, so that this binary needs only the four library crates (building
//! `gateway` in release would add minutes to CI).

mod cases;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd] if cmd == "list" => {
            for c in cases::ALL {
                println!("{}\t{}", c.name, c.what);
            }
            ExitCode::SUCCESS
        }
        [name, n] => {
            let Some(case) = cases::ALL.iter().find(|c| c.name == name) else {
                eprintln!("icount: no case {name:?} (see `icount list`)");
                return ExitCode::from(2);
            };
            let Ok(n) = n.parse::<u64>() else {
                eprintln!("icount: iterations must be a number, not {n:?}");
                return ExitCode::from(2);
            };
            match (case.run)(n) {
                Ok(check) => {
                    println!("{name} iterations={n} check={check}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("icount: {name}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: icount list | icount <case> <iterations>");
            ExitCode::from(2)
        }
    }
}
