//! The imgtx transaction engine: begin a transaction over VM disk images (a qcow2 overlay
//! per base), then commit it crash-safely into the bases, roll it back, or recover an
//! interrupted commit; plus status, diff and history.
//!
//! The engine is generic over the [`storage::Fs`] seam and a [`Host`] (locks, qemu-img,
//! identity, time), so the same code runs on real files and on a simulated disk. It never
//! prints: it returns [`Error`]s whose [`Error::class`] tells a front end which exit status to
//! use, and emits `tracing` events. It is not a qcow2 implementation (that is the `qcow`
//! crate) nor a log format (the `journal` crate).
//!
//! [`Engine`]'s methods are the operations; each is run by the orchestrator module of its
//! phase (`begin`, `commit`, `rollback`, `recover`, `inspect`), which reads like the protocol
//! in `docs/commit-protocol.md`. Below the orchestrators, one module per job: `plan` (what a
//! commit changes), `apply` (writing a plan into a base), `preimage` (saving, verifying and
//! restoring old content), `txjournal` and `record` (the journal of one image), `finish`
//! (history entries and cleanup), `trust` (files read back from disk), `base` and `overlay`
//! (checking the two images), `manifest` and `statedir` (the state directory), and `host`,
//! `lock`, `qemu`, `release` (the machine).

#![deny(missing_docs)]
// One audited exception: `qemu` sets the qemu-img child's parent-death signal before exec.
#![deny(unsafe_code)]

mod apply;
mod audit;
mod base;
mod begin;
pub mod claim;
mod commit;
mod ctx;
mod error;
mod files;
mod finish;
mod history;
mod host;
mod id;
mod inspect;
pub mod kept;
pub mod layout;
pub mod lease;
mod lock;
mod lookup;
mod manifest;
mod options;
mod overlay;
mod owner;
pub mod plan;
mod preimage;
mod qemu;
mod record;
mod recover;
pub mod release;
mod revert;
mod rollback;
mod statedir;
mod time;
mod trust;
mod txjournal;
mod wait;
mod written;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use storage::Fs;

pub use error::{Error, ErrorClass, Result};
pub use history::{
    AnchorCheck, Aside, CarriedOver, ChainFormat, ChainHash, History, HistoryEntry, HistoryImage,
    KeptAside, Outcome, ParseChainHashError, Problem, ProblemKind, Verification,
};
pub use host::{Host, OsGuard, OsHost};
pub use id::TxId;
pub use inspect::{Condition, ImageDiff, ImageStatus, KeptFile, TxStatus};
pub use kept::{PruneOptions, Pruned};
pub use manifest::{DevIno, FileId, Format, Holder, ImageEntry, Manifest, TxState};
pub use options::RevertReport;
pub use options::{
    AbandonReport, BeginOptions, CommitOptions, CommitReport, Phase, Progress, RecoverAction,
    RecoverFailure, RecoverOptions, RecoverReport, RecoveryAction, Spare, Wait,
};
pub use record::Direction;
pub use release::Released;
pub use time::rfc3339;
pub use wait::{Blocker, Waiting};

/// The transaction engine over file system `S` on host `H`.
#[derive(Debug)]
pub struct Engine<S, H> {
    ctx: ctx::Ctx<S, H>,
}

impl<S: Fs, H: Host> Engine<S, H> {
    /// An engine keeping its registry in `state_dir` (absolute), created 0700 if missing.
    pub fn new(fs: S, host: H, state_dir: PathBuf) -> Result<Self> {
        // Resolved once: the state directory may sit under a symlinked home, but nothing
        // inside it is reached through a symlink afterwards.
        let state_dir = fs
            .canonicalize(&state_dir)
            .map_err(Error::io("resolve", state_dir))?;
        let state = statedir::StateDir::new(state_dir, host.user().1);
        // Before creating anything in it, and again after: nothing but this user's own
        // directories may hold what tells imgtx which files to remove.
        state.check_trusted(&fs)?;
        state.create(&fs)?;
        state.check_trusted(&fs)?;
        let ctx = ctx::Ctx {
            fs,
            host,
            state,
            interrupt: None,
            leases: Arc::new(lease::NoLeases),
            takeover: std::sync::Mutex::default(),
        };
        // Outcomes an earlier command could not record wait for the history: now, maybe.
        audit::flush_pending(&ctx);
        Ok(Self { ctx })
    }

