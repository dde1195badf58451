//! `t5-tui`: the binary. It parses the command line and hands it to the
//! library's front end; the terminal UI will start here when there is no
//! command.

use clap::Parser;

fn main() {
    let cli = t5_tui::cli::Cli::parse();
    let code = t5_tui::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
