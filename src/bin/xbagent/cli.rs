//! Command-line definitions: one subcommand per operator job, and the drop-in
//! `xbstream`/`mbstream` flags. No logic a test would want to call lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use xbagent::format::{DecodeOptions, Dialect, CREATE_CHUNK_SIZE, DEFAULT_MAX_CHUNK_SIZE};
use xbagent::throttle::RateLimit;

#[derive(Debug, Parser)]
#[command(
    name = "xbagent",
    version,
    about = "Back up, clone and restore MySQL/MariaDB data directories as xbstream streams",
    after_help = "Exit codes: 0 on success; every other code, what it means and what \
                  causes it: README.md, section \"Exit codes\"."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// List files as they complete.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// No progress display, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Log lines as human-readable text, or as one JSON object per line (for log
    /// collectors; span fields such as the connection id and peer ride along).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Extract a stream into a directory (replaces `xbstream -x` / `mbstream -x`).
    Extract(ExtractArgs),
    /// Write files and directories as a stream on standard output (replaces `xbstream -c`).
    Create(CreateArgs),
    /// List the files in a stream: path, size, chunks, complete or not.
    List(ListArgs),
    /// Check every CRC, offset and file end of a stream; writes nothing.
    Verify(VerifyArgs),
    /// Donor side of a clone: serve a backup command's stream (or a directory) to
    /// authenticated receivers (replaces `ncat --listen ... -c "xtrabackup ..."`).
    Serve(ServeArgs),
    /// New pod's side of a clone: receive, extract, check, then mark complete (replaces
    /// `ncat --recv-only ... | xbstream -x`).
    Receive(ReceiveArgs),
    /// Back up a stream (a command's output, a directory, a file or stdin) to a repository:
    /// checked as it passes, optionally compressed, manifest written last.
    Upload(UploadArgs),
    /// Restore a backup from a repository into an empty directory, checking it against its
    /// manifest.
    Restore(RestoreArgs),
    /// List or prune the backups of a repository.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Archive a server's binlogs to a repository, or list what is archived (point-in-time
    /// recovery: `restore --until`).
    #[command(subcommand)]
    Binlogs(BinlogsCommand),
    /// Make clone tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random 256-bit token (64 hex digits) for --token-file; `> FILE` gets
    /// mode 0600.
    New,
}

#[derive(Debug, Subcommand)]
pub enum BinlogsCommand {
    /// Ship the server's binlog files (read from the data directory shared with it) to the
    /// repository: once, or as they grow with --follow.
    Push(BinlogsPushArgs),
    /// What is archived, per server, and the recoverable window.
    List(BinlogsListArgs),
}

#[derive(Debug, Args)]
pub struct BinlogsPushArgs {
    /// Repository: s3://bucket/prefix, file:///dir, or a directory (the backups' repository:
    /// binlogs go under binlogs/ in it).
    #[arg(long)]
    pub to: String,
    /// The server's binlog index file (`SELECT @@log_bin_index`), e.g.
    /// /var/lib/mysql/mariadb-bin.index. The files it names are read beside it.
    #[arg(long)]
    pub binlog_index: PathBuf,
    /// Keep running: ship transactions as they are committed (a sidecar).
    #[arg(long)]
    pub follow: bool,
    /// With --follow: a committed transaction is stored within this time (plus the upload).
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    pub max_lag: std::time::Duration,
    /// How long a missing or unreadable binlog index is waited for before giving up (exit 4).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub index_wait: std::time::Duration,
    /// A segment is stored once it reaches this size, even before --max-lag.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pub segment_size: u64,
    /// With --follow: serve Prometheus metrics at http://ADDR/metrics, liveness at /healthz
    /// and readiness at /readyz (200 once the index was read and the first pass over the
    /// server's files, with its checks of the archive, succeeded), e.g. 0.0.0.0:9308.
    ///
    /// Metrics: xbagent_binlog_last_event_timestamp_seconds (commit time of the newest
    /// transaction archived), xbagent_binlog_lag_seconds (now minus the commit time of the
    /// oldest transaction read and not yet archived; 0 when caught up),
    /// xbagent_binlog_bytes_archived_total, xbagent_binlog_segments_archived_total,
    /// xbagent_ready.
    #[arg(long, value_name = "ADDR", requires = "follow")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct BinlogsListArgs {
    /// Repository: s3://bucket/prefix, file:///dir, or a directory.
    pub repo: String,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also list every archived file.
    #[arg(long)]
    pub files: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Every backup: id, complete or not, size, files, source.
    List(BackupsListArgs),
    /// Delete old backups (dry run unless --apply). The newest complete backup is never deleted.
    Prune(PruneArgs),
}

