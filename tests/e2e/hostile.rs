//! Tampered overlays run end to end through the binary.
//!
//! Each attack begins a transaction over a small raw base of known content, writes data into
//! the overlay with qemu-io as a guest tool would, then rewrites the overlay (or the name it
//! lives under) the way a hostile guest tool could. Then `status`, `diff`, `commit`,
//! `recover` and `rollback` run; the checks are the same for every attack:
//!
//! - `commit` and `diff` exit 1 with one line on stderr naming the problem; nothing panics;
//! - the base and the victim file (where a redirect points) stay byte-identical;
//! - every command stays within 1 s of CPU and 64 MiB peak RSS (measured with
//!   `/usr/bin/time`), whatever the header claims;
//! - rollback removes the overlay, or the symlink planted in its place, and nothing else.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{self, exit, qemu_io, TestDir};

/// Peak resident memory allowed per command, in KiB.
const MAX_RSS_KIB: u64 = 64 << 10;
/// CPU time (user + system) allowed per command, in seconds.
const MAX_CPU_S: f64 = 1.0;
/// The base and victim size.
const SIZE: u64 = 1 << 20;

/// One finished command with its resource use.
struct Measured {
    out: Output,
    rss_kib: u64,
    cpu_s: f64,
    what: String,
}

/// A transaction over `base.raw` with data written into its overlay, and a victim file.
struct Scene {
    dir: TestDir,
    base: PathBuf,
    victim: PathBuf,
    tx: String,
    overlay: PathBuf,
    base_bytes: Vec<u8>,
    victim_bytes: Vec<u8>,
}

impl Scene {
    fn raw() -> Option<Scene> {
        if !util::require_tools(&["qemu-img", "qemu-io", "time"]) {
            return None;
        }
        let dir = TestDir::new();
        let base = dir.raw_image("base.raw", SIZE, 0x11);
        Some(Scene::over(dir, base, "raw"))
    }

