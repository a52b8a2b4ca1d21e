//! Progress bars on standard error: long model loads (`vknf compile-model`, `vknf predict`) and
//! capture files read by `vknf flows` and `vknf classify`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vknf_forest::{Progress, Stage};

/// A bar on standard error, hidden when `quiet` or when standard error is not a terminal.
pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows one report of the model loader on `bar`.
pub fn show(bar: &ProgressBar, p: Progress) {
    let (message, scale) = match p.stage {
        Stage::Reading => ("reading", 1 << 20),
        Stage::Decoding => ("decoding", 1 << 20),
        Stage::Validating => ("validating", 1),
        Stage::Compiling => ("compiling", 1),
    };
    // Byte stages are shown in MiB so the counters stay readable.
    bar.set_message(if scale > 1 {
        format!("{message} MiB")
    } else {
        message.to_owned()
    });
    bar.set_length(p.total.div_ceil(scale));
    bar.set_position(p.done / scale);
}

/// A bar over the bytes of one capture file (hidden as [`progress_bar`] is); the caller moves it to
/// the reader's offset.
pub fn file_bar(quiet: bool, path: &std::path::Path) -> std::io::Result<ProgressBar> {
    let bar = progress_bar(quiet);
    if !bar.is_hidden() {
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_length(std::fs::metadata(path)?.len());
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(bar)
}
