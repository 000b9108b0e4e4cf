//! Human and JSON output of each command.
//!
//! Every human line goes through [`escape`]: names and paths come from users and from disk,
//! and a control character in one (a base named with a newline) must not forge a line of
//! its own or move the cursor. JSON needs no such care: its strings are escaped by JSON.

use std::io::{self, Write};

use serde_json::{json, Value};
use txn::{
    kept, AbandonReport, Aside, ChainFormat, CommitReport, Condition, History, ImageDiff, KeptFile,
    Manifest, Outcome, Pruned, RecoverReport, RecoveryAction, RevertReport, Spare, TxId, TxStatus,
    Verification,
};

use crate::tag::Tag;
use crate::term::escape;
use crate::when;

/// How to print.
pub struct Out {
    /// JSON on stdout.
    pub json: bool,
    /// Nothing but errors.
    pub quiet: bool,
}

// Stdout is line-buffered; a diff of 100 000 extents would cost one write(2) per line, so
// both printers buffer the whole block and flush once.
pub fn print_json(v: &Value) -> io::Result<()> {
    let mut o = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    unless_reader_gone(writeln!(o, "{v}").and_then(|()| o.flush()))
}

fn human(lines: &[String]) -> io::Result<()> {
    let mut o = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = lines
        .iter()
        .try_for_each(|l| writeln!(o, "{}", escape(l)))
        .and_then(|()| o.flush());
    unless_reader_gone(written)
}

