//! Client-side encryption of repository objects with age (X25519 recipients, 64 KiB STREAM
//! chunks), through the `age` crate: recipients and identities read and checked, objects
//! sealed as they are written, opened whole (small objects) or by ranges at chunk offsets (the
//! backup stream, read in parallel).
//!
//! The writing side needs only public keys: a backup pod can add backups but never read one.
//! Nothing here ever prints or logs key material: errors about an identity file name its
//! path and line, never the line.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;

use age::x25519;
use serde::{Deserialize, Serialize};

use super::{Repository, StoreError};

/// The manifest's name for the scheme.
pub const SCHEME: &str = "age-x25519";
/// Plaintext bytes per STREAM chunk, and the same chunk sealed (plus its 16-byte tag).
pub const CHUNK: u64 = 64 << 10;
pub const SEALED_CHUNK: u64 = CHUNK + 16;
/// An age header for a few hundred recipients fits; a longer one is refused before it is
/// parsed (a hostile object cannot make the reader grow a header without bound).
pub const MAX_HEADER: u64 = 64 << 10;
/// The suffix of a sealed object's key.
pub const SUFFIX: &str = ".age";

/// Errors about keys: recipients and identity files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A `--recipient` value that is not an age X25519 recipient.
    #[error("--recipient '{value}' is not an age X25519 recipient (age1...): {reason}")]
    BadRecipient { value: String, reason: String },
    /// A private key given where a public one is expected. The key is never repeated.
    #[error("{place}: this is a private key (AGE-SECRET-KEY-1...), not a recipient: refused. Give its public key instead (age-keygen -y FILE prints it)")]
    SecretAsRecipient { place: String, from_flag: bool },
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An identity file others can read (as ssh refuses such keys).
    #[error("identity file {} is readable by group or others (mode {mode:04o}): refused. `chmod 600` it, or pass --allow-readable-identity", path.display())]
    Readable { path: PathBuf, mode: u32 },
}

impl KeyError {
    /// A mistake on the command line itself (exit 2), rather than in a file (exit 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            KeyError::BadRecipient { .. }
                | KeyError::SecretAsRecipient {
                    from_flag: true,
                    ..
                }
        )
    }
}

/// Why a sealed object could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// None of the identities is one the object was sealed for.
    #[error("no identity given matches")]
    NoMatch,
    /// The object is not a well-formed age file, or fails authentication: altered or cut.
    #[error("{0}")]
    Damaged(String),
}

/// The public keys objects are sealed for.
#[derive(Clone, Default)]
pub struct Recipients {
    keys: Vec<x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.strings()).finish()
    }
}

const SECRET_PREFIX: &str = "AGE-SECRET-KEY-";

fn looks_secret(s: &str) -> bool {
    s.trim().to_ascii_uppercase().starts_with(SECRET_PREFIX)
}

impl Recipients {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Add one `--recipient` value.
    pub fn add_flag(&mut self, value: &str) -> Result<(), KeyError> {
        if looks_secret(value) {
            return Err(KeyError::SecretAsRecipient {
                place: "--recipient".into(),
                from_flag: true,
            });
        }
        let key =
            x25519::Recipient::from_str(value.trim()).map_err(|e| KeyError::BadRecipient {
                value: value.into(),
                reason: e.to_string(),
            })?;
        self.push(key);
        Ok(())
    }

