//! `begin`: claim the bases and create one qcow2 overlay over each.
//!
//! [`begin`] runs the steps of "Begin" in `docs/commit-protocol.md`. While it waits for
//! images others hold, it has written nothing; from the manifest on, a failure at any step
//! removes what the earlier ones made ([`undo_begin`]), and a crash leaves a manifest in
//! state `beginning` that `recover` cleans up the same way.

use std::path::{Path, PathBuf};

use storage::{File, FileKind, Fs};

use crate::claim::{self, Claim, Found};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{remove_durably, sync_dir};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, FileId, Format, Holder, ImageEntry, Manifest, TxState};
use crate::options::BeginOptions;
use crate::wait::{Blocker, Waiter, Waiting};
use crate::{base, layout};

/// One base to begin over: its resolved path, and every name its claims must cover.
struct Target {
    base: PathBuf,
    names: Vec<PathBuf>,
}

/// Begins a transaction over `opts.bases`; returns its manifest (id, images, overlays).
/// `on_wait` hears, at every poll, what a begin that waits is waiting for.
pub(crate) fn begin<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    opts: &BeginOptions,
    on_wait: &mut dyn FnMut(&Waiting),
) -> Result<Manifest> {
    if opts.bases.is_empty() {
        return Err(Error::Invalid("name at least one base image".into()));
    }
    e.check_interrupt()?;
    // 1. Resolve and check what can be checked before holding the images.
    let mut targets: Vec<Target> = Vec::new();
    for given in &opts.bases {
        targets.push(target(e, given, &targets)?);
    }
    let id = e.host.new_id()?;
    let _guard = e.lock_tx(&id)?;
    let mut waiter = Waiter::new(e, &id, opts.wait, on_wait);
    let (mut m, _leases) = match claim_when_free(e, &id, opts, &targets, &mut waiter) {
        Ok(held) => held,
        Err(err) => {
            // Refused, timed out or stopped while waiting: no transaction came of it, so
            // its lock file must not stay behind in the state directory either.
            e.drop_lock_file(&id);
            return Err(err);
        }
    };
    e.host.step("begin-claims");
    // 4-5. Holding the images: what is left to check, then the overlays.
    match finish(e, &mut m, opts.base_format, &mut waiter) {
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

/// Steps 2-3: waits (reading only) until the images are free and it is this begin's turn;
/// then the bases' leases (across hosts), the manifest, then the claims. Losing a race for a
/// lease or a claim undoes what was made and waits again. On failure, neither a manifest nor
/// a claim of `id` is left. Returns the manifest and the leases, to hold until the overlays
/// are made.
fn claim_when_free<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    opts: &BeginOptions,
    targets: &[Target],
    waiter: &mut Waiter<'_, S, H>,
) -> Result<(Manifest, crate::lease::LeaseGuard)> {
    loop {
        wait_until_free(e, targets, waiter)?;
        // One held by a process of another host is waited for like a claim (never while
        // holding leases: waiting holds nothing).
        let leases = match e.lease_bases(targets.iter().map(|t| t.base.as_path())) {
            Ok(held) => held,
            Err(Error::LeaseBusy { path, host_id, .. }) => {
                let holder = Holder {
                    host_id,
                    ..Holder::unknown("(a process holding its lease)")
                };
                let base = targets
                    .iter()
                    .find(|t| layout::lease(&t.base).is_ok_and(|l| l == path))
                    .map_or(path, |t| t.base.clone());
                waiter.blocked(&base, Blocker::Transaction(holder))?;
                continue;
            }
            Err(err) => return Err(err),
        };
        let m = manifest(e, id, opts, targets)?;
        e.state.save(&e.fs, &m)?;
        e.host.step("begin-manifest");
        match claim_all(e, &m, targets) {
            Ok(None) => return Ok((m, leases)),
            Ok(Some((base, found))) => {
                undo_begin(e, &m)?;
                drop(leases);
                let holder = found.holder().unwrap_or_else(|| Holder::unknown("?"));
                waiter.blocked(&base, Blocker::Transaction(holder))?;
            }
            Err(err) => {
                let _ = undo_begin(e, &m);
                return Err(err);
            }
        }
    }
}

/// Step 1 for the base the user named `given`: resolved, a regular file, not named twice,
/// with room for the names imgtx derives from it.
fn target<S: Fs, H: Host>(e: &Ctx<S, H>, given: &Path, earlier: &[Target]) -> Result<Target> {
    // Resolved once, here: every later open of the base and of the files beside it follows
    // no symlink, so the stored path must hold none.
    let base =
        e.fs.canonicalize(given)
            .map_err(Error::io("resolve", given))?;
    let invalid = |reason: &str| Error::InvalidBase {
        path: base.clone(),
        reason: reason.into(),
    };
    let meta = e.fs.metadata(&base).map_err(Error::io("stat", &base))?;
    let meta = meta.ok_or_else(|| invalid("it does not exist"))?;
    if meta.kind != FileKind::File {
        return Err(invalid("it is not a regular file"));
    }
    layout::check_room_for_names(&base)?;
    // An interrupted commit first: it holds the image too, but the answer is recovery.
    base::check_no_interrupted(&e.fs, &base)?;
    // A hard link in another directory: this state directory's own transactions know their
    // images by inode, whatever name they were begun through; others' are refused below.
    let linked = (meta.nlink > 1).then(|| DevIno::of(&meta));
    if let Some(holder) = linked.map(|di| own_holder(e, di)).transpose()?.flatten() {
        return Err(Error::Busy {
            path: base,
            holder: Box::new(holder),
        });
    }
    let names = claim::names(&e.fs, &base)?;
    if earlier
        .iter()
        .any(|t| t.names.iter().any(|n| names.contains(n)))
    {
        return Err(invalid("it is named twice in this transaction"));
    }
    Ok(Target { base, names })
}

/// The transaction of this state directory that has the image with `dev_ino`, if one has.
fn own_holder<S: Fs, H: Host>(e: &Ctx<S, H>, dev_ino: DevIno) -> Result<Option<Holder>> {
    for id in e.state.list(&e.fs)? {
        if let Some(m) = e.state.load(&e.fs, &id)? {
            if m.images.iter().any(|i| i.base_id.dev_ino() == dev_ino) {
                return Ok(Some(Holder::of(&m)));
            }
        }
    }
    Ok(None)
}

/// Waits until no claim covers any target and no earlier waiter waits for one.
fn wait_until_free<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    targets: &[Target],
    waiter: &mut Waiter<'_, S, H>,
) -> Result<()> {
    'poll: loop {
        for t in targets {
            for name in &t.names {
                let found = claim::read(&e.fs, name)?;
                if let Some(holder) = found.holder() {
                    check_holder_may_finish(e, name, &found)?;
                    waiter.blocked(&t.base, Blocker::Transaction(holder))?;
                    continue 'poll;
                }
            }
            if !waiter.my_turn(&t.base)? {
                waiter.blocked(
                    &t.base,
                    Blocker::Transaction(Holder::unknown("an earlier waiter")),
                )?;
                continue 'poll;
            }
        }
        return Ok(());
    }
}