/// `written`, but a reader that went away (a closed pipe: `imgtx log | head -1`) is no
/// failure: the work the output reports is done either way, and the exit status must say
/// how that went (`run`'s command's status, `log --verify`'s verdict), not that nobody read.
fn unless_reader_gone(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes one human line on stderr, escaped. A failed write is ignored: stderr carries
/// reports about work that goes on (or is done) whether anyone reads them or not.
pub fn say(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", escape(line));
}

fn images_json(m: &Manifest) -> Value {
    m.images
        .iter()
        .map(|i| json!({"base": i.base, "base_format": i.base_format, "overlay": i.overlay}))
        .collect()
}

impl Out {
    pub fn begin(&self, m: &Manifest) -> io::Result<()> {
        if self.json {
            return print_json(&json!({"id": m.id, "name": m.name, "images": images_json(m)}));
        }
        // The id alone on stdout, so `TX=$(imgtx begin ...)` works; the overlays on stderr.
        human(&[m.id.to_string()])?;
        if !self.quiet {
            for i in &m.images {
                say(&format!(
                    "overlay {} over {} ({})",
                    i.overlay.display(),
                    i.base.display(),
                    i.base_format.as_str()
                ));
            }
        }
        Ok(())
    }

    pub fn commit(&self, r: &CommitReport) -> io::Result<()> {
        if self.json {
            return print_json(
                &json!({"id": r.id, "outcome": "committed", "images": r.images, "spares": r.spares}),
            );
        }
        if self.quiet {
            return Ok(());
        }
        let mut lines = vec![format!("committed {}", r.id)];
        lines.extend(
            r.images
                .iter()
                .map(|i| format!("  {}: {} changed", i.base.display(), size(i.changed_bytes))),
        );
        lines.extend(spare_lines(&r.spares));
        human(&lines)
    }

    pub fn rollback(&self, tx: &TxId) -> io::Result<()> {
        if self.json {
            return print_json(&json!({"id": tx, "outcome": "rolled_back"}));
        }
        if self.quiet {
            return Ok(());
        }
        human(&[format!("rolled back {tx}")])
    }

    /// `run` ended: its command exited with `exit_code` (killed by `killed_by` if that is
    /// set), and the transaction was committed (`r`) or rolled back.
    pub fn run(
        &self,
        tx: &TxId,
        (exit_code, killed_by): (i32, Option<i32>),
        r: Option<&CommitReport>,
    ) -> io::Result<()> {
        let committed = r.is_some();
        let outcome = if committed {
            "committed"
        } else {
            "rolled_back"
        };
        if self.json {
            let images = r.map_or(Value::Array(Vec::new()), |r| json!(r.images));
            let spares = r.map_or(Value::Array(Vec::new()), |r| json!(r.spares));
            return print_json(
                &json!({"id": tx, "outcome": outcome, "exit_code": exit_code,
                "killed_by": killed_by.map(signal_name), "images": images, "spares": spares}),
            );
        }
        if self.quiet {
            return Ok(());
        }
        if committed {
            say(&format!("command succeeded; committed {tx}"));
            for line in spare_lines(r.map_or(&[], |r| &r.spares)) {
                say(&line);
            }
        } else {
            say(&format!(
                "command {}; rolled back {tx}",
                ended(exit_code, killed_by)
            ));
        }
        Ok(())
    }

    /// A signal `sig` came while something was under way that is finished whatever the user
    /// asks (`what` says what): said on stderr, as an error would be, even with `-q`.
    pub fn finished_despite(&self, sig: i32, what: &str) -> io::Result<()> {
        let name = signal_name(sig);
        if self.json {
            let text = json!({"warning": format!("{name} received: {what}"), "signal": name});
            return writeln!(io::stderr(), "{text}");
        }
        crate::tag::say(Tag::Warning, &format!("{name} received: {what}"));
        Ok(())
    }

    /// `run` stopped by signal `sig` and rolled back.
    pub fn interrupted(&self, tx: &TxId, sig: i32) -> io::Result<()> {
        let name = signal_name(sig);
        if self.json {
            return print_json(
                &json!({"id": tx, "outcome": "rolled_back", "exit_code": 128 + sig, "signal": name, "images": []}),
            );
        }
        if self.quiet {
            return Ok(());
        }
        say(&format!("interrupted by {name}; rolled back {tx}"));
        Ok(())
    }

    pub fn recover(&self, r: &RecoverReport) -> io::Result<()> {
        if self.json {
            let failures: Vec<Value> = r
                .failures
                .iter()
                .map(|f| {
                    json!({"tx": f.tx, "bases": f.bases, "error": crate::advice::chain(&f.error),
                           "hint": crate::advice::for_error(&f.error)})
                })
                .collect();
            return print_json(
                &json!({"dry_run": r.dry_run, "actions": r.actions, "failures": failures}),
            );
        }
        // Failures are errors: on stderr, even with -q.
        for f in &r.failures {
            crate::tag::say(
                Tag::Error,
                &format!(
                    "transaction {} not recovered: {}",
                    f.tx,
                    crate::advice::chain(&f.error)
                ),
            );
            if let Some(hint) = crate::advice::for_error(&f.error) {
                crate::tag::say(Tag::Hint, &hint);
            }
        }
        if self.quiet {
            return Ok(());
        }
        if r.actions.is_empty() && r.failures.is_empty() {
            return human(&["nothing to recover".to_owned()]);
        }
        let mut lines = Vec::new();
        for a in &r.actions {
            let (would, did) = action_words(a.action);
            let words = if r.dry_run {
                format!("would {would}")
            } else {
                did.to_owned()
            };
            lines.push(format!("{}: {words}", a.tx));
            lines.extend(a.bases.iter().map(|b| format!("  {}", b.display())));
        }
        human(&lines)
    }

    pub fn abandon(&self, r: &AbandonReport) -> io::Result<()> {
        if self.json {
            return print_json(
                &json!({"id": r.id, "outcome": "abandoned", "bases": r.bases, "kept": r.kept}),
            );
        }
        if self.quiet {
            return Ok(());
        }
        let mut lines = vec![format!(
            "abandoned {}: no image was written; check each base before using it",
            r.id
        )];
        lines.extend(r.bases.iter().map(|b| format!("  base {}", b.display())));
        lines.extend(r.kept.iter().map(|k| format!("  kept {}", k.display())));
        human(&lines)
    }

    pub fn revert(&self, r: &RevertReport) -> io::Result<()> {
        if self.json {
            return print_json(
                &json!({"id": r.id, "outcome": "reverted", "reverted": r.reverted,
                "images": r.images, "spares": r.spares}),
            );
        }
        if self.quiet {
            return Ok(());
        }
        let mut lines = vec![format!(
            "reverted {} as {} (itself revertible: `imgtx revert {}`)",
            r.reverted, r.id, r.id
        )];
        lines.extend(
            r.images
                .iter()
                .map(|i| format!("  {}: {} put back", i.base.display(), size(i.changed_bytes))),
        );
        human(&lines)
    }

    pub fn prune(&self, pruned: &[Pruned], dry_run: bool) -> io::Result<()> {
        let total: u64 = pruned.iter().map(|p| p.bytes).sum();
        if self.json {
            let list: Vec<Value> = pruned
                .iter()
                .map(|p| json!({"id": p.tx, "committed": p.committed, "bytes": p.bytes}))
                .collect();
            return print_json(&json!({"dry_run": dry_run, "pruned": list, "bytes": total}));
        }
        if self.quiet {
            return Ok(());
        }
        let verb = if dry_run { "would free" } else { "freed" };
        let mut lines: Vec<String> = pruned
            .iter()
            .map(|p| {
                format!(
                    "{verb} {} of {} (committed {}): it can no longer be reverted",
                    indicatif::HumanBytes(p.bytes),
                    p.tx,
                    when::local(&p.committed)
                )
            })
            .collect();
        lines.push(format!(
            "{verb} {} in {} transaction(s)",
            indicatif::HumanBytes(total),
            pruned.len()
        ));
        human(&lines)
    }

    /// `status`: the transactions, then (without TX) what can be reverted and the lease
    /// files kept beside bases, each file named with its size.
    pub fn status(
        &self,
        list: &[TxStatus],
        kept: &[(kept::Record, u64)],
        leases: &[KeptFile],
    ) -> io::Result<()> {
        if self.json {
            let txs: Vec<Value> = list
                .iter()
                .map(|s| {
                    let m = &s.manifest;
                    let mut images = images_json(m);
                    if let Value::Array(list) = &mut images {
                        for (img, st) in list.iter_mut().zip(&s.images) {
                            img["base_missing"] = json!(st.base_missing);
                            img["base_changed"] = json!(st.base_changed.is_some());
                            img["base_change"] = json!(st.base_changed);
                            img["overlay_missing"] = json!(st.overlay_missing);
                        }
                    }
                    json!({
                        "id": m.id, "name": m.name, "state": s.condition, "created": m.created,
                        "user": m.user, "uid": m.uid, "host": m.host, "command": m.command,
                        "images": images,
                    })
                })
                .collect();
            let kept: Vec<Value> = kept
                .iter()
                .map(|(r, bytes)| {
                    let images: Vec<Value> = r
                        .images
                        .iter()
                        .map(|i| json!({"base": i.base, "file": i.file}))
                        .collect();
                    json!({"id": r.tx, "committed": r.committed, "pinned": r.pinned,
                        "bytes": bytes, "images": images})
                })
                .collect();
            return print_json(
                &json!({ "transactions": txs, "revertible": kept, "lease_files": leases }),
            );
        }
        let mut lines = Vec::new();
        if list.is_empty() {
            lines.push("no transactions".to_owned());
        }
        for s in list {
            let m = &s.manifest;
            let state = condition_words(s.condition);
            let name = m
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            lines.push(format!(
                "{}{name} {} since {} by {}@{}",
                m.id,
                state,
                when::local(&m.created),
                m.user,
                m.host
            ));
            for (i, st) in m.images.iter().zip(&s.images) {
                lines.push(format!(
                    "  {} [{}] -> {}",
                    i.base.display(),
                    i.base_format.as_str(),
                    i.overlay.display()
                ));
                if st.base_missing {
                    lines.push(
                        "    the base is not there (deleted, or its directory moved away or not \
                         mounted): put it back to commit, or roll the transaction back"
                            .to_owned(),
                    );
                }
                if let Some(what) = &st.base_changed {
                    lines.push(format!(
                        "    the base was written behind the transaction's back ({what}): it can \
                         no longer commit; roll it back"
                    ));
                }
                if st.overlay_missing {
                    lines.push(
                        "    the overlay is gone (deleted by hand): roll the transaction back"
                            .to_owned(),
                    );
                }
            }
        }
        if !kept.is_empty() {
            lines.push("revertible (pre-images kept; `imgtx prune` frees them):".to_owned());
        }
        for (r, bytes) in kept {
            let how = if r.pinned { "kept" } else { "spare" };
            lines.push(format!(
                "  {} committed {}: {} ({how})",
                r.tx,
                when::local(&r.committed),
                indicatif::HumanBytes(*bytes)
            ));
            // The files by name, each with its size: they are hidden (`.NAME.imgtx.spare`),
            // and their disk space must never be a surprise.
            for i in &r.images {
                let size = std::fs::symlink_metadata(&i.file).map_or_else(
                    |_| "gone".to_owned(),
                    |m| indicatif::HumanBytes(m.len()).to_string(),
                );
                lines.push(format!(
                    "    {}: {} ({size})",
                    i.base.display(),
                    i.file.display()
                ));
            }
        }
        if !leases.is_empty() {
            lines.push(
                "sanlock lease files (kept for good, for every host to find the lease):".to_owned(),
            );
            for f in leases {
                lines.push(format!(
                    "  {} ({})",
                    f.path.display(),
                    indicatif::HumanBytes(f.bytes)
                ));
            }
        }
        if self.quiet && list.is_empty() {
            return Ok(());
        }
        human(&lines)
    }

    pub fn diff(&self, tx: &TxId, images: &[ImageDiff]) -> io::Result<()> {
        if self.json {
            return print_json(&json!({"id": tx, "images": images}));
        }
        let mut lines = Vec::new();
        for d in images {
            let n = d.extents.len();
            lines.push(format!(
                "{}: {} changed in {n} extent{} (size {} -> {})",
                d.base.display(),
                size(d.changed_bytes),
                if n == 1 { "" } else { "s" },
                size(d.old_size),
                size(d.new_size.max(d.old_size))
            ));
            for e in &d.extents {
                let what = serde_json::to_value(e.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                lines.push(format!(
                    "  {:#x} +{:#x} {}",
                    e.offset,
                    e.len,
                    what.unwrap_or_default()
                ));
            }
        }
        human(&lines)
    }

    pub fn log(&self, h: &History) -> io::Result<()> {
        if let Some(torn) = h.torn_bytes {
            tracing::warn!(bytes = torn, "the history ends with a torn entry, ignored");
        }
        if self.json {
            return print_json(&json!({
                "entries": h.entries,
                "torn_bytes": h.torn_bytes,
                "kept_aside": h.kept_aside,
            }));
        }
        let mut lines = Vec::new();
        // Each tail kept aside is told after the entry it followed.
        let notes = |after: Option<&TxId>, lines: &mut Vec<String>| {
            for a in h.kept_aside.iter().filter(|a| a.after.as_ref() == after) {
                lines.push(format!("  note: {}", kept_aside_line(a)));
            }
        };
        notes(None, &mut lines);
        for e in &h.entries {
            let outcome = outcome_words(e.outcome);
            let name = e
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            // "committed by root@vm", but "committed by recovery, as root@vm".
            let by = if outcome.ends_with("by recovery") {
                ", as"
            } else {
                " by"
            };
            lines.push(format!(
                "{} {}{name} {outcome}{by} {}@{}",
                when::local(&e.ended),
                e.id,
                e.user,
                e.host
            ));
            // What a rollback changed is nothing: its images are named without a size.
            for i in &e.images {
                lines.push(if e.outcome.changed_images() {
                    format!("  {}: {} changed", i.base.display(), size(i.changed_bytes))
                } else {
                    format!("  {}", i.base.display())
                });
            }
            if let Some(tx) = &e.reverts {
                lines.push(format!("  reverted {tx}"));
            }
            if let Some(c) = &e.command {
                lines.push(format!("  command: {}", c.join(" ")));
            }
            if let Some(t) = &e.taken_over {
                lines.push(format!(
                    "  taken over from dead sanlock host {} ({}) by sanlock host {} in lockspace {}",
                    t.from_host_id, t.from_host, t.by_host_id, t.lockspace
                ));
            }
            notes(Some(&e.id), &mut lines);
        }
        human(&lines)
    }

    /// `log --verify`: the verdict first, then what the chain records, then the head hash on
    /// a line of its own (`head HASH`) for scripts that keep it elsewhere.
    pub fn verify(&self, v: &Verification) -> io::Result<()> {
        if self.json {
            return print_json(&json!(v));
        }
        let mut lines = Vec::new();
        match (v.format, &v.problem) {
            (ChainFormat::None, _) => {
                lines.push("there is no history yet: nothing to verify".to_owned());
            }
            (ChainFormat::Unchained, _) => lines.push(format!(
                "the history predates the hash chain ({} entries without hashes): nothing can \
                 be verified; the next transaction recorded converts it and starts the chain",
                v.entries
            )),
            (ChainFormat::Chained, None) => lines.push(format!(
                "the history verifies: {} entries, {} records, chained since {}",
                v.entries,
                v.records,
                v.created
                    .as_deref()
                    .map_or_else(|| "its first entry".to_owned(), when::local)
            )),
            (ChainFormat::Chained, Some(p)) => {
                let id =
                    p.id.as_ref()
                        .map(|id| format!(" ({id})"))
                        .unwrap_or_default();
                let at = p.offset.map(|o| format!(" at {o:#x}")).unwrap_or_default();
                lines.push(format!(
                    "the history does not verify: entry {}{id}, record {}{at}: {}: {}",
                    p.entry,
                    p.record,
                    p.kind.as_str(),
                    p.detail
                ));
                lines.push(format!(
                    "  entries before it that verified: {} ({} records)",
                    v.entries, v.records
                ));
            }
        }
        if let Some(c) = &v.carried_over {
            lines.push(format!(
                "  entries 0 to {} predate the chain: carried over on {} from the unchained \
                 history kept as {} (sha256 {}); the chain vouches for them only since then",
                c.entries.saturating_sub(1),
                c.when,
                c.file,
                c.sha256
            ));
        }
        for a in &v.kept_aside {
            lines.push(format!("  {}", kept_aside_line(a)));
        }
        if let Some(a) = &v.anchor {
            lines.push(match a.record {
                Some(r) => format!(
                    "  anchor {} is record {r}; {} records came after it",
                    a.hash, a.records_after
                ),
                None => format!(
                    "  anchor {} is not in the chain: entries after it were removed, or the \
                     history was rewritten",
                    a.hash
                ),
            });
        }
        // `head HASH` only for a chain that verified: it is what gets anchored.
        match (&v.head, &v.problem) {
            (Some(head), None) => lines.push(format!("head {head}")),
            (Some(head), Some(_)) => {
                lines.push(format!("  head of the part that verified: {head}"))
            }
            (None, _) => {}
        }
        human(&lines)
    }
}

/// Keeps the entries of `h` that `log` was asked for: those of transaction `tx` (an id, an
/// id prefix or a name; the revert that took it back too), those that ended at or after
/// `since` (RFC 3339 UTC, which orders as text), then the `last` N of them.
pub fn select(h: &mut History, tx: Option<&str>, since: Option<&str>, last: Option<usize>) {
    if let Some(tx) = tx {
        let hex = tx.strip_prefix("tx-").unwrap_or(tx);
        let prefix = format!("tx-{hex}");
        let is = |id: &TxId| id.as_str().starts_with(&prefix);
        h.entries.retain(|e| {
            is(&e.id) || e.reverts.as_ref().is_some_and(is) || e.name.as_deref() == Some(tx)
        });
    }
    if let Some(since) = since {
        h.entries.retain(|e| e.ended.as_str() >= since);
    }
    if let Some(n) = last {
        let cut = h.entries.len().saturating_sub(n);
        h.entries.drain(..cut);
    }
}

/// `bytes` for people: `0 B`, `512 B`, `64 KiB`, `1.50 GiB` (`--json` has exact bytes).
fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// A transaction's condition in `status`, in plain words (`--json` has the enum's names).
fn condition_words(c: Condition) -> &'static str {
    match c {
        Condition::Open => "open",
        Condition::InProgress => "busy (another imgtx works on it now)",
        Condition::CommitInterrupted => "commit interrupted (`imgtx recover` finishes it)",
        Condition::BeginInterrupted => "begin interrupted (`imgtx recover` cleans it up)",
        Condition::RollbackInterrupted => "rollback interrupted (`imgtx recover` finishes it)",
        Condition::CleanupInterrupted => {
            "committed, cleanup interrupted (`imgtx recover` finishes it)"
        }
        Condition::PreImagesWithoutJournal => {
            "pre-images left without their journal: the base may be half written \
             (`imgtx recover` decides)"
        }
    }
}

/// How a transaction ended, in plain words for `log` (`--json` has the enum's names).
fn outcome_words(o: Outcome) -> &'static str {
    match o {
        Outcome::Committed => "committed",
        Outcome::RolledBack => "rolled back",
        Outcome::RecoveredForward => "committed by recovery",
        Outcome::RecoveredBack => "undone by recovery",
        Outcome::Abandoned => "abandoned",
        Outcome::Reverted => "reverted",
    }
}

