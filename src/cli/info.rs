//! `keel info`: what keel detected on this machine and what it chose. (Stub: being written.)

use clap::Parser;

#[derive(Parser, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("keel info is not written yet")
}
