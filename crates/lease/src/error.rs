//! The crate's one error type, and [`Code`], a return value of libsanlock.

use std::ffi::CStr;
use std::io;
use std::path::PathBuf;

use crate::ffi;

/// A negative return value of a libsanlock call: either `-errno` (talking to the daemon,
/// or an I/O error of the daemon) or one of sanlock's own codes (`SANLK_*`, -201 and below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub i32);

impl Code {
    /// True for `-errno` values rather than sanlock's own codes.
    fn is_errno(self) -> bool {
        (-200..0).contains(&self.0)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_errno() {
            return write!(f, "{}", io::Error::from_raw_os_error(-self.0));
        }
        let Ok(lib) = ffi::lib() else {
            return write!(f, "sanlock error {}", self.0);
        };
        // SAFETY: sanlock_strerror takes any int and returns a pointer to a static,
        // NUL-terminated string (or NULL); it keeps no state.
        let text = unsafe { (lib.strerror)(self.0) };
        if text.is_null() {
            return write!(f, "sanlock error {}", self.0);
        }
        // SAFETY: non-null, NUL-terminated and static, as above.
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        write!(f, "{text} (sanlock error {})", self.0)
    }
}

impl std::error::Error for Code {}

/// Everything that can go wrong with a lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another host (or another process of this host) holds the lease.
    #[error("lease {} is held by {}", path.display(), holder_text(*host_id))]
    Busy {
        /// The lease file.
        path: PathBuf,
        /// The sanlock host id of the holder, when sanlock says.
        host_id: Option<u64>,
        /// What sanlock answered.
        #[source]
        source: Code,
    },
    /// The local sanlock daemon refused or failed a request.
    #[error("the sanlock daemon could not {action}")]
    Daemon {
        /// What was asked, as a verb phrase ("acquire lease /x").
        action: String,
        /// What it answered.
        #[source]
        source: Code,
    },
    /// A file operation on a lease file failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A name or path does not fit sanlock's fixed-size fields.
    #[error("{what} {name:?} does not fit sanlock's limit of {limit} bytes")]
    TooLong {
        /// What it is ("lockspace name", "path").
        what: &'static str,
        /// The value.
        name: String,
        /// sanlock's limit.
        limit: usize,
    },
    /// The lease file holds a lease of another lockspace, or no lease.
    #[error("lease file {} is not usable: {reason}", path.display())]
    Unusable {
        /// The lease file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// sanlock's client library is not installed (or not loadable).
    #[error(
        "sanlock's client library {library} cannot be loaded ({reason}); install it \
         (Debian: libsanlock-client1) to use a lockspace"
    )]
    NoLibrary {
        /// The file name looked for.
        library: &'static str,
        /// Why it could not be loaded.
        reason: &'static str,
    },
    /// The local sanlock daemon could not be reached.
    #[error("cannot reach the sanlock daemon (socket directory {run_dir})")]
    Unreachable {
        /// The directory of its socket: `$SANLOCK_RUN_DIR`, else `/run/sanlock`.
        run_dir: String,
        /// Why the connection failed.
        #[source]
        source: Code,
    },
    /// This host has not joined the lockspace (or is still joining or leaving it).
    #[error("this host has not joined sanlock lockspace {name:?}{}", if *joining { " yet (it is being added)" } else { "" })]
    NotJoined {
        /// The lockspace.
        name: String,
        /// True when an add is under way.
        joining: bool,
    },
    /// The lease was acquired by someone else since its version was read.
    #[error("lease {} changed hands since it was read (version {expected} expected)", path.display())]
    VersionChanged {
        /// The lease file.
        path: PathBuf,
        /// The version that was required.
        expected: u64,
        /// What sanlock answered.
        #[source]
        source: Code,
    },
}

fn holder_text(host: Option<u64>) -> String {
    match host {
        Some(h) => format!("sanlock host {h}"),
        None => "another host or process".to_owned(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
