//! Finding the transaction a user names: by id, by an unambiguous prefix of an open one's
//! id, or by the name given at begin (unique among open ones); for a revert, the same among
//! the committed transactions whose pre-images are kept. When the one named is not
//! open, the answer says what became of it (the history's entry), or which id was probably
//! meant.

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::history::HistoryEntry;
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::Manifest;

/// Hex digits a prefix must have to name a transaction: fewer would match by accident.
pub(crate) const MIN_PREFIX: usize = 4;

/// Edits (a character changed, added or removed) an id may be from the one typed and still be
/// offered as what was meant.
const TYPO_EDITS: usize = 2;

/// The registered transaction `given` names: its id; else the one open transaction whose
/// name is `given`; else the one whose id starts with `given` (`tx-` may be left out, and at
/// least [`MIN_PREFIX`] hex digits are needed).
///
/// # Errors
/// [`Error::Ambiguous`] when `given` names several; otherwise, when it names none,
/// what [`not_open`] says.
pub(crate) fn find<S: Fs, H: Host>(e: &Ctx<S, H>, given: &str) -> Result<TxId> {
    let open = e.state.list(&e.fs)?;
    if let Some(id) = open.iter().find(|id| id.as_str() == given) {
        return Ok(id.clone());
    }
    let mut named = Vec::new();
    for id in &open {
        let m = e.state.load(&e.fs, id)?;
        if m.is_some_and(|m| m.name.as_deref() == Some(given)) {
            named.push(id.clone());
        }
    }
    let by_prefix = prefix(given).map_or_else(Vec::new, |p| {
        open.iter()
            .filter(|id| id.as_str().starts_with(&p))
            .cloned()
            .collect()
    });
    the_one(given, [named, by_prefix]).unwrap_or_else(|| Err(not_open(e, given)))
}

/// The committed transaction `given` names for a revert: a whole id as it is (the revert
/// says whether it can be taken back); else the one transaction with kept pre-images whose
/// name (as the history has it) is `given`, or whose id starts with `given`.
///
/// # Errors
/// [`Error::Ambiguous`] when `given` names several; [`Error::NotRevertible`] when none.
pub(crate) fn find_revertible<S: Fs, H: Host>(e: &Ctx<S, H>, given: &str) -> Result<TxId> {
    if let Some(id) = TxId::parse(given) {
        return Ok(id);
    }
    let kept: Vec<TxId> = e
        .state
        .list_kept(&e.fs)?
        .into_iter()
        .map(|r| r.tx)
        .collect();
    let history = e.state.history_entries(&e.fs);
    let named: Vec<TxId> = kept
        .iter()
        .filter(|id| {
            history
                .iter()
                .any(|h| h.id == **id && h.name.as_deref() == Some(given))
        })
        .cloned()
        .collect();
    let by_prefix = prefix(given).map_or_else(Vec::new, |p| {
        kept.iter()
            .filter(|id| id.as_str().starts_with(&p))
            .cloned()
            .collect()
    });
    the_one(given, [named, by_prefix]).unwrap_or_else(|| {
        Err(Error::NotRevertible {
            given: given.to_owned(),
        })
    })
}

/// The transaction `given` names, out of those it names by name, else by id prefix: the
/// first list with one; an error when the first that is not empty has several; `None` when
/// both are empty.
fn the_one(given: &str, lists: [Vec<TxId>; 2]) -> Option<Result<TxId>> {
    let found = lists.into_iter().find(|l| !l.is_empty())?;
    Some(match <[TxId; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(matches) => Err(Error::Ambiguous {
            given: given.to_owned(),
            matches,
        }),
    })
}

