//! The real process killed at every journaled step of a commit on XFS with reflinks, where
//! the overlay's clusters are shared into the bases and the pre-images are shared from them:
//! `imgtx recover` (forward, or back with `--undo`) must leave every base bit-identical to
//! its old or its new content, as on a file system that copies. Skipped, saying why, without
//! root, `mkfs.xfs` or a loop device.

use testkit::xfs::Xfs;

use crate::kill::{contents, crash, prepared, AFTER_COMMIT_POINT, BEFORE_COMMIT_POINT};
use crate::util::{require_tools, TestDir};

fn xfs() -> Option<Xfs> {
    match Xfs::mount(512) {
        Ok(x) => Some(x),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

#[test]
fn a_reflinked_commit_killed_at_any_step_recovers_to_old_or_new() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let Some(xfs) = xfs() else { return };
    let steps = BEFORE_COMMIT_POINT.iter().chain(AFTER_COMMIT_POINT);
    for step in steps {
        for undo in [false, true] {
            let t = TestDir::new_in(xfs.path());
            let (tx, bases, old, new) = prepared(&t, true);
            crash(&t, step, &["commit", &tx]);

            let mut args = vec!["recover"];
            if undo {
                args.push("--undo");
            }
            t.imgtx_ok(&args);

            let now = contents(&bases);
            let committed = AFTER_COMMIT_POINT.contains(step);
            let finished = ["logged", "files-removed", "journals-removed"].contains(step);
            let ctx = format!("killed after {step}, undo={undo}");
            if !committed || (undo && !finished) {
                assert!(now == old, "{ctx}: expected the old content");
            } else {
                assert!(now == new, "{ctx}: expected the new content");
            }
            if !committed {
                // Still open: it commits now, on the shared path, to the same bytes.
                t.imgtx_ok(&["commit", &tx]);
                assert!(contents(&bases) == new, "{ctx}: the commit afterwards");
            }
        }
    }
}