/// How to reach an S3 repository (ignored for a local one).
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// S3 endpoint URL, e.g. http://minio:9000 (default: AWS_ENDPOINT_URL, else AWS).
    /// Path-style addressing is used with a custom endpoint.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region (default: AWS_REGION / the profile, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// How long one request may keep retrying (5xx, SlowDown, timeouts, resets).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub retry_for: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Repository: s3://bucket/prefix, file:///dir, or a directory.
    #[arg(long)]
    pub to: String,
    /// Shell command whose standard output is the stream (e.g. mariabackup --backup --stream=xbstream).
    #[arg(long, conflicts_with_all = ["dir", "input"])]
    pub exec: Option<String>,
    /// Directory to stream (as `create -C DIR .`).
    #[arg(long, conflicts_with = "input")]
    pub dir: Option<PathBuf>,
    /// Whole-stream compression: zstd or zstd:LEVEL (1-19), multi-threaded.
    #[arg(long, value_parser = parse_compress)]
    pub compress: Option<i32>,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Memory for part buffers and everything else; larger parts are spooled to --spool-dir.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub memory_limit: u64,
    /// Size of the first parts; it doubles every 1,000 parts (minimum 6MiB).
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    pub part_size: u64,
    /// Directory for parts too large for memory (default: $TMPDIR or /tmp).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Readers for --dir.
    #[arg(short = 'p', long, default_value_t = 1)]
    pub parallel: usize,
    /// Backup id (default: the start time, UTC, YYYYMMDDTHHMMSS.mmmZ).
    #[arg(long)]
    pub id: Option<String>,
    /// Read the stream no faster than SIZE per second (e.g. 50MiB): stream bytes as they leave
    /// the source, before compression, which is what loads the donor's disk.
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    pub rate_limit: Option<RateLimit>,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Stream file, or `-` for standard input (when neither --exec nor --dir).
    pub input: Option<PathBuf>,
}

pub fn parse_compress(s: &str) -> Result<i32, String> {
    match s.split_once(':') {
        None if s == "zstd" => Ok(3),
        Some(("zstd", l)) => match l.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok(l),
            _ => Err(format!("bad zstd level '{l}' (1 to 19)")),
        },
        _ => Err(format!("unknown compression '{s}' (zstd or zstd:LEVEL)")),
    }
}

/// What a short job (upload, restore) reports besides its summary line.
#[derive(Debug, Args, Clone)]
pub struct JobArgs {
    /// Also push the summary's figures to this Prometheus Pushgateway (http://HOST:PORT), as
    /// job xbagent_upload or xbagent_restore (README, "Summary line and Pushgateway"). A failed
    /// push is a warning: it never changes the exit code.
    #[arg(long, value_name = "URL", value_parser = crate::pushgateway::check_url)]
    pub pushgateway: Option<String>,
    /// The push's `instance` grouping label, for several jobs sharing one Pushgateway (e.g.
    /// the database's name); without it one group per job name.
    #[arg(
        long,
        value_name = "NAME",
        requires = "pushgateway",
        value_parser = crate::pushgateway::check_instance
    )]
    pub pushgateway_instance: Option<String>,
}