    /// An engine over the existing state directory `state_dir`, for commands that only read:
    /// `None` when there is none (then there is nothing to show), and nothing is created.
    pub fn open_existing(fs: S, host: H, state_dir: PathBuf) -> Result<Option<Self>> {
        let state_dir = fs
            .canonicalize(&state_dir)
            .map_err(Error::io("resolve", state_dir))?;
        if fs
            .metadata(&state_dir)
            .map_err(Error::io("stat", &state_dir))?
            .is_none()
        {
            return Ok(None);
        }
        let state = statedir::StateDir::new(state_dir, host.user().1);
        state.check_trusted(&fs)?;
        Ok(Some(Self {
            ctx: ctx::Ctx {
                fs,
                host,
                state,
                interrupt: None,
                leases: Arc::new(lease::NoLeases),
                takeover: std::sync::Mutex::default(),
            },
        }))
    }

    /// This engine, stopping its operations with [`Error::Stopped`] once `flag` is set
    /// (to a signal's number), wherever stopping changes nothing: a begin (also while it
    /// waits), a commit before its commit point, recovery between transactions. A commit
    /// past its commit point, a recovery under way and a rollback are finished first.
    #[must_use]
    pub fn with_interrupt(mut self, flag: Arc<AtomicUsize>) -> Self {
        self.ctx.interrupt = Some(flag);
        self
    }

    /// This engine, working under the leases of `leases` (see [`lease`]): each base's
    /// lease is held while its claims are taken, for the whole of commit, rollback, revert
    /// and each transaction's recovery, and transactions of other live hosts are refused.
    #[must_use]
    pub fn with_leases(mut self, leases: Arc<dyn lease::Leases>) -> Self {
        self.ctx.leases = leases;
        self
    }

    /// Holds the leases of `bases` while the guard lives (nothing without a lockspace):
    /// for `imgtx run`, whose command works on the overlays between begin and commit.
    ///
    /// # Errors
    /// [`Error::LeaseBusy`] when another host's process holds one; [`Error::Lease`].
    pub fn hold_leases(&self, bases: &[PathBuf]) -> Result<lease::LeaseGuard> {
        self.ctx.lease_bases(bases.iter().map(PathBuf::as_path))
    }