/// The manifest of a beginning transaction over `targets`; formats and identities are
/// provisional until the images are held ([`finish`]).
fn manifest<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    opts: &BeginOptions,
    targets: &[Target],
) -> Result<Manifest> {
    let mut images = Vec::new();
    for t in targets {
        let meta =
            e.fs.metadata(&t.base)
                .map_err(Error::io("stat", &t.base))?
                .ok_or_else(|| Error::InvalidBase {
                    path: t.base.clone(),
                    reason: "it no longer exists".into(),
                })?;
        images.push(ImageEntry {
            base: t.base.clone(),
            base_format: Format::Raw,
            overlay: layout::overlay(&t.base, id)?,
            base_id: FileId::of(&meta),
            overlay_dev_ino: None,
        });
    }
    let (user, uid) = e.host.user();
    Ok(Manifest {
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
    })
}

/// Step 3: claims every name of every target; `Ok(Some((base, found)))` names the first one
/// someone else got first (the claims taken by then stay, for [`undo_begin`] to release).
fn claim_all<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: &Manifest,
    targets: &[Target],
) -> Result<Option<(PathBuf, Found)>> {
    let claim = Claim::of(m, e.state.root(), e.leases.member());
    for t in targets {
        for name in &t.names {
            if let Some(found) = claim::take(&e.fs, name, &claim)? {
                return Ok(Some((t.base.clone(), found)));
            }
        }
    }
    Ok(None)
}

/// Steps 4-5, holding the images: no interrupted commit beside them and no qemu using them
/// (waiting for qemu when asked to wait), their format (`stated`, or decided safely) and
/// identity as they are now, then the overlays, and the manifest rewritten as `open`.
fn finish<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: &mut Manifest,
    stated: Option<Format>,
    waiter: &mut Waiter<'_, S, H>,
) -> Result<()> {
    let mut sizes = Vec::new();
    for img in &mut m.images {
        base::check_no_interrupted(&e.fs, &img.base)?;
        while e.host.image_in_use(&img.base)? {
            waiter.blocked(&img.base, Blocker::Qemu(e.host.holders(&img.base)))?;
        }
        // The image as it is now that nobody else may change it: the transaction that held
        // it while this begin waited may have committed into it.
        let meta =
            e.fs.metadata(&img.base)
                .map_err(Error::io("stat", &img.base))?
                .ok_or_else(|| Error::InvalidBase {
                    path: img.base.clone(),
                    reason: "it no longer exists".into(),
                })?;
        img.base_id = FileId::of(&meta);
        let (format, size) = base::decide_format(&e.fs, &img.base, stated)?;
        img.base_format = format;
        sizes.push(size);
    }
    for (img, &size) in m.images.iter_mut().zip(&sizes) {
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

/// Refuses to wait for a claim that will never go by itself: one this state directory
/// registers, whose transaction is not open (or still beginning in a live process). Claims
/// of other state directories are waited for.
fn check_holder_may_finish<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    name: &Path,
    found: &Found,
) -> Result<()> {
    let Found::Claim(c) = found else {
        return Ok(());
    };
    if c.state_dir != e.state.root() {
        return Ok(());
    }
    let state = e.state.load(&e.fs, &c.tx).ok().flatten().map(|m| m.state);
    let doing = match state {
        Some(TxState::Open) => return Ok(()),
        Some(TxState::Beginning | TxState::RollingBack) | None
            if e.host.is_locked(&e.state.lock(&c.tx))? =>
        {
            return Ok(())
        }
        Some(other) => other.doing().unwrap_or("beginning"),
        None => {
            // Its manifest is gone: a claim nobody will release, which recovery beside the
            // base removes.
            return Err(Error::RecoveryNeeded {
                path: name.to_path_buf(),
                tx: c.tx.clone(),
            });
        }
    };
    Err(Error::Interrupted {
        tx: c.tx.clone(),
        doing,
    })
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
    claim::release_all(&e.fs, m.images.iter().map(|i| i.base.as_path()), &m.id)?;
    e.state.remove_manifest(&e.fs, &m.id)
}