    fn qcow2() -> Option<Scene> {
        if !util::require_tools(&["qemu-img", "qemu-io", "time"]) {
            return None;
        }
        let dir = TestDir::new();
        let base = dir.image("base.qcow2");
        let path = base.to_str().expect("UTF-8 path");
        util::qemu_img(&["create", "-q", "-f", "qcow2", path, "1M"]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 0x22 0 1M", path]);
        Some(Scene::over(dir, base, "qcow2"))
    }

    fn over(dir: TestDir, base: PathBuf, format: &str) -> Scene {
        let victim = dir.raw_image("victim.raw", SIZE, 0x77);
        let begun = dir.begin(&[base.as_path()]);
        assert_eq!(begun.images[0].base_format, format);
        let overlay = begun.overlay().to_path_buf();
        let path = overlay.to_str().expect("UTF-8 path");
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "write -P 0xcd 512k 4k",
            path,
        ]);
        let base_bytes = snapshot(&base);
        let victim_bytes = fs::read(&victim).expect("read the victim");
        Scene {
            dir,
            base,
            victim,
            tx: begun.id,
            overlay,
            base_bytes,
            victim_bytes,
        }
    }

    fn overlay_bytes(&self) -> Vec<u8> {
        fs::read(&self.overlay).expect("read the overlay")
    }

    /// Rewrites the overlay in place: same inode, as a tool writing inside it would.
    fn rewrite(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = self.overlay_bytes();
        f(&mut b);
        fs::write(&self.overlay, b).expect("rewrite the overlay");
    }

    /// Runs `imgtx --state-dir STATE ARGS` under `/usr/bin/time`.
    fn measured(&self, args: &[&str]) -> Measured {
        let stats = self.dir.path().join("time.out");
        let mut cmd = Command::new("/usr/bin/time");
        cmd.current_dir(self.dir.path())
            .args(["-f", "%M %U %S", "-o"])
            .arg(&stats)
            .arg(util::imgtx_bin())
            .arg("--state-dir")
            .arg(self.dir.state_dir())
            .args(args)
            .stdin(Stdio::null());
        let out = util::run(&mut cmd);
        let text = fs::read_to_string(&stats).expect("read /usr/bin/time's report");
        let line = text.lines().last().unwrap_or_default();
        let mut f = line.split_whitespace();
        let rss_kib = f
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("bad time report {text:?}"));
        let cpu_s = f.map(|x| x.parse::<f64>().unwrap_or(0.0)).sum();
        Measured {
            what: util::describe(&cmd, &out),
            out,
            rss_kib,
            cpu_s,
        }
    }

    /// Runs the command and checks the bounds every command must keep, whatever its status.
    fn bounded(&self, args: &[&str]) -> Measured {
        let m = self.measured(args);
        let code = m.out.status.code();
        assert_ne!(code, Some(101), "imgtx panicked{}", m.what);
        assert!(code.is_some(), "imgtx was killed by a signal{}", m.what);
        assert!(
            !util::stderr_of(&m.out).contains("panicked"),
            "imgtx panicked{}",
            m.what
        );
        assert!(
            m.rss_kib < MAX_RSS_KIB,
            "peak RSS {} KiB exceeds 64 MiB{}",
            m.rss_kib,
            m.what
        );
        assert!(
            m.cpu_s < MAX_CPU_S,
            "{} s of CPU exceeds 1 s{}",
            m.cpu_s,
            m.what
        );
        m
    }

    /// Runs a command that must refuse the overlay: exit 1 and one line naming the problem.
    fn refused(&self, args: &[&str], why: &str) {
        let m = self.bounded(args);
        assert_eq!(
            m.out.status.code(),
            Some(exit::ERROR),
            "expected a refusal ({why}){}",
            m.what
        );
        let stderr = util::stderr_of(&m.out);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr{}", m.what);
        assert!(
            lines[0].starts_with("imgtx: error: "),
            "unexpected stderr{}",
            m.what
        );
        assert!(
            lines[0].contains("overlay"),
            "the message does not name the overlay{}",
            m.what
        );
        assert!(
            lines[0].contains(why),
            "the message does not say {why:?}{}",
            m.what
        );
        self.assert_untouched();
    }

    fn assert_untouched(&self) {
        self.assert_base_untouched();
        self.assert_victim_untouched();
        let strays: Vec<String> = self
            .dir
            .image_listing()
            .into_iter()
            .filter(|n| n.ends_with(".imgtx.journal") || n.ends_with(".imgtx.undo"))
            .collect();
        assert!(strays.is_empty(), "a refused commit left {strays:?}");
    }

    fn assert_victim_untouched(&self) {
        assert!(
            fs::read(&self.victim).expect("read the victim") == self.victim_bytes,
            "the victim changed"
        );
    }

    fn assert_base_untouched(&self) {
        assert!(snapshot(&self.base) == self.base_bytes, "the base changed");
    }

    /// Runs a command that must succeed within the bounds.
    fn bounded_ok(&self, args: &[&str]) {
        let m = self.bounded(args);
        assert_eq!(m.out.status.code(), Some(exit::OK), "{args:?}{}", m.what);
    }

    /// Puts a symlink to `target` where the overlay was; the overlay is moved to `aside`
    /// (its path returned) or, when `aside` is `None`, removed.
    fn symlink_overlay(&self, target: &Path, aside: Option<&str>) -> Option<PathBuf> {
        let aside = aside.map(|name| self.dir.path().join(name));
        match &aside {
            Some(a) => fs::rename(&self.overlay, a).expect("move the overlay aside"),
            None => fs::remove_file(&self.overlay).expect("remove the overlay"),
        }
        symlink(target, &self.overlay).expect("plant a symlink");
        aside
    }

    /// Renames a new file holding `bytes` over the overlay while the overlay still exists,
    /// so the newcomer cannot reuse its inode number.
    fn replace_overlay(&self, bytes: &[u8]) {
        let planted = self.dir.path().join("planted");
        fs::write(&planted, bytes).expect("plant a file");
        fs::rename(&planted, &self.overlay).expect("move it over the overlay");
    }

    /// Interrupts a commit right after its commit point, leaving a journal and pre-images
    /// for `recover`; returns the journal.
    fn interrupted(&self) -> PathBuf {
        let mut cmd = self.dir.command();
        cmd.env("IMGTX_TEST_CRASH_AFTER", "commit-point")
            .args(["commit", &self.tx]);
        util::expect_code(&mut cmd, 137);
        self.dir
            .image(&format!(".base.raw.{}.imgtx.journal", self.tx))
    }

    /// The pre-image file of an interrupted commit.
    fn preimage(&self) -> PathBuf {
        self.dir.image(&format!(".base.raw.{}.imgtx.undo", self.tx))
    }

    /// The whole command sequence for a tampered overlay; `why` is a part of the reason
    /// every refusal must state.
    fn expect_refused(&self, why: &str) {
        let status = self.bounded(&["status", &self.tx]);
        assert!(
            matches!(status.out.status.code(), Some(0 | 1)),
            "status{}",
            status.what
        );
        self.refused(&["diff", &self.tx], why);
        self.refused(&["commit", &self.tx], why);
        // A second attempt finds the same refusal, not a half-done commit.
        self.refused(&["commit", &self.tx], why);
        self.bounded_ok(&["recover"]);
        self.assert_untouched();
        self.bounded_ok(&["rollback", &self.tx]);
        self.assert_untouched();
        self.dir.assert_no_transactions();
    }
}

