//! Naming a transaction on the command line: by id, by an unambiguous id prefix, by the
//! name given at begin; and what a command says about a transaction that is not open any
//! more (it ended: how, when, by whom) or never was (a typo: the id probably meant).

use crate::util::{exit, require_tools, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn committing_twice_or_rolling_back_a_committed_transaction_says_when_it_was_committed() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    t.imgtx_ok(&["commit", &tx.id]);

    for command in ["commit", "rollback", "diff"] {
        let out = t.imgtx_code(&[command, &tx.id], exit::ERROR);

        let err = stderr_of(&out);
        assert!(
            err.contains(&format!(
                "transaction {} is no longer open: it was committed at",
                tx.id
            )),
            "{command}: {err}"
        );
        assert!(
            err.contains(" by ") && err.contains('@'),
            "{command}: {err}"
        );
        assert!(err.contains("imgtx log"), "{command}: {err}");
    }
}

#[test]
fn a_rolled_back_transaction_says_it_was_rolled_back_also_by_prefix_and_in_json() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    t.imgtx_ok(&["rollback", &tx.id]);

    let out = t.imgtx_code(&["commit", "--json", &tx.id[..8]], exit::ERROR);

    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{} is no longer open: it was rolled back at",
            tx.id
        )),
        "{v}"
    );
}

#[test]
fn a_mistyped_id_gets_the_closest_id_suggested() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    let last = tx.id.chars().last().unwrap();
    let typo = format!(
        "{}{}",
        &tx.id[..tx.id.len() - 1],
        if last == '0' { '1' } else { '0' }
    );

    let out = t.imgtx_code(&["commit", &typo], exit::ERROR);

    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("no open transaction {typo}")),
        "{err}"
    );
    assert!(err.contains(&format!("did you mean {}?", tx.id)), "{err}");
    t.imgtx_ok(&["rollback", &tx.id]);
}

#[test]
fn a_mistyped_name_gets_the_open_transactions_name_suggested_but_not_a_short_lookalike() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let a = t.raw_image("a.img", MIB, 1);
    let b = t.raw_image("b.img", MIB, 2);
    t.imgtx_json(&["begin", "--name", "upgrade", a.to_str().unwrap()]);
    t.imgtx_json(&["begin", "--name", "db", b.to_str().unwrap()]);

    let out = t.imgtx_code(&["commit", "upgrdae"], exit::ERROR);
    assert!(
        stderr_of(&out).contains("did you mean upgrade?"),
        "{}",
        stderr_of(&out)
    );
    let out = t.imgtx_code(&["commit", "ab"], exit::ERROR);
    assert!(
        !stderr_of(&out).contains("did you mean"),
        "{}",
        stderr_of(&out)
    );
    t.imgtx_ok(&["rollback", "upgrade"]);
    t.imgtx_ok(&["rollback", "db"]);
}

#[test]
fn a_transaction_is_named_by_an_unambiguous_id_prefix_or_its_unique_name() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let a = t.raw_image("a.img", MIB, 1);
    let b = t.raw_image("b.img", MIB, 2);
    let c = t.raw_image("c.img", MIB, 3);
    let (a, b, c) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );
    let named = t.imgtx_json(&["begin", "--name", "upgrade", a]);
    let named = named["id"].as_str().unwrap();
    let other = t.imgtx_json(&["begin", "--name", "batch", b]);
    let other = other["id"].as_str().unwrap();
    t.imgtx_json(&["begin", "--name", "batch", c]);

    let status = t.imgtx_json(&["status", "upgrade"]);
    assert_eq!(status["transactions"][0]["id"], named, "{status}");
    let hex = &other["tx-".len()..];
    let status = t.imgtx_json(&["status", &hex[..5]]);
    assert_eq!(status["transactions"][0]["id"], other, "{status}");
    t.imgtx_json(&["diff", "upgrade"]);
    let out = t.imgtx_code(&["commit", "batch"], exit::ERROR);
    assert!(
        stderr_of(&out).contains("\"batch\" names more than one transaction"),
        "{}",
        stderr_of(&out)
    );
    t.imgtx_ok(&["commit", "upgrade"]);
    t.imgtx_ok(&["rollback", &other[..8]]);
}

#[test]
fn a_revert_names_its_transaction_by_name_or_id_prefix_among_the_revertible_ones() {
    let t = TestDir::new();
    let a = t.raw_image("a.img", MIB, 1);
    let b = t.raw_image("b.img", MIB, 2);
    let first = t.imgtx_json(&["begin", "--name", "nightly", a.to_str().unwrap()]);
    let first = first["id"].as_str().unwrap().to_owned();
    t.imgtx_ok(&["commit", "--keep", &first]);
    let second = t.imgtx_json(&["begin", "--name", "weekly", b.to_str().unwrap()]);
    let second = second["id"].as_str().unwrap().to_owned();
    t.imgtx_ok(&["commit", "--keep", &second]);

    let unknown = stderr_of(&t.imgtx_code(&["revert", "monthly"], exit::ERROR));
    assert!(
        unknown.contains("no revertible transaction monthly"),
        "{unknown}"
    );
    let by_name = t.imgtx_json(&["revert", "nightly"]);
    assert_eq!(by_name["reverted"], first.as_str(), "{by_name}");
    let by_prefix = t.imgtx_json(&["revert", &second[..8]]);
    assert_eq!(by_prefix["reverted"], second.as_str(), "{by_prefix}");
    // Taken back: no longer revertible under its name.
    let again = stderr_of(&t.imgtx_code(&["revert", "nightly"], exit::ERROR));
    assert!(
        again.contains("no revertible transaction nightly"),
        "{again}"
    );
}