    /// The leases of the bases of open transaction `id`, its claims checked under them
    /// (see [`lease`]): another live host's transaction is [`Error::HostAlive`], a dead
    /// one's [`Error::HostDead`] (recovery takes it over).
    fn lease_open_tx(&self, id: &TxId) -> Result<lease::LeaseGuard> {
        if self.ctx.leases.member().is_none() {
            return Ok(lease::LeaseGuard::default());
        }
        // A transaction this directory does not know: the operation says so itself.
        let Some(m) = self.ctx.state.load(&self.ctx.fs, id)? else {
            return Ok(lease::LeaseGuard::default());
        };
        let bases: Vec<PathBuf> = m.images.iter().map(|i| i.base.clone()).collect();
        match self.ctx.lease_tx_bases(id, &bases)? {
            (guard, None) => Ok(guard),
            (_, Some(t)) => Err(Error::HostDead {
                tx: id.clone(),
                host_id: t.from_host_id,
                host: t.from_host,
            }),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.ctx.state.root()
    }

    /// Begins a transaction over `opts.bases`; returns its manifest (id, images, overlays).
    pub fn begin(&self, opts: &BeginOptions) -> Result<Manifest> {
        self.begin_with(opts, &mut |_| {})
    }

    /// [`Engine::begin`], with `on_wait` hearing, at every poll of a begin that waits (see
    /// [`BeginOptions::wait`]), what it waits for and how long it has.
    pub fn begin_with(
        &self,
        opts: &BeginOptions,
        on_wait: &mut dyn FnMut(&Waiting),
    ) -> Result<Manifest> {
        begin::begin(&self.ctx, opts, on_wait)
    }

    /// Commits transaction `id`; `progress` hears about the data copied.
    pub fn commit(
        &self,
        id: &TxId,
        opts: CommitOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<CommitReport> {
        let _leases = self.lease_open_tx(id)?;
        commit::commit(&self.ctx, id, opts, progress)
    }

    /// Takes back the committed transaction `tx` from its kept pre-images, as a transaction
    /// of its own (itself revertible); `progress` hears about the data copied.
    pub fn revert(&self, tx: &TxId, progress: &mut dyn FnMut(Progress)) -> Result<RevertReport> {
        revert::revert(&self.ctx, tx, progress)
    }

    /// Every committed transaction whose pre-images are kept (hence revertible), oldest
    /// first, with the bytes they take.
    pub fn kept(&self) -> Result<Vec<(kept::Record, u64)>> {
        let records = self.ctx.state.list_kept(&self.ctx.fs)?;
        Ok(records
            .into_iter()
            .map(|r| {
                let bytes = r.bytes(&self.ctx.fs);
                (r, bytes)
            })
            .collect())
    }

    /// Frees the kept pre-images `opts` selects; those transactions can no longer be
    /// reverted.
    pub fn prune(&self, opts: PruneOptions) -> Result<Vec<Pruned>> {
        kept::prune(&self.ctx, opts)
    }

    /// Rolls transaction `id` back: removes its overlays, claims and registration.
    pub fn rollback(&self, id: &TxId) -> Result<()> {
        let _leases = self.lease_open_tx(id)?;
        rollback::rollback(&self.ctx, id)
    }

    /// Finishes or undoes every interrupted operation found beside `opts.paths` (or of every
    /// registered transaction when empty). Running it again does nothing more.
    pub fn recover(&self, opts: &RecoverOptions) -> Result<RecoverReport> {
        self.recover_with_progress(opts, &mut |_| {})
    }

    /// [`Engine::recover`], with `progress` hearing about the data copied back into bases
    /// (a roll forward can copy as much as the commit it finishes).
    ///
    /// # Errors
    /// The first transaction that could not be recovered, once every other one was; use
    /// [`Engine::recover_all`] for the whole report.
    pub fn recover_with_progress(
        &self,
        opts: &RecoverOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RecoverReport> {
        let mut report = self.recover_all(opts, progress)?;
        if report.failures.is_empty() {
            Ok(report)
        } else {
            Err(report.failures.swap_remove(0).error)
        }
    }

    /// Recovers every transaction it can, and reports those it cannot in
    /// [`RecoverReport::failures`] instead of stopping at the first.
    ///
    /// # Errors
    /// Only when the transactions to recover cannot even be listed.
    pub fn recover_all(
        &self,
        opts: &RecoverOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RecoverReport> {
        recover::recover(&self.ctx, opts, progress)
    }

    /// Ends transaction `id` without writing any image, when it can be neither finished nor
    /// undone (its base was deleted or moved, say). Its journals and pre-image files are
    /// renamed aside and its overlays left in place, for forensics; the history records it
    /// as abandoned. `paths` name bases whose journals may belong to it, for a transaction
    /// this state directory does not know.
    pub fn abandon(&self, id: &TxId, paths: &[PathBuf]) -> Result<AbandonReport> {
        recover::abandon::abandon(&self.ctx, id, paths)
    }

    /// Keeps other writers out of the bases of transaction `m` while the guards live: for
    /// `imgtx run`, whose command works on the overlays (and may open the bases read-only
    /// as their backing files) while nothing else may write the bases.
    pub fn keep_writers_out(&self, m: &Manifest) -> Result<Vec<H::Guard>> {
        m.images
            .iter()
            .map(|i| self.ctx.host.keep_writers_out(&i.base))
            .collect()
    }

    /// What lies under the claim names of `bases`: who holds each, whatever state
    /// directory, user or host it is (for `status` of images).
    pub fn claims(&self, bases: &[PathBuf]) -> Result<Vec<(PathBuf, claim::Found)>> {
        bases
            .iter()
            .map(|b| Ok((b.clone(), claim::read(&self.ctx.fs, b)?)))
            .collect()
    }

    /// The registered transaction `given` names: its id, the name given at begin (when
    /// exactly one registered transaction has it), or an unambiguous prefix of its id (four
    /// hex digits at least; `tx-` may be left out).
    ///
    /// # Errors
    /// [`Error::Ambiguous`] when it fits several; [`Error::Finished`] when it names a
    /// transaction the history says has ended; else [`Error::NotFound`], with the id it most
    /// likely is a typo of.
    pub fn find(&self, given: &str) -> Result<TxId> {
        lookup::find(&self.ctx, given)
    }

    /// The committed transaction `given` names for [`Engine::revert`]: a whole id, or the
    /// name or an unambiguous id prefix of one whose pre-images are kept.
    pub fn find_revertible(&self, given: &str) -> Result<TxId> {
        lookup::find_revertible(&self.ctx, given)
    }

    /// Every registered transaction (or just `id`), with its condition.
    pub fn status(&self, id: Option<&TxId>) -> Result<Vec<TxStatus>> {
        inspect::status(&self.ctx, id)
    }

    /// The sanlock lease files imgtx keeps beside the bases this state directory's
    /// transactions named.
    pub fn lease_files(&self) -> Result<Vec<KeptFile>> {
        inspect::lease_files(&self.ctx)
    }

    /// What each overlay of transaction `id` changes.
    pub fn diff(&self, id: &TxId) -> Result<Vec<ImageDiff>> {
        inspect::diff(&self.ctx, id)
    }

    /// The history, or only the entries touching `base`.
    pub fn log(&self, base: Option<&Path>) -> Result<History> {
        inspect::log(&self.ctx, base)
    }

    /// Checks the history's hash chain, and that `anchor` (a head hash recorded earlier,
    /// elsewhere) is in it. Reads only; damage is reported in the result, not as an error.
    pub fn verify_history(&self, anchor: Option<&ChainHash>) -> Result<Verification> {
        inspect::verify_history(&self.ctx, anchor)
    }
}
