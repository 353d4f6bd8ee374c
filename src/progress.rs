//! Progress for long work: a live bar (bytes, rate) when stderr is a terminal, a log line every
//! 30 seconds otherwise, and with `-v` a line per file as it completes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(30);

pub struct Progress {
    bar: Option<ProgressBar>,
    verbose: bool,
    label: &'static str,
    start: Instant,
    last_log: Mutex<Instant>,
    quiet: bool,
    total: Option<u64>,
    /// The last position set, for a summary of work that stopped half way.
    position: AtomicU64,
}

impl Progress {
    /// `show`: the operator did not ask for silence. The bar appears only on a terminal.
    pub fn new(label: &'static str, total: Option<u64>, show: bool, verbose: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (show && tty).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let tmpl = if total.is_some() {
                "{msg} {bytes}/{total_bytes} {binary_bytes_per_sec} [{elapsed_precise}] eta {eta}"
            } else {
                "{msg} {bytes} {binary_bytes_per_sec} [{elapsed_precise}]"
            };
            if let Ok(style) = ProgressStyle::with_template(tmpl) {
                bar.set_style(style);
            }
            bar.set_message(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            verbose,
            label,
            start: now,
            last_log: Mutex::new(now),
            quiet: !show,
            total,
            position: AtomicU64::new(0),
        }
    }

    /// No output at all (library callers, tests).
    pub fn hidden() -> Self {
        Progress::new("", None, false, false)
    }

    /// The bytes done so far, as last set.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    pub fn set_position(&self, bytes: u64) {
        self.position.store(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            return;
        }
        if self.quiet {
            return;
        }
        if let Ok(mut last) = self.last_log.try_lock() {
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let secs = self.start.elapsed().as_secs_f64().max(0.001);
                let rate = bytes as f64 / secs;
                match self.total {
                    Some(t) if t > 0 && rate > 0.0 => tracing::info!(
                        "{}: {} of {} ({:.0}%), {}/s, eta {}",
                        self.label,
                        HumanBytes(bytes),
                        HumanBytes(t),
                        bytes as f64 * 100.0 / t as f64,
                        HumanBytes(rate as u64),
                        humantime::format_duration(Duration::from_secs(
                            (t.saturating_sub(bytes) as f64 / rate) as u64
                        ))
                    ),
                    _ => tracing::info!(
                        "{}: {} ({}/s)",
                        self.label,
                        HumanBytes(bytes),
                        HumanBytes(rate as u64)
                    ),
                }
            }
        }
    }

    /// A file is complete; with `-v` its path is printed.
    pub fn file_done(&self, path: &str) {
        if !self.verbose {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(path),
            None => eprintln!("{path}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
