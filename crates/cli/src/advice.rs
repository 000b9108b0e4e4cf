//! What to do next about an engine error. The engine says what happened and never names a
//! command or a flag; this module is where the command line adds which `imgtx` command or
//! option helps, printed as an `imgtx: hint:` line (or a `"hint"` field with `--json`).

use txn::Error;

/// `e` and its sources, joined by ": ", as the error line shows them.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// The advice for `e`, when there is one.
pub fn for_error(e: &Error) -> Option<String> {
    let text = match e {
        Error::AmbiguousFormat { .. } => {
            "if it is a raw image whose guest wrote a qcow2 header at its start, say so with \
             --base-format raw; if it is a damaged qcow2 image, `qemu-img check` tells what is wrong"
                .to_owned()
        }
        Error::BaseChanged { tx, .. } => format!(
            "something wrote the base outside the transaction; `imgtx rollback {tx}` drops the \
             transaction's changes, then begin again"
        ),
        Error::Busy { .. } => "commit or roll that transaction back first, or pass --wait to \
                               wait for it"
            .to_owned(),
        Error::CommitInterrupted { .. } => {
            "run `imgtx recover` to finish it (`imgtx recover --undo` takes it back instead)"
                .to_owned()
        }
        Error::DirGone { .. } => "if it was moved away or is not mounted yet, put it back \
                                  and run `imgtx recover` again; if it is gone for good, \
                                  `imgtx recover --abandon TX` ends the transaction"
            .to_owned(),
        Error::InUse { .. } => "stop the qemu process that uses it, then try again".to_owned(),
        Error::Interrupted { .. } => "run `imgtx recover`".to_owned(),
        Error::Locked { .. } => "try again when that process finishes".to_owned(),
        Error::NotFound {
            closest: Some(id), ..
        } => format!(
            "did you mean {id}? `imgtx status` lists open transactions, `imgtx log` finished ones"
        ),
        Error::NotFound { closest: None, .. } => {
            "`imgtx status` lists open transactions, `imgtx log` finished ones".to_owned()
        }
        Error::Finished { entry } if entry.outcome.changed_images() => format!(
            "`imgtx log` shows its entry; `imgtx status` says whether `imgtx revert {}` can \
             still take it back",
            entry.id
        ),
        Error::Finished { .. } => "`imgtx log` shows its entry".to_owned(),
        Error::Ambiguous { .. } => "name it by its whole id; `imgtx status` lists open \
                                    transactions and those that can be reverted"
            .to_owned(),
        Error::RecoveryNeeded { path, .. } => {
            format!("run `imgtx recover {}`", path.display())
        }
        Error::Unrecoverable { tx, .. } => format!(
            "`imgtx recover --undo` uses the pre-images where the overlays are gone; if the \
             base is gone for good, `imgtx recover --abandon {tx}` ends the transaction \
             without writing any image"
        ),
        Error::UntrustedStateDir { path, .. } if is_roots_and_i_am_not(path) => {
            "it is root's state directory, which only root may use: to see or change root's \
             transactions run imgtx with sudo; for transactions of your own, use a state \
             directory you own (--state-dir DIR or $IMGTX_STATE_DIR; the default for users \
             is ~/.local/state/imgtx)"
                .to_owned()
        }
        Error::UntrustedStateDir { path, .. } => format!(
            "whoever can change it could make imgtx remove or overwrite files in your name: \
             make it yours and private (`chown $(id -u) {0}; chmod 700 {0}`) once you know \
             nobody planted anything in it, or use a state directory of your own \
             (--state-dir DIR, or $IMGTX_STATE_DIR)",
            path.display()
        ),
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            if nix::unistd::geteuid().is_root() {
                return None;
            }
            "you are not root: for root's transactions run imgtx with sudo; for your own, \
             use a state directory you can write (--state-dir DIR or $IMGTX_STATE_DIR; the \
             default for users is ~/.local/state/imgtx)"
                .to_owned()
        }
        Error::RevertConflict {
            later: Some(later), ..
        } => format!(
            "transaction {later} changed it later: revert that one first (`imgtx revert {later}`)"
        ),
        Error::RevertConflict { later: None, .. } => {
            "something outside imgtx wrote the base after the commit; reverting now would \
             lose that change, so imgtx will not"
                .to_owned()
        }
        Error::NotKept { .. } | Error::NotRevertible { .. } => "`imgtx status` lists what can be reverted; `imgtx commit \
                                  --keep` keeps a commit's pre-images until pruned"
            .to_owned(),
        Error::WaitTimedOut { .. } => {
            "the holding transaction is still open; `imgtx status` shows it".to_owned()
        }
        _ => return None,
    };
    Some(text)
}

/// True when `path` belongs to root and imgtx does not run as root: a permission problem to
/// solve with sudo, not a directory to take over with chown.
fn is_roots_and_i_am_not(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    !nix::unistd::geteuid().is_root() && std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_names_the_command_that_helps() {
        let e = Error::RecoveryNeeded {
            path: "/vm/disk.img".into(),
            tx: txn::TxId::parse("tx-0123456789").unwrap(),
        };
        assert_eq!(
            for_error(&e).as_deref(),
            Some("run `imgtx recover /vm/disk.img`")
        );
        assert!(for_error(&Error::Invalid("x".into())).is_none());
    }
}
