//! The command line as clap parses it ("low" arguments), before any file is touched.
//!
//! Every clap type of every command lives here, `demo`'s and `generate`'s included: those
//! modules use their argument types from here, and this module uses nothing of theirs, so
//! the parser does not depend on what the commands do. The one exception is `complete`'s
//! candidates for shell completion, attached to the arguments they complete; `complete`
//! knows nothing of this module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter};
use clap_complete::Shell;

const AFTER_HELP: &str = "\
Examples:
  # Try a change on a raw image, keep it if it works:
  TX=$(imgtx begin /vm/disk.img)
  qemu-io -f qcow2 -c 'write -P 0xab 0 1M' /vm/disk.img.$TX.imgtx.qcow2
  imgtx diff $TX
  imgtx commit $TX            # or: imgtx rollback $TX

  # One step: commit if the command succeeds, roll back otherwise:
  imgtx run /vm/disk.img -- guestfish -a {} -i write /etc/motd hello

  # Two images, one atomic commit:
  imgtx run /vm/sys.img /vm/data.img -- ./upgrade.sh {0} {1}

  # After a crash or power loss (e.g. at boot):
  imgtx recover

Exit status: 0 ok, 1 error, 2 usage, 3 busy or conflict, 4 recovery needed.
Documentation: man imgtx, and man imgtx-COMMAND for each command (environment, files, every
exit status); the package installs the operator's guide in /usr/share/doc/imgtx.";

const RECOVER_HELP: &str = "\
Examples:
  imgtx recover                        # everything registered here
  imgtx recover /vm/disk.img           # what lies beside this image
  imgtx recover --undo --dry-run       # what undoing would do
  imgtx recover --scan /var/lib/libvirt/images   # the state directory was lost
  imgtx recover --abandon tx-3f9a2c1d7e          # its base is gone for good

Every transaction that can be recovered is, even when another cannot; each failure is
reported, and the exit status is then that of the first failure.";
/// `imgtx demo --help`'s text after the options.
const DEMO_AFTER_HELP: &str = "\
The demo makes a 64 MiB ext4 image in a new temporary directory, then runs the real imgtx
commands on it, printing each one: begin, an edit inside the overlay (guestfish if
installed, else qemu-io), diff, commit; then a commit killed with SIGKILL while it writes,
status, recover, and log. Hashes prove each step: the base is untouched until commit, and
after the crash and recovery it is wholly old or wholly new. It needs qemu-img and qemu-io
(Debian: qemu-utils); mke2fs and debugfs (e2fsprogs) and guestfish (guestfish) are used when
installed. It exits 0 when every proof holds, 1 otherwise. Takes about 15 s without guestfish.
It always uses its own state directory, so --state-dir does not apply; nor does --json.

Examples:
  imgtx demo                   # the whole story, then clean up
  imgtx demo --no-guestfish    # quicker: edit with qemu-io
  imgtx demo --keep            # keep the images and state to look at afterwards";

/// ACID transactions for VM disk images: changes go to a qcow2 overlay per image, and
/// `commit` copies them into the images crash-safely, or `rollback` drops them.
#[derive(Debug, Parser)]
#[command(name = "imgtx", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Where open transactions and the history are registered
    /// [default: $IMGTX_STATE_DIR, else /var/lib/imgtx for root, else $XDG_STATE_HOME/imgtx]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Work as a member of sanlock lockspace NAME, which this host has joined: sanlock
    /// leases on the shared storage keep other hosts out of the images. Refuses to work when
    /// the daemon or the lockspace is not there
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "IMGTX_LOCKSPACE",
        hide_env_values = true
    )]
    pub lockspace: Option<String>,

    /// More logging on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Machine-readable output on stdout (and errors as JSON on stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Times in UTC instead of the local time zone (human output; JSON is always UTC)
    #[arg(long, global = true)]
    pub utc: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The base format as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BaseFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image without a backing file.
    Qcow2,
}

/// Options shared by `begin` and `run`.
#[derive(Debug, Args)]
pub struct BeginArgs {
    /// A name to remember the transaction by
    #[arg(long)]
    pub name: Option<String>,

    /// The format of the base images (when omitted: qcow2 if it parses as a qcow2 image
    /// without a backing file, raw if it has no qcow2 magic, else refused as ambiguous)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub base_format: Option<BaseFormat>,

    /// Wait for bases held by another transaction (at most SECS seconds if given)
    #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true, default_missing_value = "forever")]
    pub wait: Option<String>,
}