/// What recovery would do and did to a transaction, in plain words (`--json` has the
/// enum's names).
fn action_words(a: RecoveryAction) -> (&'static str, &'static str) {
    match a {
        RecoveryAction::DiscardedUncommitted => (
            "drop a commit that never reached its commit point: the bases were never \
             written; the transaction stays open with its changes",
            "dropped a commit that never reached its commit point: the bases were never \
             written; the transaction is still open with its changes (commit or roll it back)",
        ),
        RecoveryAction::RestoredUncommitted => (
            "put back the pre-images of a commit that never reached its commit point; the \
             transaction stays open with its changes",
            "put back the pre-images of a commit that never reached its commit point: the \
             bases hold their old content; the transaction is still open with its changes",
        ),
        RecoveryAction::RecoveredForward => (
            "finish the interrupted commit",
            "finished the interrupted commit: the bases hold the new content",
        ),
        RecoveryAction::RecoveredBack => (
            "undo the interrupted commit",
            "undid the interrupted commit: the bases hold the old content",
        ),
        RecoveryAction::FinishedCleanup => (
            "finish the cleanup of a commit",
            "finished the cleanup of a commit (it had committed)",
        ),
        RecoveryAction::CleanedBegin => (
            "clean up an interrupted begin",
            "cleaned up an interrupted begin",
        ),
        RecoveryAction::FinishedRollback => (
            "finish the interrupted rollback",
            "finished the interrupted rollback",
        ),
        RecoveryAction::RolledBackForDeadHost => (
            "roll back the open transaction of a host sanlock reports dead",
            "rolled back the open transaction of a host sanlock reports dead (its bases were \
             never written)",
        ),
        RecoveryAction::RemovedOrphanClaim => (
            "remove a claim whose transaction no longer exists",
            "removed a claim whose transaction no longer exists",
        ),
        RecoveryAction::EndedElsewhere => (
            "forget a transaction finished or undone from another state directory or host",
            "forgot a transaction finished or undone from another state directory or host",
        ),
        RecoveryAction::RemovedStrayPreImages => (
            "remove pre-images whose journal is gone (the base holds the old content)",
            "removed pre-images whose journal was gone (the base held the old content)",
        ),
        RecoveryAction::ReleasedRevert => (
            "release a revert that died before writing anything",
            "released a revert that died before writing anything (the reverted transaction \
             can still be reverted)",
        ),
    }
}

