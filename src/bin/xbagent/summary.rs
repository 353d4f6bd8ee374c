//! The one summary line that ends `upload` and `restore` (the CronJob's and the restore Job's
//! last word for a log collector), and its push to a Prometheus Pushgateway.
//!
//! A job runs inside [`run_job`]: whatever it prints, its error line if it fails, then exactly
//! one summary line, as text (`key=value`, README "Summary line and Pushgateway") or as one
//! JSON object. The keys and their units are a stable interface: add keys, never rename.

use std::time::{Duration, Instant, SystemTime};

use xbagent::throttle::RateLimit;

use crate::cli::JobArgs;
use crate::exit::{self, Failure};
use crate::pushgateway;

/// Which short job ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Upload,
    Restore,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Upload => "upload",
            Job::Restore => "restore",
        }
    }
}

/// What the job learnt as it ran, filled in by the job itself (a failed job leaves what it
/// had).
#[derive(Debug, Default)]
pub struct Figures {
    /// The backup's id, once the job knows which backup it works on.
    pub id: Option<String>,
    /// Stream bytes: read from the source (upload) or restored (restore).
    pub bytes: u64,
    /// Bytes stored in the repository (upload only: compressed and sealed size).
    pub stored: Option<u64>,
}

/// How the summary is written: the coordinator of `--log-format` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    /// Chosen by the global `--log-format json` (`main::summary_format`).
    #[allow(dead_code)]
    Json,
}

/// The figures of one finished job.
#[derive(Debug)]
pub struct Summary {
    pub job: Job,
    pub id: Option<String>,
    pub bytes: u64,
    pub stored: Option<u64>,
    pub duration: Duration,
    /// The exit code: 0 is `result=ok`.
    pub exit: i32,
    pub rate_limit: Option<RateLimit>,
    /// When the job ended (the Pushgateway's timestamps).
    pub ended: SystemTime,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Summary {
    /// Average stream bytes per second over the whole job.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.duration.as_secs_f64().max(1e-6)
    }

    pub fn ok(&self) -> bool {
        self.exit == exit::OK
    }

    /// `xbagent: summary: upload id=... result=ok bytes=N stored=N duration=12.345s
    /// rate=12.34MiB/s rate_limit=50.00MiB/s`; on failure `result=failed exit=N`.
    pub fn to_text(&self) -> String {
        let mut s = format!("xbagent: summary: {}", self.job.name());
        if let Some(id) = &self.id {
            s.push_str(&format!(" id={id}"));
        }
        if self.ok() {
            s.push_str(" result=ok");
        } else {
            s.push_str(&format!(" result=failed exit={}", self.exit));
        }
        s.push_str(&format!(" bytes={}", self.bytes));
        if let Some(stored) = self.stored {
            s.push_str(&format!(" stored={stored}"));
        }
        s.push_str(&format!(
            " duration={:.3}s rate={:.2}MiB/s",
            self.duration.as_secs_f64(),
            self.rate() / MIB
        ));
        if let Some(r) = self.rate_limit {
            s.push_str(&format!(
                " rate_limit={:.2}MiB/s",
                r.bytes_per_second() as f64 / MIB
            ));
        }
        s
    }

    /// The same figures as one JSON object, in plain units (bytes, seconds, bytes per second).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "summary": self.job.name(),
            "result": if self.ok() { "ok" } else { "failed" },
            "exit": self.exit,
            "bytes": self.bytes,
            "duration_seconds": self.duration.as_secs_f64(),
            "rate_bytes_per_second": self.rate(),
        });
        if let Some(id) = &self.id {
            v["id"] = id.as_str().into();
        }
        if let Some(stored) = self.stored {
            v["stored"] = stored.into();
        }
        if let Some(r) = self.rate_limit {
            v["rate_limit_bytes_per_second"] = r.bytes_per_second().into();
        }
        v
    }

    /// The summary line, on stderr.
    pub fn emit(&self, format: Format) {
        match format {
            Format::Text => eprintln!("{}", self.to_text()),
            Format::Json => eprintln!("{}", self.to_json()),
        }
    }
}

/// Run a job, then say how it went: its error (if any), the push (if asked), and last the
/// summary line. Returns the job's exit code; a push never changes it.
pub fn run_job(
    job: Job,
    args: &JobArgs,
    rate_limit: Option<RateLimit>,
    format: Format,
    f: impl FnOnce(&mut Figures) -> Result<i32, Failure>,
) -> Result<i32, Failure> {
    let start = Instant::now();
    let mut fig = Figures::default();
    let res = f(&mut fig);
    let code = match &res {
        Ok(c) => *c,
        Err(e) => {
            crate::say("ERROR", &format!("error: {e}"));
            exit::code(e)
        }
    };
    let summary = Summary {
        job,
        id: fig.id,
        bytes: fig.bytes,
        stored: fig.stored,
        duration: start.elapsed(),
        exit: code,
        rate_limit,
        ended: SystemTime::now(),
    };
    if let Some(url) = &args.pushgateway {
        if let Err(e) = pushgateway::push(url, args.pushgateway_instance.as_deref(), &summary) {
            tracing::warn!(
                "could not push to the Pushgateway at {url}: {e} (the job's result stands)"
            );
        }
    }
    summary.emit(format);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(exit: i32) -> Summary {
        Summary {
            job: Job::Upload,
            id: Some("20261207T010203.456Z".into()),
            bytes: 10 << 20,
            stored: Some(4 << 20),
            duration: Duration::from_secs(2),
            exit,
            rate_limit: RateLimit::new(50 << 20).ok(),
            ended: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn text_is_one_line_of_keys_and_values() {
        assert_eq!(
            summary(0).to_text(),
            "xbagent: summary: upload id=20261207T010203.456Z result=ok bytes=10485760 \
             stored=4194304 duration=2.000s rate=5.00MiB/s rate_limit=50.00MiB/s"
        );
    }

    #[test]
    fn a_failure_gives_its_exit_code() {
        let t = summary(4).to_text();
        assert!(t.contains(" result=failed exit=4 "), "{t}");
        let j = summary(4).to_json();
        assert_eq!(j["result"], "failed");
        assert_eq!(j["exit"], 4);
    }

    #[test]
    fn json_has_the_same_figures_in_plain_units() {
        let j = summary(0).to_json();
        assert_eq!(j["summary"], "upload");
        assert_eq!(j["id"], "20261207T010203.456Z");
        assert_eq!(j["bytes"], 10u64 << 20);
        assert_eq!(j["stored"], 4u64 << 20);
        assert_eq!(j["duration_seconds"], 2.0);
        assert_eq!(j["rate_limit_bytes_per_second"], 50u64 << 20);
        assert!(!j.to_string().contains('\n'));
    }
}