/// The error for `given`, which names no registered transaction: [`Error::Finished`] when
/// the history has exactly one transaction with that id (or id prefix), or one of that
/// name (the latest), else [`Error::NotFound`] with the closest id known, if one is a
/// likely typo, or the name of an open one.
pub(crate) fn not_open<S: Fs, H: Host>(e: &Ctx<S, H>, given: &str) -> Error {
    // Only for the message: a history that cannot be read leaves it at "not found".
    let history = e.state.history_entries(&e.fs);
    // By id or id prefix, if exactly one transaction fits; else the latest of that name.
    let by_id: Vec<&HistoryEntry> = match prefix(given) {
        Some(p) => history
            .iter()
            .filter(|h| h.id.as_str().starts_with(&p))
            .collect(),
        None => Vec::new(),
    };
    let one_id = by_id.first().filter(|f| by_id.iter().all(|h| h.id == f.id));
    let by_name = || {
        history
            .iter()
            .rev()
            .find(|h| h.name.as_deref() == Some(given))
    };
    if let Some(entry) = one_id.copied().or_else(by_name) {
        return Error::Finished {
            entry: Box::new(entry.clone()),
        };
    }
    Error::NotFound {
        tx: given.to_owned(),
        closest: closest(e, &history, given),
    }
}

/// What `given` was probably meant to be: the id of a transaction, open or finished, or the
/// unique name of an open one, that is a typo away from it. A word counts as a typo of
/// another when at most [`TYPO_EDITS`] edits apart, and fewer than half of the shorter's
/// characters, so that `db` is not offered for `ab`.
fn closest<S: Fs, H: Host>(e: &Ctx<S, H>, history: &[HistoryEntry], given: &str) -> Option<String> {
    let open = e.state.list(&e.fs).unwrap_or_default();
    let mut names: Vec<String> = open
        .iter()
        .filter_map(|id| e.state.load(&e.fs, id).ok().flatten()?.name)
        .collect();
    names.sort();
    let unique: Vec<String> = names
        .iter()
        .filter(|n| names.iter().filter(|m| m == n).count() == 1)
        .cloned()
        .collect();
    open.iter()
        .chain(history.iter().map(|h| &h.id))
        .map(|id| id.as_str().to_owned())
        .chain(unique)
        .map(|word| (edits(&word, given), word))
        .filter(|(d, word)| {
            *d <= TYPO_EDITS && 2 * d < word.chars().count().min(given.chars().count())
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, word)| word)
}

/// `given` as the start of an id (`tx-` added if left out), when it can be one: hex digits,
/// at least [`MIN_PREFIX`] of them, no more than an id has.
fn prefix(given: &str) -> Option<String> {
    let hex = given.strip_prefix("tx-").unwrap_or(given);
    let ok = (MIN_PREFIX..=10).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| format!("tx-{hex}"))
}

/// The edit distance between `a` and `b` (Levenshtein, over characters).
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl<S: Fs, H: Host> Ctx<S, H> {
    /// Loads the manifest of transaction `id`, which must be open.
    pub(crate) fn load_open(&self, id: &TxId) -> Result<Manifest> {
        let m = self
            .state
            .load(&self.fs, id)?
            .ok_or_else(|| not_open(self, id.as_str()))?;
        match m.state.doing() {
            None => Ok(m),
            Some(doing) => Err(Error::Interrupted {
                tx: id.clone(),
                doing,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_needs_enough_hex_digits_and_may_leave_out_tx() {
        assert_eq!(prefix("3f9a").as_deref(), Some("tx-3f9a"));
        assert_eq!(prefix("tx-3f9a2c").as_deref(), Some("tx-3f9a2c"));
        assert_eq!(prefix("tx-3f9"), None);
        assert_eq!(prefix("upgrade"), None);
        assert_eq!(prefix("tx-3f9a2c1d7e00"), None);
    }

    #[test]
    fn edits_count_changed_added_and_removed_characters() {
        assert_eq!(edits("tx-3f9a2c1d7e", "tx-3f9a2c1d7e"), 0);
        assert_eq!(edits("tx-3f9a2c1d7e", "tx-3f9a2c1d7f"), 1);
        assert_eq!(edits("tx-3f9a2c1d7e", "tx-3f9a2c1d7"), 1);
        assert_eq!(edits("tx-3f9a2c1d7e", "tx-3f9a2cd17e"), 2);
        assert!(edits("tx-3f9a2c1d7e", "upgrade") > TYPO_EDITS);
    }
}
