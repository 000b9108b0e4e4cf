//! Behaviour of the simulated disk: what survives a crash in each damage variant.

use std::io::ErrorKind;
use std::path::Path;

use storage::sim::{is_crash, Damage, Fault, Op, SimFs, SECTOR};
use storage::{File, FileKind, Fs};

const SEEDS: u64 = 32;

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[test]
fn synced_data_and_entries_survive_every_variant() {
    let fs = SimFs::new();
    fs.create_dir(p("/d")).unwrap();
    fs.sync_dir(p("/")).unwrap();
    let f = fs.create_new(p("/d/a")).unwrap();
    f.write_all_at(b"durable", 0).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(p("/d")).unwrap();
    let g = fs.create_new(p("/d/b")).unwrap();
    g.write_all_at(&[7; 3000], 100).unwrap();
    f.write_all_at(b"more", 7).unwrap();

    for damage in Damage::ALL {
        for seed in 0..SEEDS {
            let img = fs.crashed_image(damage, seed);

            let a = img.read_live("/d/a").unwrap();
            assert_eq!(&a[..7], b"durable", "{damage:?} seed {seed}");
        }
    }
}

#[test]
fn drop_unsynced_leaves_exactly_the_durable_state() {
    let fs = SimFs::new();
    fs.put_durable("/x", b"old old old");
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    f.set_len(4).unwrap();
    drop(fs.create_new(p("/y")).unwrap());

    let img = fs.crashed_image(Damage::DropUnsynced, 1);

    assert_eq!(img.read_live("/x").unwrap(), b"old old old");
    assert_eq!(img.files(), [Path::new("/x")]);
}

#[test]
fn keep_all_leaves_the_live_state() {
    let fs = SimFs::new();
    fs.put_durable("/x", b"old old old");
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    f.set_len(4).unwrap();
    let g = fs.create_new(p("/y")).unwrap();
    g.write_all_at(b"why", 0).unwrap();

    let img = fs.crashed_image(Damage::KeepAll, 1);

    assert_eq!(img.read_live("/x").unwrap(), b"new ");
    assert_eq!(img.read_live("/y").unwrap(), b"why");
}

#[test]
fn an_unsynced_write_is_kept_or_lost_whole_sectors_at_a_time() {
    let fs = SimFs::new();
    fs.put_durable("/x", &[0u8; 4 * SECTOR as usize]);
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(&[0xaa; 4 * SECTOR as usize], 0).unwrap();

    for damage in Damage::ALL {
        for seed in 0..SEEDS {
            let img = fs.crashed_image(damage, seed);
            let data = img.read_live("/x").unwrap();
            for sector in data.chunks(SECTOR as usize) {
                let uniform = sector.iter().all(|&b| b == sector[0]);
                let garbage_allowed =
                    matches!(damage, Damage::GarbageFill | Damage::TornLastWriteGarbage);
                assert!(
                    uniform || garbage_allowed,
                    "{damage:?} seed {seed}: half a sector"
                );
                if damage == Damage::DropUnsynced {
                    assert!(sector.iter().all(|&b| b == 0));
                }
            }
        }
    }
}

#[test]
fn torn_variants_persist_some_sectors_and_not_others() {
    let fs = SimFs::new();
    fs.put_durable("/x", &[0u8; 8 * SECTOR as usize]);
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(&[0xaa; 8 * SECTOR as usize], 0).unwrap();

    let mixed = (0..SEEDS).any(|seed| {
        let data = fs
            .crashed_image(Damage::TornLastWrite, seed)
            .read_live("/x")
            .unwrap();
        data.contains(&0) && data.contains(&0xaa)
    });

    assert!(mixed, "no seed tore the write");
}

#[test]
fn a_rename_survives_as_the_old_name_or_the_new_never_both_or_neither() {
    let fs = SimFs::new();
    fs.put_durable("/a", b"content");
    fs.rename(p("/a"), p("/b")).unwrap();

    let mut seen = std::collections::BTreeSet::new();
    for damage in Damage::ALL {
        for seed in 0..SEEDS {
            let files = fs.crashed_image(damage, seed).files();
            assert_eq!(files.len(), 1, "{damage:?} seed {seed}: {files:?}");
            seen.insert(files[0].clone());
        }
    }

    assert_eq!(seen.len(), 2, "both outcomes should occur: {seen:?}");
}

#[test]
fn a_synced_rename_is_durable() {
    let fs = SimFs::new();
    fs.put_durable("/a", b"content");
    fs.rename(p("/a"), p("/b")).unwrap();
    fs.sync_dir(p("/")).unwrap();

    for damage in Damage::ALL {
        assert_eq!(fs.crashed_image(damage, 3).files(), [Path::new("/b")]);
    }
}

#[test]
fn a_created_file_without_a_directory_sync_may_vanish() {
    let fs = SimFs::new();
    let f = fs.create_new(p("/new")).unwrap();
    f.write_all_at(b"data", 0).unwrap();
    f.sync_data().unwrap();

    let lost = fs.crashed_image(Damage::EntriesLost, 0);
    let kept = fs.crashed_image(Damage::EntriesKept, 0);

    assert!(lost.files().is_empty());
    assert_eq!(kept.read_live("/new").unwrap(), b"data");
}

