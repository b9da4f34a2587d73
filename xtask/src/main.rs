//! `cargo xtask`: the developer commands of the edge-filter workspace
//! (`cargo xtask` is an alias in `.cargo/config.toml`).
//!
//! One module per subcommand. Narration goes to stdout, the commands run are
//! echoed to stderr beside their own output, errors go to stderr with a
//! non-zero exit status.
mod bench;
mod bench_build;
mod check;
mod pyenv;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
On a new machine:
  cargo xtask setup    install the toolchain pieces and Debian packages
  cargo xtask check    rustfmt and clippy, as CI runs them
  cargo xtask test     the whole test suite (run as root for the XDP tests)
  cargo xtask soak     the fault soak of the agent (root)

`cargo xtask <command> --help` explains each one.";

/// Developer commands of edge-filter: set up a machine, check, test.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// The one-line and long descriptions live on each subcommand's `Args`.
#[derive(Subcommand, Debug)]
enum Cmd {
    Setup(setup::Args),
    Check(check::Args),
    Test(test::Args),
    Bench(bench::Args),
    VmTest(vm::Args),
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup(args) => setup::run(args),
        Cmd::Check(args) => check::run(args),
        Cmd::Test(args) => test::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::VmTest(args) => vm::run(args),
        Cmd::Soak(args) => soak::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
