//! `gimmm bench` (SPEC §7). Placeholder wiring; see issue 5.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
}

pub(crate) async fn run(a: BenchArgs) -> Result<()> {
    let _ = a.messages;
    bail!("gimmm bench is not implemented yet")
}
