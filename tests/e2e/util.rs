//! Shared helpers for the end-to-end tests: a per-test directory with its own state
//! directory, runners for `imgtx` and the external tools, image builders and checks.
//!
//! Every helper panics with the full command line, exit status, stdout and stderr when
//! something unexpected happens, so a failing test explains itself in CI logs.

// Each test module uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The exit statuses of the CLI contract.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// An error.
    pub const ERROR: i32 = 1;
    /// Bad usage.
    pub const USAGE: i32 = 2;
    /// An image is busy, or another transaction conflicts.
    pub const BUSY: i32 = 3;
    /// An interrupted transaction needs `imgtx recover`.
    pub const RECOVERY_NEEDED: i32 = 4;
}

/// The path of the `imgtx` binary cargo built for these tests, or `IMGTX_E2E_BIN` when set:
/// to run these tests against another build (an older one, to show a new test fails there).
pub fn imgtx_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("IMGTX_E2E_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_imgtx").into(), Into::into)
    })
}

/// A temporary directory for one test: `images/` for the images under test and a private
/// `state/` directory that every `imgtx` call gets through `--state-dir`, so tests never
/// see each other's transactions. Removed when dropped.
#[derive(Debug)]
pub struct TestDir {
    root: tempfile::TempDir,
}

impl TestDir {
    /// Creates the directory with empty `images/` and `state/` inside.
    pub fn new() -> TestDir {
        Self::new_in(&std::env::temp_dir())
    }

    /// [`TestDir::new`] under `parent`: on the file system a test is about.
    pub fn new_in(parent: &Path) -> TestDir {
        let root = tempfile::Builder::new()
            .prefix("imgtx-e2e-")
            .tempdir_in(parent)
            .expect("create the test directory");
        fs::create_dir(root.path().join("images")).expect("create images/");
        fs::create_dir(root.path().join("state")).expect("create state/");
        TestDir { root }
    }

    /// The test directory itself.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The directory that holds the images; nothing else is put there by the harness, so
    /// a test can check that imgtx left no stray files beside a base.
    pub fn images(&self) -> PathBuf {
        self.root.path().join("images")
    }

    /// `images/NAME`.
    pub fn image(&self, name: &str) -> PathBuf {
        self.images().join(name)
    }

    /// The private state directory passed as `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// An `imgtx --state-dir STATE` command running in the test directory, with guestfish's
    /// environment set (for `imgtx run ... -- guestfish`). Add the rest of the arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(imgtx_bin());
        cmd.current_dir(self.path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .stdin(Stdio::null());
        guestfish_env(&mut cmd);
        cmd
    }

