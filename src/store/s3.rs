//! The S3 backend, through aws-sdk-s3: AWS or any S3-compatible store (MinIO, Garage, ...).
//!
//! The SDK's own retries are off: every request goes through [`retry::run`] instead, so each
//! retry is logged with its cause and bounded by `--retry-for`. The SDK's optional request
//! checksums are sent only where S3 requires them: some S3-compatible stores reject the signed
//! streaming trailers that carry them over plain http.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::runtime::Runtime;

use super::retry::{self, Failure, RetryPolicy};
use super::{ObjectInfo, PartBody, Repository, S3Settings, StoreError, Upload};

/// Cheap to clone: an upload keeps its own handle.
#[derive(Clone)]
pub struct S3Repo {
    rt: Arc<Runtime>,
    client: Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    policy: RetryPolicy,
}

/// How an SDK error is handled.
enum Class {
    Transient,
    Permanent,
    NotFound,
}

/// One line for an operator: the HTTP status and S3's error code and message when the store
/// answered, the whole cause chain otherwise.
fn describe_error<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(se) => format!(
            "HTTP {} {}: {}",
            se.raw().status().as_u16(),
            se.err().code().unwrap_or("(no error code)"),
            se.err().message().unwrap_or("(no message)")
        ),
        other => {
            // The cause chain, without the SDK's debug dump.
            let mut msg = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                let text = c.to_string();
                if !msg.contains(&text) {
                    msg = format!("{msg}: {text}");
                }
                cause = c.source();
            }
            msg
        }
    }
}

/// Whether the error chain says that no credentials could be loaded (the SDK reports that as a
/// dispatch failure of kind "other", like a dropped connection, which must be retried).
fn mentions_credentials(e: &dyn std::error::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        let text = format!("{c:?}");
        if text.contains("CredentialsNotLoaded") || text.contains("ProviderError") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn classify<E, R>(e: &SdkError<E, R>) -> Class
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: HasStatus + std::fmt::Debug,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Class::Transient,
        // Connection trouble heals; a dispatch failure of another kind (no credentials found
        // in the chain, a bad endpoint) does not, and must not be retried for --retry-for.
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Class::Transient,
        SdkError::DispatchFailure(_) if mentions_credentials(e) => Class::Permanent,
        SdkError::DispatchFailure(_) => Class::Transient,
        SdkError::ServiceError(se) => {
            let status = se.raw().status();
            let code = se.err().code().unwrap_or("");
            if status == 404 || code == "NoSuchKey" || code == "NotFound" {
                Class::NotFound
            } else if (status >= 500 && status != 501) // 501 NotImplemented never heals
                || status == 429
                || matches!(
                    code,
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                )
            {
                Class::Transient
            } else {
                Class::Permanent
            }
        }
        _ => Class::Permanent,
    }
}

/// What a conditional PutObject found.
enum Conditional {
    Created,
    Exists,
    /// The store answered 501 Not Implemented.
    Unsupported,
}

/// The HTTP status of a raw response (a trait so [`classify`] stays generic over the SDK's
/// response type).
trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

