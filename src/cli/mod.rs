//! The `xent` command: `eval` a logits file, `bench` the GPU and CPU paths against a naive
//! implementation, list `devices`. `src/bin/xent.rs` only calls [`main`].
//!
//! Layout: [`files`] (reading `.npy`/`.safetensors`, writing `.npy`), [`eval`], [`bench`](mod@bench) (with
//! the unfused baseline in [`naive`] and the bandwidth probes in [`probe`]), [`devices`], and
//! [`device`] (the `--device` choice, the one place that opens a GPU).
//!
//! Errors print one line, `xent: <file>: <problem>`, to stderr. Exit codes: 0 success, 2 a bad
//! input file or argument, 1 anything else (a device that can't be used, an output file that
//! can't be written). Standard output closed early (`xent bench | head`) ends the output
//! quietly ([`emit`]).

/// `print!` for the commands' output, through [`emit`]: `Result<(), CliError>`.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::emit(format_args!($($t)*)) };
}

/// `println!` likewise.
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::emit(format_args!("{}\n", format_args!($($t)*))) };
}

pub mod alloc;
pub mod bench;
pub mod device;
pub mod devices;
pub mod eval;
pub mod files;
pub mod naive;
pub mod probe;

use clap::{Parser, Subcommand};
use std::fmt;
use std::process::ExitCode;

/// Fused cross-entropy losses: evaluate real logits files, benchmark GPU vs CPU, list devices.
#[derive(Debug, Parser)]
#[command(name = "xent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Loss, metrics, per-row losses and gradients of a logits file.
    Eval(eval::EvalArgs),
    /// GPU vs CPU vs naive unfused cross-entropy on generated data, against measured bandwidth.
    Bench(bench::BenchArgs),
    /// GPU adapters, the one `--device auto` picks, and the CPU's SIMD level.
    Devices,
}

/// A failure of the command: a one-line message and an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// Exit code: 2 for bad input files and arguments, 1 otherwise.
    pub code: u8,
    /// The message, without the `xent: ` prefix.
    pub message: String,
}

impl CliError {
    /// A problem with an input file (exit code 2): `"<file>: <problem>"`.
    pub fn file(file: &str, problem: impl fmt::Display) -> Self {
        CliError {
            code: 2,
            message: format!("{file}: {problem}"),
        }
    }
    /// A bad argument combination (exit code 2).
    pub fn usage(problem: impl fmt::Display) -> Self {
        CliError {
            code: 2,
            message: problem.to_string(),
        }
    }
    /// An output file that can't be written (exit code 1).
    pub fn output(file: &str, problem: impl fmt::Display) -> Self {
        CliError {
            code: 1,
            message: format!("{file}: {problem}"),
        }
    }
    /// Any other failure (exit code 1).
    pub fn runtime(problem: impl fmt::Display) -> Self {
        CliError {
            code: 1,
            message: problem.to_string(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always one line.
        f.write_str(&self.message.replace(['\n', '\r'], " "))
    }
}

impl std::error::Error for CliError {}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Eval(args) => eval::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Devices => devices::run(),
    }
}

/// Warnings for the environment variables xent reads that name nothing it knows: the library
/// ignores such a value (`XENT_SIMD` falls back to the widest level, a `WGPU_BACKEND` naming no
/// backend finds no adapter), which a command should not do silently.
pub fn environment_warnings() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = std::env::var("XENT_SIMD") {
        let supported = crate::cpu::SimdLevel::supported();
        let names: Vec<&str> = supported.iter().map(|l| l.name()).collect();
        match v.parse::<crate::cpu::SimdLevel>() {
            Ok(level) if supported.contains(&level) => {}
            Ok(level) => out.push(format!(
                "XENT_SIMD={v}: this CPU lacks {level}; using {} (this CPU has: {})",
                crate::cpu::SimdLevel::detected(),
                names.join(", ")
            )),
            Err(_) => out.push(format!(
                "XENT_SIMD={v} is not a SIMD level; using {} (this CPU has: {})",
                crate::cpu::SimdLevel::detected(),
                names.join(", ")
            )),
        }
    }
    if let Ok(v) = std::env::var("WGPU_BACKEND") {
        if wgpu::Backends::from_comma_list(&v).is_empty() {
            out.push(format!(
                "WGPU_BACKEND={v} names no backend, so no GPU will be found \
                 (valid: vulkan, metal, dx12, gl, comma-separated)"
            ));
        }
    }
    out
}

/// Outside a desktop session on Linux (no `XDG_RUNTIME_DIR`), opening wgpu's Vulkan or GL
/// backend makes Mesa's Wayland/EGL code print "XDG_RUNTIME_DIR is invalid" several times, even
/// when the command then runs on the CPU. There is no display to find then, so the command
/// points the variable at a private empty directory of its own (returned, for `main` to remove),
/// where nothing is found quietly.
fn quiet_display_probe() -> Option<std::path::PathBuf> {
    if !cfg!(target_os = "linux") || std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("xent-runtime-{}", std::process::id()));
        if std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok() {
            // Before any thread exists: `main` calls this first.
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
            return Some(dir);
        }
    }
    None
}

/// Parses `std::env::args`, runs, prints any error as one line and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime_dir = quiet_display_probe();
    for warning in environment_warnings() {
        eprintln!("xent: warning: {warning}");
    }
    let code = match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xent: {e}");
            ExitCode::from(e.code)
        }
    };
    if let Some(dir) = runtime_dir {
        let _ = std::fs::remove_dir(dir);
    }
    code
}

/// Writes to standard output. A closed pipe (`xent bench | head`: the reader has what it
/// wanted) is not an error and the rest is dropped; Rust ignores SIGPIPE, so `print!` would
/// panic there. Any other failure to write is (exit code 1).
pub fn emit(text: fmt::Arguments<'_>) -> Result<(), CliError> {
    use std::io::Write;
    match std::io::stdout().lock().write_fmt(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::runtime(format!(
            "writing to standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// A number for JSON output: finite values as numbers, NaN and infinities as the strings
/// `"NaN"`, `"inf"`, `"-inf"` (JSON has no literals for them).
pub fn json_number(v: f64) -> serde_json::Value {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        v.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn non_finite_numbers_become_strings() {
        assert_eq!(json_number(f64::NAN), "NaN");
        assert_eq!(json_number(f64::INFINITY), "inf");
        assert_eq!(json_number(f64::NEG_INFINITY), "-inf");
        assert_eq!(json_number(1.5), 1.5);
    }

    #[test]
    fn errors_are_one_line() {
        let e = CliError::file("a.npy", "x\ny");
        assert_eq!(e.to_string(), "a.npy: x y");
        assert_eq!(e.code, 2);
    }
}
