//! A connection (plain TCP or TLS) and framed reads and writes over it.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use super::protocol::{frame_header, parse_header, FrameType, ProtocolError};

/// One side of a clone connection.
pub enum Conn {
    Plain(TcpStream),
    TlsServer(Box<StreamOwned<ServerConnection, TcpStream>>),
    TlsClient(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::TlsServer(s) => &s.sock,
            Conn::TlsClient(s) => &s.sock,
        }
    }

    /// Send a TLS close_notify where there is one, then close the write side.
    pub fn finish(&mut self) {
        match self {
            Conn::Plain(_) => {}
            Conn::TlsServer(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Conn::TlsClient(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::TlsServer(s) => s.read(buf),
            Conn::TlsClient(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::TlsServer(s) => s.write(buf),
            Conn::TlsClient(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::TlsServer(s) => s.flush(),
            Conn::TlsClient(s) => s.flush(),
        }
    }
}

/// Why a framed read failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Protocol(ProtocolError),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Write one frame (header and payload).
pub fn write_frame(w: &mut impl Write, ty: FrameType, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame_header(ty, payload.len()))?;
    w.write_all(payload)
}

/// Read one frame of at most `max` payload bytes into `buf` (reused between calls).
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>, max: u32) -> Result<FrameType, FrameError> {
    let (ty, len) = read_header(r, max)?;
    read_payload(r, len, buf)?;
    Ok(ty)
}

/// Read and check a frame header against the cap `max`.
pub fn read_header(r: &mut impl Read, max: u32) -> Result<(FrameType, u32), FrameError> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    parse_header(&h, max).map_err(FrameError::Protocol)
}

/// Read a frame's payload of `len` bytes (already checked against the cap) into `buf`.
pub fn read_payload(r: &mut impl Read, len: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    // The buffer grows step by step as bytes arrive, so a peer that announces a large frame
    // and sends nothing gets little memory.
    const STEP: usize = 256 * 1024;
    let len = len as usize;
    while buf.len() < len {
        let at = buf.len();
        buf.resize(len.min(at + STEP.max(at)), 0);
        r.read_exact(&mut buf[at..])?;
    }
    Ok(())
}
