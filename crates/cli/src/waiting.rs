//! What a waiting begin tells the user: once on stderr, whom it waits for (the transaction,
//! its name, user@host, or the qemu processes); on a terminal, also for how long so far.

use std::io::{self, IsTerminal, Write};

use txn::{Blocker, Waiting};

/// Hears the engine's waiting reports and says what is new.
#[derive(Debug)]
pub struct Teller {
    /// Whom it was last said that the begin waits for (the base and the holding
    /// transaction or processes), so that it is said once, not at every poll as the
    /// holder's age grows.
    said: Option<String>,
    /// Whether a terminal line with the time waited is showing.
    ticking: bool,
    json: bool,
}

impl Teller {
    /// A teller for a command run with `--json` (the line is then a JSON event) or not.
    pub fn new(json: bool) -> Self {
        Self {
            said: None,
            ticking: false,
            json,
        }
    }

    /// Hears one report.
    pub fn hear(&mut self, w: &Waiting) {
        let what = match &w.blocker {
            Blocker::Transaction(holder) => format!("held by transaction {holder}"),
            Blocker::Qemu(pids) if pids.is_empty() => "in use by a qemu process".to_owned(),
            Blocker::Qemu(pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("in use by a qemu process (pid {})", list.join(", "))
            }
        };
        let whom = match &w.blocker {
            Blocker::Transaction(holder) => holder.tx.clone(),
            Blocker::Qemu(pids) => format!("{pids:?}"),
        };
        let key = format!("{}\0{whom}", w.base.display());
        let line = format!("waiting for {}, {what}", w.base.display());
        let mut err = io::stderr().lock();
        if self.said.as_deref() != Some(key.as_str()) {
            if self.ticking {
                let _ = writeln!(err);
                self.ticking = false;
            }
            let _ = if self.json {
                // `for` in words; `holder` (the transaction's id, name, user, host, since)
                // or `pids` (qemu's) for a program to act on.
                let (holder, pids) = match &w.blocker {
                    Blocker::Transaction(h) => (Some(h), None),
                    Blocker::Qemu(pids) => (None, Some(pids)),
                };
                let event = serde_json::json!({"event": "waiting", "base": w.base, "for": what,
                                               "holder": holder, "pids": pids});
                writeln!(err, "{event}")
            } else {
                let line = crate::when::in_text(&line);
                writeln!(err, "imgtx: {}", crate::term::escape(&line))
            };
            self.said = Some(key);
        }
        if !self.json && io::stderr().is_terminal() {
            let _ = write!(err, "\r  waited {} s", w.waited.as_secs());
            let _ = err.flush();
            self.ticking = true;
        }
    }
}

impl Drop for Teller {
    fn drop(&mut self) {
        if self.ticking {
            let _ = writeln!(io::stderr());
        }
    }
}