/// Reading a backup back (restore, verify).
#[derive(Debug, Args, Clone)]
pub struct ReadArgs {
    /// Ranged GETs in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Memory for read-ahead and everything else.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub memory_limit: u64,
    /// age identity file (age-keygen's output) to open encrypted backups and binlogs with;
    /// repeat it to give several (the one that matches is used). Must not be readable by group
    /// or others.
    #[arg(long = "identity-file", value_name = "FILE")]
    pub identity_files: Vec<PathBuf>,
    /// Accept an identity file that group or others can read.
    #[arg(long)]
    pub allow_readable_identity: bool,
}

/// Encrypting what is stored: the public keys only.
#[derive(Debug, Args, Clone)]
pub struct SealArgs {
    /// Encrypt for this age recipient (age1..., a public key: `age-keygen -y KEYFILE` prints
    /// it); repeat it for several. Compression, if any, comes first.
    #[arg(long = "recipient", value_name = "AGE1...")]
    pub recipients: Vec<String>,
    /// Encrypt for every recipient in FILE (one per line, `#` comments); repeatable.
    #[arg(long = "recipients-file", value_name = "FILE")]
    pub recipients_files: Vec<PathBuf>,
}

impl SealArgs {
    pub fn recipients(
        &self,
    ) -> Result<xbagent::store::seal::Recipients, xbagent::store::seal::KeyError> {
        let mut r = xbagent::store::seal::Recipients::default();
        for v in &self.recipients {
            r.add_flag(v)?;
        }
        for f in &self.recipients_files {
            r.add_file(f)?;
        }
        Ok(r)
    }
}

