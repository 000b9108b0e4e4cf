//! How a command fails: the error with its causes, the advice that goes with it, and the
//! exit status it maps to (docs/cli.md, "Exit status").

use txn::ErrorClass;

use crate::advice;

/// Exit status of a usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;

/// Exit status when an interrupted transaction still needs recovery.
pub const EXIT_RECOVERY_NEEDED: u8 = 4;

/// A failure of the command, with the exit status it maps to.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: u8,
}

impl Failure {
    /// The error and its causes, joined by ": ", as the error line shows them.
    pub fn message(&self) -> String {
        let chain: Vec<String> = self.error.chain().map(ToString::to_string).collect();
        chain.join(": ")
    }

    /// What to do about it, when the engine's error comes with advice.
    pub fn hint(&self) -> Option<String> {
        self.error
            .chain()
            .find_map(|c| c.downcast_ref::<txn::Error>())
            .and_then(advice::for_error)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = error.downcast_ref::<txn::Error>().map_or(1, exit_code);
        Self { error, code }
    }
}

pub fn exit_code(e: &txn::Error) -> u8 {
    if let txn::Error::Stopped { signal } = e {
        return signal_exit(*signal);
    }
    match e.class() {
        ErrorClass::Busy | ErrorClass::Conflict => 3,
        ErrorClass::RecoveryNeeded => EXIT_RECOVERY_NEEDED,
        _ => 1,
    }
}

/// The conventional exit status of a process stopped by signal `sig`.
pub fn signal_exit(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn::TxId;

    #[test]
    fn error_classes_map_to_the_documented_exit_codes() {
        let busy = txn::Error::Busy {
            path: "/x".into(),
            holder: Box::new(txn::Holder::unknown("tx-0123456789")),
        };
        assert_eq!(exit_code(&busy), 3);
        let rec = txn::Error::RecoveryNeeded {
            path: "/x".into(),
            tx: TxId::parse("tx-0123456789").unwrap(),
        };
        assert_eq!(exit_code(&rec), 4);
        assert_eq!(exit_code(&txn::Error::Invalid("x".into())), 1);
    }
}
