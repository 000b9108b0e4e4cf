//! Property: whatever records go in come back out, through the real encode/decode pair.

use std::path::Path;

use journal::fuzz::FuzzRecord;
use journal::{Journal, Tail};
use proptest::prelude::*;
use storage::sim::SimFs;

fn record() -> impl Strategy<Value = FuzzRecord> {
    prop_oneof![
        any::<u64>().prop_map(|size| FuzzRecord::Begin { size }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(offset, bytes)| FuzzRecord::Data { offset, bytes }),
        ".{0,40}".prop_map(FuzzRecord::Note),
        Just(FuzzRecord::Commit),
    ]
}

proptest! {
    #[test]
    fn appended_records_replay_identically(
        records in proptest::collection::vec(record(), 0..24),
        identity in proptest::collection::vec(any::<u8>(), 0..300),
        sync_every in 1usize..5,
    ) {
        let fs = SimFs::new();
        let path = Path::new("/log");
        let mut j = Journal::<_, FuzzRecord>::create(&fs, path, &identity).unwrap();
        for (i, r) in records.iter().enumerate() {
            prop_assert_eq!(j.append(r).unwrap(), i as u64);
            if i % sync_every == 0 {
                j.sync().unwrap();
            }
        }
        j.sync().unwrap();

        let replay = journal::read::<_, FuzzRecord>(&fs, path).unwrap();

        prop_assert_eq!(replay.records, records);
        prop_assert_eq!(replay.identity, identity);
        prop_assert_eq!(replay.tail, Tail::Clean);
    }
}
