//! Names as users give them: base names too long for the files imgtx keeps beside them, and
//! names that hold `run`'s placeholders.

use std::fs;

use crate::util::{exit, qemu_io, require_tools, stderr_of, TestDir};

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
    qemu_io(&[
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        "write -P 0x42 0 64k".as_ref(),
        tx.overlay().as_os_str(),
    ]);
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
