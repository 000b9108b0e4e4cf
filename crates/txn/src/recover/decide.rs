//! The recovery policy, as one pure function of what the journals and files say: which way
//! an interrupted commit goes. It reads nothing and writes nothing; [`super::discover`]
//! gathers the [`Facts`], [`super::execute`] carries out the [`Decision`].

use crate::record::Direction;

/// What the journals of one transaction say, reduced to what decides recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The coordinator holds the commit record.
    pub committed: bool,
    /// The history entry is written; only cleanup remains.
    pub logged: bool,
    /// The direction an earlier recovery chose.
    pub recorded: Option<Direction>,
    /// The user asked to undo.
    pub want_undo: bool,
    /// Every overlay is present and unchanged.
    pub overlays_ok: bool,
    /// Every image has verified pre-images.
    pub undo_available: bool,
    /// Every base verifiably holds its old content, or cannot be checked (no pre-images):
    /// false when a base shows writes of the commit although the journal holds no durable
    /// commit record (a damaged or truncated journal).
    pub bases_untouched: bool,
}

/// Why neither direction is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Forward needs an overlay that is gone or changed, and back needs pre-images there
    /// are none of.
    NoWayAtAll,
    /// Back was asked for, and there are no pre-images to go back with.
    NoWayBack,
    /// The commit record is gone but a base shows the commit's writes, and there are no
    /// usable pre-images to take them back.
    TornWithoutRecord,
}

impl Refusal {
    /// The reason, as an error message says it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::NoWayAtAll => {
                "an overlay is missing or damaged and no usable pre-images exist (the commit \
                 ran without pre-images, or its pre-image file is missing, damaged or refused)"
            }
            Self::NoWayBack => {
                "no usable pre-images exist (the commit ran without pre-images, or its \
                 pre-image file is missing, damaged or refused), so it can only be finished"
            }
            Self::TornWithoutRecord => {
                "its journal holds no valid commit record, yet a base holds writes of the \
                 commit, and its pre-images cannot be used to take them back; they are kept"
            }
        }
    }
}

/// What recovery does for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not committed: drop journals and pre-images; bases untouched; transaction stays open.
    Discard,
    /// No commit record, yet the bases were written (the record was damaged or cut off):
    /// restore the pre-images, then discard as above; the transaction stays open.
    RestoreUncommitted,
    /// Outcome reached and logged: remove what is left.
    Cleanup,
    /// Bring every base to the outcome of this direction.
    Go(Direction),
    /// Neither direction is safe.
    Refuse(Refusal),
}

/// The recovery policy.
pub(crate) fn decide(f: Facts) -> Decision {
    if !f.committed {
        return match (f.bases_untouched, f.undo_available) {
            (true, _) => Decision::Discard,
            (false, true) => Decision::RestoreUncommitted,
            (false, false) => Decision::Refuse(Refusal::TornWithoutRecord),
        };
    }
    if f.logged {
        return Decision::Cleanup;
    }
    // Undo is always safe when pre-images exist: they cover every byte forward may have
    // written, and the old length drops any growth. Forward needs every overlay intact.
    let back = f.recorded == Some(Direction::Back) || f.want_undo || !f.overlays_ok;
    match (back, f.undo_available) {
        (true, true) => Decision::Go(Direction::Back),
        (false, _) => Decision::Go(Direction::Forward),
        (true, false) if !f.overlays_ok => Decision::Refuse(Refusal::NoWayAtAll),
        (true, false) => Decision::Refuse(Refusal::NoWayBack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            committed: true,
            logged: false,
            recorded: None,
            want_undo: false,
            overlays_ok: true,
            undo_available: true,
            bases_untouched: true,
        }
    }

    #[test]
    fn an_uncommitted_commit_is_discarded_whatever_was_asked() {
        assert_eq!(
            decide(Facts {
                committed: false,
                want_undo: true,
                ..facts()
            }),
            Decision::Discard
        );
    }

    #[test]
    fn without_a_commit_record_bases_that_were_written_get_their_pre_images_back() {
        let f = Facts {
            committed: false,
            bases_untouched: false,
            ..facts()
        };
        assert_eq!(decide(f), Decision::RestoreUncommitted);
        let f = Facts {
            undo_available: false,
            ..f
        };
        assert_eq!(decide(f), Decision::Refuse(Refusal::TornWithoutRecord));
    }

    #[test]
    fn a_committed_commit_rolls_forward_by_default() {
        assert_eq!(decide(facts()), Decision::Go(Direction::Forward));
    }

    #[test]
    fn undo_is_chosen_when_asked_or_when_an_overlay_is_bad() {
        assert_eq!(
            decide(Facts {
                want_undo: true,
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
        assert_eq!(
            decide(Facts {
                overlays_ok: false,
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
    }

    #[test]
    fn a_recorded_undo_is_continued_even_without_asking() {
        assert_eq!(
            decide(Facts {
                recorded: Some(Direction::Back),
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
    }

    #[test]
    fn no_pre_images_and_a_bad_overlay_refuse_to_touch_anything() {
        let f = Facts {
            overlays_ok: false,
            undo_available: false,
            ..facts()
        };
        assert_eq!(decide(f), Decision::Refuse(Refusal::NoWayAtAll));
        let f = Facts {
            want_undo: true,
            undo_available: false,
            ..facts()
        };
        assert_eq!(decide(f), Decision::Refuse(Refusal::NoWayBack));
    }

    #[test]
    fn a_logged_outcome_only_needs_cleanup() {
        assert_eq!(
            decide(Facts {
                logged: true,
                overlays_ok: false,
                ..facts()
            }),
            Decision::Cleanup
        );
    }
}
