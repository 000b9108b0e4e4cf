//! The host of every simulation: [`SimHost`] answers for the machine when the engine runs
//! over `storage`'s simulated disk, where there are no processes, descriptors or clocks.
//!
//! Locks are no-ops (a simulated disk has no descriptors to lock), and time, user, host name
//! and transaction id are fixed, so every run of a sweep or a fuzz input is the same run.
//! It is not a model of qemu: `qemu-img` cannot reach a simulated disk, so a call to it is a
//! bug in the test or the engine and panics (simulations commit raw bases, which the engine
//! copies itself).

use std::path::Path;
use std::time::{Duration, SystemTime};

use txn::{Format, Host, TxId};

/// The id [`SimHost`] hands out for every transaction.
pub const TX: &str = "tx-00000000a1";

/// [`TX`] as a transaction id.
pub fn tx() -> TxId {
    TxId::parse(TX).expect("TX is a transaction id")
}

/// A host with no other processes: locks always free, no qemu, fixed identity and clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimHost;

impl Host for SimHost {
    type Guard = ();

    fn lock_exclusive(&self, _path: &Path, _wait: bool) -> txn::Result<Option<()>> {
        Ok(Some(()))
    }

    fn image_in_use(&self, _path: &Path) -> txn::Result<bool> {
        Ok(false)
    }

    fn keep_writers_out(&self, _path: &Path) -> txn::Result<()> {
        Ok(())
    }

    fn fence_image(&self, _path: &Path) -> txn::Result<()> {
        Ok(())
    }

    fn qemu_img_commit(&self, overlay: &Path, base: &Path, _f: Format) -> txn::Result<()> {
        panic!(
            "qemu-img commit of {} into {}: qemu-img cannot write into the simulated disk",
            overlay.display(),
            base.display()
        )
    }

    fn user(&self) -> (String, u32) {
        ("sim".into(), 0)
    }

    fn hostname(&self) -> String {
        "sim".into()
    }

    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)
    }

    fn new_id(&self) -> txn::Result<TxId> {
        Ok(tx())
    }

    fn sleep(&self, _d: Duration) {}

    fn step(&self, _name: &str) {}
}

/// [`SimHost`], except that every new transaction gets the id `.0`: for a second transaction
/// next to the one with [`TX`], such as a revert of it.
#[derive(Debug, Clone, Copy)]
pub struct SimHostWithId(pub &'static str);

impl Host for SimHostWithId {
    type Guard = ();

    fn lock_exclusive(&self, path: &Path, wait: bool) -> txn::Result<Option<()>> {
        SimHost.lock_exclusive(path, wait)
    }

    fn image_in_use(&self, path: &Path) -> txn::Result<bool> {
        SimHost.image_in_use(path)
    }

    fn keep_writers_out(&self, path: &Path) -> txn::Result<()> {
        SimHost.keep_writers_out(path)
    }

    fn fence_image(&self, path: &Path) -> txn::Result<()> {
        SimHost.fence_image(path)
    }

    fn qemu_img_commit(&self, overlay: &Path, base: &Path, f: Format) -> txn::Result<()> {
        SimHost.qemu_img_commit(overlay, base, f)
    }

    fn user(&self) -> (String, u32) {
        SimHost.user()
    }

    fn hostname(&self) -> String {
        SimHost.hostname()
    }

    fn now(&self) -> SystemTime {
        SimHost.now()
    }

    fn new_id(&self) -> txn::Result<TxId> {
        Ok(TxId::parse(self.0).expect("a transaction id"))
    }

    fn sleep(&self, d: Duration) {
        SimHost.sleep(d);
    }

    fn step(&self, name: &str) {
        SimHost.step(name);
    }
}
