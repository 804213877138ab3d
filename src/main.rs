//! `recyclegpt`: a thin command line over the workspace's libraries.
mod cli;

use clap::Parser;

// Decode steps allocate and free the same large buffers (logits, activations) every step; glibc
// hands those back to the OS and faults them in again, mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in mimalloc's option enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // Training steps free and re-allocate the same large activations every step; by default
    // mimalloc hands them back to the OS and the next step faults them in again (half of the
    // training profile was the kernel zeroing pages). Keep freed memory for reuse there, unless
    // the user set the option through MIMALLOC_PURGE_DELAY. Other commands keep the default.
    if cli.reuses_large_buffers() && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option before any other thread starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    cli::run(cli)
}
