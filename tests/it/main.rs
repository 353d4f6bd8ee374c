//! The integration tests, one binary: each module is an area, run against the built
//! `xbagent` binary and the library's public API. One binary links the library (and the AWS
//! SDK) once instead of once per area.
//!
//! Shared pieces (tools, trees, the MariaDB fixture, the S3 server, running the binary,
//! stream building) live in `tests/support/`.
// A scenario reads top to bottom as one story; the 80-line limit is for src/.
#![allow(clippy::too_many_lines)]

#[path = "../support/mod.rs"]
mod support;

mod backup_position;
mod binlog_reader;
mod clone;
mod encryption;
mod extract_behaviour;
mod hardening_cli;
mod hostile;
mod mariadb_backup;
mod metrics;
mod operations;
mod pitr;
mod receive_target_untouched;
mod reference;
mod s3_proxy_selftest;
mod serve_hardening;
mod store_conformance;
mod store_faults;
mod store_hardening;
mod store_mariadb;
mod store_s3;
