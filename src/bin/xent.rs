//! The `xent` command; everything lives in [`xent::cli`].

fn main() -> std::process::ExitCode {
    xent::cli::main()
}
