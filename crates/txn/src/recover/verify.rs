//! Telling "torn by us" from "changed by someone else", and "written" from "untouched":
//! before recovery writes a base, or drops pre-images of a base that may have been written,
//! it checks that the base is still the file the commit wrote (inode, birth time) and that
//! its length is the old or the new one; where the pre-images are at hand, it also compares
//! the ranges the commit writes with their old content.
//!
//! The content cannot prove a foreign write: after a power cut, blocks the commit had
//! written but not yet synced may hold anything (the old content, the new one, zeros or
//! garbage), so only the identity and the length refuse. The comparison tells whether any
//! of the commit's writes reached the base, which decides what a journal without its commit
//! record means.

use std::path::Path;

use storage::{File, Fs};

use super::discover::{CommitState, ImageJournal};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, Format};
use crate::record::{FileState, Intent, UndoSummary};
use crate::{layout, preimage};

/// What the ranges a commit writes hold now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Every block holds its old content: nothing of the commit reached the base.
    Old,
    /// Some block differs from its old content: the commit was under way.
    Written,
    /// Only the identity and length could be checked (no usable pre-images).
    Unchecked,
}

/// Checks the base of `image` against what the commit wrote; its content only when the
/// pre-images passed their checks (`undo_ok`). `Ok(Err(reason))` when it is not the file,
/// or not the length, the commit left.
pub(crate) fn base<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
    image: &ImageJournal,
    undo_ok: bool,
) -> Result<Result<Content, String>> {
    let Some(intent) = &image.intent else {
        return Ok(Ok(Content::Unchecked));
    };
    if let Err(reason) = identity(&e.fs, intent, image)? {
        return Ok(Err(reason));
    }
    let Some(summary) = image.undo.as_ref().filter(|_| intent.undo && undo_ok) else {
        return Ok(Ok(Content::Unchecked));
    };
    let undo = layout::undo(&intent.base, &st.tx)?;
    let old = holds_old(e, &intent.base, (&undo, summary), &st.tx)?;
    Ok(Ok(if old { Content::Old } else { Content::Written }))
}

/// True when the base `path` holds, in every range the pre-image file `undo` (described by
/// `summary`, of transaction `tx`) saved, that saved old content.
pub(crate) fn holds_old<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    path: &Path,
    (undo, summary): (&Path, &UndoSummary),
    tx: &TxId,
) -> Result<bool> {
    let base = e.fs.open(path, false).map_err(Error::io("open", path))?;
    let mut written = false;
    let mut now = Vec::new();
    // The pre-images of a qcow2 base are ranges of its file, as those of a raw base are of
    // the image: either way they are what the commit may overwrite, byte for byte.
    preimage::for_each_saved(
        &e.fs,
        undo,
        (tx, e.host.user().1),
        summary,
        |offset, len, old| {
            if !written {
                now.resize(usize::try_from(len).unwrap_or(0), 0);
                read_or_zeros(&base, path, &mut now, offset)?;
                written = match old {
                    Some(old) => old != now.as_slice(),
                    None => now.iter().any(|&b| b != 0),
                };
            }
            Ok(())
        },
    )?;
    Ok(!written)
}

/// Whether the base of `intent` is still the file the commit wrote, with the old or the new
/// length. `Ok(Err(reason))` when it is not.
fn identity<S: Fs>(fs: &S, intent: &Intent, image: &ImageJournal) -> Result<Result<(), String>> {
    let base = &intent.base;
    let Some(meta) = fs.metadata(base).map_err(Error::io("stat", base))? else {
        return Ok(Err(format!(
            "its base {} does not exist: it was moved or deleted after the commit was interrupted",
            base.display()
        )));
    };
    let now = FileState::of(&meta);
    let replaced = DevIno::of(&meta) != intent.base_dev_ino
        || image.states.is_some_and(|s| !s.base.same_file(&now));
    if replaced {
        return Ok(Err(format!(
            "its base {} was replaced by another file after the commit was interrupted",
            base.display()
        )));
    }
    let plan = &intent.plan;
    let len_ok = match (intent.base_format, image.states) {
        // A revert goes from the length it found to the length the reverted transaction
        // found, whatever the format.
        (_, Some(s)) if image.reverting.is_some() => {
            meta.len == s.base.len
                || image
                    .reverting
                    .as_ref()
                    .is_some_and(|r| meta.len == r.summary.old_len)
        }
        (Format::Raw, _) => meta.len == plan.old_len || meta.len == plan.new_len(),
        // qemu-img only ever grows a qcow2 file; restoring cuts it back.
        (Format::Qcow2, Some(s)) => meta.len >= s.base.len,
        (Format::Qcow2, None) => true,
    };
    if !len_ok {
        return Ok(Err(format!(
            "its base {} is {} bytes long, neither its old length nor its new one: it was \
             truncated or extended after the commit was interrupted",
            base.display(),
            meta.len
        )));
    }
    Ok(Ok(()))
}

/// Reads `buf.len()` bytes at `offset`; what lies past the end of the file reads as zeros.
fn read_or_zeros<F: File>(f: &F, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], offset + done as u64)
            .map_err(Error::io("read", path))?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// How long recovery waits for a `qemu-img` of the interrupted commit to die (it is killed
/// when its imgtx dies, and exits within moments) before it refuses.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (briefly) until no writer of the interrupted commit has `base` open, or refuses:
/// recovering while it may still write would leave the base neither old nor new.
pub(crate) fn wait_for_writer<S: Fs, H: Host>(e: &Ctx<S, H>, base: &Path) -> Result<()> {
    let step = std::time::Duration::from_millis(100);
    let mut waited = std::time::Duration::ZERO;
    while e.host.writer_running(base)? {
        if waited >= WRITER_GRACE {
            return Err(Error::WriterRunning {
                path: base.to_path_buf(),
                pids: e.host.holders(base),
            });
        }
        e.host.sleep(step);
        waited += step;
    }
    Ok(())
}
