//! The clone wire protocol, without I/O: frames, the handshake messages and their proofs,
//! the trailer. Written up in `format-spec/clone-protocol.md`.
//!
//! ```text
//! frame   = type u8 | length u32 LE | payload[length]        (length ≤ MAX_FRAME)
//!
//! receive                                  serve
//!   HELLO  magic, version, client nonce ──►
//!                                       ◄── CHALLENGE version, flags, server nonce, server proof
//!   PROOF  client proof ────────────────►
//!                                       ◄── QUEUED … (while all slots are busy)
//!                                       ◄── START  source description
//!                                       ◄── DATA … / HEARTBEAT …
//!                                       ◄── TRAILER exit status, files, chunks, bytes, digest
//!   either side may send ERROR text and close.
//! ```
//!
//! Authentication: both sides derive a key from the shared token and prove knowledge of it
//! with a keyed BLAKE3 hash over both nonces and a role label. The token never crosses the
//! wire; fresh nonces on both sides make a replayed proof useless.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"XBACLONE";
pub const VERSION: u16 = 1;
/// Largest frame payload accepted: data frames are at most 1 MiB; anything far above is hostile.
pub const MAX_FRAME: u32 = 4 << 20;
pub const NONCE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;
/// CHALLENGE flag: the server authenticates no one (`serve --insecure`).
pub const FLAG_NO_AUTH: u8 = 0x01;
const KEY_CONTEXT: &str = "xbagent clone v1 shared token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Challenge = 0x02,
    Proof = 0x03,
    Queued = 0x05,
    Start = 0x06,
    Data = 0x10,
    Heartbeat = 0x11,
    Trailer = 0x12,
    Error = 0x7f,
}

impl FrameType {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Challenge,
            0x03 => FrameType::Proof,
            0x05 => FrameType::Queued,
            0x06 => FrameType::Start,
            0x10 => FrameType::Data,
            0x11 => FrameType::Heartbeat,
            0x12 => FrameType::Trailer,
            0x7f => FrameType::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error(
        "peer is not an xbagent clone endpoint (bad greeting); is it a raw ncat donor? try --raw"
    )]
    BadMagic,
    #[error("peer answered with TLS; give --tls-ca (and the donor's CA certificate) to connect over TLS")]
    TlsPeer,
    #[error("peer speaks clone protocol version {0}, this xbagent speaks {VERSION}")]
    Version(u16),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrame(u8),
    #[error("frame of {0} bytes is above the limit of {MAX_FRAME}")]
    FrameTooLarge(u32),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("expected a {expected} frame, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: FrameType,
    },
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
}

/// The key both sides derive from the token file's contents (surrounding whitespace, such
/// as the newline a Secret file often ends with, is not part of the token).
pub fn derive_key(token: &[u8]) -> [u8; 32] {
    blake3::derive_key(KEY_CONTEXT, token.trim_ascii())
}

fn proof(
    key: &[u8; 32],
    role: &[u8],
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(role);
    h.update(client);
    h.update(server);
    h.finalize()
}

/// The server's proof that it holds the token.
pub fn server_proof(
    key: &[u8; 32],
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    *proof(key, b"server", client, server).as_bytes()
}

/// The client's proof that it holds the token.
pub fn client_proof(
    key: &[u8; 32],
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    *proof(key, b"client", client, server).as_bytes()
}

/// Constant-time comparison of a received proof with the expected one.
pub fn proof_matches(expected: &[u8; PROOF_LEN], got: &[u8]) -> bool {
    got.len() == PROOF_LEN
        && blake3::Hash::from(*expected)
            == blake3::Hash::from_slice(got).unwrap_or(blake3::Hash::from([0; 32]))
}

/// Frame header bytes.
pub fn frame_header(ty: FrameType, len: usize) -> [u8; 5] {
    let l = (len as u32).to_le_bytes();
    [ty as u8, l[0], l[1], l[2], l[3]]
}

