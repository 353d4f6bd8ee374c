//! Throw-away MariaDB servers through `scripts/mariadb-fixture`: start one (own temp dir,
//! socket and free TCP port), load tables, back up, prepare, checksum, stop. A server is
//! always stopped on drop, also when the test panics; nothing here touches a system server.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{child_path, free_port, require_tools, s};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/mariadb-fixture");

/// The tools a test with a server, mariabackup and mbstream drives.
pub const TOOLS: &[&str] = &[
    "bash",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "mariadb-admin",
    "mariabackup",
    "mbstream",
    "setsid",
];

/// Fail (never skip) when a MariaDB tool or the fixture script is missing.
pub fn require_mariadb() {
    require_tools(
        TOOLS,
        "mariadb-server and mariadb-backup (Debian/Ubuntu: apt-get install mariadb-server mariadb-backup)",
    );
    assert!(
        Path::new(FIXTURE).is_file(),
        "fixture script {FIXTURE} is missing"
    );
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "`{FIXTURE} {}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(FIXTURE)
        .args(args)
        .env("PATH", child_path())
        .stdin(Stdio::null());
    c
}

/// Run the fixture script; panic with its output on failure; return its stdout.
pub fn fixture(args: &[&str]) -> String {
    fixture_env(args, &[])
}

/// [`fixture`] with extra environment variables (e.g. `FIXTURE_BINLOG`).
pub fn fixture_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = command(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {FIXTURE}: {e}"));
    assert!(out.status.success(), "{}", describe(args, &out));
    String::from_utf8(out.stdout).expect("fixture output is not UTF-8")
}

/// Run a fixture command whose stdout is a backup stream, into `dest`.
pub fn fixture_to_file(args: &[&str], dest: &Path) {
    let file = fs::File::create(dest).expect("cannot create the stream file");
    let out = command(args)
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {FIXTURE}: {e}"));
    assert!(out.status.success(), "{}", describe(args, &out));
}

/// A running fixture server; shut down on drop, also when the test panics.
pub struct Server {
    pub dir: PathBuf,
    pub port: u16,
    /// `Some(max_binlog_size)` for a binlogging server ([`Server::start_binlog`]).
    pub binlog: Option<u64>,
    /// Extra mariadbd options (FIXTURE_SERVER_OPTS), e.g. another `--server-id`.
    pub opts: String,
}

impl Server {
    /// A new server in `dir` (made by the fixture).
    pub fn start(dir: &Path) -> Server {
        Server::run("start", dir)
    }

    /// A server on an existing (restored, prepared) data directory.
    pub fn start_on(datadir: &Path) -> Server {
        Server::run("start-on", datadir)
    }

    /// A new binlogging server in `dir`: log-bin (`DIR/data/mariadb-bin.*`), server id 1,
    /// CRC32 checksums, ROW format, files rotated at `max_binlog_size` bytes.
    pub fn start_binlog(dir: &Path, max_binlog_size: u64) -> Server {
        Server::start_binlog_with(dir, max_binlog_size, "")
    }

    /// [`Server::start_binlog`] with extra mariadbd options (later options win, so
    /// `--server-id=2` makes a second server).
    pub fn start_binlog_with(dir: &Path, max_binlog_size: u64, opts: &str) -> Server {
        let mut sv = Server {
            dir: dir.to_path_buf(),
            port: free_port(),
            binlog: Some(max_binlog_size),
            opts: opts.to_string(),
        };
        sv.launch("start");
        sv
    }

    fn run(how: &str, dir: &Path) -> Server {
        let mut sv = Server {
            dir: dir.to_path_buf(),
            port: free_port(),
            binlog: None,
            opts: String::new(),
        };
        sv.launch(how);
        sv
    }

    fn launch(&mut self, how: &str) {
        let size = self.binlog.map(|n| n.to_string());
        let mut env: Vec<(&str, &str)> = match &size {
            Some(n) => vec![("FIXTURE_BINLOG", "1"), ("FIXTURE_BINLOG_SIZE", n.as_str())],
            None => Vec::new(),
        };
        if !self.opts.is_empty() {
            env.push(("FIXTURE_SERVER_OPTS", self.opts.as_str()));
        }
        fixture_env(&[how, s(&self.dir), &self.port.to_string()], &env);
    }

    /// Shut the server down cleanly (a binlogging one writes STOP) and start it again on the
    /// same directory, port and settings.
    pub fn restart(&mut self) {
        fixture(&["stop", s(&self.dir)]);
        self.launch("start");
    }

    /// The data directory of a server made by `start`/`start_binlog`.
    pub fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `fixture load DIR SCALE`.
    pub fn load(&self, scale: &str) {
        fixture(&["load", s(&self.dir), scale]);
    }

    /// CHECKSUM TABLE of every user table: table → checksum.
    pub fn checksums(&self) -> BTreeMap<String, String> {
        fixture(&["checksums", s(&self.dir)])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (t, c) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad checksum line {l:?}"));
                (t.to_string(), c.to_string())
            })
            .collect()
    }

    pub fn sql(&self, sql: &str) -> String {
        fixture(&["sql", s(&self.dir), sql])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = command(&["stop", s(&self.dir)]).output();
    }
}

/// Extract `stream` with the reference `mbstream -x` into `dest`.
pub fn mbstream_extract(stream: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let out = Command::new("mbstream")
        .args(["-x", "-C", s(dest)])
        .stdin(fs::File::open(stream).unwrap())
        .output()
        .expect("cannot run mbstream");
    assert!(
        out.status.success(),
        "mbstream -x -C {} < {} failed with {}: {}",
        dest.display(),
        stream.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
