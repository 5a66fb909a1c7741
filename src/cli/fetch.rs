//! `keel fetch`: put the official Keras weights into keel's cache.

use clap::Parser;

use crate::io::fetch;
use crate::nn::Arch;

#[derive(Parser, Debug)]
pub struct Args {
    /// vgg16 or vgg19.
    model: Arch,
    /// The file with the classifier top (528 MB for VGG16) instead of the conv base (56 MB).
    #[arg(long)]
    top: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let file = fetch::official(a.model, a.top);
    let path = fetch::fetch(&file, true)?;
    println!("{}", path.display());
    Ok(())
}
