//! The clone wire protocol, without I/O: frames, the handshake messages and their proofs,
//! the trailer. Written up in `format-spec/clone-protocol.md`.
//!
//! ```text
//! frame   = type u8 | length u32 LE | payload[length]        (length ≤ MAX_FRAME)
//!
//! receive                                  serve
//!   HELLO  magic, version, flags, SPAKE2 msg A ──►
//!                                       ◄── CHALLENGE version, flags, SPAKE2 msg B, donor confirmation
//!   PROOF  receiver confirmation ───────►
//!                                       ◄── QUEUED … (while all slots are busy)
//!                                       ◄── START  source description
//!                                       ◄── DATA … / HEARTBEAT …
//!                                       ◄── TRAILER exit status, files, chunks, bytes, digest
//!   either side may send ERROR text and close.
//! ```
//!
//! Authentication is SPAKE2 (a password-authenticated key exchange, the `spake2` crate): the
//! receiver's HELLO and the donor's CHALLENGE each carry one SPAKE2 message blinded by the token,
//! and each side then proves that it derived the same session key with a keyed BLAKE3 over the
//! whole exchange. Nothing either side sends lets anyone (an eavesdropper, a client, an impostor
//! donor) test a token guess offline: an active peer tests exactly one guess per connection, and
//! `serve` slows down an address that keeps failing. The argument is in
//! `format-spec/clone-protocol.md` §5.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"XBACLONE";
/// 2: SPAKE2 replaced the keyed-hash proofs of version 1 (issue 11).
pub const VERSION: u16 = 2;
/// Largest frame payload accepted from an authenticated donor: data frames are at most 1 MiB;
/// anything far above is hostile.
pub const MAX_FRAME: u32 = 4 << 20;
/// A SPAKE2 message on Ed25519: a side byte and a compressed point.
pub const PAKE_MSG_LEN: usize = 33;
/// A key confirmation: keyed BLAKE3.
pub const CONFIRM_LEN: usize = 32;
/// HELLO: magic, version, flags, the receiver's SPAKE2 message.
pub const HELLO_LEN: usize = 8 + 2 + 1 + PAKE_MSG_LEN;
/// CHALLENGE: version, flags, the donor's SPAKE2 message, the donor's confirmation.
pub const CHALLENGE_LEN: usize = 2 + 1 + PAKE_MSG_LEN + CONFIRM_LEN;
/// Cap of a frame from a peer that has not authenticated yet, other than HELLO: a PROOF, or an
/// ERROR whose text says why the peer gives up. Real ones are under 200 bytes.
pub const MAX_PREAUTH_FRAME: u32 = 512;
/// Flag (HELLO and CHALLENGE): this side has no token (`--insecure`).
pub const FLAG_NO_AUTH: u8 = 0x01;

const ID_RECEIVER: &[u8] = b"xbagent clone v2 receive";
const ID_DONOR: &[u8] = b"xbagent clone v2 serve";
const CONFIRM_DONOR: &str = "xbagent clone v2 donor confirmation";
const CONFIRM_RECEIVER: &str = "xbagent clone v2 receiver confirmation";

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
    #[error("peer speaks clone protocol version {0}, this xbagent speaks {VERSION}; run the same xbagent version on both sides")]
    Version(u16),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrame(u8),
    #[error("frame of {len} bytes is above the limit of {max} at this point of the protocol")]
    FrameTooLarge { len: u32, max: u32 },
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

/// The shared token (the token file's contents without surrounding whitespace, such as the
/// newline a Secret file often ends with). Never printed.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(file_contents: &[u8]) -> Self {
        Token(file_contents.trim_ascii().to_vec())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

type Pake = spake2::Spake2<spake2::Ed25519Group>;

fn ids() -> (spake2::Identity, spake2::Identity) {
    (
        spake2::Identity::new(ID_RECEIVER),
        spake2::Identity::new(ID_DONOR),
    )
}

/// A key confirmation: keyed by the SPAKE2 session key, over both messages and a role label.
fn confirmation(
    key: &[u8],
    role: &str,
    hello: &[u8; PAKE_MSG_LEN],
    reply: &[u8; PAKE_MSG_LEN],
) -> [u8; CONFIRM_LEN] {
    let k = blake3::derive_key(role, key);
    let mut h = blake3::Hasher::new_keyed(&k);
    h.update(hello);
    h.update(reply);
    *h.finalize().as_bytes()
}

/// Constant-time comparison of a received confirmation with the expected one.
pub fn confirm_matches(expected: &[u8; CONFIRM_LEN], got: &[u8]) -> bool {
    match <[u8; CONFIRM_LEN]>::try_from(got) {
        Ok(g) => blake3::Hash::from(*expected) == blake3::Hash::from(g),
        Err(_) => false,
    }
}

