//! MariaDB global transaction ids (`domain-server-seq`) and GTID states (one GTID per domain,
//! like `@@gtid_binlog_pos` and a binlog's GTID_LIST event).
//!
//! Pure values: parsing, printing and comparing. Never reads anything.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One MariaDB GTID: replication domain, originating server id, sequence number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

/// A GTID or GTID state text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GTID {text:?}: {why} (expected domain-server-seq, e.g. 0-1-42)")]
pub struct GtidParseError {
    pub text: String,
    pub why: &'static str,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// Decimal digits only: `u32::from_str` would also take a leading `+`.
fn number<T: FromStr>(part: &str, text: &str) -> Result<T, GtidParseError> {
    let err = |why| GtidParseError {
        text: text.to_string(),
        why,
    };
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("each part must be a decimal number"));
    }
    part.parse().map_err(|_| err("a number is out of range"))
}

impl FromStr for Gtid {
    type Err = GtidParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split('-');
        let (Some(d), Some(s), Some(n), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(GtidParseError {
                text: text.to_string(),
                why: "it must have exactly three parts",
            });
        };
        Ok(Gtid {
            domain: number(d, text)?,
            server: number(s, text)?,
            seq: number(n, text)?,
        })
    }
}

impl From<Gtid> for String {
    fn from(g: Gtid) -> String {
        g.to_string()
    }
}

impl TryFrom<String> for Gtid {
    type Error = GtidParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One GTID per domain (MariaDB's gtid_binlog_pos / GTID_LIST). Ordered by domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct GtidState(BTreeMap<u32, Gtid>);

impl GtidState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.0.get(&domain).copied()
    }

    /// Sets the domain's entry to `g` (whatever was there).
    pub fn apply(&mut self, g: Gtid) {
        self.0.insert(g.domain, g);
    }

    pub fn iter(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.0.values().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every domain of `self` is in `other` with seq <= other's (server ids ignored).
    pub fn is_within(&self, other: &GtidState) -> bool {
        self.iter()
            .all(|g| other.get(g.domain).is_some_and(|o| g.seq <= o.seq))
    }

    /// The same seq in every domain, server ids aside: whether a file whose GTID_LIST is
    /// `self` continues one that ended at `other`.
    pub fn same_seqs(&self, other: &GtidState) -> bool {
        self.is_within(other) && other.is_within(self)
    }

    /// Whether `g` is already included in this state (its domain's seq >= g.seq).
    pub fn contains(&self, g: Gtid) -> bool {
        self.get(g.domain).is_some_and(|o| o.seq >= g.seq)
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidState {
    type Err = GtidParseError;
    /// "0-1-42,1-2-7", spaces allowed around each GTID, "" for the empty state. A domain
    /// named twice is refused: which of the two would be meant is not clear.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut state = GtidState::new();
        if text.trim().is_empty() {
            return Ok(state);
        }
        for part in text.split(',') {
            let g: Gtid = part.trim().parse()?;
            if state.0.insert(g.domain, g).is_some() {
                return Err(GtidParseError {
                    text: text.to_string(),
                    why: "a domain appears twice",
                });
            }
        }
        Ok(state)
    }
}

impl From<GtidState> for String {
    fn from(s: GtidState) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for GtidState {
    type Error = GtidParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromIterator<Gtid> for GtidState {
    fn from_iter<I: IntoIterator<Item = Gtid>>(iter: I) -> Self {
        let mut s = GtidState::new();
        for g in iter {
            s.apply(g);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(domain: u32, server: u32, seq: u64) -> Gtid {
        Gtid {
            domain,
            server,
            seq,
        }
    }

    #[test]
    fn gtid_prints_and_parses() {
        assert_eq!(g(0, 1, 42).to_string(), "0-1-42");
        assert_eq!("0-1-42".parse::<Gtid>(), Ok(g(0, 1, 42)));
        assert_eq!(
            "4294967295-4294967295-18446744073709551615".parse::<Gtid>(),
            Ok(g(u32::MAX, u32::MAX, u64::MAX))
        );
        for bad in [
            "",
            "0-1",
            "0-1-2-3",
            "0--2",
            "+0-1-2",
            " 0-1-2",
            "0-1-x",
            "4294967296-1-1",
        ] {
            let e = bad.parse::<Gtid>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn state_prints_and_parses() {
        let s: GtidState = "1-2-7, 0-1-42".parse().unwrap();
        assert_eq!(s.to_string(), "0-1-42,1-2-7");
        assert_eq!("".parse::<GtidState>().unwrap(), GtidState::new());
        assert_eq!(GtidState::new().to_string(), "");
        assert!("0-1-1,0-2-2".parse::<GtidState>().is_err());
        assert!("0-1-1,".parse::<GtidState>().is_err());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let s: GtidState = "0-1-42,1-2-7".parse().unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"0-1-42,1-2-7\"");
        assert_eq!(
            serde_json::from_str::<GtidState>("\"0-1-42,1-2-7\"").unwrap(),
            s
        );
        assert_eq!(serde_json::to_string(&g(0, 1, 2)).unwrap(), "\"0-1-2\"");
        assert!(serde_json::from_str::<Gtid>("\"0-1\"").is_err());
    }

    #[test]
    fn within_and_contains_ignore_server_ids() {
        let a: GtidState = "0-1-5".parse().unwrap();
        let b: GtidState = "0-2-6,1-1-1".parse().unwrap();
        assert!(a.is_within(&b));
        assert!(!b.is_within(&a));
        assert!(GtidState::new().is_within(&a));
        assert!(b.contains(g(0, 9, 6)));
        assert!(!b.contains(g(0, 1, 7)));
        assert!(!b.contains(g(2, 1, 1)));
    }
}
