//! `recyclegpt`: a thin command line over the workspace's libraries.
mod cli;

use clap::Parser;

// Decode steps allocate and free the same large buffers (logits, activations) every step; glibc
// hands those back to the OS and faults them in again, mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cli::run(cli::Cli::parse())
}
