//! Progress bars for long model loads.

use indicatif::{ProgressBar, ProgressStyle};
use vknf_forest::{Progress, Stage};

/// Shows the stages of a model load as one progress bar on standard error (hidden when not a terminal).
pub struct LoadProgress {
    bar: ProgressBar,
}

impl LoadProgress {
    /// A bar, hidden until the first report.
    pub fn new() -> LoadProgress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {percent:>3}% {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        LoadProgress { bar }
    }

    /// Takes one report from the loader.
    pub fn update(&self, progress: Progress) {
        let stage = match progress.stage {
            Stage::Reading => "reading",
            Stage::Decoding => "decoding",
            Stage::Validating => "validating",
            Stage::Compiling => "compiling",
        };
        if self.bar.message() != stage {
            self.bar.set_message(stage);
            self.bar.set_length(progress.total.max(1));
        }
        self.bar.set_position(progress.done);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