    /// Runs `imgtx --state-dir STATE ARGS...` and returns its output, whatever the status.
    pub fn imgtx<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run(&mut cmd)
    }

    /// Runs `imgtx ARGS...`, asserts it succeeded, and returns its stdout.
    pub fn imgtx_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let mut cmd = self.command();
        cmd.args(args);
        stdout_of(&expect_code(&mut cmd, exit::OK))
    }

    /// Runs `imgtx ARGS...`, asserts it exited with `code`, and returns its output.
    pub fn imgtx_code<S: AsRef<OsStr>>(&self, args: &[S], code: i32) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        expect_code(&mut cmd, code)
    }

    /// Runs `imgtx COMMAND --json REST...` (the first of `args` is the command), asserts it
    /// succeeded, and parses its stdout as JSON.
    pub fn imgtx_json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let (command, rest) = args.split_first().expect("a command");
        let mut cmd = self.command();
        cmd.arg(command).arg("--json").args(rest);
        let out = expect_code(&mut cmd, exit::OK);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{}\nstdout is not JSON: {e}", describe(&cmd, &out));
        })
    }

    /// `imgtx begin --json BASES...`: asserts success and returns what it printed.
    pub fn begin(&self, bases: &[&Path]) -> Begun {
        let mut args: Vec<&OsStr> = vec![OsStr::new("begin")];
        args.extend(bases.iter().map(|b| b.as_os_str()));
        Begun::from_json(&self.imgtx_json(&args))
    }

    /// A raw image `name` of `size` bytes (pattern `seed`), a transaction begun over it, and
    /// `write` (a qemu-io command) done into its overlay, as a guest tool would.
    pub fn written(&self, name: &str, size: u64, seed: u8, write: &str) -> (PathBuf, Begun) {
        let base = self.raw_image(name, size, seed);
        let tx = self.begin(&[&base]);
        qcow2_io(tx.overlay(), write);
        (base, tx)
    }

    /// The transactions `imgtx status --json` lists (all of them, whatever their condition).
    pub fn transactions(&self) -> Vec<Value> {
        match self.imgtx_json(&["status"]) {
            Value::Array(list) => list,
            Value::Object(mut map) => match map.remove("transactions") {
                Some(Value::Array(list)) => list,
                _ => panic!("status --json has no transactions list: {map:?}"),
            },
            other => panic!("status --json printed neither a list nor an object: {other}"),
        }
    }

    /// Asserts that no transaction is registered in the state directory.
    pub fn assert_no_transactions(&self) {
        let open = self.transactions();
        assert!(
            open.is_empty(),
            "expected no transactions, status shows {open:#?}"
        );
    }

    /// The sorted names of the files in `images/`, leaving out spare pre-image files
    /// (`.NAME.imgtx.spare`): any commit may keep one, so they are never strays. Tests of the
    /// spare itself look at it by name ([`TestDir::spare`]).
    pub fn image_listing(&self) -> Vec<String> {
        listing_but_spares(&self.images())
    }

    /// Where imgtx keeps the spare pre-image file of `images/BASE` between commits.
    pub fn spare(&self, base: &str) -> PathBuf {
        self.image(&format!(".{base}.imgtx.spare"))
    }

    /// Writes `images/NAME`, a raw image of `size` bytes whose every 512-byte sector holds a
    /// pattern derived from `seed` and the sector number, so any misplaced sector shows.
    pub fn raw_image(&self, name: &str, size: u64, seed: u8) -> PathBuf {
        let path = self.image(name);
        fs::write(&path, pattern(size, seed)).expect("write raw image");
        path
    }

    /// Creates `images/NAME`, an ext4 image of `size_mib` MiB made by `mke2fs -d` from
    /// `files` (path inside the file system, content). Panics if mke2fs is missing: call
    /// `require_tool("mke2fs")` first.
    pub fn ext4_image(&self, name: &str, size_mib: u32, files: &[(&str, &str)]) -> PathBuf {
        let tree = self.path().join(format!("{name}.tree"));
        for (inner, content) in files {
            let dest = tree.join(inner.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().expect("a parent")).expect("create tree dir");
            fs::write(&dest, content).expect("write tree file");
        }
        fs::create_dir_all(&tree).expect("create tree");
        let path = self.image(name);
        let mut cmd = Command::new("mke2fs");
        cmd.args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&tree)
            .arg(&path)
            .arg(format!("{size_mib}M"));
        expect_code(&mut cmd, exit::OK);
        fs::remove_dir_all(&tree).expect("remove tree");
        path
    }
}

/// What `imgtx begin --json` printed.
#[derive(Debug, Clone)]
pub struct Begun {
    /// The transaction id.
    pub id: String,
    /// One entry per base, in the order given.
    pub images: Vec<BegunImage>,
}

/// One image of a [`Begun`] transaction.
#[derive(Debug, Clone)]
pub struct BegunImage {
    /// Absolute path of the base.
    pub base: PathBuf,
    /// `raw` or `qcow2`.
    pub base_format: String,
    /// Absolute path of the overlay to edit.
    pub overlay: PathBuf,
}