impl S3Repo {
    pub fn open(bucket: &str, prefix: &str, s: &S3Settings) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xbagent-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Setup(format!("cannot start the S3 client runtime: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = RegionProviderChain::first_try(s.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region);
        if let Some(ep) = &s.endpoint {
            loader = loader.endpoint_url(ep);
        }
        let sdk = rt.block_on(loader.load());
        let custom_endpoint = sdk.endpoint_url().is_some();
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // MinIO, Garage and most self-hosted stores need path-style addressing.
            .force_path_style(custom_endpoint)
            .build();
        if let Some(ep) = sdk.endpoint_url() {
            tracing::debug!("S3 endpoint {ep}, path-style addressing");
        }
        let mut policy = RetryPolicy {
            cancel: s.cancel.clone(),
            ..RetryPolicy::default()
        };
        if let Some(t) = s.retry_for {
            policy.total = t;
        }
        Ok(S3Repo {
            rt: Arc::new(rt),
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            policy,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn remote(&self, op: &'static str, key: &str, message: String) -> StoreError {
        StoreError::Remote {
            op,
            key: key.to_string(),
            repo: self.describe(),
            message,
        }
    }

    /// Run one S3 request with retries. `f` makes and sends the request afresh each attempt.
    fn call<T, E, Fut>(
        &self,
        op: &'static str,
        key: &str,
        f: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let what = || format!("{op} {key}");
        retry::run(&self.policy, &what, || match self.rt.block_on(f()) {
            Ok(v) => Ok(v),
            Err(e) => {
                let msg = describe_error(&e);
                Err(match classify(&e) {
                    Class::Transient => Failure::Transient(self.remote(op, key, msg)),
                    Class::Permanent => Failure::Permanent(self.remote(op, key, msg)),
                    Class::NotFound => Failure::Permanent(StoreError::NotFound {
                        key: key.to_string(),
                        repo: self.describe(),
                    }),
                })
            }
        })
    }

    /// Bucket-level set-up for tests and first use: create the bucket if it is missing.
    pub fn create_bucket(&self) -> Result<(), StoreError> {
        let b = &self.bucket;
        self.call("CreateBucket", b, || {
            self.client.create_bucket().bucket(b).send()
        })
        .map(|_| ())
    }
}

impl Repository for S3Repo {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let k = self.full(key);
        self.call("PutObject", key, || {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&k)
                .body(ByteStream::from(data.clone()))
                .send()
        })
        .map(|_| ())
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let k = self.full(key);
        let what = || format!("PutObject {key} (If-None-Match: *)");
        let r = retry::run(&self.policy, &what, || {
            let sent = self.rt.block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&k)
                    .if_none_match("*")
                    .body(ByteStream::from(data.clone()))
                    .send(),
            );
            match sent {
                Ok(_) => Ok(Conditional::Created),
                Err(e) => {
                    let status = match &e {
                        SdkError::ServiceError(se) => se.raw().status().as_u16(),
                        _ => 0,
                    };
                    match (status, classify(&e)) {
                        // 412: the key exists; 409: a concurrent conditional write won.
                        (412 | 409, _) => Ok(Conditional::Exists),
                        (501, _) => Ok(Conditional::Unsupported),
                        (_, Class::Transient) => Err(Failure::Transient(self.remote(
                            "PutObject",
                            key,
                            describe_error(&e),
                        ))),
                        _ => Err(Failure::Permanent(self.remote(
                            "PutObject",
                            key,
                            describe_error(&e),
                        ))),
                    }
                }
            }
        })?;
        match r {
            Conditional::Created => Ok(true),
            Conditional::Exists => Ok(false),
            Conditional::Unsupported => {
                // The caller reads its own marker back to find who won (see upload).
                tracing::warn!(
                    "{}: the store does not support conditional writes (If-None-Match); two uploads with the same id can no longer be told apart as reliably",
                    self.describe()
                );
                if self.size(key)?.is_some() {
                    return Ok(false);
                }
                self.put(key, data)?;
                Ok(true)
            }
        }
    }

