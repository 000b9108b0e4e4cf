//! `begin`: claim the bases and create one qcow2 overlay over each.
//!
//! [`begin`] runs the steps of "Begin" in `docs/commit-protocol.md`; a failure at any step
//! removes what the earlier ones made ([`undo_begin`]), and a crash leaves a manifest in
//! state `beginning` that `recover` cleans up the same way.

use std::path::Path;
use std::time::Duration;

use storage::{File, FileKind, Fs};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{remove_durably, sync_dir};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, FileId, Holder, ImageEntry, Manifest, TxState};
use crate::options::{BeginOptions, Wait};
use crate::{base, layout};

/// How often a waiting begin looks at a busy base again.
const POLL: Duration = Duration::from_millis(200);

/// Begins a transaction over `opts.bases`; returns its manifest (id, images, overlays).
pub(crate) fn begin<S: Fs, H: Host>(e: &Ctx<S, H>, opts: &BeginOptions) -> Result<Manifest> {
    if opts.bases.is_empty() {
        return Err(Error::Invalid("name at least one base image".into()));
    }
    e.check_interrupt()?;
    // 1. Check every base and decide its format, once.
    let mut images: Vec<ImageEntry> = Vec::new();
    let mut sizes = Vec::new();
    for given in &opts.bases {
        let (img, virtual_size) = check_base(e, given, opts, &images)?;
        images.push(img);
        sizes.push(virtual_size);
    }
    let id = e.host.new_id()?;
    for img in &mut images {
        img.overlay = layout::overlay(&img.base, &id)?;
    }
    // 2. The transaction lock, then the manifest in state `beginning`: every claim and
    // overlay made after it is explained by it.
    let _guard = e.lock_tx(&id)?;
    let (user, uid) = e.host.user();
    let mut m = Manifest {
        version: 1,
        id: id.clone(),
        name: opts.name.clone(),
        state: TxState::Beginning,
        created: e.now(),
        user,
        uid,
        host: e.host.hostname(),
        command: opts.command.clone(),
        images,
    };
    e.state.save(&e.fs, &m)?;
    e.host.step("begin-manifest");
    match claim_and_create(e, &mut m, &sizes, opts.wait) {
        Ok(()) => Ok(m),
        Err(err) => {
            if let Err(clean) = undo_begin(e, &m) {
                tracing::warn!(tx = %m.id, error = %clean, "could not clean up a failed begin");
            }
            e.drop_lock_file(&m.id);
            Err(err)
        }
    }
}

/// Step 1 for the base the user named `given`: resolved, a regular file, not named twice,
/// free of interrupted commits and of qemu; its entry (overlay still unnamed) and virtual
/// size.
fn check_base<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    given: &Path,
    opts: &BeginOptions,
    earlier: &[ImageEntry],
) -> Result<(ImageEntry, u64)> {
    // Resolved once, here: every later open of the base and of the files beside it follows
    // no symlink, so the stored path must hold none.
    let base = &e
        .fs
        .canonicalize(given)
        .map_err(Error::io("resolve", given))?;
    let invalid = |reason: &str| Error::InvalidBase {
        path: base.clone(),
        reason: reason.into(),
    };
    let meta = e.fs.metadata(base).map_err(Error::io("stat", base))?;
    let meta = meta.ok_or_else(|| invalid("it does not exist"))?;
    if meta.kind != FileKind::File {
        return Err(invalid("it is not a regular file"));
    }
    layout::check_room_for_names(base)?;
    if earlier
        .iter()
        .any(|i| i.base_id.dev_ino() == DevIno::of(&meta))
    {
        return Err(invalid("it is named twice in this transaction"));
    }
    base::check_no_interrupted(&e.fs, base)?;
    if e.host.image_in_use(base)? {
        return Err(Error::InUse {
            path: base.clone(),
            what: "base",
            pids: e.host.holders(base),
        });
    }
    let (format, virtual_size) = base::decide_format(&e.fs, base, opts.base_format)?;
    let entry = ImageEntry {
        base: base.clone(),
        base_format: format,
        overlay: base.clone(), // named once the id is known
        base_id: FileId::of(&meta),
        overlay_dev_ino: None,
    };
    Ok((entry, virtual_size))
}

/// Steps 3-5: claims, overlays, and the manifest rewritten as `open`.
fn claim_and_create<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: &mut Manifest,
    sizes: &[u64],
    wait: Wait,
) -> Result<()> {
    for img in &m.images {
        claim_with_wait(e, &img.base, img.base_id.dev_ino(), &m.id, wait)?;
    }
    e.host.step("begin-claims");
    for (img, &size) in m.images.iter_mut().zip(sizes) {
        img.overlay_dev_ino = Some(create_overlay(&e.fs, img, size)?);
    }
    e.host.step("begin-overlays");
    m.state = TxState::Open;
    e.state.save(&e.fs, m)?;
    e.host.step("begin-open");
    Ok(())
}

