//! [`TxId`], the transaction id: `tx-` and ten lowercase hex digits, checked once where it
//! enters (a command line, a file name, a record read back) and trusted from then on.
//!
//! Ids become parts of file names beside bases and in the state directory, so an id that is
//! not one imgtx generates (`tx-../../etc`) must never get that far.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A transaction id such as `tx-3f9a2c1d7e`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TxId(String);

/// Hex digits after the `tx-` prefix.
const DIGITS: usize = 10;

impl TxId {
    /// `s` as an id, if it is one imgtx generates.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = s.strip_prefix("tx-").is_some_and(|h| {
            h.len() == DIGITS && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        valid.then(|| Self(s.to_owned()))
    }

    /// The id made of five random bytes.
    pub fn from_random(bytes: [u8; DIGITS / 2]) -> Self {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("tx-{hex}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TxId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("{s:?} is not a transaction id"))
    }
}

impl From<TxId> for String {
    fn from(id: TxId) -> Self {
        id.0
    }
}

impl AsRef<str> for TxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TxId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TxId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_imgtx_generates_are_accepted() {
        assert!(TxId::parse("tx-0123456789").is_some());
        assert!(TxId::parse("tx-../../etc").is_none());
        assert!(TxId::parse("tx-ABCDEF0123").is_none());
        assert!(TxId::parse("tx-012345678").is_none());
        assert!(TxId::parse("0123456789").is_none());
    }

    #[test]
    fn random_bytes_make_a_valid_id() {
        let id = TxId::from_random([0x3f, 0x9a, 0x2c, 0x1d, 0x7e]);
        assert_eq!(id, "tx-3f9a2c1d7e");
        assert_eq!(TxId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn an_invalid_id_does_not_deserialize() {
        assert!(serde_json::from_str::<TxId>("\"tx-0123456789\"").is_ok());
        assert!(serde_json::from_str::<TxId>("\"tx-../x\"").is_err());
    }
}
