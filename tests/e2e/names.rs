//! Names as users give them: base names too long for the files imgtx keeps beside them, and
//! names that hold `run`'s placeholders.

use std::fs;

use crate::util::{exit, qcow2_io, require_tools, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn a_base_name_too_long_for_the_names_beside_it_is_refused_at_begin_leaving_nothing() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for len in [250, 228, 217] {
        let t = TestDir::new();
        let name = format!("{}.img", "n".repeat(len - 4));
        let base = t.raw_image(&name, MIB, 1);

        let out = t.imgtx_code(&["begin", base.to_str().unwrap()], exit::ERROR);

        assert!(
            stderr_of(&out).contains("at most 216 bytes"),
            "{len}: {}",
            stderr_of(&out)
        );
        assert_eq!(
            fs::read_dir(t.images()).unwrap().count(),
            1,
            "{len}: strays left"
        );
        t.assert_no_transactions();
        t.imgtx_ok(&["recover"]);
    }
    // The longest name that fits goes through a whole commit and a recovery.
    let t = TestDir::new();
    let name = format!("{}.img", "n".repeat(212));
    let base = t.raw_image(&name, MIB, 1);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x42 0 64k");
    let mut kill = t.command();
    kill.env("IMGTX_TEST_CRASH_AFTER", "commit-point")
        .args(["commit", &tx.id]);
    assert_eq!(crate::util::run(&mut kill).status.code(), Some(137));
    t.imgtx_ok(&["recover"]);
    assert!(fs::read(&base).unwrap()[..64 << 10]
        .iter()
        .all(|&b| b == 0x42));
    t.assert_no_transactions();
}

#[test]
fn run_hands_the_command_the_real_overlay_of_a_base_whose_name_holds_a_placeholder() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("x{0}y.img", MIB, 1);
    let edit = r#"qemu-io -f qcow2 -c "write -P 0x5a 0 64k" "$1" && echo "edited $1" >&2"#;

    let v = t.imgtx_json(&[
        "run",
        base.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        edit,
        "sh",
        "{}",
    ]);

    assert_eq!(v["outcome"], "committed", "{v}");
    assert!(
        fs::read(&base).unwrap()[..64 << 10]
            .iter()
            .all(|&b| b == 0x5a),
        "the command's edit did not land: it was handed another path"
    );
}

#[test]
fn control_characters_in_names_are_escaped_in_human_output_and_kept_in_json() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let forged = "tx-ffffffffff committed OK";
    let base = t.raw_image(&format!("d\n{forged}.img"), MIB, 1);
    let b = base.to_str().unwrap();
    let id = t.imgtx_json(&["begin", "--name", "a\x1b[31mred", b])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let no_forged_line = |what: &str, text: &str| {
        assert!(
            !text.lines().any(|l| l.starts_with(forged)) && !text.contains('\x1b'),
            "{what} printed a forged line or an escape: {text:?}"
        );
        assert!(text.contains("d\\ntx-ffffffffff"), "{what}: {text:?}");
    };

    let status = t.imgtx_ok(&["status"]);
    no_forged_line("status", &status);
    assert!(status.contains("(a\\x1b[31mred)"), "{status:?}");
    let commit = t.imgtx_ok(&["commit", &id]);
    no_forged_line("commit", &commit);
    let log = t.imgtx_ok(&["log"]);
    no_forged_line("log", &log);
    let missing = format!("{}/gone\n{forged}.img", t.images().display());
    let refused = stderr_of(&t.imgtx_code(&["begin", &missing], exit::ERROR));
    assert!(
        !refused.lines().any(|l| l.starts_with(forged)),
        "the error forged a line: {refused:?}"
    );

    let v = t.imgtx_json(&["log"]);
    assert_eq!(v["entries"][0]["images"][0]["base"], b, "{v}");
    assert_eq!(v["entries"][0]["name"], "a\x1b[31mred", "{v}");
}

#[test]
fn with_json_every_line_on_stderr_is_json_and_never_coloured() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x42 0 64k");

    let out = t.imgtx_code(&["-vv", "commit", "--json", &tx.id], exit::OK);

    let err = stderr_of(&out);
    assert!(!err.contains('\x1b'), "coloured: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() > 2, "-vv logged nothing: {err}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{err}"));
        assert!(v.is_object(), "{line}");
    }
}
