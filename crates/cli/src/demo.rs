//! `imgtx demo`: the whole story on scratch images, narrated, with proofs.
//!
//! The demo re-runs its own executable with a private `--state-dir` in a temporary
//! directory, so what it shows is exactly what a user gets; it never calls the engine
//! directly. Every claim it makes ("the base is untouched", "the base is old or new") is
//! checked with a hash, and the demo exits non-zero if one fails. It is not a test suite:
//! it shows one run of each path, chosen to be explained in plain words.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

use crate::args::DemoArgs;

/// The image size: small enough to be quick, big enough for a 48 MiB change.
const IMAGE_MIB: u64 = 64;
/// The second transaction writes this much, so the commit copies long enough to be killed.
const BIG_CHANGE: &str = "48M";
/// Where it goes: with 4 KiB blocks a 64 MiB ext4 has one block group whose metadata, inode
/// table and journal end below 9 MiB, so this range is free space and the file system stays
/// clean.
const BIG_OFFSET: &str = "12M";
/// The line the first transaction appends to /etc/issue.net.
const EDIT_LINE: &str = "edited inside an imgtx transaction\n";
/// The size of the progress pipe and of each read from it: one page.
const PACKET: usize = 4096;

/// Runs the demo; `Ok(0)` when every proof held.
pub fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let dir = tempfile::Builder::new()
        .prefix("imgtx-demo-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let mut demo = Demo::new(dir.path().to_path_buf(), args)?;
    let result = demo.story();
    let keep = args.keep || result.is_err();
    let path = if keep {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    match &result {
        Ok(()) => {
            let secs = demo.start.elapsed().as_secs_f64();
            demo.say(&format!("\nDone in {secs:.1} s: every proof held."))?;
        }
        Err(_) => demo
            .say("\nA proof failed or a command did not do what the demo expected (see below).")?,
    }
    if keep {
        demo.say(&format!(
            "Kept {}: look around with `cd {0}` and `imgtx --state-dir state status`.",
            path.display()
        ))?;
    } else {
        demo.say(&format!("Removed {}.", path.display()))?;
    }
    result.map(|()| 0)
}

/// What the machine has.
struct Tools {
    mke2fs: bool,
    debugfs: bool,
    e2fsck: bool,
    guestfish: bool,
}

/// The result of trying to crash a commit.
enum Crash {
    /// The commit was stopped partway, with the base hashes before and after it.
    Interrupted {
        tx: String,
        old: String,
        new: String,
    },
    /// The commit finished before the kill landed.
    Finished,
}

struct Demo {
    dir: PathBuf,
    exe: PathBuf,
    start: Instant,
    step: u32,
    tools: Tools,
    use_guestfish: bool,
    no_guestfish_flag: bool,
}

impl Demo {
    fn new(dir: PathBuf, args: &DemoArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("could not find the imgtx executable")?;
        for tool in ["qemu-img", "qemu-io", "sha256sum"] {
            if !on_path(tool) {
                bail!("the demo needs {tool}, which is not installed (Debian: apt install qemu-utils coreutils)");
            }
        }
        let tools = Tools {
            mke2fs: on_path("mke2fs"),
            debugfs: on_path("debugfs"),
            e2fsck: on_path("e2fsck"),
            guestfish: on_path("guestfish"),
        };
        let use_guestfish = tools.guestfish && tools.mke2fs && !args.no_guestfish;
        Ok(Self {
            dir,
            exe,
            start: Instant::now(),
            step: 0,
            tools,
            use_guestfish,
            no_guestfish_flag: args.no_guestfish,
        })
    }

    /// The story, step by step. Any error ends it: a failed proof or an unexpected result.
    fn story(&mut self) -> anyhow::Result<()> {
        self.say("imgtx demo: ACID transactions for VM disk images, shown on a scratch image.")?;
        self.say(&format!(
            "Working in {}; every command below runs there, and `imgtx` is {}.\n\
             `--state-dir state` keeps this demo's transactions apart from any real ones.",
            self.dir.display(),
            self.exe.display()
        ))?;
        let fs = self.make_image()?;
        let old = self.hash("disk.img")?;

        self.heading("Begin a transaction")?;
        self.say("imgtx makes a qcow2 overlay beside the image and locks the image against other transactions.")?;
        let tx = self.begin("edit-issue")?;
        let overlay = overlay_of(&tx);
        self.imgtx(&["status"])?;

        self.heading("Edit inside the overlay")?;
        self.edit(&overlay, fs)?;

        self.heading("The base is untouched while the transaction is open")?;
        let now = self.hash("disk.img")?;
        self.prove(
            now == old,
            "disk.img has the same hash as before: every change so far is in the overlay.",
        )?;
        self.imgtx(&["diff", &tx])?;

        self.heading("Commit")?;
        self.say("First compute independently what the image must hold afterwards: the overlay read through, as raw.")?;
        let new = self.expected(&overlay)?;
        self.imgtx(&["commit", &tx])?;
        let now = self.hash("disk.img")?;
        self.prove(
            now == new,
            "disk.img now has the expected hash: the commit copied exactly the overlay's changes.",
        )?;
        if self.use_guestfish && self.tools.debugfs {
            let out =
                self.shown(self.tool("debugfs", &["-R", "cat /etc/issue.net", "disk.img"]))?;
            self.prove(
                text(&out.stdout).contains(EDIT_LINE.trim_end()),
                "The edited file is in the image.",
            )?;
        }
        self.prove(!self.dir.join(&overlay).exists(), "The overlay is gone.")?;

        self.heading("A commit killed partway")?;
        let mut crash = self.crash_commit("big-change", 0xc3)?;
        // The progress pipe keeps imgtx from finishing before the demo has read that it writes
        // (see `progress_pipe`). Should a commit still win the race, a fresh transaction
        // tries again.
        for (name, byte) in [("big-change-2", 0x3c), ("big-change-3", 0x5a)] {
            if !matches!(crash, Crash::Finished) {
                break;
            }
            self.say(
                "The commit finished before the kill landed (the demo did not get the processor in time). \
                 Once more, with a fresh transaction.",
            )?;
            crash = self.crash_commit(name, byte)?;
        }
        let Crash::Interrupted { tx, old, new } = crash else {
            bail!("the commit could not be interrupted in three tries");
        };
        self.after_crash(&tx, &old, &new, fs)?;

        self.heading("The history")?;
        self.say("Every finished transaction, with who ran it and how much it changed; it is only ever appended to.")?;
        self.imgtx(&["log"])?;
        Ok(())
    }

    /// Makes `disk.img`; true when it holds an ext4 file system.
    fn make_image(&mut self) -> anyhow::Result<bool> {
        self.heading("Make a small disk image")?;
        if !self.tools.mke2fs {
            self.say(&format!(
                "mke2fs is not installed (Debian: e2fsprogs), so disk.img is a raw {IMAGE_MIB} MiB image \
                 holding a known byte pattern instead of a file system."
            ))?;
            let mut data = Vec::new();
            for block in 0..IMAGE_MIB * 256 {
                data.extend(std::iter::repeat_n(block.to_le_bytes()[0] ^ 0x5a, 4096));
            }
            fs::write(self.dir.join("disk.img"), data).context("could not write disk.img")?;
            return Ok(false);
        }
        self.say(&format!("A {IMAGE_MIB} MiB ext4 file system holding /etc/issue.net, made from a directory tree."))?;
        let etc = self.dir.join("tree/etc");
        fs::create_dir_all(&etc).context("could not create the file tree")?;
        fs::write(etc.join("issue.net"), "Welcome to the imgtx demo disk\n")
            .context("could not write issue.net")?;
        let size = format!("{IMAGE_MIB}M");
        self.shown(self.tool(
            "mke2fs",
            &[
                "-q", "-F", "-t", "ext4", "-b", "4096", "-d", "tree", "disk.img", &size,
            ],
        ))?;
        fs::remove_dir_all(self.dir.join("tree")).context("could not remove the file tree")?;
        if self.tools.debugfs {
            self.shown(self.tool("debugfs", &["-R", "cat /etc/issue.net", "disk.img"]))?;
        }
        Ok(true)
    }

    /// Edits the overlay: with guestfish when it can, else with qemu-io.
    fn edit(&mut self, overlay: &str, fs: bool) -> anyhow::Result<()> {
        if self.use_guestfish {
            self.say(
                "guestfish mounts the overlay's file system in a small appliance VM and appends a line to \
                 /etc/issue.net (seconds with KVM, a minute or more without).",
            )?;
            let mut cmd = self.tool(
                "guestfish",
                &[
                    "-a",
                    overlay,
                    "-m",
                    "/dev/sda",
                    "write-append",
                    "/etc/issue.net",
                    EDIT_LINE,
                ],
            );
            for (key, value) in [
                ("LIBGUESTFS_BACKEND", "direct"),
                ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
            ] {
                if std::env::var_os(key).is_none() {
                    cmd.env(key, value);
                }
            }
            self.shown(cmd)?;
            return Ok(());
        }
        let why = if !self.tools.guestfish {
            "guestfish is not installed (Debian: guestfish)"
        } else if self.no_guestfish_flag {
            "--no-guestfish was given"
        } else {
            "there is no file system to mount"
        };
        let place = if fs {
            ", in the file system's free space"
        } else {
            ""
        };
        self.say(&format!(
            "{why}, so qemu-io writes 1 MiB of 0x5a bytes at 16 MiB into the overlay{place}."
        ))?;
        self.shown(self.tool(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x5a 16M 1M", overlay],
        ))?;
        Ok(())
    }

    /// Begins a transaction on disk.img, writes a big change into it, starts its commit, and
    /// kills it with SIGKILL as soon as it reports that it writes into the image.
    fn crash_commit(&mut self, name: &str, byte: u8) -> anyhow::Result<Crash> {
        let old = self.hash("disk.img")?;
        let tx = self.begin(name)?;
        let overlay = overlay_of(&tx);
        self.say(&format!("A big change this time: {BIG_CHANGE}iB of {byte:#04x} bytes, so the commit takes a while to copy."))?;
        let write = format!("write -P {byte:#04x} {BIG_OFFSET} {BIG_CHANGE}");
        self.shown(self.tool("qemu-io", &["-f", "qcow2", "-c", &write, &overlay]))?;
        let new = self.expected(&overlay)?;

        let mut cmd = self.imgtx_command(&["--json", "commit", &tx]);
        self.say(
            "Start the commit with --json, so it reports its progress on stderr, and kill it with SIGKILL \
             as soon as it reports writing into disk.img (phase \"apply\", past its commit point):",
        )?;
        self.say(&format!("$ {} &", display(&cmd)))?;
        let (mut events, writer) = progress_pipe()?;
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(writer)
            .spawn()
            .context("could not start imgtx commit")?;
        // The demo's copy of the pipe's write end goes with `cmd`: end of file then means
        // the commit has exited.
        drop(cmd);
        let mut stderr = Vec::new();
        let writing = read_until_writing(&mut events, &mut stderr)?;
        if writing {
            child.kill().context("could not kill imgtx commit")?;
        }
        let out = child
            .wait_with_output()
            .context("could not wait for imgtx commit")?;
        let ms = started.elapsed().as_millis();
        self.output(&Output { stderr, ..out })?;
        if out.status.success() {
            self.say(&format!("(imgtx commit exited 0 after {ms} ms)"))?;
            return Ok(Crash::Finished);
        }
        match out.status.signal() {
            Some(9) if writing => self.say(&format!(
                "Killed imgtx commit with SIGKILL {ms} ms after it started, as it began writing into disk.img."
            ))?,
            _ => bail!(
                "imgtx commit ended with {} instead of being stopped partway",
                out.status
            ),
        }
        Ok(Crash::Interrupted { tx, old, new })
    }

    /// After the crash: status, recover, and the proof that the base is old or new.
    fn after_crash(&mut self, tx: &str, old: &str, new: &str, fs: bool) -> anyhow::Result<()> {
        self.heading("After the crash")?;
        let torn = self.hash("disk.img")?;
        let state = if torn == old {
            "still the old content: the kill came before the first write had landed"
        } else if torn == new {
            "already the new content: the kill came after the last write, but before imgtx recorded it"
        } else {
            "neither old nor new, half-written: this is what a killed `qemu-img commit` leaves behind, \
             with nothing to repair it"
        };
        self.say(&format!("disk.img right now is {state}."))?;
        let out = self.imgtx(&["status", tx])?;
        self.prove(
            text(&out.stdout).contains("interrupted"),
            "imgtx status says the commit was interrupted: disk.img must not be used until `imgtx recover` has run.",
        )?;

        self.heading("Recover")?;
        self.say("imgtx recover reads the journal beside the image and finishes the commit, or undoes it if it had not reached its commit point.")?;
        self.imgtx(&["recover"])?;
        let now = self.hash("disk.img")?;
        if now == new {
            self.prove(
                true,
                "disk.img is wholly NEW: its hash is the expected one computed before the commit.",
            )?;
        } else if now == old {
            self.prove(
                true,
                "disk.img is wholly OLD: its hash is the one from before the commit.",
            )?;
        } else {
            self.prove(false, "disk.img is neither old nor new after recovery.")?;
        }
        if fs && self.tools.e2fsck {
            self.shown(self.tool("e2fsck", &["-fn", "disk.img"]))?;
            self.prove(true, "e2fsck finds the file system clean.")?;
        }
        let out = self
            .imgtx_command(&["--json", "status"])
            .output()
            .context("could not run imgtx status")?;
        if text(&out.stdout).contains(tx) {
            self.say("The transaction was not committed, so it is still open; roll it back to finish tidily.")?;
            self.imgtx(&["rollback", tx])?;
        }
        self.imgtx(&["status"])?;
        Ok(())
    }

    /// `imgtx begin --name NAME disk.img`; returns the transaction id it printed.
    fn begin(&mut self, name: &str) -> anyhow::Result<String> {
        let out = self.imgtx(&["begin", "--name", name, "disk.img"])?;
        let id = text(&out.stdout).trim().to_owned();
        if id.is_empty() || !self.dir.join(overlay_of(&id)).exists() {
            bail!("imgtx begin printed {id:?}, and no overlay of that name exists");
        }
        Ok(id)
    }

    /// The hash of the overlay's whole content read as raw: what the base must hold after
    /// committing it, computed without imgtx.
    fn expected(&mut self, overlay: &str) -> anyhow::Result<String> {
        self.shown(self.tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                overlay,
                "expected.raw",
            ],
        ))?;
        let hash = self.hash("expected.raw")?;
        fs::remove_file(self.dir.join("expected.raw")).context("could not remove expected.raw")?;
        Ok(hash)
    }

    /// `sha256sum FILE`, shown; returns the hash.
    fn hash(&mut self, file: &str) -> anyhow::Result<String> {
        let out = self.shown(self.tool("sha256sum", &[file]))?;
        let stdout = text(&out.stdout);
        stdout
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .context("sha256sum printed no hash")
    }

    /// Runs `imgtx --state-dir state ARGS...`, shown, and requires success.
    fn imgtx(&mut self, args: &[&str]) -> anyhow::Result<Output> {
        let cmd = self.imgtx_command(args);
        self.shown(cmd)
    }

    fn imgtx_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--state-dir", "state"]).args(args);
        self.prepare(&mut cmd);
        // The children must not inherit a crash hook or another state directory.
        cmd.env_remove("IMGTX_TEST_CRASH_AFTER")
            .env_remove("IMGTX_STATE_DIR");
        cmd
    }

    fn tool(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.prepare(&mut cmd);
        cmd
    }

    fn prepare(&self, cmd: &mut Command) {
        cmd.current_dir(&self.dir).stdin(Stdio::null());
    }

    /// Prints `$ COMMAND`, runs it, prints its output indented, and requires success.
    fn shown(&mut self, mut cmd: Command) -> anyhow::Result<Output> {
        self.say(&format!("$ {}", display(&cmd)))?;
        let out = cmd
            .output()
            .with_context(|| format!("could not run {}", display(&cmd)))?;
        self.output(&out)?;
        if !out.status.success() {
            bail!("{} failed ({})", display(&cmd), out.status);
        }
        Ok(out)
    }

    fn output(&mut self, out: &Output) -> anyhow::Result<()> {
        let mut s = String::new();
        for line in text(&out.stdout).lines().chain(text(&out.stderr).lines()) {
            let _ = writeln!(s, "    {line}");
        }
        print(&s)
    }

    fn heading(&mut self, title: &str) -> anyhow::Result<()> {
        self.step += 1;
        let secs = self.start.elapsed().as_secs_f64();
        print(&format!("\n== {}. {title}  [{secs:.1} s]\n", self.step))
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        print(&format!("{line}\n"))
    }

    /// States a proof; fails the demo when it does not hold.
    fn prove(&mut self, holds: bool, claim: &str) -> anyhow::Result<()> {
        if holds {
            self.say(&format!("OK: {claim}"))
        } else {
            self.say(&format!("FAILED: {claim}"))?;
            bail!("proof failed: {claim}")
        }
    }
}