/// Parse a frame header: type and payload length, checked against the cap.
pub fn parse_header(h: &[u8; 5]) -> Result<(FrameType, u32), ProtocolError> {
    let ty = FrameType::from_byte(h[0]).ok_or(ProtocolError::UnknownFrame(h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok((ty, len))
}

pub fn hello(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 2 + NONCE_LEN);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(nonce);
    v
}

pub fn parse_hello(p: &[u8]) -> Result<[u8; NONCE_LEN], ProtocolError> {
    if p.len() < 10 || &p[..8] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    let v = u16::from_le_bytes([p[8], p[9]]);
    if v != VERSION {
        return Err(ProtocolError::Version(v));
    }
    p[10..]
        .try_into()
        .map_err(|_| ProtocolError::Malformed("HELLO"))
}

pub struct Challenge {
    pub flags: u8,
    pub nonce: [u8; NONCE_LEN],
    pub proof: [u8; PROOF_LEN],
}

pub fn challenge(c: &Challenge) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + NONCE_LEN + PROOF_LEN);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.push(c.flags);
    v.extend_from_slice(&c.nonce);
    v.extend_from_slice(&c.proof);
    v
}

pub fn parse_challenge(p: &[u8]) -> Result<Challenge, ProtocolError> {
    if p.len() != 3 + NONCE_LEN + PROOF_LEN {
        return Err(ProtocolError::Malformed("CHALLENGE"));
    }
    let v = u16::from_le_bytes([p[0], p[1]]);
    if v != VERSION {
        return Err(ProtocolError::Version(v));
    }
    let mut nonce = [0; NONCE_LEN];
    nonce.copy_from_slice(&p[3..3 + NONCE_LEN]);
    let mut proof = [0; PROOF_LEN];
    proof.copy_from_slice(&p[3 + NONCE_LEN..]);
    Ok(Challenge {
        flags: p[2],
        nonce,
        proof,
    })
}

/// The end of a clone: how the producer ended and what the stream held.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trailer {
    /// The producer's exit status (0 = success); negative: killed by that signal.
    pub exit_status: i32,
    pub files: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// BLAKE3 of every stream byte sent, hex.
    #[serde(serialize_with = "hex")]
    pub digest: [u8; 32],
}

fn hex<S: serde::Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&blake3::Hash::from(*d).to_hex())
}

pub fn trailer(t: &Trailer) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 24 + 32);
    v.extend_from_slice(&t.exit_status.to_le_bytes());
    v.extend_from_slice(&t.files.to_le_bytes());
    v.extend_from_slice(&t.chunks.to_le_bytes());
    v.extend_from_slice(&t.bytes.to_le_bytes());
    v.extend_from_slice(&t.digest);
    v
}

pub fn parse_trailer(p: &[u8]) -> Result<Trailer, ProtocolError> {
    if p.len() != 4 + 24 + 32 {
        return Err(ProtocolError::Malformed("TRAILER"));
    }
    let u = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&p[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&p[28..]);
    Ok(Trailer {
        exit_status: i32::from_le_bytes([p[0], p[1], p[2], p[3]]),
        files: u(4),
        chunks: u(12),
        bytes: u(20),
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_token_role_and_both_nonces() {
        let k = derive_key(b"secret\n");
        assert_eq!(
            k,
            derive_key(b"secret"),
            "a trailing newline is not part of the token"
        );
        let (c, s) = ([1u8; 32], [2u8; 32]);
        let sp = server_proof(&k, &c, &s);
        assert!(proof_matches(&sp, &server_proof(&k, &c, &s)));
        assert_ne!(sp, client_proof(&k, &c, &s), "roles differ");
        assert_ne!(
            sp,
            server_proof(&k, &c, &[3u8; 32]),
            "a replay against a new nonce fails"
        );
        assert_ne!(sp, server_proof(&derive_key(b"other"), &c, &s));
        assert!(!proof_matches(&sp, &sp[..31]));
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let n = [7u8; 32];
        assert_eq!(parse_hello(&hello(&n)), Ok(n));
        assert_eq!(
            parse_hello(b"GET / HTTP/1.1\r\n"),
            Err(ProtocolError::BadMagic)
        );
        let mut h = hello(&n);
        h[8] = 9;
        assert_eq!(parse_hello(&h), Err(ProtocolError::Version(9)));
        let t = Trailer {
            exit_status: -9,
            files: 1,
            chunks: 2,
            bytes: 3,
            digest: [4; 32],
        };
        assert_eq!(parse_trailer(&trailer(&t)), Ok(t));
        assert!(parse_trailer(&[0; 10]).is_err());
        assert_eq!(
            parse_header(&frame_header(FrameType::Data, 10)),
            Ok((FrameType::Data, 10))
        );
        assert_eq!(
            parse_header(&[0x10, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::FrameTooLarge(u32::MAX))
        );
        assert_eq!(
            parse_header(&[0x42, 0, 0, 0, 0]),
            Err(ProtocolError::UnknownFrame(0x42))
        );
    }
}