/// What a damaged tail kept aside by an append was, in a sentence.
fn kept_aside_line(a: &Aside) -> String {
    let after = a.after.as_ref().map_or_else(
        || "before the first entry".to_owned(),
        |tx| format!("after {tx}"),
    );
    format!(
        "{} bytes that did not verify {after} (an append a crash interrupted, or an edit) were \
         kept aside on {} in {} (sha256 {})",
        a.kept.tail_bytes, a.kept.when, a.kept.file, a.kept.sha256
    )
}

/// A signal's name (`SIGINT`), or its number.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

/// Where each kept spare is and how large, so its disk space is never a surprise.
fn spare_lines(spares: &[Spare]) -> Vec<String> {
    spares
        .iter()
        .map(|s| {
            let why = if s.pinned {
                "until `imgtx prune` frees it: `imgtx revert` can take this commit back"
            } else {
                "until the next commit reuses it: until then `imgtx revert` can take this \
                 commit back; --no-spare removes it"
            };
            format!(
                "  kept {} ({}) {why}",
                s.path.display(),
                indicatif::HumanBytes(s.bytes)
            )
        })
        .collect()
}

/// How a command ended that did not succeed, for human output: `exited with status N` or
/// `was killed by SIGKILL`.
pub fn ended(code: i32, signal: Option<i32>) -> String {
    match signal {
        Some(sig) => format!("was killed by {}", signal_name(sig)),
        None => format!("exited with status {code}"),
    }
}