#[test]
fn children_of_a_directory_that_did_not_survive_vanish_too() {
    let fs = SimFs::new();
    fs.create_dir(p("/d")).unwrap();
    drop(fs.create_new(p("/d/f")).unwrap());
    fs.sync_dir(p("/d")).unwrap();

    let img = fs.crashed_image(Damage::DropUnsynced, 0);

    assert!(img.files().is_empty());
    assert_eq!(img.metadata(p("/d")).unwrap(), None);
}

#[test]
fn length_variants_disagree_about_an_unsynced_growth() {
    let fs = SimFs::new();
    fs.put_durable("/x", b"abcd");
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(b"efgh", 4).unwrap();

    let lost = fs
        .crashed_image(Damage::LengthLost, 0)
        .read_live("/x")
        .unwrap();
    let kept = fs
        .crashed_image(Damage::LengthKept, 0)
        .read_live("/x")
        .unwrap();

    assert_eq!(lost, b"abcd");
    assert_eq!(kept, b"abcd\0\0\0\0");
}

#[test]
fn the_crashing_operation_and_every_later_call_fail() {
    let fs = SimFs::new();
    let f = fs.create_new(p("/x")).unwrap();
    fs.crash_at(3);
    f.write_all_at(b"1", 0).unwrap();

    let third = f.write_all_at(b"2", 1).unwrap_err();
    let later = f.read_at(&mut [0; 1], 0).unwrap_err();
    let later_fs = fs.sync_dir(p("/")).unwrap_err();

    assert!(is_crash(&third) && is_crash(&later) && is_crash(&later_fs));
    assert!(fs.is_crashed());
    assert_eq!(fs.ops(), 3);
    // The write in flight may or may not have reached the disk.
    assert_eq!(
        fs.crashed_image(Damage::KeepAll, 0)
            .read_live("/x")
            .unwrap(),
        b"12"
    );
    assert!(fs
        .crashed_image(Damage::EntriesKept, 0)
        .read_live("/x")
        .unwrap()
        .is_empty());
}

#[test]
fn a_failed_sync_loses_the_data_even_if_a_retry_succeeds() {
    let fs = SimFs::new();
    fs.put_durable("/x", b"old");
    let f = fs.open(p("/x"), true).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    fs.fail_at(2, Fault::Eio);

    let first = f.sync_data().unwrap_err();
    f.sync_data().unwrap();

    assert_eq!(first.raw_os_error(), Some(5));
    assert_eq!(fs.read_live("/x").unwrap(), b"new");
    assert_eq!(fs.read_durable("/x").unwrap(), b"old");
}

#[test]
fn enospc_on_a_write_leaves_a_prefix() {
    let fs = SimFs::new();
    let f = fs.create_new(p("/x")).unwrap();
    fs.fail_at(2, Fault::Enospc);

    let err = f.write_all_at(b"abcdef", 0).unwrap_err();

    assert_eq!(err.raw_os_error(), Some(28));
    assert_eq!(fs.read_live("/x").unwrap(), b"abc");
    f.write_all_at(b"z", 0).unwrap();
}

#[test]
fn an_unlinked_file_stays_usable_through_its_handle() {
    let fs = SimFs::new();
    let f = fs.create_new(p("/x")).unwrap();
    fs.remove_file(p("/x")).unwrap();

    f.write_all_at(b"still here", 0).unwrap();
    let mut buf = [0; 10];
    f.read_exact_at(&mut buf, 0).unwrap();

    assert_eq!(&buf, b"still here");
    assert!(fs.files().is_empty());
    assert_eq!(
        fs.log().last().unwrap().op,
        Op::Write {
            path: None,
            offset: 0,
            len: 10
        }
    );
}

#[test]
fn namespace_errors_match_posix() {
    let fs = SimFs::new();
    drop(fs.create_new(p("/x")).unwrap());

    assert_eq!(
        fs.create_new(p("/x")).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        fs.create_new(p("/no/x")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs.open(p("/y"), false).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs.remove_file(p("/y")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    fs.create_dir(p("/d")).unwrap();
    fs.create_dir(p("/d")).unwrap();
    assert_eq!(
        fs.create_dir(p("/x")).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let ro = fs.open(p("/x"), false).unwrap();
    assert!(ro.write_all_at(b"a", 0).is_err());
}

#[test]
fn metadata_reports_fake_but_consistent_fields() {
    let fs = SimFs::new();
    let f = fs.create_new(p("x")).unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    fs.create_dir(p("d")).unwrap();

    let m = fs.metadata(p("/x")).unwrap().unwrap();
    let d = fs.metadata(p("./d")).unwrap().unwrap();

    assert_eq!(
        (m.len, m.mode, m.uid, m.nlink, m.kind),
        (3, 0o600, 0, 1, FileKind::File)
    );
    assert_eq!((d.mode, d.kind), (0o700, FileKind::Dir));
    assert_eq!(m.dev, d.dev);
    assert_ne!(m.ino, d.ino);
    assert!(d.mtime_ns > m.mtime_ns);
    let mut names = fs.read_dir(p("/")).unwrap();
    names.sort();
    assert_eq!(names, ["d", "x"]);
}

#[test]
fn crashed_images_are_deterministic_for_a_seed() {
    let fs = SimFs::new();
    let f = fs.create_new(p("/x")).unwrap();
    for i in 0..20u8 {
        f.write_all_at(&[i; 700], u64::from(i) * 700).unwrap();
    }

    for damage in Damage::ALL {
        let one = fs.crashed_image(damage, 42).read_live("/x");
        let two = fs.crashed_image(damage, 42).read_live("/x");
        assert_eq!(one, two, "{damage:?}");
    }
}