impl Begun {
    /// Parses `{"id": ..., "images": [{"base", "base_format", "overlay"}]}`.
    pub fn from_json(v: &Value) -> Begun {
        let text = |v: &Value, key: &str| -> String {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("begin --json: no string {key:?} in {v}"))
                .to_owned()
        };
        let images = v["images"]
            .as_array()
            .unwrap_or_else(|| panic!("begin --json: no images list in {v}"))
            .iter()
            .map(|i| BegunImage {
                base: PathBuf::from(text(i, "base")),
                base_format: text(i, "base_format"),
                overlay: PathBuf::from(text(i, "overlay")),
            })
            .collect();
        Begun {
            id: text(v, "id"),
            images,
        }
    }

    /// The overlay of the only (or first) base.
    pub fn overlay(&self) -> &Path {
        &self
            .images
            .first()
            .expect("begin returned no images")
            .overlay
    }
}

/// Returns whether `tool` is on `PATH`. When it is not, a test should return early: this
/// prints a SKIP line and returns false, except under CI (`CI` set and not `false`), where a
/// missing tool means the environment is broken and the test fails instead.
pub fn require_tool(tool: &str) -> bool {
    if find_on_path(tool).is_some() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{tool} is not installed, and CI is set so tests may not skip; run scripts/install-deps"
    );
    eprintln!("SKIP: {tool} is not installed (scripts/install-deps installs it)");
    false
}

/// Like [`require_tool`] for several tools; true only if all are present.
pub fn require_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| require_tool(t))
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Sets the environment guestfish needs here unless the caller's environment already says:
/// the direct backend (no libvirtd) and TCG, because KVM inside this kind of VM fails an
/// assertion. See docs/testing.md.
pub fn guestfish_env(cmd: &mut Command) {
    for (key, value) in [
        ("LIBGUESTFS_BACKEND", "direct"),
        ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
    ] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
}

/// Runs `guestfish ARGS...` with [`guestfish_env`] and asserts it succeeded. Each run boots
/// the libguestfs appliance: about 25 s under TCG, so use it sparingly.
pub fn guestfish<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new("guestfish");
    cmd.args(args).stdin(Stdio::null());
    guestfish_env(&mut cmd);
    expect_code(&mut cmd, exit::OK)
}

/// Runs `qemu-img ARGS...`, asserts success, returns stdout.
pub fn qemu_img<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut cmd = Command::new("qemu-img");
    cmd.args(args).stdin(Stdio::null());
    stdout_of(&expect_code(&mut cmd, exit::OK))
}

/// Runs `qemu-io ARGS...`, asserts success, returns stdout. qemu-io reports some failures
/// on stdout with status 0, so this also fails on a line containing "failed".
pub fn qemu_io<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(args).stdin(Stdio::null());
    let out = expect_code(&mut cmd, exit::OK);
    let stdout = stdout_of(&out);
    assert!(!stdout.contains("failed"), "{}", describe(&cmd, &out));
    stdout
}

/// Runs one qemu-io command (`write -P 0xab 1M 2M`, ...) on the qcow2 image `image`.
pub fn qcow2_io(image: &Path, command: &str) {
    qemu_io(&[
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        command.as_ref(),
        image.as_os_str(),
    ]);
}

/// The raw content `image` (an overlay over its backing chain) stands for, as
/// `qemu-img convert -O raw` reads it: the oracle a committed base must equal.
pub fn converted_raw(t: &TestDir, image: &Path) -> Vec<u8> {
    let out = t.path().join("expected.raw");
    qemu_img(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    let bytes = fs::read(&out).expect("read converted image");
    fs::remove_file(&out).expect("remove converted image");
    bytes
}

/// `qemu-img create -f qcow2 -b BASE -F BASE_FORMAT OVERLAY`: the hand-made overlay recipe.
pub fn qemu_overlay(base: &Path, base_format: &str, overlay: &Path) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base)
        .args(["-F", base_format])
        .arg(overlay);
    expect_code(&mut cmd, exit::OK);
}

