//! The binlog archive of a repository: `binlogs push` (a server's binlogs in, as they grow),
//! `binlogs list` (what is archived and the recoverable window), `restore --until` (a full
//! backup rolled forward to a time or a GTID), and the archive's parts of `backups prune`
//! and `verify REPO`.
//!
//! Layout and inventory: [`layout`], [`inventory`]; planning is pure ([`plan`]); the binlog
//! bytes are understood by [`crate::binlog`] only. Nothing here writes to a server's data
//! directory, and nothing archived is ever overwritten.

pub mod catalog;
pub mod check;
pub mod inventory;
pub mod layout;
pub mod pitr;
pub mod plan;
pub mod push;
pub mod replay;
pub mod segment;

use serde::Serialize;

use crate::binlog::{Gtid, GtidState};
use catalog::Archive;
use plan::{Base, Window};

/// One server's files in the archive, for `binlogs list`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub server_id: u32,
    pub files: usize,
    pub segments: usize,
    pub stored_bytes: u64,
    pub transactions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_gtid: Option<Gtid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_gtid: Option<Gtid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_time: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u32>,
    pub gtid_state: GtidState,
}

/// What `binlogs list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub archive: Archive,
    pub servers: Vec<ServerSummary>,
    pub window: Window,
    /// Files that no archived file continues although they were closed (gaps), and files
    /// with problems.
    pub problems: Vec<String>,
}

pub fn listing(archive: Archive, bases: &[Base]) -> Listing {
    let mut servers: Vec<ServerSummary> = Vec::new();
    for f in &archive.files {
        let s = match servers.iter_mut().find(|s| s.server_id == f.server_id) {
            Some(s) => s,
            None => {
                servers.push(ServerSummary {
                    server_id: f.server_id,
                    files: 0,
                    segments: 0,
                    stored_bytes: 0,
                    transactions: 0,
                    first_gtid: None,
                    last_gtid: None,
                    first_time: None,
                    last_time: None,
                    gtid_state: GtidState::new(),
                });
                servers.last_mut().expect("just pushed")
            }
        };
        s.files += 1;
        s.segments += f.segments.len();
        s.stored_bytes += f.stored_bytes;
        s.transactions += f.transactions();
        s.first_gtid = s.first_gtid.or(f.first_gtid());
        s.last_gtid = f.last_gtid().or(s.last_gtid);
        s.first_time = s.first_time.or(f.first_time());
        s.last_time = f.last_time().or(s.last_time);
        if let Some(a) = f.gtid_after() {
            s.gtid_state = a.clone();
        }
    }
    let window = plan::window(&archive, bases);
    let problems = check::continuity(&archive);
    Listing {
        archive,
        servers,
        window,
        problems,
    }
}