    fn get(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        let size = self.size(key)?.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
            repo: self.describe(),
        })?;
        if size > max {
            return Err(self.remote("GetObject", key, format!("larger than {max} bytes")));
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        self.get_range(key, 0, size)
    }

    fn read_range(&self, key: &str, start: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let k = self.full(key);
        let range = format!("bytes={}-{}", start, start + len - 1);
        let what = || format!("GetObject {key} {range}");
        // The body is read inside the retried step: a connection cut mid-body is retried too.
        retry::run(&self.policy, &what, || {
            let r = self.rt.block_on(async {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&k)
                    .range(&range)
                    .send()
                    .await
                    .map_err(|e| {
                        let msg = describe_error(&e);
                        (classify(&e), msg)
                    })?;
                let mut body = out.body;
                let mut filled = 0usize;
                while let Some(piece) = body.next().await {
                    let piece =
                        piece.map_err(|e| (Class::Transient, format!("reading the body: {e}")))?;
                    let Some(dst) = buf.get_mut(filled..filled + piece.len()) else {
                        return Err((Class::Transient, "the body is longer than the range".into()));
                    };
                    dst.copy_from_slice(&piece);
                    filled += piece.len();
                }
                Ok(filled as u64)
            });
            match r {
                Ok(n) if n == len => Ok(()),
                Ok(n) => Err(Failure::Transient(self.remote(
                    "GetObject",
                    key,
                    format!("{range}: got {n} bytes, expected {len}"),
                ))),
                Err((Class::Transient, m)) => {
                    Err(Failure::Transient(self.remote("GetObject", key, m)))
                }
                Err((Class::NotFound, _)) => Err(Failure::Permanent(StoreError::NotFound {
                    key: key.to_string(),
                    repo: self.describe(),
                })),
                Err((Class::Permanent, m)) => {
                    Err(Failure::Permanent(self.remote("GetObject", key, m)))
                }
            }
        })
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let k = self.full(key);
        match self.call("HeadObject", key, || {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&k)
                .send()
        }) {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = self.full(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.call("ListObjectsV2", prefix, || {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&p)
                    .set_continuation_token(token.clone())
                    .send()
            })?;
            for o in page.contents() {
                if let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(ObjectInfo {
                        key: k.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: o
                            .last_modified()
                            .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = self.full(key);
        match self.call("DeleteObject", key, || {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&k)
                .send()
        }) {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StoreError> {
        let k = self.full(key);
        let out = self.call("CreateMultipartUpload", key, || {
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&k)
                .send()
        })?;
        let id = out
            .upload_id()
            .ok_or_else(|| {
                self.remote(
                    "CreateMultipartUpload",
                    key,
                    "no upload id in the answer".into(),
                )
            })?
            .to_string();
        Ok(Box::new(S3Upload {
            repo: self.clone(),
            key: key.to_string(),
            full: k,
            upload_id: id,
            etags: Mutex::new(Vec::new()),
        }))
    }

    fn abort_unfinished(&self, prefix: &str) -> Result<usize, StoreError> {
        let p = self.full(prefix);
        let mut n = 0;
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self.call("ListMultipartUploads", prefix, || {
                self.client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(&p)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
            })?;
            for u in page.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                self.call("AbortMultipartUpload", k, || {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(k)
                        .upload_id(id)
                        .send()
                })?;
                n += 1;
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(n)
    }
}

struct S3Upload {
    repo: S3Repo,
    key: String,
    full: String,
    upload_id: String,
    etags: Mutex<Vec<(i32, String)>>,
}

impl Upload for S3Upload {
    fn put_part(&self, number: u32, _offset: u64, body: &PartBody) -> Result<(), StoreError> {
        let r = &self.repo;
        let n = number as i32;
        let what = format!("{} part {number}", self.key);
        let out = r.call("UploadPart", &what, || async {
            let stream = match body {
                PartBody::Memory(b) => ByteStream::from(b.clone()),
                PartBody::Spooled { file, len } => ByteStream::read_from()
                    .path(file.path())
                    .length(Length::Exact(*len))
                    .build()
                    .await
                    .map_err(SdkError::construction_failure)?,
            };
            r.client
                .upload_part()
                .bucket(&r.bucket)
                .key(&self.full)
                .upload_id(&self.upload_id)
                .part_number(n)
                .content_length(body.len() as i64)
                .body(stream)
                .send()
                .await
        })?;
        let etag = out
            .e_tag()
            .ok_or_else(|| r.remote("UploadPart", &what, "no ETag in the answer".into()))?;
        if let Ok(mut tags) = self.etags.lock() {
            tags.push((n, etag.to_string()));
        }
        Ok(())
    }

    fn complete(&self, parts: u32, _size: u64) -> Result<(), StoreError> {
        let r = &self.repo;
        let mut tags = self
            .etags
            .lock()
            .map(|t| t.clone())
            .map_err(|_| StoreError::Setup("part list poisoned".into()))?;
        tags.sort_by_key(|t| t.0);
        tags.dedup_by_key(|t| t.0);
        if tags.len() != parts as usize {
            return Err(r.remote(
                "CompleteMultipartUpload",
                &self.key,
                format!("{} parts stored, {parts} expected", tags.len()),
            ));
        }
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(
                tags.iter()
                    .map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build())
                    .collect(),
            ))
            .build();
        r.call("CompleteMultipartUpload", &self.key, || {
            r.client
                .complete_multipart_upload()
                .bucket(&r.bucket)
                .key(&self.full)
                .upload_id(&self.upload_id)
                .multipart_upload(done.clone())
                .send()
        })
        .map(|_| ())
    }

    fn abort(&self) -> Result<(), StoreError> {
        let r = &self.repo;
        match r.call("AbortMultipartUpload", &self.key, || {
            r.client
                .abort_multipart_upload()
                .bucket(&r.bucket)
                .key(&self.full)
                .upload_id(&self.upload_id)
                .send()
        }) {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
