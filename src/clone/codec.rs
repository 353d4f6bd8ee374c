//! The clone protocol's frames as a `tokio_util::codec` codec: serve's async handshake reads and
//! writes through `Framed`. No I/O here; the cap on a frame's length is set by the caller for
//! each point of the protocol (a peer that has not authenticated gets no more room than the
//! frame it must send next).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::protocol::{parse_header, FrameType};
use super::transport::FrameError;

/// One frame: its type and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ty: FrameType,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(ty: FrameType, payload: impl Into<Bytes>) -> Self {
        Frame {
            ty,
            payload: payload.into(),
        }
    }
}

const HEADER: usize = 5;

/// Frames with a length cap that the protocol's current step sets.
#[derive(Debug)]
pub struct FrameCodec {
    max: u32,
}

impl FrameCodec {
    pub fn new(max: u32) -> Self {
        FrameCodec { max }
    }

    /// The cap for the frames that follow.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(h) = src.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        // The header is checked before any payload is buffered: an oversized length ends the
        // connection here, with at most one read's worth of bytes held.
        let (ty, len) = parse_header(h, self.max).map_err(FrameError::Protocol)?;
        let total = HEADER + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some(Frame {
            ty,
            payload: src.split_to(len as usize).freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(HEADER + f.payload.len());
        dst.put_u8(f.ty as u8);
        dst.put_u32_le(f.payload.len() as u32);
        dst.put_slice(&f.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone::protocol::{frame_header, ProtocolError, HELLO_LEN};

    #[test]
    fn frames_decode_in_pieces_and_encode_back() {
        let mut c = FrameCodec::new(100);
        let mut wire = BytesMut::new();
        c.encode(Frame::new(FrameType::Queued, &b"busy"[..]), &mut wire)
            .unwrap();
        c.encode(Frame::new(FrameType::Start, &b"dir: /x"[..]), &mut wire)
            .unwrap();
        let all = wire.freeze();
        // Byte by byte, as a slow peer would deliver it.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::new(FrameType::Queued, &b"busy"[..]),
                Frame::new(FrameType::Start, &b"dir: /x"[..])
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn the_cap_is_checked_on_the_header_alone() {
        let mut c = FrameCodec::new(HELLO_LEN as u32);
        let mut buf = BytesMut::from(&frame_header(FrameType::Hello, 4 << 20)[..]);
        match c.decode(&mut buf) {
            Err(FrameError::Protocol(ProtocolError::FrameTooLarge { len, max })) => {
                assert_eq!((len, max), (4 << 20, HELLO_LEN as u32))
            }
            other => panic!("{other:?}"),
        }
        let mut buf = BytesMut::from(&[0x99u8, 0, 0, 0, 0][..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(FrameError::Protocol(ProtocolError::UnknownFrame(0x99)))
        ));
    }

    proptest::proptest! {
        /// Whatever a peer sends, in whatever pieces: no panic, no frame above the cap, and a
        /// HELLO-sized frame goes through the donor's whole answer without a panic either.
        #[test]
        fn hostile_bytes_never_panic_or_pass_the_cap(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            cut in 1usize..64,
            max in 0u32..600,
        ) {
            let mut c = FrameCodec::new(max);
            let mut buf = BytesMut::new();
            let token = crate::clone::protocol::Token::new(b"tok");
            'feed: for piece in bytes.chunks(cut) {
                buf.extend_from_slice(piece);
                loop {
                    match c.decode(&mut buf) {
                        Ok(Some(f)) => {
                            proptest::prop_assert!(f.payload.len() as u32 <= max);
                            if let Ok(h) = crate::clone::protocol::parse_hello(&f.payload) {
                                let _ = crate::clone::protocol::DonorPake::answer(Some(&token), &h);
                            }
                            let _ = crate::clone::protocol::parse_challenge(&f.payload);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