/// The receiver's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub flags: u8,
    pub pake: [u8; PAKE_MSG_LEN],
}

pub fn hello(h: &Hello) -> Vec<u8> {
    let mut v = Vec::with_capacity(HELLO_LEN);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.push(h.flags);
    v.extend_from_slice(&h.pake);
    v
}

pub fn parse_hello(p: &[u8]) -> Result<Hello, ProtocolError> {
    if p.len() < 10 || &p[..8] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    let v = u16::from_le_bytes([p[8], p[9]]);
    if v != VERSION {
        return Err(ProtocolError::Version(v));
    }
    if p.len() != HELLO_LEN {
        return Err(ProtocolError::Malformed("HELLO"));
    }
    let mut pake = [0; PAKE_MSG_LEN];
    pake.copy_from_slice(&p[11..]);
    Ok(Hello { flags: p[10], pake })
}

/// The donor's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u8,
    pub pake: [u8; PAKE_MSG_LEN],
    pub confirm: [u8; CONFIRM_LEN],
}

pub fn challenge(c: &Challenge) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHALLENGE_LEN);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.push(c.flags);
    v.extend_from_slice(&c.pake);
    v.extend_from_slice(&c.confirm);
    v
}

pub fn parse_challenge(p: &[u8]) -> Result<Challenge, ProtocolError> {
    if p.len() >= 2 {
        let v = u16::from_le_bytes([p[0], p[1]]);
        if v != VERSION {
            return Err(ProtocolError::Version(v));
        }
    }
    if p.len() != CHALLENGE_LEN {
        return Err(ProtocolError::Malformed("CHALLENGE"));
    }
    let mut pake = [0; PAKE_MSG_LEN];
    pake.copy_from_slice(&p[3..3 + PAKE_MSG_LEN]);
    let mut confirm = [0; CONFIRM_LEN];
    confirm.copy_from_slice(&p[3 + PAKE_MSG_LEN..]);
    Ok(Challenge {
        flags: p[2],
        pake,
        confirm,
    })
}

/// The receiver's half of the handshake, between its HELLO and the donor's CHALLENGE.
pub struct ReceiverPake {
    state: Option<Pake>,
    hello: Hello,
}

impl ReceiverPake {
    /// Start: `None` (no token, `--insecure`) greets with the NO_AUTH flag.
    pub fn start(token: Option<&Token>) -> Self {
        match token {
            Some(t) => {
                let (id_a, id_b) = ids();
                let (state, msg) = Pake::start_a(&spake2::Password::new(&t.0), &id_a, &id_b);
                let mut pake = [0; PAKE_MSG_LEN];
                pake.copy_from_slice(&msg);
                ReceiverPake {
                    state: Some(state),
                    hello: Hello { flags: 0, pake },
                }
            }
            None => ReceiverPake {
                state: None,
                hello: Hello {
                    flags: FLAG_NO_AUTH,
                    pake: [0; PAKE_MSG_LEN],
                },
            },
        }
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Check the donor's confirmation; our confirmation (the PROOF payload) if it holds.
    pub fn finish(self, c: &Challenge) -> Result<[u8; CONFIRM_LEN], ProtocolError> {
        let no_auth = c.flags & FLAG_NO_AUTH != 0;
        let Some(state) = self.state else {
            return if no_auth {
                Ok([0; CONFIRM_LEN])
            } else {
                Err(ProtocolError::AuthFailed(
                    "the donor requires a token (--token-file)",
                ))
            };
        };
        if no_auth {
            return Err(ProtocolError::AuthFailed(
                "donor runs without authentication",
            ));
        }
        let key = state
            .finish(&c.pake)
            .map_err(|_| ProtocolError::Malformed("CHALLENGE"))?;
        let want = confirmation(&key, CONFIRM_DONOR, &self.hello.pake, &c.pake);
        if !confirm_matches(&want, &c.confirm) {
            return Err(ProtocolError::AuthFailed(
                "the donor does not know the token",
            ));
        }
        Ok(confirmation(
            &key,
            CONFIRM_RECEIVER,
            &self.hello.pake,
            &c.pake,
        ))
    }
}

/// The donor's half: its CHALLENGE for a HELLO, and the PROOF it then expects.
pub struct DonorPake {
    pub challenge: Challenge,
    expected: Option<[u8; CONFIRM_LEN]>,
}

impl DonorPake {
    /// Answer `h`. With a token, a HELLO without one (NO_AUTH) is refused; without a token
    /// (`--insecure`), anyone is answered with NO_AUTH.
    pub fn answer(token: Option<&Token>, h: &Hello) -> Result<Self, ProtocolError> {
        let Some(t) = token else {
            return Ok(DonorPake {
                challenge: Challenge {
                    flags: FLAG_NO_AUTH,
                    pake: [0; PAKE_MSG_LEN],
                    confirm: [0; CONFIRM_LEN],
                },
                expected: None,
            });
        };
        if h.flags & FLAG_NO_AUTH != 0 {
            return Err(ProtocolError::AuthFailed(
                "this donor requires a token; the receiver has none (--token-file)",
            ));
        }
        let (id_a, id_b) = ids();
        let (state, msg) = Pake::start_b(&spake2::Password::new(&t.0), &id_a, &id_b);
        let mut pake = [0; PAKE_MSG_LEN];
        pake.copy_from_slice(&msg);
        let key = state
            .finish(&h.pake)
            .map_err(|_| ProtocolError::Malformed("HELLO"))?;
        Ok(DonorPake {
            challenge: Challenge {
                flags: 0,
                pake,
                confirm: confirmation(&key, CONFIRM_DONOR, &h.pake, &pake),
            },
            expected: Some(confirmation(&key, CONFIRM_RECEIVER, &h.pake, &pake)),
        })
    }