    /// Add every recipient of a recipients file: one per line, blank lines and `#` comments
    /// ignored (as `age -R` reads it).
    pub fn add_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let text = read_small(path)?;
        let before = self.keys.len();
        for (n, line) in key_lines(&text) {
            if looks_secret(line) {
                return Err(KeyError::SecretAsRecipient {
                    place: format!("{}:{n}", path.display()),
                    from_flag: false,
                });
            }
            let key = x25519::Recipient::from_str(line).map_err(|e| KeyError::BadLine {
                path: path.into(),
                line: n,
                reason: format!("'{line}' is not an age X25519 recipient (age1...): {e}"),
            })?;
            self.push(key);
        }
        if self.keys.len() == before {
            return Err(KeyError::Empty {
                path: path.into(),
                what: "recipient",
            });
        }
        Ok(())
    }

    fn push(&mut self, key: x25519::Recipient) {
        if !self.keys.iter().any(|k| k.to_string() == key.to_string()) {
            self.keys.push(key);
        }
    }

    /// The recipients as `age1...` strings: what manifests record (public keys leak nothing).
    pub fn strings(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    /// Seal what is written to `w`. `finish` the writer to write the last chunk.
    pub fn seal<W: Write>(&self, w: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        encryptor.wrap_output(w)
    }

    /// Seal a small object whole.
    pub fn seal_bytes(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut w = self.seal(Vec::with_capacity(data.len() + 1024))?;
        w.write_all(data)?;
        w.finish()
    }
}

/// The private keys a restore may open objects with.
#[derive(Default)]
pub struct Identities {
    keys: Vec<x25519::Identity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the public halves: the debug form must never show a secret.
        f.debug_list().entries(self.recipients()).finish()
    }
}

impl Identities {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Read an identity file (age-keygen's output: comments and `AGE-SECRET-KEY-1...` lines).
    /// Refused when group or others may read it, unless `allow_readable`.
    pub fn add_file(&mut self, path: &Path, allow_readable: bool) -> Result<(), KeyError> {
        let meta = fs::metadata(path).map_err(|e| KeyError::Read {
            path: path.into(),
            source: e,
        })?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if mode & 0o077 != 0 && !allow_readable {
            return Err(KeyError::Readable {
                path: path.into(),
                mode,
            });
        }
        let text = read_small(path)?;
        let before = self.keys.len();
        for (n, line) in key_lines(&text) {
            let bad = |reason: &str| KeyError::BadLine {
                path: path.into(),
                line: n,
                reason: reason.into(),
            };
            if line.starts_with("age1") {
                return Err(bad(
                    "this is a recipient (a public key), not an identity: the identity file is the one age-keygen wrote",
                ));
            }
            // The line is never quoted: it may be a mistyped secret.
            let key = x25519::Identity::from_str(line)
                .map_err(|_| bad("not an age X25519 identity (AGE-SECRET-KEY-1...)"))?;
            self.keys.push(key);
        }
        if self.keys.len() == before {
            return Err(KeyError::Empty {
                path: path.into(),
                what: "identity",
            });
        }
        Ok(())
    }

    /// The public keys of the identities (for messages).
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    fn decryptor_keys(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }

    /// Open a sealed stream.
    pub fn open<R: Read>(&self, r: R) -> Result<age::stream::StreamReader<R>, OpenError> {
        let d = age::Decryptor::new(r).map_err(damaged)?;
        d.decrypt(self.decryptor_keys()).map_err(damaged)
    }

    /// Open a small sealed object whole; more than `max` plaintext bytes is refused.
    pub fn open_bytes(&self, data: &[u8], max: u64) -> Result<Vec<u8>, OpenError> {
        header_len(data)?;
        let mut r = self.open(data)?;
        let mut out = Vec::new();
        (&mut r)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| OpenError::Damaged(stream_error(&e)))?;
        if out.len() as u64 > max {
            return Err(OpenError::Damaged(format!(
                "it opens to more than {max} bytes"
            )));
        }
        Ok(out)
    }
}

fn damaged(e: age::DecryptError) -> OpenError {
    match e {
        age::DecryptError::NoMatchingKeys => OpenError::NoMatch,
        age::DecryptError::Io(io) => OpenError::Damaged(stream_error(&io)),
        other => OpenError::Damaged(format!("not a valid age file: {other}")),
    }
}

/// The age crate reports a failed chunk as an I/O error; say what it means for a stored object.
fn stream_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "it is truncated (age: the last chunk is missing)".into(),
        _ => format!("it fails authentication, altered or cut ({e})"),
    }
}