/// The content of a small file, or the SHA-256 of a big (sparse) one.
fn snapshot(path: &Path) -> Vec<u8> {
    if fs::metadata(path).expect("stat").len() > 16 << 20 {
        util::sha256(path).into_bytes()
    } else {
        fs::read(path).expect("read the file")
    }
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

fn at(v: u64) -> usize {
    usize::try_from(v).expect("offset fits")
}

/// Host offset mask of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The "copied" flag of L1 and L2 entries (refcount exactly one).
const COPIED: u64 = 1 << 63;

/// Offset of the active L1 table.
fn l1_offset(b: &[u8]) -> usize {
    at(be64(b, 40))
}

/// Offset of the first L2 table (the one qemu-io's write at 0 allocated).
fn l2_offset(b: &[u8]) -> usize {
    at(be64(b, l1_offset(b)) & OFFSET_MASK)
}

/// Points the backing name at `name` (written where the old one was; the header cluster
/// has room after it).
fn set_backing(b: &mut [u8], name: &str) {
    let off = at(be64(b, 8));
    b[off..off + name.len()].copy_from_slice(name.as_bytes());
    put32(b, 16, u32::try_from(name.len()).expect("short name"));
}

/// Sets incompatible feature bit `bit` in the header.
fn set_incompatible(b: &mut [u8], bit: u32) {
    let v = be64(b, 72);
    put64(b, 72, v | 1 << bit);
}

/// The offset of the data of the first header extension of `kind`.
fn extension(b: &[u8], kind: u32) -> Option<(usize, usize)> {
    let mut off = at(u64::from(be32(b, 100)));
    while off + 8 <= b.len() {
        let (t, len) = (be32(b, off), at(u64::from(be32(b, off + 4))));
        if t == 0 {
            return None;
        }
        if t == kind {
            return Some((off + 8, len));
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    None
}

#[test]
fn untampered_overlay_commits_within_the_bounds() {
    // Arrange
    let Some(s) = Scene::raw() else { return };
    // Act
    let commit = s.bounded(&["commit", &s.tx]);
    // Assert: the control case, so that the attacks below fail for the tampering alone.
    assert_eq!(
        commit.out.status.code(),
        Some(exit::OK),
        "commit{}",
        commit.what
    );
    let base = fs::read(&s.base).expect("read the base");
    assert!(base[..64 << 10].iter().all(|&x| x == 0xab));
    s.assert_victim_untouched();
}

#[test]
fn backing_redirected_by_absolute_path_is_refused() {
    let Some(s) = Scene::raw() else { return };
    let victim = s.victim.to_str().expect("UTF-8 path").to_owned();
    s.rewrite(|b| set_backing(b, &victim));
    s.expect_refused("backing file");
}

#[test]
fn backing_redirected_by_relative_path_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| set_backing(b, "victim.raw"));
    s.expect_refused("backing file");
}

#[test]
fn backing_redirected_into_a_qemu_protocol_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| set_backing(b, "nbd://127.0.0.1:10809/x"));
    s.expect_refused("backing file");
}

