//! `edge-filter completions` and `edge-filter man`: both generated from the
//! clap definitions, so they always match `--help`.

use std::io::Write;

use clap::Args;
use clap_complete::Shell;

/// Print a shell completion script.
///
/// Install, for example:
///   edge-filter completions bash > /etc/bash_completion.d/edge-filter
///   edge-filter completions zsh > "${fpath[1]}/_edge-filter"
///   edge-filter completions fish > ~/.config/fish/completions/edge-filter.fish
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print a man page (roff) to standard output.
///
/// Without SUBCOMMAND: edge-filter(1), listing every subcommand. With one:
/// its own page, edge-filter-SUBCOMMAND(1). View with
/// `edge-filter man | man -l -`; install with
/// `edge-filter man > /usr/local/share/man/man1/edge-filter.1`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// A subcommand (e.g. `status`) to render the page of.
    pub subcommand: Option<String>,
}

/// Print the completion script of `cmd` (the whole command line).
pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<()> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, name.clone(), &mut out);
    if a.shell == Shell::Bash {
        out = fix_bash_hyphen(&out, &name);
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// clap_complete's bash script spells the state of a subcommand two ways
/// when the binary name has a hyphen (`edge__filter__subcmd__stats` in the
/// dispatch loop, `edge__subcmd__filter__subcmd__stats` in the case arms),
/// so no subcommand's options ever complete (clap-rs/clap#6421, unfixed in
/// clap_complete 4.6.11). Spell the arms the way the loop does.
fn fix_bash_hyphen(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    if wrong == right {
        return script.to_vec();
    }
    text.replace(&wrong, &right).into_bytes()
}

/// Print the man page of `cmd` (the whole command line) or of one of its
/// subcommands.
pub fn man(a: ManArgs, mut cmd: clap::Command) -> anyhow::Result<()> {
    cmd.build();
    let page = match &a.subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| {
                    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                    anyhow::anyhow!("no subcommand {name:?} (one of: {})", names.join(", "))
                })?
                .clone();
            // The page is edge-filter-NAME(1), usage `edge-filter NAME ...`.
            let bin = format!("edge-filter {}", sub.get_name());
            let title = format!("edge-filter-{}", sub.get_name());
            // Command::name wants a 'static str without clap's `string`
            // feature; this process prints one page and exits.
            sub.name(&*title.leak()).bin_name(bin)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(())
}
