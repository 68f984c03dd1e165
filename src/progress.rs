//! Progress of long work (drill rounds, `dlq replay`, `merge --full`): a bar
//! on a terminal (indicatif), one plain line per step otherwise, on stderr,
//! so that reports and `--json` output on stdout stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// `total` steps of `what`: a bar if stderr is a terminal, else lines.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}") {
                bar.set_style(style);
            }
            bar.set_prefix(what.to_owned());
            bar
        });
        Progress { what: what.to_owned(), total, done: 0, bar, quiet: false }
    }

    /// Reports nothing (library calls outside a command).
    pub fn hidden() -> Progress {
        Progress { what: String::new(), total: 0, done: 0, bar: None, quiet: true }
    }

    /// One step done; `note` says which.
    pub fn step(&mut self, note: impl std::fmt::Display) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(note.to_string());
                bar.inc(1);
            }
            None if !self.quiet => eprintln!("{}: {}/{} {note}", self.what, self.done, self.total),
            None => {}
        }
    }

    /// Removes the bar (the caller prints its report next).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
