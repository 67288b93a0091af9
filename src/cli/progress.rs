//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar with throughput and ETA; hidden when `quiet` or when stderr
/// is not a terminal (logs and pipes stay clean).
pub fn bytes_bar(total: u64, quiet: bool, message: &str) -> ProgressBar {
    bar(
        Some(total),
        quiet,
        message,
        "{msg} [{elapsed_precise}] {wide_bar} {decimal_bytes}/{decimal_total_bytes} \
         {decimal_bytes_per_sec} ETA {eta}",
    )
}

/// A byte counter with throughput for work of unknown length (passes that stop
/// when they have found what they look for); hidden like [`bytes_bar`].
pub fn bytes_counter(quiet: bool, message: &str) -> ProgressBar {
    bar(
        None,
        quiet,
        message,
        "{msg} [{elapsed_precise}] {spinner} {decimal_bytes} read, {decimal_bytes_per_sec}",
    )
}

fn bar(total: Option<u64>, quiet: bool, message: &str, template: &str) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(total, target);
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}