impl ReadArgs {
    pub fn identities(
        &self,
    ) -> Result<xbagent::store::seal::Identities, xbagent::store::seal::KeyError> {
        let mut ids = xbagent::store::seal::Identities::default();
        for f in &self.identity_files {
            ids.add_file(f, self.allow_readable_identity)?;
        }
        Ok(ids)
    }
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// REPO@ID or REPO@latest (REPO alone means @latest).
    #[arg(long)]
    pub from: String,
    /// Directory to restore into: must be empty unless --force.
    #[arg(short = 'C', long = "directory")]
    pub dir: PathBuf,
    /// Restore into a non-empty directory, overwriting files of the same names.
    #[arg(long)]
    pub force: bool,
    /// Writer threads; each file's chunks stay in order [default: the CPUs available, from 2
    /// to 4].
    #[arg(short = 'p', long)]
    pub parallel: Option<usize>,
    /// Write everything through the page cache (by default, writes of 1 MiB or more bypass
    /// it with O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
    /// Point in time: roll the newest backup that ends before TIME forward with the archived
    /// binlogs, applying every transaction committed before TIME and none at or after it.
    /// RFC 3339, to the second (UTC unless an offset is given), e.g. 2026-12-06T17:59:00Z.
    /// Prepares the backup and replays with a private mariadbd (README, "Point-in-time
    /// recovery").
    #[arg(long, conflicts_with = "until_gtid", value_parser = parse_until)]
    pub until: Option<u64>,
    /// Point in time: roll forward up to and including this transaction (DOMAIN-SERVER-SEQ).
    #[arg(long)]
    pub until_gtid: Option<String>,
    /// With --until/--until-gtid: where the binlogs are fetched (default: a new directory
    /// beside -C DIR).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// `--until`: RFC 3339 to the second; an offset other than Z is honoured.
pub fn parse_until(s: &str) -> Result<u64, String> {
    xbagent::store::binlogs::plan::parse_time(s)
}

#[derive(Debug, Args)]
pub struct BackupsListArgs {
    /// Repository: s3://bucket/prefix, file:///dir, or a directory.
    pub repo: String,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Repository: s3://bucket/prefix, file:///dir, or a directory.
    pub repo: String,
    /// Complete backups to keep, newest first (the newest is always kept).
    #[arg(long)]
    pub keep_last: usize,
    /// Also keep complete backups younger than this (e.g. 7d).
    #[arg(long, value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Incomplete backups (no manifest) younger than this are left alone: they may still be
    /// uploading.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub grace: std::time::Duration,
    /// Delete. Without it, only print what would be deleted.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 10m, 1h)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:3307.
    #[arg(long)]
    pub listen: String,
    /// Shell command whose standard output is the stream, run once per authenticated peer.
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub exec: Option<String>,
    /// Directory to stream (as `create -C DIR .`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Clones running at once; further peers wait (and are told so).
    #[arg(long, default_value_t = 1)]
    pub max_conns: usize,
    /// File holding the shared token (e.g. a mounted Kubernetes Secret).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve without authentication. Anyone who reaches the port gets the whole database.
    #[arg(long)]
    pub insecure: bool,
    /// Accept a token file that group or others can read, or that holds fewer than 32 bytes.
    #[arg(long)]
    pub allow_weak_token: bool,
    /// Plain xbstream, no handshake, for `ncat --recv-only | xbstream -x` receivers. Cannot
    /// prove completeness to the receiver, and authenticates no one.
    #[arg(long)]
    pub raw: bool,
    /// Heartbeat interval while the source is silent.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub heartbeat: std::time::Duration,
    /// TLS certificate (PEM) of this donor.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require receivers to present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Parallel readers for --dir.
    #[arg(short = 'p', long, default_value_t = 1)]
    pub parallel: usize,
    /// Connections authenticating at once; past it, new connections are closed at once (a
    /// receiver retries within its --retry-for).
    #[arg(long, default_value_t = 64)]
    pub max_handshakes: usize,
    /// Connections authenticating at once from one address.
    #[arg(long, default_value_t = 8)]
    pub max_handshakes_per_address: usize,
    /// Total time a peer has to finish TLS and authentication.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: std::time::Duration,
    /// Send each clone no faster than SIZE per second (e.g. 50MiB): stream bytes sent to the
    /// receiver, per clone (--max-conns clones may use that many times it). Heartbeats still go.
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    pub rate_limit: Option<RateLimit>,
    /// Serve Prometheus metrics at http://ADDR/metrics, liveness at /healthz and readiness at
    /// /readyz (200 once the token is loaded and the clone port bound), e.g. 0.0.0.0:9307.
    ///
    /// Metrics: xbagent_clones_served_total, xbagent_clones_failed_total,
    /// xbagent_clones_refused_total (wrong or missing token), xbagent_handshakes_failed_total,
    /// xbagent_clone_bytes_sent_total (stream bytes), xbagent_last_clone_duration_seconds,
    /// xbagent_connections_queued (in their handshake or waiting for a slot),
    /// xbagent_clones_running, xbagent_ready.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Donor address, HOST:PORT.
    #[arg(long)]
    pub from: String,
    /// Directory to clone into.
    #[arg(short = 'C', long = "directory")]
    pub dir: PathBuf,
    /// File holding the shared token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Accept a donor that does not authenticate (serve --insecure).
    #[arg(long)]
    pub insecure: bool,
    /// Accept a token file that group or others can read, or that holds fewer than 32 bytes.
    #[arg(long)]
    pub allow_weak_token: bool,
    /// Accept a clone of no files (a donor command that wrote an empty stream): by default
    /// that fails, since it is never a real backup.
    #[arg(long)]
    pub allow_empty: bool,
    /// Read plain xbstream from an ncat-style donor. Cannot prove completeness: no completion
    /// marker is written.
    #[arg(long)]
    pub raw: bool,
    /// Keep retrying the connection (DNS failures included) this long.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub retry_for: std::time::Duration,
    /// Fail when neither data nor heartbeats arrive for this long.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub stall_timeout: std::time::Duration,
    /// Refuse to clear a partial clone left by an earlier attempt.
    #[arg(long)]
    pub keep_partial: bool,
    /// CA certificate (PEM) that signed the donor's certificate; enables TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for donors that require one.
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the donor's certificate (default: the host part of --from).
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Writer threads [default: the CPUs available, from 2 to 4].
    #[arg(short = 'p', long)]
    pub parallel: Option<usize>,
    /// Write everything through the page cache (by default, writes of 1 MiB or more bypass
    /// it with O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DialectArg {
    Auto,
    Percona,
    Mariadb,
}

impl From<DialectArg> for Dialect {
    fn from(d: DialectArg) -> Self {
        match d {
            DialectArg::Auto => Dialect::Auto,
            DialectArg::Percona => Dialect::Percona,
            DialectArg::Mariadb => Dialect::Mariadb,
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("{e} (examples: 64MiB, 10M, 1048576)"))
}

/// `--rate-limit`: a size per second (`50MiB`, `50MiB/s`), at least 1KiB.
pub fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let size = parse_size(s.strip_suffix("/s").unwrap_or(s))?;
    RateLimit::new(size).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Which meaning of the `S` chunk applies: decided from the bytes by default.
    #[arg(long, value_enum, default_value = "auto")]
    pub dialect: DialectArg,
    /// Largest chunk body accepted (payload plus sparse map).
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_CHUNK_SIZE)]
    pub max_chunk_size: u64,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Directory to extract into (created if missing).
    #[arg(short = 'C', long = "directory", default_value = ".")]
    pub dir: PathBuf,
    /// Writer threads; each file's chunks stay in order [default: the CPUs available,
    /// from 2 to 4].
    #[arg(short = 'p', long)]
    pub parallel: Option<usize>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    /// Files kept open at most; others are closed and reopened when their next chunk comes.
    #[arg(long, default_value_t = 512)]
    pub max_open_files: usize,
    /// fsync every file and directory before finishing.
    #[arg(long)]
    pub fsync: bool,
    /// Write everything through the page cache (by default, writes of 1 MiB or more bypass
    /// it with O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Stream file; `-` or nothing for standard input.
    pub input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Directory the paths are relative to.
    #[arg(short = 'C', long = "directory", default_value = ".")]
    pub dir: PathBuf,
    /// Files read at once; their chunks interleave in the stream.
    #[arg(short = 'p', long, default_value_t = 1)]
    pub parallel: usize,
    /// Largest payload per chunk (10MiB cuts files exactly as `mbstream -c` does).
    #[arg(long, value_parser = parse_size, default_value_t = CREATE_CHUNK_SIZE as u64)]
    pub chunk_size: u64,
    /// Write holes of sparse files as Percona sparse chunks (mbstream cannot read them).
    #[arg(long)]
    pub sparse: bool,
    /// Files and directories to stream.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Stream file; `-` or nothing for standard input.
    pub input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Stream file (`-` or nothing for standard input), or a repository backup:
    /// REPO[@ID|@latest] where REPO is s3://bucket/prefix, file:///dir or a directory.
    pub input: Option<String>,
}