fn print(s: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The overlay of disk.img in transaction `tx`, relative to the demo directory (the naming
/// rule of docs/cli.md).
fn overlay_of(tx: &str) -> String {
    format!("disk.img.{tx}.imgtx.qcow2")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pipe for the commit's progress events that holds one write at a time: packet mode
/// (`O_DIRECT`: each write its own packet) and one page, the least a pipe holds, which is one
/// packet. imgtx then blocks in each progress write until the demo has read the one before,
/// so it is never more than one write past what the demo has seen, however fast the disk or
/// slow the demo; and it cannot finish a commit without writing the copy's last progress
/// event after the first one. Today every progress line is many writes (stderr is unbuffered
/// and the JSON goes out piece by piece), so once the demo has read the first "apply" line,
/// imgtx cannot even finish its next line before the kill. Were a line one write, the commit
/// could finish first only if the demo lost the processor between its read and its kill:
/// hence the retries in `story`.
fn progress_pipe() -> anyhow::Result<(fs::File, OwnedFd)> {
    let (read, write) = pipe2(OFlag::O_DIRECT | OFlag::O_CLOEXEC)
        .context("could not create a pipe for imgtx's progress")?;
    fcntl(&read, FcntlArg::F_SETPIPE_SZ(PACKET as i32))
        .context("could not shrink the progress pipe to one packet")?;
    Ok((fs::File::from(read), write))
}

/// Reads progress events from `events` into `seen` until one says the commit writes into
/// the image (`"phase":"apply"`): true then, false when the commit exited first.
fn read_until_writing(events: &mut fs::File, seen: &mut Vec<u8>) -> anyhow::Result<bool> {
    // A packet is at most a page: a read of that much takes one whole.
    let mut packet = [0u8; PACKET];
    let mut line_start = 0;
    loop {
        let n = match events.read(&mut packet) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("could not read imgtx's progress"),
        };
        seen.extend_from_slice(&packet[..n]);
        while let Some(end) = seen[line_start..].iter().position(|&b| b == b'\n') {
            let line = &seen[line_start..line_start + end];
            line_start += end + 1;
            let event: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            if event.is_some_and(|v| v["event"] == "progress" && v["phase"] == "apply") {
                return Ok(true);
            }
        }
    }
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .any(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A command line as a user would type it: environment set for it, the program's name
/// (`imgtx` for this executable), and the arguments quoted for a POSIX shell.
fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    let program = Path::new(cmd.get_program());
    let name: OsString = if program.is_absolute() {
        "imgtx".into()
    } else {
        program.as_os_str().to_owned()
    };
    words.push(name.to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

/// Quotes a word for a POSIX shell, using `$'...'` only when it holds a newline.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_owned();
    }
    if word.contains('\n') {
        let inner = word
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n");
        return format!("$'{inner}'");
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(quote("disk.img"), "disk.img");
        assert_eq!(quote("write -P 0x5a 16M 1M"), "'write -P 0x5a 16M 1M'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("a line\n"), "$'a line\\n'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn commands_are_shown_with_their_environment() {
        let mut cmd = Command::new("guestfish");
        cmd.env("LIBGUESTFS_BACKEND", "direct").args(["-a", "x y"]);
        assert_eq!(
            display(&cmd),
            "LIBGUESTFS_BACKEND=direct guestfish -a 'x y'"
        );
    }
}
