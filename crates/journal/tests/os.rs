//! The journal over real files in a temporary directory.

use std::os::unix::fs::PermissionsExt;

use journal::{Error, Journal, Tail};
use storage::{File, OsFs};

#[test]
fn create_makes_a_private_file_and_refuses_an_existing_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");

    let j = Journal::<_, u32>::create(&OsFs, &path, b"id").unwrap();
    let second = Journal::<_, u32>::create(&OsFs, &path, b"id");

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(j.identity(), b"id");
    match second {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
}

#[test]
fn synced_records_replay_and_reopen_appends_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let mut j = Journal::<_, String>::create(&OsFs, &path, b"id").unwrap();
    assert_eq!(j.append(&"a".into()).unwrap(), 0);
    assert_eq!(j.append(&"b".into()).unwrap(), 1);
    j.sync().unwrap();
    drop(j);

    let (mut j, replay) = Journal::<_, String>::open(&OsFs, &path).unwrap();
    assert_eq!(j.append(&"c".into()).unwrap(), 2);
    j.sync().unwrap();
    let again = journal::read::<_, String>(&OsFs, &path).unwrap();

    assert_eq!(replay.records, ["a", "b"]);
    assert_eq!(replay.identity, b"id");
    assert_eq!(again.records, ["a", "b", "c"]);
    assert_eq!(again.tail, Tail::Clean);
}

#[test]
fn open_truncates_a_torn_tail_that_read_only_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let mut j = Journal::<_, u64>::create(&OsFs, &path, b"").unwrap();
    j.append(&1).unwrap();
    j.sync().unwrap();
    let good_len = j.file().len().unwrap();
    j.append(&2).unwrap();
    drop(j);
    let f = storage::Fs::open(&OsFs, &path, true).unwrap();
    f.set_len(good_len + 5).unwrap();

    let read = journal::read::<_, u64>(&OsFs, &path).unwrap();
    let len_after_read = std::fs::metadata(&path).unwrap().len();
    let (_, opened) = Journal::<_, u64>::open(&OsFs, &path).unwrap();

    let torn = Tail::Torn {
        valid_len: good_len,
        discarded: 5,
    };
    assert_eq!((read.records, read.tail), (vec![1], torn));
    assert_eq!(len_after_read, good_len + 5);
    assert_eq!((opened.records, opened.tail), (vec![1], torn));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
}

#[test]
fn open_or_create_creates_then_opens_and_checks_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit");

    let (mut j, first) = Journal::<_, u8>::open_or_create(&OsFs, &path, b"me").unwrap();
    j.append(&9).unwrap();
    j.sync().unwrap();
    drop(j);
    let (_, second) = Journal::<_, u8>::open_or_create(&OsFs, &path, b"me").unwrap();
    let other = Journal::<_, u8>::open_or_create(&OsFs, &path, b"you");

    assert!(first.records.is_empty());
    assert_eq!(second.records, [9]);
    assert!(matches!(other, Err(Error::IdentityMismatch { .. })));
}

#[test]
fn remove_unlinks_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    drop(Journal::<_, u8>::create(&OsFs, &path, b"").unwrap());

    journal::remove(&OsFs, &path).unwrap();

    assert!(!path.exists());
}