/// The flags of `xbstream` / `mbstream`, for scripts that call xbagent under those names.
#[derive(Debug, Parser)]
#[command(
    about = "xbagent in xbstream/mbstream compatibility mode",
    disable_version_flag = true
)]
pub struct DropIn {
    /// Extract the stream on standard input.
    #[arg(short = 'x', long = "extract", conflicts_with = "create")]
    pub extract: bool,
    /// Stream the given files to standard output.
    #[arg(short = 'c', long = "create")]
    pub create: bool,
    /// Change to this directory first.
    #[arg(short = 'C', long = "directory")]
    pub dir: Option<PathBuf>,
    /// Print file names.
    #[arg(short, long)]
    pub verbose: bool,
    /// Threads: writers for -x [default: the CPUs available, from 2 to 4], readers for -c
    /// [default: 1].
    #[arg(short = 'p', long)]
    pub parallel: Option<usize>,
    /// Decompress .qp/.lz4/.zst files (not supported yet: refused).
    #[arg(long)]
    pub decompress: bool,
    pub files: Vec<PathBuf>,
}

/// Writer threads of `extract`, `receive` and `restore` when `-p` is not given. Two already pay
/// on one core: the stream is read and checked while the previous chunk is written (and direct
/// writes wait for the disk); more help streams of many files, up to about four.
pub fn default_writers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

impl DecodeArgs {
    /// The decoder's options these flags ask for.
    pub fn options(&self) -> DecodeOptions {
        DecodeOptions {
            dialect: self.dialect.into(),
            max_chunk_size: self.max_chunk_size,
            ..DecodeOptions::default()
        }
    }
}