/// How `commit` and `run` commit.
#[derive(Debug, Clone, Copy, Args)]
pub struct CommitArgs {
    /// Do not save pre-images: faster, but an interrupted commit can only be finished
    #[arg(long)]
    pub no_undo: bool,
    /// Remove the pre-image file at the end. By default it stays beside the base as
    /// .NAME.imgtx.spare, holding the old content of what this commit changed, and the next
    /// commit overwrites it in place, which is faster than writing a new file
    #[arg(long)]
    pub no_spare: bool,
    /// Keep this commit's pre-images until `imgtx prune` frees them, so that `imgtx revert`
    /// can take it back whatever later commits do. Without it, only each base's most recent
    /// commit stays revertible (its pre-images are the spare the next commit reuses)
    #[arg(long, conflicts_with_all = ["no_undo", "no_spare"])]
    pub keep: bool,
}

impl From<CommitArgs> for txn::CommitOptions {
    fn from(a: CommitArgs) -> Self {
        Self {
            no_undo: a.no_undo,
            no_spare: a.no_spare,
            keep: a.keep,
        }
    }
}

/// `run --each`: one transaction per image instead of one over all.
#[derive(Debug, Clone, Copy, Args)]
pub struct EachArgs {
    /// One transaction per image: run the command once for each, and commit or roll back
    /// each on its own (exit 0 only if all committed)
    #[arg(long)]
    pub each: bool,
    /// With --each: run the command on N images at a time
    #[arg(long, value_name = "N", requires = "each", default_value = "1")]
    pub jobs: std::num::NonZeroUsize,
}

/// An age such as `30d`, `12h`, `45m`, `90s` or `3600` (seconds).
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |at| s.split_at(at));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 30d, 12h, 45m or 90s"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d, w")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// `--since`'s WHEN as the RFC 3339 UTC time it stands for (`2026-01-05T00:00:00Z`), which
/// compares with the history's times as text.
pub fn parse_since(s: &str) -> Result<String, String> {
    if let Ok(age) = parse_age(s) {
        let then = std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH);
        return Ok(txn::rfc3339(then));
    }
    let shape = |t: &str, pattern: &str| {
        t.len() == pattern.len()
            && t.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
                b'9' => c.is_ascii_digit(),
                _ => c == p,
            })
    };
    if shape(s, "9999-99-99") {
        return Ok(format!("{s}T00:00:00Z"));
    }
    if shape(s, "9999-99-99T99:99:99Z") {
        return Ok(s.to_owned());
    }
    Err(format!(
        "{s:?} is neither a UTC date or time (2026-01-05, 2026-01-05T10:00:00Z) nor an age \
         (30d, 12h, 45m, 90s)"
    ))
}

const REVERT_HELP: &str = "\
The revert is a transaction of its own: it is journaled like a commit, so an interrupted \
revert is finished (or, with `imgtx recover --undo`, undone) by `imgtx recover`, and its own \
pre-images are kept so it can be reverted in turn. It refuses (exit 3) when a base no longer \
holds exactly what the transaction wrote: a later transaction changed the same bytes (revert \
that one first) or something outside imgtx did.

What can be reverted: each base's most recent commit (its pre-images are the spare the next \
commit reuses), and every commit made with --keep until `imgtx prune` frees it.

Example:
  imgtx revert tx-3f9a2c1d7e";

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Begin a transaction over one or more base images; prints its id
    #[command(after_help = "Example:\n  TX=$(imgtx begin --name upgrade /vm/disk.img)")]
    Begin {
        #[command(flatten)]
        opts: BeginArgs,
        /// The base images
        #[arg(required = true, value_name = "BASE")]
        bases: Vec<PathBuf>,
    },
    /// Commit a transaction into its bases, crash-safely
    #[command(
        after_help = "A commit that runs longer than a second shows its progress on \
a terminal: saving pre-images, then writing. With --json, progress events go to stderr, \
one JSON line each with \"phase\" pre-images or apply.