/// Step 4 for one image: the overlay, created exclusively and durable; its (dev, ino).
fn create_overlay<S: Fs>(fs: &S, img: &ImageEntry, size: u64) -> Result<DevIno> {
    let base = img.base.to_str().ok_or_else(|| Error::InvalidBase {
        path: img.base.clone(),
        reason: "its path is not UTF-8".into(),
    })?;
    let bytes = qcow::create_overlay(size, base, img.base_format.as_str())
        .map_err(Error::qcow(&img.overlay))?;
    let f = fs
        .create_new(&img.overlay)
        .map_err(Error::io("create the overlay", &img.overlay))?;
    f.write_all_at(&bytes, 0)
        .map_err(Error::io("write", &img.overlay))?;
    // Barrier: the overlay header must be durable before the manifest says the
    // transaction is open, or a crash could leave an open transaction over garbage.
    f.sync_data().map_err(Error::io("sync", &img.overlay))?;
    sync_dir(fs, layout::dir_of(&img.overlay)?)?;
    let opened = f.stat().map_err(Error::io("stat", &img.overlay))?;
    Ok(DevIno::of(&opened))
}

/// Step 3 for one base: its claim, taken now, or once its holder lets go when `wait` says
/// to wait.
fn claim_with_wait<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    base: &Path,
    dev_ino: DevIno,
    id: &TxId,
    wait: Wait,
) -> Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        e.check_interrupt()?;
        let Err(holder) = e.state.claim_base(&e.fs, dev_ino, id)? else {
            return Ok(());
        };
        check_holder_may_finish(e, &holder)?;
        let holder = Box::new(holder_of(e, &holder));
        let out_of_time = match wait {
            Wait::No => {
                return Err(Error::Busy {
                    path: base.to_path_buf(),
                    holder,
                })
            }
            Wait::Forever => false,
            Wait::For(limit) => waited >= limit,
        };
        if out_of_time {
            return Err(Error::WaitTimedOut {
                path: base.to_path_buf(),
                holder,
            });
        }
        tracing::debug!(base = %base.display(), %holder, "waiting for a busy base");
        e.host.sleep(POLL);
        waited += POLL;
    }
}

/// What this state directory knows of transaction `tx`, holding a base.
fn holder_of<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &str) -> Holder {
    TxId::parse(tx)
        .and_then(|id| e.state.load(&e.fs, &id).ok().flatten())
        .map_or_else(|| Holder::unknown(tx), |m| Holder::of(&m))
}

/// Refuses a claim `holder` that will never let go by itself: one that is not simply open
/// (or still beginning in a live process) needs recovery first.
fn check_holder_may_finish<S: Fs, H: Host>(e: &Ctx<S, H>, holder: &str) -> Result<()> {
    let Some(holder) = TxId::parse(holder) else {
        return Err(Error::Corrupt {
            path: e.state.root().join("claims"),
            reason: format!("a claim names {holder:?}, which is no transaction id"),
        });
    };
    let state = e.state.load(&e.fs, &holder).ok().flatten().map(|m| m.state);
    let doing = match state {
        Some(TxState::Open) => return Ok(()),
        Some(TxState::Beginning) => {
            let live = e
                .host
                .lock_exclusive(&e.state.lock(&holder), false)?
                .is_none();
            if live {
                return Ok(());
            }
            "beginning"
        }
        Some(other) => other.doing().unwrap_or("beginning"),
        None => "releasing its claim",
    };
    Err(Error::Interrupted { tx: holder, doing })
}

/// Removes whatever a begin created: overlays, claims, manifest. Idempotent.
pub(crate) fn undo_begin<S: Fs, H: Host>(e: &Ctx<S, H>, m: &Manifest) -> Result<()> {
    let owners = [m.uid, e.host.user().1];
    for img in &m.images {
        // The name carries this transaction's random id and was created exclusively, so a
        // file there that passes the rule is this transaction's overlay; anything else (a
        // file that stood in the way of the exclusive create) is left alone.
        let meta =
            e.fs.metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
        if meta.is_some_and(|x| crate::trust::is_begins_overlay(&x, img.overlay_dev_ino, &owners)) {
            remove_durably(&e.fs, &img.overlay, layout::dir_of(&img.overlay)?)?;
        }
    }
    for img in &m.images {
        e.state.release_base(&e.fs, img.base_id.dev_ino(), &m.id)?;
    }
    e.state.remove_manifest(&e.fs, &m.id)
}