#[test]
fn backing_removed_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        put64(b, 8, 0);
        put32(b, 16, 0);
    });
    s.expect_refused("backing file");
}

#[test]
fn backing_format_changed_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let (off, len) = extension(b, 0xe279_2aca).expect("a backing format extension");
        assert_eq!(&b[off..off + len], b"raw");
        b[off..off + len].copy_from_slice(b"qed");
    });
    s.expect_refused("backing format");
}

#[test]
fn backing_redirected_over_a_qcow2_base_is_refused() {
    let Some(s) = Scene::qcow2() else { return };
    let victim = s.victim.to_str().expect("UTF-8 path").to_owned();
    s.rewrite(|b| set_backing(b, &victim));
    s.expect_refused("backing file");
}

#[test]
fn huge_l1_size_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 36, 0x7fff_ffff));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn l1_size_of_2_pow_31_entries_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 36, 0x8000_0000));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn cluster_bits_below_range_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 20, 8));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn cluster_bits_above_range_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 20, 31));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn l1_entry_past_eof_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l1 = l1_offset(b);
        put64(b, l1, COPIED | (1 << 40));
    });
    s.expect_refused("overlay");
}

#[test]
fn l1_entry_into_the_header_cluster_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l1 = l1_offset(b);
        // Offset 0 would mean "unallocated"; 0x200 is inside cluster 0, the header, and
        // unaligned as well.
        put64(b, l1, COPIED | 0x200);
    });
    s.expect_refused("overlay");
}

#[test]
fn l1_entry_onto_the_refcount_table_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l1 = l1_offset(b);
        let reftable = be64(b, 48);
        put64(b, l1, COPIED | reftable);
    });
    s.expect_refused("overlay");
}

#[test]
fn l2_entry_past_eof_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l2 = l2_offset(b);
        put64(b, l2, COPIED | (1 << 40));
    });
    s.expect_refused("overlay");
}

#[test]
fn l2_entry_onto_the_l1_table_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l2 = l2_offset(b);
        let l1 = be64(b, 40);
        put64(b, l2, COPIED | l1);
    });
    s.expect_refused("overlay");
}

#[test]
fn l2_entry_onto_its_own_table_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l2 = l2_offset(b);
        put64(b, l2, COPIED | u64::try_from(l2).expect("offset"));
    });
    s.expect_refused("overlay");
}

#[test]
fn l2_entries_aliasing_one_cluster_are_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l2 = l2_offset(b);
        let first = be64(b, l2);
        // Guest cluster 8 (512 KiB) reads the host cluster of guest cluster 0.
        put64(b, l2 + 8 * 8, first);
    });
    s.expect_refused("overlay");
}

#[test]
fn l1_entries_sharing_one_l2_table_are_refused() {
    // Arrange: a sparse base over 1 GiB so the overlay's L1 has three entries (one per
    // 512 MiB with 64 KiB clusters).
    if !util::require_tools(&["qemu-img", "qemu-io", "time"]) {
        return;
    }
    let dir = TestDir::new();
    let base = dir.image("big.raw");
    let f = fs::File::create(&base).expect("create the base");
    f.set_len((1 << 30) + (1 << 20)).expect("size the base");
    drop(f);
    let s = Scene::over(dir, base, "raw");
    // Act: the second L1 entry points at the first's L2 table: an "L2 loop".
    s.rewrite(|b| {
        let l1 = l1_offset(b);
        let first = be64(b, l1);
        put64(b, l1 + 8, first);
        put64(b, l1 + 16, first);
    });
    // Assert
    s.expect_refused("overlay");
}

