//! The `xent` command; everything lives in [`xent::cli`].

/// Counts heap bytes for `xent bench --linear`'s peak scratch column.
#[global_allocator]
static ALLOC: xent::cli::alloc::PeakAlloc = xent::cli::alloc::PeakAlloc;

fn main() -> std::process::ExitCode {
    xent::cli::main()
}
