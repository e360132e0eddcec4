//! Every random choice of the registry and the worker (holder nonces, incarnations, renewal
//! jitter, restore token offsets, Raft election timeouts) draws from here, so that the
//! deterministic simulator can replay a run from one seed.
//!
//! By default each draw comes from the thread's OS-seeded generator (`rand::thread_rng`). A
//! thread that called [`seed_this_thread`] draws from a seeded generator instead, until
//! [`unseed_this_thread`]: the simulator runs a whole cluster on one thread, so one seed fixes
//! every draw of every node and worker in it.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// From now on, this thread's draws come from a generator seeded with `seed`.
pub fn seed_this_thread(seed: u64) {
    SEEDED.with(|cell| *cell.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Back to OS-seeded draws on this thread.
pub fn unseed_this_thread() {
    SEEDED.with(|cell| *cell.borrow_mut() = None);
}

/// Run `draw` with this thread's generator.
pub fn with_rng<T>(draw: impl FnOnce(&mut dyn RngCore) -> T) -> T {
    SEEDED.with(|cell| match cell.borrow_mut().as_mut() {
        Some(seeded) => draw(seeded),
        None => draw(&mut rand::thread_rng()),
    })
}

/// A uniformly random `u64`.
pub fn random_u64() -> u64 {
    with_rng(|rng| rng.next_u64())
}

/// A uniformly random value in `range` (inclusive).
pub fn random_in(range: std::ops::RangeInclusive<u64>) -> u64 {
    with_rng(|rng| rng.gen_range(range))
}

/// A `RngCore` handle on this thread's generator (for APIs that want an `Rng` value, such as
/// openraft's election timeout). Not `Send`: it belongs to the thread that made it.
#[derive(Debug, Default)]
pub struct ThreadEntropy {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl RngCore for ThreadEntropy {
    fn next_u32(&mut self) -> u32 {
        with_rng(|rng| rng.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        with_rng(|rng| rng.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|rng| rng.fill_bytes(dest));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        with_rng(|rng| rng.try_fill_bytes(dest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a seeded thread repeats its draws exactly, and unseeding goes back to OS entropy.
    #[test]
    fn a_seeded_thread_repeats_its_draws() {
        seed_this_thread(7);
        let first: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        seed_this_thread(7);
        let again: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_eq!(first, again);
        let mut handle = ThreadEntropy::default();
        seed_this_thread(7);
        assert_eq!(handle.next_u64(), first[0], "the handle draws from the same generator");
        unseed_this_thread();
        let unseeded: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_ne!(unseeded, first, "OS entropy does not repeat a seed's draws");
    }

    /// Goal: seeding one thread leaves the others on OS entropy.
    #[test]
    fn seeding_is_per_thread() {
        seed_this_thread(11);
        let here = random_u64();
        let there = std::thread::spawn(|| {
            seed_this_thread(12);
            random_u64()
        })
        .join()
        .expect("thread");
        seed_this_thread(11);
        assert_eq!(random_u64(), here);
        assert_ne!(here, there);
        unseed_this_thread();
    }
}
