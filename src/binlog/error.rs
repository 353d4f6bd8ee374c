//! Errors of the binlog reader: each names the file and the byte offset of the event (or of
//! the magic) at fault, so an operator can look at the same place with `mariadb-binlog`.

/// What is wrong with a binlog file, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinlogError {
    #[error("binlog {file} at byte {offset}: not a binlog file (it does not start with the magic bytes fe 62 69 6e)")]
    BadMagic { file: String, offset: u64 },
    #[error("binlog {file} at byte {offset}: bad event header: {why}")]
    BadHeader {
        file: String,
        offset: u64,
        why: String,
    },
    #[error("binlog {file} at byte {offset}: CRC32 mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        file: String,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("binlog {file} at byte {offset}: the file ends inside the event that starts there ({have} of {need} bytes)")]
    Truncated {
        file: String,
        offset: u64,
        have: u64,
        need: u64,
    },
    #[error("binlog {file} at byte {offset}: malformed event: {what}")]
    Malformed {
        file: String,
        offset: u64,
        what: String,
    },
    #[error("binlog {file} at byte {offset}: {what} event of {size} bytes is larger than the {limit} bytes we keep")]
    TooLarge {
        file: String,
        offset: u64,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("binlog {file} at byte {offset}: events out of order: {what}")]
    Order {
        file: String,
        offset: u64,
        what: String,
    },
    #[error("binlog {file} at byte {offset}: the binlog is encrypted (START_ENCRYPTION event); encrypted binlogs are not supported")]
    Encrypted { file: String, offset: u64 },
}

impl BinlogError {
    /// The byte offset the error names: the start of the event at fault (0 for the magic).
    pub fn offset(&self) -> u64 {
        match self {
            BinlogError::BadMagic { offset, .. }
            | BinlogError::BadHeader { offset, .. }
            | BinlogError::Checksum { offset, .. }
            | BinlogError::Truncated { offset, .. }
            | BinlogError::Malformed { offset, .. }
            | BinlogError::TooLarge { offset, .. }
            | BinlogError::Order { offset, .. }
            | BinlogError::Encrypted { offset, .. } => *offset,
        }
    }

    /// The binlog file the error is about.
    pub fn file(&self) -> &str {
        match self {
            BinlogError::BadMagic { file, .. }
            | BinlogError::BadHeader { file, .. }
            | BinlogError::Checksum { file, .. }
            | BinlogError::Truncated { file, .. }
            | BinlogError::Malformed { file, .. }
            | BinlogError::TooLarge { file, .. }
            | BinlogError::Order { file, .. }
            | BinlogError::Encrypted { file, .. } => file,
        }
    }
}