Example:
  imgtx commit tx-3f9a2c1d7e"
    )]
    Commit {
        #[command(flatten)]
        commit: CommitArgs,
        /// The transaction: its id, its name (begin --name) or an id prefix
        #[arg(add = ArgValueCandidates::new(crate::complete::open_transactions))]
        tx: String,
    },
    /// Roll a transaction back: drop its overlays, leave the bases as they are
    #[command(after_help = "Example:\n  imgtx rollback tx-3f9a2c1d7e")]
    Rollback {
        /// The transaction: its id, its name (begin --name) or an id prefix
        #[arg(add = ArgValueCandidates::new(crate::complete::open_transactions))]
        tx: String,
    },
    /// Finish or undo every interrupted commit, begin or rollback
    #[command(after_help = RECOVER_HELP)]
    Recover {
        /// Undo interrupted commits instead of finishing them (needs their pre-images)
        #[arg(long, conflicts_with = "abandon")]
        undo: bool,
        /// Only say what would be done
        #[arg(long, conflicts_with = "abandon")]
        dry_run: bool,
        /// Also search DIR and the directories below it for journals beside images, for
        /// when the state directory was lost (repeatable; $IMGTX_SCAN, colon-separated)
        #[arg(
            long,
            value_name = "DIR",
            env = "IMGTX_SCAN",
            hide_env_values = true,
            value_delimiter = ':'
        )]
        scan: Vec<PathBuf>,
        /// End transaction TX without writing any image, when it can be neither finished
        /// nor undone (its base was deleted or moved); its files are kept for forensics
        #[arg(
            long,
            value_name = "TX",
            add = ArgValueCandidates::new(crate::complete::open_transactions)
        )]
        abandon: Option<String>,
        /// Bases to look beside (default: every registered transaction)
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Run a command on the overlays; commit if it exits 0, else roll back
    #[command(
        after_help = "In the command, {} is the overlay of the first image and {0}, {1}, ... the overlay of each;\n\
IMGTX_TX, IMGTX_OVERLAY and IMGTX_OVERLAY_0, IMGTX_OVERLAY_1, ... are set in its environment.\n\
With --each, each image gets a transaction of its own, and {} is its overlay.\n\n\
Examples:\n  imgtx run /vm/disk.img -- qemu-io -f qcow2 -c 'write -P 0xab 0 1M' {}\n  \
imgtx run --each --jobs 4 /vm/*.img -- virt-customize -a {} --update"
    )]
    Run {
        #[command(flatten)]
        opts: BeginArgs,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        each: EachArgs,
        /// The base images
        #[arg(
            required = true,
            value_name = "BASE",
            add = ArgValueCompleter::new(crate::complete::RunWords)
        )]
        bases: Vec<PathBuf>,
        /// The command and its arguments, after `--`
        #[arg(
            last = true,
            required = true,
            value_name = "CMD",
            add = ArgValueCompleter::new(crate::complete::RunWords)
        )]
        command: Vec<String>,
    },
    /// Take back a committed transaction, from the pre-images it kept
    #[command(after_help = REVERT_HELP)]
    Revert {
        /// The committed transaction: its id, its name or an id prefix (`imgtx status` lists
        /// those that can be reverted)
        #[arg(add = ArgValueCandidates::new(crate::complete::revertible))]
        tx: String,
    },
    /// Free kept pre-images: those transactions can no longer be reverted
    #[command(after_help = "With no option, frees every kept pre-image file.\n\n\
Examples:\n  imgtx prune --older-than 30d          # commits older than 30 days\n  \
imgtx prune --keep-last 10 --dry-run   # all but the 10 most recent; only say what")]
    Prune {
        /// Only those committed longer ago than AGE (30d, 12h, 45m, 90s)
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Never the N most recently committed
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Only say what would be freed
        #[arg(long)]
        dry_run: bool,
    },
    /// Show open and interrupted transactions, and what can be reverted
    #[command(
        after_help = "Examples:\n  imgtx status                  # every transaction, open or interrupted\n  imgtx status tx-3f9a2c1d7e --json"
    )]
    Status {
        /// Only this transaction (its id, name or an id prefix)
        #[arg(add = ArgValueCandidates::new(crate::complete::open_transactions))]
        tx: Option<String>,
    },
    /// Show what a transaction changes: extents and bytes per image
    #[command(after_help = "Example:\n  imgtx diff tx-3f9a2c1d7e")]
    Diff {
        /// The transaction: its id, its name (begin --name) or an id prefix
        #[arg(add = ArgValueCandidates::new(crate::complete::open_transactions))]
        tx: String,
    },
    /// Show the history of finished transactions, or check its hash chain
    #[command(
        after_help = "Examples:\n  imgtx log                     # every finished transaction\n  imgtx log /vm/disk.img --json # only those touching this image\n  imgtx log --verify            # check every entry and link; prints the head hash\n  imgtx log --verify --anchor HASH  # and that a head hash kept earlier is still in it"
    )]
    Log {
        /// Only entries touching this base
        #[arg(conflicts_with = "verify")]
        base: Option<PathBuf>,
        /// Check the hash chain, every entry and every link, and print the head hash to keep
        /// elsewhere; exit 1 naming the first entry that does not verify
        #[arg(long)]
        verify: bool,
        /// With --verify: a head hash printed earlier and kept elsewhere, which must still be
        /// in the chain (this catches entries cut from the end, and a rewritten history)
        #[arg(long, value_name = "HASH", requires = "verify")]
        anchor: Option<txn::ChainHash>,
        /// Only the N most recent entries
        #[arg(
            short = 'n',
            long = "last",
            value_name = "N",
            conflicts_with = "verify"
        )]
        last: Option<usize>,
        /// Only entries that ended at or after WHEN: a date or time in UTC (2026-01-05,
        /// 2026-01-05T10:00:00Z) or an age (30d, 12h, 45m, 90s)
        #[arg(long, value_name = "WHEN", value_parser = parse_since, conflicts_with = "verify")]
        since: Option<String>,
        /// Only the entries of this transaction (id, id prefix or name), and of the revert
        /// that took it back
        #[arg(
            long = "tx",
            value_name = "TX",
            conflicts_with = "verify",
            add = ArgValueCandidates::new(crate::complete::open_transactions)
        )]
        tx: Option<String>,
    },
    /// Show the whole story on a scratch image: begin, edit, diff, commit, a commit killed
    /// partway, recover, log
    #[command(after_help = DEMO_AFTER_HELP)]
    Demo(DemoArgs),
    /// Write man pages or shell completions (for packagers: scripts/gen-docs runs it)
    #[command(
        hide = true,
        after_help = "Examples:\n  imgtx generate man target/man\n  imgtx generate completions bash > imgtx.bash"
    )]
    Generate(GenerateArgs),
}

