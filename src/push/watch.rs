//! How `weir push` shows its progress: a progress bar (rows, rows/s, ETA) on a terminal,
//! one plain line per run when stderr is a file, a pipe or a journal.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Progress, Watch};
use crate::schedule::RunReport;

/// The watch for stderr: a bar on a terminal, lines otherwise.
pub fn for_stderr() -> Box<dyn Watch> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::default())
    }
}

/// Rows per second since `since`, over rows delivered since then.
fn rate(rows: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 { rows as f64 / secs } else { 0.0 }
}

fn percent(p: &Progress) -> f64 {
    if p.bytes_total == 0 {
        100.0
    } else {
        p.bytes_done as f64 * 100.0 / p.bytes_total as f64
    }
}

/// A progress bar over the file's bytes, with rows and jobs as its message.
pub struct Bar {
    bar: ProgressBar,
    since: Instant,
    rows_at_start: u64,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {percent:>3}% {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar {
            bar,
            since: Instant::now(),
            rows_at_start: 0,
        }
    }

    fn show(&self, p: &Progress) {
        self.bar.set_length(p.bytes_total);
        self.bar.set_position(p.bytes_done);
        let rows = p.rows.saturating_sub(self.rows_at_start);
        self.bar.set_message(format!(
            "{} rows · {:.0} rows/s · {} jobs",
            p.rows,
            rate(rows, self.since),
            p.jobs
        ));
    }
}

impl Watch for Bar {
    fn started(&mut self, progress: &Progress, state_dir: &Path, resumed: bool) {
        self.rows_at_start = progress.rows;
        self.since = Instant::now();
        // Only bytes pushed from now on count towards the ETA.
        self.bar.reset_eta();
        if resumed {
            self.bar.println(format!(
                "resuming at {:.0}% ({} rows in {} jobs already delivered; state in {})",
                percent(progress),
                progress.rows,
                progress.jobs,
                state_dir.display()
            ));
        }
        self.show(progress);
    }

    fn delivered(&mut self, progress: &Progress, _report: &RunReport) {
        self.show(progress);
    }

    fn failed(&mut self, progress: &Progress, error: &str, wait: Duration) {
        self.bar.println(format!(
            "run failed, retrying in {}: {error}",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        ));
        self.show(progress);
    }

    fn finished(&mut self, progress: &Progress) {
        self.show(progress);
        self.bar.finish_and_clear();
    }
}

/// One line per run on stderr, for logs.
pub struct Lines {
    since: Instant,
    rows_at_start: u64,
}

impl Default for Lines {
    fn default() -> Lines {
        Lines {
            since: Instant::now(),
            rows_at_start: 0,
        }
    }
}

impl Watch for Lines {
    #[allow(clippy::print_stderr)]
    fn started(&mut self, progress: &Progress, state_dir: &Path, resumed: bool) {
        self.since = Instant::now();
        self.rows_at_start = progress.rows;
        if resumed {
            eprintln!(
                "push: resuming at {:.0}% of the file ({} rows in {} jobs already delivered; state in {})",
                percent(progress),
                progress.rows,
                progress.jobs,
                state_dir.display()
            );
        } else {
            eprintln!("push: started (state in {})", state_dir.display());
        }
    }

    #[allow(clippy::print_stderr)]
    fn delivered(&mut self, progress: &Progress, report: &RunReport) {
        eprintln!(
            "push: {:.0}% · run of {} in job {} · {} in {} · {:.0} rows/s",
            percent(progress),
            super::plural(report.rows as u64, "row"),
            report.job_id.as_deref().unwrap_or("-"),
            super::plural(progress.rows, "row"),
            super::plural(progress.jobs, "job"),
            rate(progress.rows - self.rows_at_start, self.since)
        );
    }

    #[allow(clippy::print_stderr)]
    fn failed(&mut self, progress: &Progress, error: &str, wait: Duration) {
        eprintln!(
            "push: {:.0}% · run failed, retrying in {}: {error}",
            percent(progress),
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        );
    }

    fn finished(&mut self, _progress: &Progress) {}
}