/// The key lines of a recipients or identity file, with their line numbers: blank lines and
/// `#` comments skipped, as age reads them.
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let read = |source| KeyError::Read {
        path: path.into(),
        source,
    };
    let f = fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    // Key files are a few lines; a megabyte is not one.
    f.take(1 << 20).read_to_string(&mut text).map_err(read)?;
    Ok(text)
}

/// The length of an age file's header (its text lines, through the `---` MAC line), which the
/// 16-byte nonce follows. Checked well-formed by the crate; longer than [`MAX_HEADER`] is
/// refused.
pub fn header_len(data: &[u8]) -> Result<u64, OpenError> {
    let window = &data[..data.len().min(MAX_HEADER as usize)];
    let mut r = io::Cursor::new(window);
    match age::Decryptor::new_buffered(&mut r) {
        // The decryptor has read the header and the nonce.
        Ok(_) => Ok(r.position() - 16),
        Err(age::DecryptError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(OpenError::Damaged(if data.len() as u64 > MAX_HEADER {
                format!("its age header is longer than {MAX_HEADER} bytes")
            } else {
                "its age header is cut short".into()
            }))
        }
        Err(e) => Err(damaged(e)),
    }
}

/// Sizes of a sealed object whose header is `header` bytes long and whose plaintext is `plain`
/// bytes: header, nonce, and one tag per chunk (an empty plaintext still has one chunk).
pub fn sealed_len(header: u64, plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK).max(1);
    header + 16 + plain + chunks * 16
}

/// The plaintext length of a sealed object of `total` bytes with a `header`-byte header, if
/// the sizes fit together.
pub fn plain_len(header: u64, total: u64) -> Option<u64> {
    let payload = total.checked_sub(header + 16)?;
    let chunks = payload.div_ceil(SEALED_CHUNK);
    if chunks == 0 {
        return None;
    }
    let plain = payload - chunks * 16;
    (sealed_len(header, plain) == total).then_some(plain)
}

/// What a manifest records of a sealed object's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plain {
    pub size: u64,
    /// BLAKE3 of the plaintext, hex.
    pub blake3: String,
}

/// A sealed object in a repository, read by ranges of whole STREAM chunks: a `Read + Seek`
/// view of the object for the age crate's seekable reader, with one ranged GET per `window`
/// bytes (a whole number of chunks, so a plaintext range aligned to chunks costs one GET).
pub struct SealedObject<'a> {
    repo: &'a dyn Repository,
    key: &'a str,
    size: u64,
    pos: u64,
    /// The bytes held: `[held_at, held_at + held.len())` of the object.
    held: Vec<u8>,
    held_at: u64,
    window: u64,
    /// The store's error behind an I/O error handed to the age reader, kept for the caller
    /// (the age reader owns this view, so the slot is shared).
    failed: Rc<Cell<Option<StoreError>>>,
}

impl<'a> SealedObject<'a> {
    /// `prefix` is the object's first bytes (at least its header), already read.
    pub fn new(
        repo: &'a dyn Repository,
        key: &'a str,
        size: u64,
        prefix: Vec<u8>,
        window: u64,
        failed: Rc<Cell<Option<StoreError>>>,
    ) -> Self {
        SealedObject {
            repo,
            key,
            size,
            pos: 0,
            held: prefix,
            held_at: 0,
            window: window.max(SEALED_CHUNK),
            failed,
        }
    }
}

