//! `tern`: the command line. Parses flags, runs a subcommand, reports errors (exit 1) —
//! the only crate that prints or draws progress bars.

mod cmd_bench;
mod cmd_data;
mod cmd_eval;
mod cmd_experiment;
mod cmd_export;
mod cmd_import;
mod cmd_infer;
mod cmd_models;
mod cmd_profile;
mod cmd_run;
mod cmd_sim;
mod cmd_train;
mod common;
mod plot;
mod progress;
mod report;
mod table;

use clap::{Parser, Subcommand};

/// Keeps freed activation buffers (up to 32 MiB each, glibc's ceiling) in the heap for reuse,
/// instead of returning them to the OS and page-faulting them back in, zeroed by the kernel,
/// on every training step (that cost a fifth of a step).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Ternary-weight CNNs with zero-skipping: train (CPU or GPU), profile, simulate"
)]
struct Cli {
    /// Worker threads for the kernels (default: all cores)
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: train FP and ternary, profile both, simulate both on DLAC, write a report
    Run(cmd_run::RunArgs),
    /// Train a model (writes DIR/model.safetensors, DIR/metrics.json, DIR/curves.svg)
    Train(cmd_train::TrainArgs),
    /// Evaluate a checkpoint on a data set's test split
    Eval(cmd_eval::EvalArgs),
    /// List the models, or print one model's summary
    Models(cmd_models::ModelsArgs),
    /// Inspect a data set: counts per class, shapes, and a PNG grid of samples
    Data(cmd_data::DataCmdArgs),
    /// Count the multiply-adds with two non-zero operands, per layer and pass (Table 1, Fig. 1)
    Profile(cmd_profile::ProfileArgs),
    /// Simulate a workload on DLAC, the zero-skipping accelerator, cycle by cycle
    Sim(cmd_sim::SimArgs),
    /// Run one of the ternary experiments (configurations x seeds) and summarise it
    Experiment(cmd_experiment::ExperimentArgs),
    /// Speed benchmarks on random inputs (JSON output)
    Bench(cmd_bench::BenchArgs),
    /// Import a model trained elsewhere (torchvision ResNets) as a tern checkpoint
    Import(cmd_import::ImportArgs),
    /// Export a checkpoint for other engines (ONNX)
    Export(cmd_export::ExportArgs),
    /// Run a checkpoint on the CPU inference engine (u8 activations, ternary weights, VNNI):
    /// accuracy against the FP32 model, and batch-1 latency
    Infer(cmd_infer::InferArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    keep_freed_memory();
    if let Some(t) = cli.threads {
        if t == 0 {
            anyhow::bail!("invalid value for --threads: must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    dispatch(cli.command)
}

/// Runs one subcommand (used by `tern run` for its stages).
fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(a) => cmd_run::run(a),
        Command::Train(a) => cmd_train::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Models(a) => cmd_models::run(a),
        Command::Data(a) => cmd_data::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Import(a) => cmd_import::run(a),
        Command::Export(a) => cmd_export::run(a),
        Command::Infer(a) => cmd_infer::run(a),
        Command::Experiment(a) => cmd_experiment::run(a),
        Command::Profile(a) => cmd_profile::run(a),
        Command::Sim(a) => cmd_sim::run(a),
    }
}

/// Parses a `tern` command line (without the program name) and runs it in this process.
pub(crate) fn execute(argv: &[String]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("tern").chain(argv.iter().map(String::as_str)))?;
    dispatch(cli.command)
}

/// The text of a panic's payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// A failure that ends in a panic (a device error inside a kernel, an invariant broken) is
/// reported as one `error:` line naming where it happened, like any other error; with
/// RUST_BACKTRACE set, Rust's own report (and backtrace) instead.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: {}{at}", panic_text(info.payload()));
    }));
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`tern models | head`), like other Unix tools, instead of
    // panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    install_panic_hook();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
