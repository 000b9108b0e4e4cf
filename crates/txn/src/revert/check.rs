//! The revert's refusals, decided before anything is written: every base must still hold
//! exactly what the reverted transaction left (the same file, its length, the checksums
//! recorded at commit), and its pre-images must be kept and verify. A later transaction
//! that changed a range is named; a change nobody recorded was made outside imgtx.

use std::path::PathBuf;

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::history::Outcome;
use crate::host::Host;
use crate::id::TxId;
use crate::kept::{self, KeptImage};
use crate::manifest::DevIno;
use crate::plan::ByteRange;
use crate::{base, layout, preimage};

/// One base of the revert, checked: it holds what the reverted transaction left, and the
/// file that holds that transaction's pre-images verifies.
pub(super) struct Checked<'k> {
    pub(super) kept: &'k KeptImage,
    /// Where the reverted transaction's pre-images are now.
    pub(super) file: PathBuf,
    /// The ranges they cover, plus what the reverted transaction grew the base by: what the
    /// revert overwrites or cuts off, hence saves first.
    pub(super) ranges: Vec<ByteRange>,
    /// This image's journal.
    pub(super) journal: PathBuf,
}

/// Checks that `k`'s base holds exactly what transaction `rec.tx` left, and finds its
/// pre-images.
pub(super) fn check<'k, S: Fs, H: Host>(
    e: &Ctx<S, H>,
    rec: &kept::Record,
    k: &'k KeptImage,
    id: &TxId,
) -> Result<Checked<'k>> {
    let conflict = |reason: String, later: Option<TxId>| Error::RevertConflict {
        tx: rec.tx.clone(),
        path: k.base.clone(),
        reason,
        later,
    };
    let meta = e.fs.metadata(&k.base).map_err(Error::io("stat", &k.base))?;
    let Some(meta) = meta.filter(|m| DevIno::of(m) == k.base_dev_ino) else {
        return Err(conflict(
            "is no longer the file the transaction committed into (moved, deleted or replaced)"
                .into(),
            None,
        ));
    };
    let base = base::open(&e.fs, &rec.tx, (&k.base, k.base_dev_ino), false)?;
    if meta.len != k.new_len {
        return Err(conflict(
            format!(
                "is {} bytes long, not the {} the transaction left",
                meta.len, k.new_len
            ),
            later_change(e, rec, k, None)?,
        ));
    }
    if let Some(w) = kept::first_change(&e.fs, &base, k, e.host.user().1)? {
        return Err(conflict(
            format!(
                "no longer holds what the transaction wrote at bytes {:#x}..{:#x}",
                w.offset,
                w.offset + w.len
            ),
            later_change(e, rec, k, Some(ByteRange::new(w.offset, w.len)))?,
        ));
    }
    let file = locate(e, &rec.tx, k)?;
    let mut ranges = Vec::new();
    preimage::for_each_saved(
        &e.fs,
        &file,
        (&rec.tx, e.host.user().1),
        &k.summary,
        |offset, len, _| {
            ranges.push(ByteRange::new(offset, len));
            Ok(())
        },
    )?;
    if k.new_len > k.summary.old_len {
        ranges.push(ByteRange::new(
            k.summary.old_len,
            k.new_len - k.summary.old_len,
        ));
    }
    Ok(Checked {
        kept: k,
        file,
        ranges,
        journal: layout::journal(&k.base, id)?,
    })
}

/// Where `tx`'s pre-images of `k.base` are: under the name the record gives, under the name
/// a revert pins them to, or as the base's spare; whichever verifies as `tx`'s.
fn locate<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId, k: &KeptImage) -> Result<PathBuf> {
    let candidates = [
        k.file.clone(),
        layout::kept(&k.base, tx)?,
        layout::spare(&k.base)?,
    ];
    let mut why = None;
    for path in candidates {
        if !crate::files::exists(&e.fs, &path)? {
            continue;
        }
        match preimage::verify(&e.fs, &path, tx, &k.summary, e.host.user().1) {
            Ok(()) => return Ok(path),
            Err(err) => why = Some(format!("{}: {err}", path.display())),
        }
    }
    Err(Error::NotKept {
        tx: tx.clone(),
        reason: why.map_or_else(
            || format!("its pre-images of {} are gone", k.base.display()),
            |w| {
                format!(
                    "its pre-images of {} no longer verify ({w})",
                    k.base.display()
                )
            },
        ),
    })
}

/// Which later transaction changed `k`'s base (where it overlaps `range`, when known): the
/// earliest later one with kept checksums there, else the earliest later entry of the
/// history that changed the base.
fn later_change<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    rec: &kept::Record,
    k: &KeptImage,
    range: Option<ByteRange>,
) -> Result<Option<TxId>> {
    let overlaps =
        |w: &kept::Written| range.is_none_or(|r| w.offset < r.end() && r.offset < w.offset + w.len);
    for later in e.state.list_kept(&e.fs)? {
        let earlier = (&later.committed, later.committed_ns) < (&rec.committed, rec.committed_ns);
        if later.tx == rec.tx || earlier {
            continue;
        }
        let hit = later
            .images
            .iter()
            .any(|i| i.base_dev_ino == k.base_dev_ino && i.written.iter().any(overlaps));
        if hit {
            return Ok(Some(later.tx));
        }
    }
    let history = match crate::history::read(&e.fs, &e.state.history()) {
        Ok(h) => h,
        // Only a better message is lost.
        Err(_) => return Ok(None),
    };
    let since = history
        .entries
        .iter()
        .rposition(|h| h.id == rec.tx)
        .map_or(0, |i| i + 1);
    Ok(history.entries[since..]
        .iter()
        .find(|h| h.outcome.changed_images() && h.images.iter().any(|i| i.base == k.base))
        .map(|h| h.id.clone()))
}

/// The error for a transaction with no kept pre-images, saying why when the history knows.
pub(super) fn not_kept<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId) -> Error {
    let entry = crate::history::read(&e.fs, &e.state.history())
        .ok()
        .and_then(|h| h.entries.into_iter().rev().find(|h| h.id == *tx));
    let reason = match entry {
        None => "this state directory has no record of it".to_owned(),
        Some(h) if h.outcome == Outcome::Reverted => {
            format!(
                "it is the revert recorded on {}; its pre-images are gone",
                h.ended
            )
        }
        Some(h) if !h.outcome.changed_images() => {
            format!("it changed nothing (it was {})", h.outcome.as_str())
        }
        Some(_) => "its pre-images are no longer kept (a later commit of a base reused them, \
                    it ran without pre-images, it was already reverted, or they were pruned)"
            .to_owned(),
    };
    Error::NotKept {
        tx: tx.clone(),
        reason,
    }
}