impl Read for SealedObject<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = self.held_at + self.held.len() as u64;
        if self.pos < self.held_at || self.pos >= end {
            let len = self.window.min(self.size - self.pos);
            self.held.resize(len as usize, 0);
            if let Err(e) = self.repo.read_range(self.key, self.pos, &mut self.held) {
                let msg = e.to_string();
                self.failed.set(Some(e));
                self.held.clear();
                return Err(io::Error::other(msg));
            }
            self.held_at = self.pos;
        }
        let from = (self.pos - self.held_at) as usize;
        let n = buf.len().min(self.held.len() - from);
        buf[..n].copy_from_slice(&self.held[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SealedObject<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// A reader of plaintext ranges of one sealed object: the age reader over a
/// [`SealedObject`]. Each fetcher thread holds its own.
pub struct RangeOpener<'a> {
    reader: age::stream::StreamReader<SealedObject<'a>>,
    failed: Rc<Cell<Option<StoreError>>>,
}

impl<'a> RangeOpener<'a> {
    /// Open `key` (of `size` bytes) with `ids`. `prefix` holds the object's first bytes.
    pub fn new(
        ids: &Identities,
        repo: &'a dyn Repository,
        key: &'a str,
        size: u64,
        prefix: Vec<u8>,
        window: u64,
    ) -> Result<Self, OpenError> {
        let failed = Rc::new(Cell::new(None));
        let object = SealedObject::new(repo, key, size, prefix, window, failed.clone());
        Ok(RangeOpener {
            reader: ids.open(object)?,
            failed,
        })
    }

    /// Fill `buf` with the plaintext at `start`. Authenticates every chunk it reads (and, the
    /// first time, the object's last chunk: a cut object fails here).
    pub fn read_at(&mut self, start: u64, buf: &mut [u8]) -> Result<(), RangeError> {
        let r = self
            .reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.reader.read_exact(buf));
        r.map_err(|e| match self.failed.take() {
            Some(se) => RangeError::Store(se),
            None => RangeError::Damaged(stream_error(&e)),
        })
    }
}

/// Why a plaintext range could not be read.
#[derive(Debug)]
pub enum RangeError {
    Store(StoreError),
    Damaged(String),
}

