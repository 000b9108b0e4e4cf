//! The records of a chained history (format 2) and the hash that links each to the one
//! before it.
//!
//! Every record of the journal is one *body*: the postcard encoding of a [`Link`], stored as
//! a byte string so that the hash is taken over exactly the bytes on disk. A link carries its
//! own position (`seq`), the hash of the record before it (`prev`; all zeros for the genesis)
//! and what it records ([`Item`]). The hash of a record is
//! `SHA-256("imgtx history link\0" ‖ body)`; the hash of the last record is the *head*.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::entry::HistoryEntry;

/// Mixed into every record hash, so that no other SHA-256 (of a file, of an image) can be
/// taken for one.
const DOMAIN: &[u8] = b"imgtx history link\0";

/// A SHA-256 hash of a history record: a link of the chain, or its head. Shown, and
/// serialized, as 64 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ChainHash {
    /// What the genesis record names as the record before it.
    pub const ZERO: Self = Self([0; 32]);

    /// The hash of the record whose body is `body`.
    pub fn of_body(body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(body);
        Self(h.finalize().into())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// Why a text is not a [`ChainHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a history hash is 64 hexadecimal digits")]
pub struct ParseChainHashError;

impl FromStr for ChainHash {
    type Err = ParseChainHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(ParseChainHashError);
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ParseChainHashError)?;
        }
        Ok(Self(out))
    }
}

/// One record of a chained history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Link {
    /// Its position in the history file: 0 for the genesis, then one more each record.
    pub seq: u64,
    /// The hash of the record at `seq - 1`; all zeros for the genesis.
    pub prev: [u8; 32],
    /// What it records.
    pub item: Item,
}

/// What a record of the chain records. New kinds of records are new variants at the end;
/// postcard encodes the variant's index, so existing ones never change meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// Where the chain begins: always record 0, and only there.
    Genesis(Genesis),
    /// A finished transaction.
    Entry(HistoryEntry),
    /// The history's file ended in bytes that did not verify; the whole file was kept aside
    /// before this record (and later ones) continued the chain after its last good record.
    KeptAside(KeptAside),
    /// A finished transaction that recovery took over from a dead host of a sanlock
    /// lockspace: the entry (its `taken_over` left out), then who took it from whom.
    TakenOver(HistoryEntry, super::entry::Takeover),
}

/// The first record of a chained history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Genesis {
    /// Random, so that no two histories share a genesis hash.
    pub salt: [u8; 16],
    /// When the chain began (RFC 3339 UTC).
    pub created: String,
    /// The unchained history this one continues, when the chain began by carrying over its
    /// entries.
    pub carried_over: Option<CarriedOver>,
}

/// An unchained (format 1) history whose entries a chained one took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedOver {
    /// The name, in the state directory, under which the old file was kept, unchanged.
    pub file: String,
    /// SHA-256 of that whole file, in hexadecimal.
    pub sha256: String,
    /// How many entries were carried over: records 1 to `entries` of the chain.
    pub entries: u64,
    /// Bytes at its end that were not a whole entry (kept in the old file, not carried).
    pub damaged_tail: u64,
    /// When (RFC 3339 UTC).
    pub when: String,
}

/// A damaged tail kept aside: what the chain records about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAside {
    /// The name, in the state directory, of the whole damaged file, kept unchanged.
    pub file: String,
    /// SHA-256 of that whole file, in hexadecimal.
    pub sha256: String,
    /// Bytes of it that verified and were carried on (the start of the file up to the
    /// damage); the new file begins with exactly these.
    pub valid_len: u64,
    /// Bytes after them that did not verify: an append a crash interrupted, or an edit.
    pub tail_bytes: u64,
    /// When it was kept aside (RFC 3339 UTC).
    pub when: String,
}

/// The body of `link`, as stored.
pub(crate) fn encode(link: &Link) -> Vec<u8> {
    // Strings, numbers and byte arrays only: encoding into a vector cannot fail.
    journal::format::encode_payload(link).expect("a history link encodes")
}

/// The link stored as `body`; `None` when the bytes are not one (trailing bytes included).
pub(crate) fn decode(body: &[u8]) -> Option<Link> {
    journal::format::decode_payload(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_prints_as_64_hex_digits_and_parses_back() {
        let h = ChainHash::of_body(b"x");

        let text = h.to_string();

        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChainHash>(), Ok(h));
        assert!("00".parse::<ChainHash>().is_err());
        assert!("zz".repeat(32).parse::<ChainHash>().is_err());
    }

    #[test]
    fn the_record_hash_is_sha256_of_the_domain_and_the_body() {
        // SHA-256 of "imgtx history link\0" alone, computed with `printf 'imgtx history
        // link\0' | sha256sum`: pins the definition documented in docs/journal-format.md.
        assert_eq!(
            ChainHash::of_body(b"").to_string(),
            "11178372d8705ad16e137b437cb38b870d4e2c9eef0b3fd8a55452965ce4e545"
        );
    }

    #[test]
    fn a_body_with_trailing_bytes_is_not_a_link() {
        let link = Link {
            seq: 0,
            prev: [0; 32],
            item: Item::Genesis(Genesis {
                salt: [7; 16],
                created: "2026-11-27T00:00:00Z".into(),
                carried_over: None,
            }),
        };
        let mut body = encode(&link);
        assert_eq!(decode(&body), Some(link));

        body.push(0);

        assert_eq!(decode(&body), None);
    }
}
