//! What a commit leaves for a later revert: checksums of what it wrote in the ranges its
//! pre-images cover, and, where the data went by reflink, the overlay kept as proof.

use storage::{File, Fs};

use super::prepare::{Checked, Prepared};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::finish::Keep;
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::Format;
use crate::plan::ByteRange;
use crate::written::Tally;
use crate::{base, kept, layout};

/// Records what the commit left, for a later revert: the kept record first, then the files
/// it names (nothing kept is ever left unexplained). An overlay whose data reached its base
/// by reflink is the proof of what it wrote, and is kept.
pub(super) fn remember<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (tx, keeping): (&TxId, Keep),
    (checked, prepared): (&[Checked<'_, S>], &[Prepared<S>]),
    tallies: Vec<Tally>,
) -> Result<()> {
    let written = if keeping == Keep::No {
        Vec::new()
    } else {
        written(e, (tx, keeping), checked, prepared, tallies)?
    };
    kept::remember(e, tx, written.clone(), keeping == Keep::Pinned);
    keep_posts(e, tx, &written)
}

/// For every image, what a revert needs: the pre-images' summary, and checksums of what the
/// commit left in every range it changed (the file is filled in once cleanup kept it). A raw
/// base's come from the data the apply wrote (`tallies`); where that data was shared by
/// reflink instead, unseen, the overlay is kept as the proof (`post`) rather than reading
/// the base back; a qcow2 base, which qemu-img wrote, is read back in the ranges its
/// pre-images cover.
fn written<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (tx, keeping): (&TxId, Keep),
    checked: &[Checked<'_, S>],
    prepared: &[Prepared<S>],
    tallies: Vec<Tally>,
) -> Result<Vec<kept::KeptImage>> {
    let mut out = Vec::new();
    for ((c, p), tally) in checked.iter().zip(prepared).zip(tallies) {
        let Some((summary, ranges)) = &p.saved else {
            continue;
        };
        let base = base::open(&e.fs, tx, (&c.img.base, c.img.base_id.dev_ino()), false)?;
        let new_len = base.len().map_err(Error::io("stat", &c.img.base))?;
        let mut post = None;
        let written = match c.img.base_format {
            Format::Raw if tally.complete() => tally.finish(&crate::written::raw_ranges(&c.plan)),
            Format::Raw => {
                post = Some(layout::post(&c.img.base, tx)?);
                crate::written::raw_ranges(&c.plan)
                    .into_iter()
                    .map(|r| crate::written::Written {
                        offset: r.offset,
                        len: r.len,
                        crc: 0,
                    })
                    .collect()
            }
            Format::Qcow2 => {
                // What the commit grew the file by is checked too: a revert cuts it off.
                let mut ranges = ranges.clone();
                if new_len > summary.old_len {
                    ranges.push(ByteRange::new(summary.old_len, new_len - summary.old_len));
                }
                crate::written::checksums(&base, &c.img.base, &ranges)?
            }
        };
        out.push(kept::KeptImage {
            base: c.img.base.clone(),
            base_dev_ino: c.img.base_id.dev_ino(),
            format: c.img.base_format,
            new_len,
            file: match keeping {
                Keep::Pinned => layout::kept(&c.img.base, tx)?,
                _ => layout::spare(&c.img.base)?,
            },
            summary: summary.clone(),
            written,
            post,
        });
    }
    Ok(out)
}

/// Renames the overlays that `written` says are kept as proof (`post`) to their kept names,
/// durably, before cleanup would remove them.
fn keep_posts<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId, written: &[kept::KeptImage]) -> Result<()> {
    for k in written {
        let Some(post) = &k.post else { continue };
        let overlay = layout::overlay(&k.base, tx)?;
        e.fs.rename(&overlay, post)
            .map_err(Error::io("keep the overlay as", post))?;
        crate::files::sync_dir(&e.fs, layout::dir_of(post)?)?;
    }
    Ok(())
}
