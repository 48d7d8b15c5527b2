//! `drsdb bench` (in progress).
use crate::ConnectArgs;

/// Options of `drsdb bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
