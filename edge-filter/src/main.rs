//! The `edge-filter` binary: parses the command line and reports errors as
//! one line each (anyhow lives only here, at the binary edge).

mod cli;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(log_line)
        .init();
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::run::run(a))),
        Command::Stats(a) => cli::stats::run(a),
        Command::Detach(a) => cli::detach::run(a),
        Command::ForceFeed(a) => cli::force_feed::run(a),
        Command::CheckConfig(a) => cli::check_config::run(a),
        Command::Replay(a) => cli::replay::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Explain(a) => cli::explain::run(a),
        Command::Features(a) => cli::features::run(a),
        Command::Top(a) => cli::top::run(a),
        Command::Events(a) => cli::events::run(a),
        Command::Completions(a) => cli::completions::completions(a, Cli::command()),
        Command::Man(a) => cli::completions::man(a, Cli::command()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader went away (`status | head -1`): nothing more to say.
        Err(e) if closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote feed content (see `log_line`).
            let e = one_line(&e);
            eprintln!("edge-filter: error: {}", edge_filter::escape::Escaped(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exit quietly with status 0 when stdout's reader has gone (`status |
/// head -1`, `events --json | jq 'first'`), as other Unix tools do.
///
/// Rust ignores SIGPIPE, so a write to a closed pipe fails with `EPIPE`
/// and `println!` panics on it ("failed printing to stdout: Broken pipe",
/// exit 101). Every subcommand prints with `println!` (and clap's
/// generators write with `expect`), so the panic hook is the one place
/// that catches them all: a panic whose message names `EPIPE` ends the
/// process with status 0 and says nothing; any other panic keeps the
/// default report. The agent (`run`) writes its `ready:` line without
/// panicking, so a closed stdout never stops it.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let epipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let os_epipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
        if msg.contains(&os_epipe) || msg.contains(&epipe.to_string()) {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// One log line: env_logger's default layout (`[TIME LEVEL target]
/// message`), with the message escaped: log messages quote feed content
/// (rejected lines, server errors), and a `\r`, `\n` or ESC in it must not
/// forge lines or drive the terminal (see `edge_filter::escape`).
fn log_line(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let style = buf.default_level_style(record.level());
    let message = record.args().to_string();
    writeln!(
        buf,
        "[{} {style}{:<5}{style:#} {}] {}",
        buf.timestamp_millis(),
        record.level(),
        record.target(),
        edge_filter::escape::Escaped(&message)
    )
}

/// The error and its causes on one line, each cause once: most of our
/// errors already say their cause in their own message (`"{op}: {source}"`),
/// and printing the chain as well would repeat it ("os error 2 ... os error 2").
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(edge_filter::error::Error::Read {
            path: "/x".into(),
            source: io,
        })
        .context("loading the blocklist");
        let text = one_line(&e);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("loading the blocklist: reading /x: "),
            "{text}"
        );
    }
}
