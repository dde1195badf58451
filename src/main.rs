//! `t5-tui`: the binary. It parses the command line and hands it to the
//! library's front end: the terminal UI with no command, else the
//! headless command named.

use clap::Parser;

fn main() {
    t5_tui::cpu_runtime::configure();
    let cli = t5_tui::cli::Cli::parse();
    let code = t5_tui::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
