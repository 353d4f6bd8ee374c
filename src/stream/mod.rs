//! What every path through xbagent shares; here, the target guard of `receive` and `restore`.

pub mod target;
