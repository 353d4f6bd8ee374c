//! The stream layer: what every path through xbagent shares between where the bytes come from
//! and where they go.
//!
//! ```text
//!  source.rs            reader.rs / check.rs            sink.rs / pump.rs
//!  ----------------     ----------------------------    ------------------------------
//!  command (--exec)                                      ChunkSink: DirWriter, restore's
//!  directory (create) -> bytes -> format::Decoder ----> writer, list/verify (whole chunks)
//!  file, stdin           (ChunkReader pulls,
//!  network peer *        StreamChecker is pushed)  ---> pump: the bytes themselves, checked,
//!  repository object *                                   to a network peer (serve) or to
//!                                                        multipart parts (upload)
//! ```
//!
//! Two ways through, one decoder:
//! - **Decode and consume** ([`sink::run`]): a [`reader::ChunkReader`] pulls whole, CRC-checked
//!   chunks out of any `Read`, the ledger judges each one, and a [`sink::ChunkSink`] acts on
//!   it (writes a file, lists it, ...).
//! - **Check and forward** ([`pump::pump`]): a [`source::Running`] source delivers raw pieces;
//!   every piece goes through a [`check::StreamChecker`] and a digest, then on to a
//!   [`pump::Forward`] consumer unchanged. The pump stops the source at the first defect, error
//!   or signal, and reports the producer's exit status at the end.
//!
//! `stdio.rs` opens standard input and output as plain files for both; `stop.rs` makes a
//! reader or writer fail once a signal has raised a stop flag.
//!
//! (*) A network peer (`clone::receive`) and a repository object (`store::restore`) are
//! sources too, but they are implemented where their protocol lives: to this layer they are
//! plain `Read` types handed to [`sink::run`].
//!
//! This layer must never know about a repository or a network protocol: nothing here depends
//! on `clone/` or `store/` (they depend on it), and `clone/` and `store/` never depend on each
//! other. It never parses bytes itself (that is `format/`), and never decides what a failure
//! means for a peer or a backup: it reports, the command decides.

pub mod check;
pub mod error;
pub mod pump;
pub mod reader;
pub mod sink;
pub mod source;
pub mod stdio;
pub mod stop;
