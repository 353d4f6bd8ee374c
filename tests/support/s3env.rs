//! The S3-compatible server the tests run against, as `scripts/test` describes it in the
//! environment (`scripts/s3-server` starts it): XBAGENT_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY, AWS_REGION, XBAGENT_TEST_S3_SERVER.
//!
//! Without them a test fails when XBAGENT_REQUIRE_TOOLS=1 (CI) and is skipped, loudly,
//! otherwise.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use xbagent::store::s3::S3Repo;
use xbagent::store::S3Settings;

#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// `s3s-fs` or `garage`.
    pub server: String,
}

/// The test server, or `None` (with a message) when there is none and CI does not require it.
pub fn s3_env() -> Option<S3Env> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("XBAGENT_TEST_S3_ENDPOINT"),
        get("AWS_ACCESS_KEY_ID"),
        get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(endpoint), Some(access_key), Some(secret_key)) => Some(S3Env {
            endpoint,
            access_key,
            secret_key,
            region: get("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            server: get("XBAGENT_TEST_S3_SERVER").unwrap_or_else(|| "unknown".into()),
        }),
        _ => {
            let msg = "no S3 test server: set XBAGENT_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and \
                       AWS_SECRET_ACCESS_KEY (scripts/test starts one with scripts/s3-server)";
            if std::env::var_os("XBAGENT_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

impl S3Env {
    /// Settings for the library's S3 backend, pointed at `endpoint` (the server or a proxy).
    pub fn settings(&self, endpoint: &str) -> S3Settings {
        S3Settings {
            endpoint: Some(endpoint.to_string()),
            region: Some(self.region.clone()),
            retry_for: Some(std::time::Duration::from_secs(60)),
            concurrency: 4,
            cancel: None,
        }
    }

    /// A new bucket with a unique name; returns its name.
    pub fn new_bucket(&self, tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "xbt-{}-{}-{}",
            tag.to_ascii_lowercase().replace('_', "-"),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let name: String = name.chars().take(63).collect();
        let repo = S3Repo::open(&name, "", &self.settings(&self.endpoint))
            .unwrap_or_else(|e| panic!("cannot set up an S3 client: {e}"));
        repo.create_bucket()
            .unwrap_or_else(|e| panic!("cannot create bucket {name} on {}: {e}", self.endpoint));
        name
    }

    /// `xbagent ARGS` with the server's credentials and endpoint in its environment.
    pub fn xbagent(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xbagent"));
        c.args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_REGION", &self.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
        c
    }
}