/// The content of `inner` inside the ext2/3/4 image `image`, read with `debugfs`.
pub fn debugfs_cat(image: &Path, inner: &str) -> String {
    let mut cmd = Command::new("debugfs");
    cmd.arg("-R").arg(format!("cat {inner}")).arg(image);
    stdout_of(&expect_code(&mut cmd, exit::OK))
}

/// Asserts that `e2fsck -fn` finds the file system in `image` clean.
pub fn assert_fsck_clean(image: &Path) {
    let mut cmd = Command::new("e2fsck");
    cmd.arg("-fn").arg(image);
    expect_code(&mut cmd, exit::OK);
}

/// The SHA-256 of a file, in hex, computed with coreutils' `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg("--").arg(path);
    let out = stdout_of(&expect_code(&mut cmd, exit::OK));
    out.split_whitespace()
        .next()
        .expect("sha256sum prints a hash")
        .to_owned()
}

/// `size` bytes where sector N (512 bytes) is filled with `seed ^ N` (low byte) and starts
/// with N as a little-endian u64, so equal sectors at different places never compare equal.
pub fn pattern(size: u64, seed: u8) -> Vec<u8> {
    let len = usize::try_from(size).expect("test image fits in memory");
    let mut data = vec![0u8; len];
    for (n, sector) in data.chunks_mut(512).enumerate() {
        let n = u64::try_from(n).expect("sector number fits u64");
        sector.fill(seed ^ n.to_le_bytes()[0]);
        let head = n.to_le_bytes();
        let k = head.len().min(sector.len());
        sector[..k].copy_from_slice(&head[..k]);
    }
    data
}

/// [`listing`] without spare pre-image files.
pub fn listing_but_spares(dir: &Path) -> Vec<String> {
    let mut names = listing(dir);
    names.retain(|n| !(n.starts_with('.') && n.ends_with(".imgtx.spare")));
    names
}

/// The sorted names of the entries of `dir`.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("read dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The sorted paths, relative to `dir`, of everything under `dir` (directories included):
/// to check that a command left nothing behind in a state directory.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let path = entry.expect("read dir entry").path();
            let rel = path.strip_prefix(root).expect("under the root");
            out.push(rel.to_string_lossy().into_owned());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Which output stream of a child [`run_with_closed`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

/// Runs `cmd` with the read end of its stdout or stderr pipe closed before it can write, as
/// in `imgtx ... | true`: every write there fails with EPIPE. Returns its output, in which
/// the closed stream is empty.
pub fn run_with_closed(cmd: &mut Command, closed: Closed) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    match closed {
        Closed::Stdout => drop(child.stdout.take()),
        Closed::Stderr => drop(child.stderr.take()),
    }
    child
        .wait_with_output()
        .expect("collect the child's output")
}

/// Runs `cmd` and returns its output; panics only if it could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// Runs `cmd` and asserts its exit status is `code`.
pub fn expect_code(cmd: &mut Command, code: i32) -> Output {
    let out = run(cmd);
    assert!(
        out.status.code() == Some(code),
        "expected exit status {code}\n{}",
        describe(cmd, &out)
    );
    out
}

/// Stdout as text.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A report of a finished command for assertion messages.
pub fn describe(cmd: &Command, out: &Output) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n===== {cmd:?}");
    let _ = writeln!(s, "status: {}", out.status);
    let _ = writeln!(s, "--- stdout:\n{}", stdout_of(out));
    let _ = writeln!(s, "--- stderr:\n{}", stderr_of(out));
    let _ = write!(s, "=====");
    s
}

/// Polls `done` every 20 ms until it is true; panics, saying it waited for `what`, after
/// 60 s. For tests that must wait for another process to reach a point: the deadline only
/// keeps a broken build from hanging the suite, it decides nothing.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 60 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (at most 60 s, see [`wait_until`]) for `child`, whose stdout and stderr are piped,
/// to exit, and returns its output.
pub fn finish(mut child: std::process::Child) -> Output {
    wait_until("the child to exit", || {
        child.try_wait().expect("wait for the child").is_some()
    });
    child
        .wait_with_output()
        .expect("collect the child's output")
}