    /// Whether the receiver's PROOF shows it derived the same key (always, without a token).
    pub fn accepts(&self, proof: &[u8]) -> bool {
        match &self.expected {
            Some(want) => confirm_matches(want, proof),
            None => true,
        }
    }
}

/// Frame header bytes.
pub fn frame_header(ty: FrameType, len: usize) -> [u8; 5] {
    let l = (len as u32).to_le_bytes();
    [ty as u8, l[0], l[1], l[2], l[3]]
}

/// Parse a frame header: type and payload length, checked against `max`, the cap at this
/// point of the protocol.
pub fn parse_header(h: &[u8; 5], max: u32) -> Result<(FrameType, u32), ProtocolError> {
    let ty = FrameType::from_byte(h[0]).ok_or(ProtocolError::UnknownFrame(h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    Ok((ty, len))
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

    /// A genuine exchange, as a recorder on the wire sees it.
    struct Transcript {
        hello: Vec<u8>,
        challenge: Vec<u8>,
        proof: Vec<u8>,
    }

    fn exchange(receiver: &Token, donor: &Token) -> (Transcript, bool, bool) {
        let r = ReceiverPake::start(Some(receiver));
        let hello_bytes = hello(r.hello());
        let h = parse_hello(&hello_bytes).unwrap();
        let d = DonorPake::answer(Some(donor), &h).unwrap();
        let ch_bytes = challenge(&d.challenge);
        let c = parse_challenge(&ch_bytes).unwrap();
        let (proof, receiver_ok) = match r.finish(&c) {
            Ok(p) => (p.to_vec(), true),
            Err(_) => (vec![0; CONFIRM_LEN], false),
        };
        let donor_ok = d.accepts(&proof);
        (
            Transcript {
                hello: hello_bytes,
                challenge: ch_bytes,
                proof,
            },
            receiver_ok,
            donor_ok,
        )
    }

    #[test]
    fn same_token_authenticates_both_ways_and_a_wrong_one_neither() {
        let t = Token::new(b"correct horse battery staple\n");
        let (_, r, d) = exchange(&t, &Token::new(b"correct horse battery staple"));
        assert!(r && d, "a trailing newline is not part of the token");
        let (_, r, d) = exchange(&t, &Token::new(b"correct horse battery stapler"));
        assert!(!r, "the receiver must refuse a donor without the token");
        assert!(!d, "the donor must refuse a receiver without the token");
        // Sessions differ even with the same token: nothing to replay.
        let (a, _, _) = exchange(&t, &t);
        let (b, _, _) = exchange(&t, &t);
        assert_ne!(a.hello, b.hello);
        assert_ne!(a.challenge, b.challenge);
    }

    /// Every check an offline attacker can run on a candidate token, given only public bytes:
    /// run the protocol itself with the candidate against the recorded messages (as a
    /// receiver against the recorded CHALLENGE, and as a donor against the recorded HELLO) and
    /// see whether a recorded confirmation comes out. Version 1 fell to exactly this: its proof
    /// was a function of the token and two public nonces.
    fn offline_check(t: &Transcript, candidate: &Token) -> bool {
        let c = parse_challenge(&t.challenge).unwrap();
        let h = parse_hello(&t.hello).unwrap();
        // As a receiver: a fresh SPAKE2 state for the candidate, finished on the recorded reply.
        let as_receiver = ReceiverPake::start(Some(candidate)).finish(&c).is_ok();
        // As a donor: answer the recorded HELLO with the candidate; compare confirmations.
        let as_donor = DonorPake::answer(Some(candidate), &h)
            .map(|d| d.challenge.confirm == c.confirm || d.accepts(&t.proof))
            .unwrap_or(false);
        as_receiver || as_donor
    }

    #[test]
    fn a_recorded_handshake_gives_nothing_to_test_guesses_against() {
        let token = Token::new(b"hunter2hunter2");
        let (t, r, d) = exchange(&token, &token);
        assert!(r && d);
        let dictionary = [
            "password",
            "hunter2",
            "letmein",
            "hunter2hunter2",
            "xbagent",
        ];
        for guess in dictionary {
            assert!(
                !offline_check(&t, &Token::new(guess.as_bytes())),
                "an offline check confirmed the guess {guess:?}"
            );
        }
    }

    #[test]
    fn an_active_attacker_tests_one_guess_per_connection() {
        let token = Token::new(b"hunter2hunter2");
        // The attacker greets with its guess; the donor answers as it answers anyone.
        for (guess, right) in [("letmein", false), ("hunter2hunter2", true)] {
            let attacker = ReceiverPake::start(Some(&Token::new(guess.as_bytes())));
            let h = attacker.hello().clone();
            let d = DonorPake::answer(Some(&token), &h).unwrap();
            assert_eq!(attacker.finish(&d.challenge).is_ok(), right, "{guess}");
            // And the reply it recorded tests no other guess offline.
            let t = Transcript {
                hello: hello(&h),
                challenge: challenge(&d.challenge),
                proof: vec![0; CONFIRM_LEN],
            };
            for other in ["password", "hunter2", "hunter2hunter2"] {
                assert!(!offline_check(&t, &Token::new(other.as_bytes())), "{other}");
            }
        }
    }

    #[test]
    fn no_token_on_either_side_is_explicit() {
        let t = Token::new(b"tok");
        let none = ReceiverPake::start(None);
        assert_eq!(none.hello().flags, FLAG_NO_AUTH);
        assert!(DonorPake::answer(Some(&t), none.hello()).is_err());
        let d = DonorPake::answer(None, none.hello()).unwrap();
        assert_eq!(none.finish(&d.challenge), Ok([0; CONFIRM_LEN]));
        let r = ReceiverPake::start(Some(&t));
        let d = DonorPake::answer(None, r.hello()).unwrap();
        assert!(
            r.finish(&d.challenge).is_err(),
            "a token holder refuses an --insecure donor"
        );
    }

    #[test]
    fn garbage_pake_messages_are_errors_not_panics() {
        let t = Token::new(b"tok");
        for bytes in [
            [0u8; PAKE_MSG_LEN],
            [0xff; PAKE_MSG_LEN],
            [0x41; PAKE_MSG_LEN],
        ] {
            let _ = DonorPake::answer(
                Some(&t),
                &Hello {
                    flags: 0,
                    pake: bytes,
                },
            );
            let r = ReceiverPake::start(Some(&t));
            let c = Challenge {
                flags: 0,
                pake: bytes,
                confirm: [0; CONFIRM_LEN],
            };
            assert!(r.finish(&c).is_err());
        }
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let h = Hello {
            flags: 0,
            pake: [7u8; PAKE_MSG_LEN],
        };
        assert_eq!(parse_hello(&hello(&h)), Ok(h.clone()));
        assert_eq!(
            parse_hello(b"GET / HTTP/1.1\r\n"),
            Err(ProtocolError::BadMagic)
        );
        let mut b = hello(&h);
        b[8] = 1;
        assert_eq!(parse_hello(&b), Err(ProtocolError::Version(1)));
        assert_eq!(
            parse_hello(&hello(&h)[..20]),
            Err(ProtocolError::Malformed("HELLO"))
        );
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
            parse_header(&frame_header(FrameType::Data, 10), MAX_FRAME),
            Ok((FrameType::Data, 10))
        );
        assert_eq!(
            parse_header(&frame_header(FrameType::Hello, 45), HELLO_LEN as u32),
            Err(ProtocolError::FrameTooLarge { len: 45, max: 44 })
        );
        assert_eq!(
            parse_header(&[0x10, 0xff, 0xff, 0xff, 0xff], MAX_FRAME),
            Err(ProtocolError::FrameTooLarge {
                len: u32::MAX,
                max: MAX_FRAME
            })
        );
        assert_eq!(
            parse_header(&[0x42, 0, 0, 0, 0], MAX_FRAME),
            Err(ProtocolError::UnknownFrame(0x42))
        );
    }
}