/// `imgtx demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Edit with qemu-io even when guestfish is installed (guestfish boots a small VM:
    /// seconds with KVM, minutes without)
    #[arg(long)]
    pub no_guestfish: bool,
    /// Keep the temporary directory (images, state directory) instead of removing it
    #[arg(long)]
    pub keep: bool,
}

/// What to generate.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Man pages or completions.
    #[command(subcommand)]
    pub what: What,
}

/// The kinds of generated files.
#[derive(Debug, Subcommand)]
pub enum What {
    /// Write imgtx.1 and one page per command (imgtx-begin.1, ...) into DIR
    Man {
        /// The directory to write into (created if missing)
        dir: PathBuf,
    },
    /// Print the completion script for SHELL, or write it into DIR (bash: imgtx.bash,
    /// zsh: _imgtx, fish: imgtx.fish)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
        /// The directory to write into (created if missing); stdout when omitted
        dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("imgtx").chain(args.iter().copied()))
    }

    #[test]
    fn json_is_accepted_after_the_command_name() {
        let cli = parse(&["status", "--json"]).unwrap();
        assert!(cli.json);
    }

    #[test]
    fn wait_takes_an_optional_value_after_an_equals_sign() {
        let Command::Begin { opts, bases } = parse(&["begin", "--wait", "a.img"]).unwrap().command
        else {
            panic!("not begin")
        };
        assert_eq!(opts.wait.as_deref(), Some("forever"));
        assert_eq!(bases, vec![PathBuf::from("a.img")]);
        let Command::Begin { opts, .. } = parse(&["begin", "--wait=5", "a.img"]).unwrap().command
        else {
            panic!("not begin")
        };
        assert_eq!(opts.wait.as_deref(), Some("5"));
    }

    #[test]
    fn run_splits_bases_from_the_command_at_the_double_dash() {
        let Command::Run { bases, command, .. } =
            parse(&["run", "a.img", "b.img", "--", "echo", "{0}", "--json"])
                .unwrap()
                .command
        else {
            panic!("not run")
        };
        assert_eq!(bases.len(), 2);
        assert_eq!(command, vec!["echo", "{0}", "--json"]);
    }

    #[test]
    fn run_each_runs_one_at_a_time_unless_jobs_says() {
        let Command::Run { each, .. } = parse(&["run", "--each", "a", "--", "x"]).unwrap().command
        else {
            panic!("not run")
        };
        assert!(each.each);
        assert_eq!(each.jobs.get(), 1);
        let Command::Run { each, .. } = parse(&["run", "--each", "--jobs", "3", "a", "--", "x"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(each.jobs.get(), 3);
    }

    #[test]
    fn jobs_needs_each_and_at_least_one() {
        assert!(parse(&["run", "--jobs", "2", "a", "--", "x"]).is_err());
        assert!(parse(&["run", "--each", "--jobs", "0", "a", "--", "x"]).is_err());
    }

    #[test]
    fn run_without_a_command_is_a_usage_error() {
        assert!(parse(&["run", "a.img"]).is_err());
    }

    #[test]
    fn begin_without_a_base_is_a_usage_error() {
        assert!(parse(&["begin"]).is_err());
    }

    #[test]
    fn base_format_accepts_only_raw_and_qcow2() {
        assert!(parse(&["begin", "--base-format", "vmdk", "a.img"]).is_err());
        assert!(parse(&["begin", "--base-format", "qcow2", "a.img"]).is_ok());
    }
}