/// Read every line of a recipients' list the way the manifest stores it, for messages.
pub fn describe(recipients: &[String]) -> String {
    if recipients.is_empty() {
        "(no recipient recorded)".into()
    } else {
        recipients.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (x25519::Identity, String) {
        let id = x25519::Identity::generate();
        let r = id.to_public().to_string();
        (id, r)
    }

    #[test]
    fn sizes_fit_together() {
        for plain in [0u64, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 10_000_000] {
            for header in [100u64, 300] {
                assert_eq!(plain_len(header, sealed_len(header, plain)), Some(plain));
            }
        }
        assert_eq!(plain_len(100, 100), None);
        assert_eq!(plain_len(100, 116), None);
    }

    #[test]
    fn seal_and_open_whole() {
        let (id, r) = pair();
        let mut rs = Recipients::default();
        rs.add_flag(&r).unwrap();
        let ids = Identities { keys: vec![id] };
        for len in [0usize, 1, 65536, 65537, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = rs.seal_bytes(&data).unwrap();
            let h = header_len(&sealed).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(h, len as u64));
            assert_eq!(ids.open_bytes(&sealed, 1 << 20).unwrap(), data);
            // Any flipped byte, anywhere, is refused.
            for at in [0, h as usize / 2, h as usize + 3, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 0x20;
                assert!(
                    ids.open_bytes(&bad, 1 << 20).is_err(),
                    "flip at {at} of {len}"
                );
            }
            // Cut at a chunk boundary or anywhere: refused.
            for cut in [sealed.len() - 1, (h + 16 + SEALED_CHUNK) as usize] {
                if cut < sealed.len() {
                    assert!(
                        ids.open_bytes(&sealed[..cut], 1 << 20).is_err(),
                        "cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_identity_is_no_match() {
        let (_, r) = pair();
        let (other, _) = pair();
        let mut rs = Recipients::default();
        rs.add_flag(&r).unwrap();
        let sealed = rs.seal_bytes(b"x").unwrap();
        let ids = Identities { keys: vec![other] };
        assert!(matches!(
            ids.open_bytes(&sealed, 10),
            Err(OpenError::NoMatch)
        ));
    }

    #[test]
    fn secret_refused_as_recipient_and_never_echoed() {
        let id = x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        let mut rs = Recipients::default();
        let e = rs.add_flag(&secret).unwrap_err();
        assert!(e.is_usage());
        let msg = e.to_string();
        assert!(msg.contains("private key"), "{msg}");
        assert!(!msg.contains(&secret[15..]), "{msg}");
        let e = rs.add_flag("age1notakey").unwrap_err();
        assert!(e.to_string().contains("age1notakey"));
    }

    #[test]
    fn files_name_the_line_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.txt");
        let id = x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        let mangled = format!("{}X", &secret[..secret.len() - 1]);
        fs::write(&p, format!("# created: now\n# public key: x\n{mangled}\n")).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = Identities::default().add_file(&p, false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("id.txt:3"), "{msg}");
        assert!(!msg.contains(&mangled[15..40]), "{msg}");
        fs::write(&p, format!("{secret}\n")).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = Identities::default().add_file(&p, false).unwrap_err();
        assert!(matches!(e, KeyError::Readable { mode: 0o644, .. }));
        let mut ids = Identities::default();
        ids.add_file(&p, true).unwrap();
        assert_eq!(ids.recipients(), vec![id.to_public().to_string()]);
        // A recipients file with a secret in it: refused, naming the line only.
        fs::write(&p, format!("# keys\n\n{}\n{secret}\n", id.to_public())).unwrap();
        let e = Recipients::default().add_file(&p).unwrap_err();
        assert!(!e.is_usage());
        assert!(e.to_string().contains("id.txt:4"), "{e}");
        assert!(!e.to_string().contains(&secret[15..]));
    }

    /// Interop in: the Go implementation (Debian's `age`) seals, our ranged reader opens any
    /// range at computed chunk offsets, through a real repository's ranged reads.
    #[test]
    fn go_age_sealed_objects_open_by_ranges() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let id = x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let repo = crate::store::local::LocalRepo::open(dir.path()).unwrap();
        let ids = Identities { keys: vec![id] };
        for len in [0usize, 1000, 65536, 3 * 65536, 1_000_003] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
            let mut child = Command::new("age")
                .args(["-r", &recipient])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("Debian's `age` (the Go implementation) is needed: apt-get install age");
            let mut stdin = child.stdin.take().unwrap();
            let feed = data.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&feed));
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            assert!(out.status.success());
            let sealed = out.stdout;
            let key = format!("go-{len}.age");
            repo.put(&key, bytes::Bytes::from(sealed.clone())).unwrap();
            let header = header_len(&sealed).unwrap();
            assert_eq!(plain_len(header, sealed.len() as u64), Some(len as u64));
            let prefix = sealed[..(header + 16) as usize].to_vec();
            // A small window: ranges cross several GETs.
            let mut r = RangeOpener::new(
                &ids,
                &repo,
                &key,
                sealed.len() as u64,
                prefix,
                2 * SEALED_CHUNK,
            )
            .unwrap();
            let starts = [
                0usize,
                1,
                65535,
                65536,
                65537,
                200_000,
                len / 2,
                len.saturating_sub(5),
            ];
            for &start in starts.iter().rev() {
                if start > len {
                    continue;
                }
                let n = (len - start).min(150_000);
                let mut buf = vec![0u8; n];
                r.read_at(start as u64, &mut buf).unwrap();
                assert_eq!(buf, data[start..start + n], "len {len} start {start}");
            }
            // And whole, through the plain reader.
            assert_eq!(ids.open_bytes(&sealed, 1 << 24).unwrap(), data);
            // A flipped byte in the last chunk: the range that covers it fails.
            if len > 0 {
                let mut bad = sealed.clone();
                let last = bad.len() - 3;
                bad[last] ^= 1;
                let key = format!("go-{len}-bad.age");
                repo.put(&key, bytes::Bytes::from(bad)).unwrap();
                let prefix = sealed[..(header + 16) as usize].to_vec();
                let opened =
                    RangeOpener::new(&ids, &repo, &key, sealed.len() as u64, prefix, SEALED_CHUNK);
                if let Ok(mut r) = opened {
                    let mut buf = vec![0u8; len];
                    assert!(matches!(
                        r.read_at(0, &mut buf),
                        Err(RangeError::Damaged(_))
                    ));
                }
            }
        }
    }
}