#[test]
fn unknown_incompatible_feature_bit_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| set_incompatible(b, 40));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn external_data_file_bit_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| set_incompatible(b, 2));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn external_data_file_over_a_qcow2_base_is_refused() {
    let Some(s) = Scene::qcow2() else { return };
    s.rewrite(|b| set_incompatible(b, 2));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn corrupt_bit_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| set_incompatible(b, 1));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn aes_encryption_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 32, 1));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn luks_encryption_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 32, 2));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn bad_magic_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| b[..4].copy_from_slice(b"QFI\0"));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn bad_version_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 4, 4));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn version_1_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put32(b, 4, 1));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn virtual_size_2_pow_62_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put64(b, 24, 1 << 62));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn petabyte_virtual_size_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| put64(b, 24, 1 << 50));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn header_truncated_file_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| b.truncate(300));
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn file_truncated_before_its_tables_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(|b| {
        let l2 = l2_offset(b);
        b.truncate(l2);
    });
    s.expect_refused("overlay");
}

#[test]
fn empty_file_is_refused() {
    let Some(s) = Scene::raw() else { return };
    s.rewrite(Vec::clear);
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn raw_bytes_in_the_overlay_file_are_refused() {
    let Some(s) = Scene::raw() else { return };
    let victim = s.victim_bytes.clone();
    s.rewrite(|b| *b = victim);
    s.expect_refused("not a valid qcow2 image");
}

#[test]
fn raw_file_in_the_overlays_place_is_refused_and_left_alone() {
    // Arrange: a new inode under the overlay's name, renamed over it while it exists so
    // that the inode number cannot be reused.
    let Some(s) = Scene::raw() else { return };
    s.replace_overlay(&s.victim_bytes);
    // Act + Assert
    s.expect_refused("replaced");
    // Rollback unlinks only what imgtx created.
    assert!(fs::read(&s.overlay).expect("the planted file is still there") == s.victim_bytes);
}

#[test]
fn valid_overlay_in_the_overlays_place_is_refused() {
    // Arrange: a perfectly valid overlay with the right backing, but not the inode begin made.
    let Some(s) = Scene::raw() else { return };
    s.replace_overlay(&s.overlay_bytes());
    // Act + Assert
    s.expect_refused("replaced");
}

#[test]
fn hard_link_to_another_file_in_the_overlays_place_is_refused() {
    let Some(s) = Scene::raw() else { return };
    fs::remove_file(&s.overlay).expect("remove the overlay");
    fs::hard_link(&s.victim, &s.overlay).expect("plant a hard link");
    s.expect_refused("replaced");
    assert!(s.victim.exists(), "the victim was unlinked");
}

#[test]
fn symlink_to_another_file_is_refused_and_removed_by_rollback() {
    // Arrange
    let Some(s) = Scene::raw() else { return };
    s.symlink_overlay(&s.victim, None);
    // Act + Assert
    s.expect_refused("not a regular file");
    assert!(
        fs::symlink_metadata(&s.overlay).is_err(),
        "rollback left the planted symlink"
    );
}

#[test]
fn symlink_to_a_valid_overlay_is_refused() {
    // Arrange: the link target is the real overlay itself, moved aside.
    let Some(s) = Scene::raw() else { return };
    let aside = s.dir.path().join("aside.qcow2");
    let aside = s
        .symlink_overlay(&aside, Some("aside.qcow2"))
        .expect("moved aside");
    // Act + Assert
    s.expect_refused("not a regular file");
    assert!(aside.exists(), "rollback removed the symlink's target");
}

#[test]
fn fifo_in_the_overlays_place_is_refused_without_blocking() {
    let Some(s) = Scene::raw() else { return };
    fs::remove_file(&s.overlay).expect("remove the overlay");
    nix::unistd::mkfifo(&s.overlay, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo");
    s.expect_refused("not a regular file");
}

#[test]
fn missing_overlay_is_refused() {
    let Some(s) = Scene::raw() else { return };
    fs::remove_file(&s.overlay).expect("remove the overlay");
    s.expect_refused("does not exist");
}

#[test]
fn overlay_tampered_after_the_commit_point_is_not_trusted_by_recover() {
    // Arrange: a commit killed right after its commit point, then the overlay redirected.
    let Some(s) = Scene::raw() else { return };
    s.interrupted();
    let victim = s.victim.to_str().expect("UTF-8 path").to_owned();
    s.rewrite(|b| set_backing(b, &victim));
    // Act + Assert: recovery cannot redo from a tampered overlay, so it undoes from the
    // pre-images.
    s.bounded_ok(&["recover"]);
    s.assert_untouched();
}

#[test]
fn overlay_symlinked_after_the_commit_point_is_not_followed_by_recover() {
    let Some(s) = Scene::raw() else { return };
    s.interrupted();
    s.symlink_overlay(&s.victim, Some("aside.qcow2"));
    s.bounded_ok(&["recover"]);
    s.assert_untouched();
}

/// The state directory is private, whatever the umask. (`recover` makes it: commands that
/// only read, like `status`, create nothing.)
#[test]
fn state_directory_is_0700() {
    use std::os::unix::fs::PermissionsExt;
    let Some(s) = Scene::raw() else { return };
    let fresh = s.dir.path().join("fresh-state");
    let mut cmd = Command::new(util::imgtx_bin());
    cmd.arg("--state-dir")
        .arg(&fresh)
        .arg("recover")
        .stdin(Stdio::null());
    util::expect_code(&mut cmd, exit::OK);
    let mode = fs::metadata(&fresh)
        .expect("state dir made")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "state directory mode {mode:o}");
}

/// Journals and pre-images hold guest data: 0600, in the base's directory.
#[test]
fn journal_and_preimages_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let Some(s) = Scene::raw() else { return };
    s.interrupted();
    let mut seen = 0;
    for name in s.dir.image_listing() {
        if name.ends_with(".imgtx.journal") || name.ends_with(".imgtx.undo") {
            let mode = fs::metadata(s.dir.image(&name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "expected a journal and a pre-image file");
    s.dir.imgtx_ok(&["recover"]);
}

/// A name planted where the journal goes (symlink to the victim) stops the commit before
/// anything is written through it.
#[test]
fn journal_name_planted_as_a_symlink_is_not_followed() {
    let Some(s) = Scene::raw() else { return };
    let journal = s.dir.image(&format!(".base.raw.{}.imgtx.journal", s.tx));
    symlink(&s.victim, &journal).expect("plant a symlink");
    let m = s.bounded(&["commit", &s.tx]);
    assert_ne!(
        m.out.status.code(),
        Some(exit::OK),
        "commit through a planted journal{}",
        m.what
    );
    s.assert_base_untouched();
    s.assert_victim_untouched();
}

/// Same for the pre-image file. Commit may go ahead (it unlinks whatever has that name,
/// never writing through it, and creates the file with O_EXCL) or refuse; either way
/// nothing is written through the link.
#[test]
fn preimage_name_planted_as_a_symlink_is_not_followed() {
    let Some(s) = Scene::raw() else { return };
    let undo = s.dir.image(&format!(".base.raw.{}.imgtx.undo", s.tx));
    symlink(&s.victim, &undo).expect("plant a symlink");
    let m = s.bounded(&["commit", &s.tx]);
    s.assert_victim_untouched();
    if m.out.status.code() == Some(exit::OK) {
        let base = fs::read(&s.base).expect("read the base");
        assert!(
            base[..64 << 10].iter().all(|&x| x == 0xab),
            "the commit is wrong"
        );
    } else {
        s.assert_base_untouched();
    }
}

/// Asserts that `imgtx ARGS` (a recovery) refuses, saying `why` (never exit 0, never a
/// panic), and changes nothing: not `kept` (the file it refused), the base or the victim.
fn recover_refuses(s: &Scene, kept: &Path, args: &[&str], why: &str) {
    let kept_bytes = fs::read(kept).expect("read the refused file");
    let base_now = fs::read(&s.base).expect("read the base");
    let m = s.bounded(args);
    assert_ne!(
        m.out.status.code(),
        Some(exit::OK),
        "recover trusted {}{}",
        kept.display(),
        m.what
    );
    assert!(
        util::stderr_of(&m.out).contains(why),
        "the message does not say {why:?}{}",
        m.what
    );
    assert!(
        fs::read(kept).expect("the refused file is kept") == kept_bytes,
        "the refused file changed"
    );
    assert!(
        fs::read(&s.base).expect("read the base") == base_now,
        "recover wrote the base"
    );
    s.assert_victim_untouched();
}

#[test]
fn journal_with_a_group_or_world_readable_mode_is_refused_by_recover() {
    use std::os::unix::fs::PermissionsExt;
    // Arrange
    let Some(s) = Scene::raw() else { return };
    let journal = s.interrupted();
    fs::set_permissions(&journal, fs::Permissions::from_mode(0o666)).expect("chmod the journal");
    // Act + Assert
    recover_refuses(&s, &journal, &["recover"], "refused");
}

#[test]
fn journal_owned_by_another_user_is_refused_by_recover() {
    // Arrange: only root can give a file away.
    let Some(s) = Scene::raw() else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root to chown the journal");
        return;
    }
    let journal = s.interrupted();
    std::os::unix::fs::chown(&journal, Some(4242), Some(4242)).expect("chown the journal");
    // Act + Assert
    recover_refuses(&s, &journal, &["recover"], "refused");
}

#[test]
fn journal_replaced_by_a_symlink_is_not_followed_by_recover() {
    let Some(s) = Scene::raw() else { return };
    let journal = s.interrupted();
    let aside = s.dir.path().join("journal.aside");
    fs::rename(&journal, &aside).expect("move the journal");
    symlink(&aside, &journal).expect("plant a symlink");
    let m = s.bounded(&["recover"]);
    assert_ne!(
        m.out.status.code(),
        Some(exit::OK),
        "recover followed a symlinked journal{}",
        m.what
    );
    s.assert_victim_untouched();
}

#[test]
fn journal_bound_to_another_base_is_refused_by_recover() {
    // Arrange: the base is replaced by another file (a new inode) under its name.
    let Some(s) = Scene::raw() else { return };
    let journal = s.interrupted();
    let fresh = s.dir.path().join("fresh.raw");
    fs::write(&fresh, &s.victim_bytes).expect("write a stranger");
    fs::rename(&fresh, &s.base).expect("replace the base");
    let stranger = fs::read(&s.base).expect("read the stranger");
    // Act
    let m = s.bounded(&["recover"]);
    // Assert: neither redo nor undo may write into a file the journal is not bound to.
    assert_ne!(
        m.out.status.code(),
        Some(exit::OK),
        "recover used a journal of another base{}",
        m.what
    );
    assert!(
        fs::read(&s.base).expect("read the stranger") == stranger,
        "recover wrote a stranger"
    );
    assert!(journal.exists(), "the journal was dropped");
}

#[test]
fn preimage_with_a_group_or_world_readable_mode_is_refused_by_recover_undo() {
    use std::os::unix::fs::PermissionsExt;
    // Arrange: anyone in the group could have rewritten these pre-images.
    let Some(s) = Scene::raw() else { return };
    s.interrupted();
    let undo = s.preimage();
    fs::set_permissions(&undo, fs::Permissions::from_mode(0o644)).expect("chmod the pre-images");
    // Act + Assert
    recover_refuses(&s, &undo, &["recover", "--undo"], "pre-image file");
}

#[test]
fn preimage_planted_by_another_user_is_refused_by_recover_undo() {
    // Arrange: a forged pre-image file owned by someone else (only root can give a file
    // away), renamed over the real one.
    let Some(s) = Scene::raw() else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root to chown the pre-images");
        return;
    }
    s.interrupted();
    let undo = s.preimage();
    let forged = s.dir.path().join("forged.undo");
    fs::copy(&undo, &forged).expect("forge pre-images");
    std::os::unix::fs::chown(&forged, Some(4242), Some(4242)).expect("chown the forgery");
    fs::rename(&forged, &undo).expect("plant the forgery");
    // Act + Assert
    recover_refuses(&s, &undo, &["recover", "--undo"], "owned by uid 4242");
}
