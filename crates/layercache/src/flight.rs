//! Single flight: one fetch (L2 read and, if asked, load) per key at a time in this process.
//!
//! The first caller for a key becomes the leader: it registers a slot and spawns the work as
//! its own task, so a caller that gives up (its future dropped) cancels nothing for the others.
//! Later callers wait on the slot's channel. Writes and invalidations *poison* the slot: the
//! flight may still answer its own waiters (their reads began before the write), but it must not
//! fill L1 or L2 afterwards, and new callers start a new flight that sees the write.

use std::{
    any::Any,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use tokio::sync::Notify;

use crate::{
    error::{Error, ErrorKind},
    hashing::KeyMap,
    l1::{FillGuard, L1Key},
};

/// What a flight hands to its waiters: the value, or `None` when nothing was found and there
/// was no loader.
pub(crate) type Outcome<V> = Result<Option<Arc<V>>, Error>;

/// A flight's answer, shared by its leader and its waiters.
///
/// Hot-path note: one allocation and one wake-up per flight. (A `tokio::sync::watch` channel
/// allocated ~0.5 KiB and woke eight notifiers on every answer, whether or not anyone waited:
/// every plain Redis read leads a flight of its own.)
pub(crate) struct SlotShared<V> {
    outcome: Mutex<Option<Outcome<V>>>,
    notify: Notify,
}

impl<V> SlotShared<V> {
    fn new() -> Self {
        Self {
            outcome: Mutex::new(None),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outcome<V>>> {
        // A slot holds no invariant a panic could break mid-way; keep going.
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the answer (only if none was given yet, unless `replace`) and wakes every waiter.
    fn answer(&self, outcome: Outcome<V>, replace: bool) {
        {
            let mut cur = self.lock();
            if replace || cur.is_none() {
                *cur = Some(outcome);
            }
        }
        self.notify.notify_waiters();
    }
}

type Slot<V> = Arc<SlotShared<V>>;

struct Registered {
    id: u64,
    poisoned: Arc<AtomicBool>,
    /// A `SlotShared<V>` for the region's value type.
    rx: Arc<dyn Any + Send + Sync>,
}

/// A write's pending L1 fill, waiting for its Redis write: poisoned by any later write (but a
/// versioned one of an older version), invalidation (local or received) or flush of its key.
/// Each is `(id, source version, poison flag)`.
type Tickets = KeyMap<L1Key, Vec<(u64, Option<u64>, Arc<AtomicBool>)>>;

/// The flights of one cache, keyed like L1, and the writes waiting to fill L1.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<KeyMap<L1Key, Registered>>,
    tickets: Mutex<Tickets>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.lock().len())
            .finish()
    }
}

/// Result of [`Flights::join`].
pub(crate) enum Join<V> {
    /// Another caller's flight is running: wait for it.
    Wait(Slot<V>),
    /// This caller leads a new flight.
    Lead(Leader<V>),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, KeyMap<L1Key, Registered>> {
        // The map holds no invariant a panic could break mid-way; keep going.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the running flight for `key`, or registers a new one led by the caller.
    ///
    /// A flight without a loader (a plain `get`) answers `Ok(None)` when nothing is cached; a
    /// waiter that has a loader then joins again, and leads a load once that flight has ended.
    pub(crate) fn join<V: Send + Sync + 'static>(self: &Arc<Self>, key: &[u8]) -> Join<V> {
        let mut map = self.lock();
        if let Some(reg) = map.get(key) {
            if let Ok(rx) = reg.rx.clone().downcast::<SlotShared<V>>() {
                return Join::Wait(rx);
            }
            // Same key under another value type: cannot share; lead an unregistered flight.
            return Join::Lead(Leader::detached(self.clone(), key));
        }
        let slot: Slot<V> = Arc::new(SlotShared::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let poisoned = Arc::new(AtomicBool::new(false));
        map.insert(
            key.into(),
            Registered {
                id,
                poisoned: poisoned.clone(),
                rx: slot.clone(),
            },
        );
        Join::Lead(Leader {
            flights: self.clone(),
            key: key.into(),
            id: Some(id),
            poisoned,
            open: true,
            slot,
        })
    }

    /// Whether a flight for `key` is running (for `Region::explain`).
    pub(crate) fn is_running(&self, key: &[u8]) -> bool {
        self.lock().contains_key(key)
    }

    /// A flight that is not registered, so nobody joins it and writes cannot poison it: it
    /// starts poisoned, answers its caller and fills neither tier.
    pub(crate) fn lead_detached<V>(self: &Arc<Self>, key: &[u8]) -> Leader<V> {
        Leader::detached(self.clone(), key)
    }

    fn tickets(&self) -> MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Poisons and unregisters the flight for `key`, if any: it will not fill the cache, and
    /// the next caller starts afresh. Writes of `key` waiting to fill L1 are poisoned too.
    pub(crate) fn poison(&self, key: &[u8]) {
        self.poison_fetch(key);
        if let Some(waiting) = self.tickets().remove(key) {
            for (_, _, poisoned) in waiting {
                poisoned.store(true, Ordering::Release);
            }
        }
    }

    /// [`poison`](Self::poison) for the start of a write of source version `version`: pending
    /// writes of a newer version keep their fill (Redis will keep theirs over this one, and so
    /// must L1: their L1 entry carries their flag, see `L1::insert_guarded`).
    pub(crate) fn poison_for_write(&self, key: &[u8], version: Option<u64>) {
        self.poison_fetch(key);
        let mut tickets = self.tickets();
        let Some(waiting) = tickets.get_mut(key) else {
            return;
        };
        waiting.retain(|(_, theirs, poisoned)| {
            let newer = matches!((version, theirs), (Some(mine), Some(theirs)) if *theirs > mine);
            if !newer {
                poisoned.store(true, Ordering::Release);
            }
            newer
        });
        if waiting.is_empty() {
            tickets.remove(key);
        }
    }

    /// Poisons the fetch of `key` only (a write's own second poison, after its Redis write:
    /// it must not poison its own fill).
    pub(crate) fn poison_fetch(&self, key: &[u8]) {
        if let Some(reg) = self.lock().remove(key) {
            reg.poisoned.store(true, Ordering::Release);
        }
    }

    /// Poisons every flight and write whose key starts with `prefix` (a region's: its
    /// generation moved).
    pub(crate) fn poison_prefix(&self, prefix: &[u8]) {
        self.lock().retain(|key, reg| {
            let hit = key.starts_with(prefix);
            if hit {
                reg.poisoned.store(true, Ordering::Release);
            }
            !hit
        });
        self.tickets().retain(|key, waiting| {
            let hit = key.starts_with(prefix);
            if hit {
                for (_, _, poisoned) in waiting.iter() {
                    poisoned.store(true, Ordering::Release);
                }
            }
            !hit
        });
    }

    /// Poisons every flight and write (a clear of the whole cache).
    pub(crate) fn poison_all(&self) {
        for (_, reg) in self.lock().drain() {
            reg.poisoned.store(true, Ordering::Release);
        }
        for (_, waiting) in self.tickets().drain() {
            for (_, _, poisoned) in waiting {
                poisoned.store(true, Ordering::Release);
            }
        }
    }

    /// Registers a write of `key` that will fill L1 once its Redis write returns: the fill
    /// must not happen if anything newer touched the key meanwhile (another write's start, an
    /// invalidation applied, a flush), or L1 would keep an older value than Redis with no
    /// message left to correct it.
    pub(crate) fn ticket(self: &Arc<Self>, key: &[u8], version: Option<u64>) -> WriteTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let poisoned = Arc::new(AtomicBool::new(false));
        self.tickets()
            .entry(key.into())
            .or_default()
            .push((id, version, poisoned.clone()));
        WriteTicket {
            flights: self.clone(),
            key: key.into(),
            id,
            poisoned,
        }
    }

    fn unregister(&self, key: &[u8], id: u64) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|r| r.id == id) {
            map.remove(key);
        }
    }
}

/// A write's right to fill L1, lost when anything newer touches its key (see
/// [`Flights::ticket`]). Unregistered on drop.
pub(crate) struct WriteTicket {
    flights: Arc<Flights>,
    key: L1Key,
    id: u64,
    poisoned: Arc<AtomicBool>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket")
            .field("id", &self.id)
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl WriteTicket {
    /// Whether something newer touched the key since the ticket was taken.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The ticket's poison flag, for the L1 entry its write fills (see `L1::insert_guarded`).
    pub(crate) fn guard(&self) -> &FillGuard {
        &self.poisoned
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let mut tickets = self.flights.tickets();
        if let Some(waiting) = tickets.get_mut(&self.key) {
            waiting.retain(|(id, _, _)| *id != self.id);
            if waiting.is_empty() {
                tickets.remove(&self.key);
            }
        }
    }
}

/// Waits for a flight's outcome. (Every leader answers, if only with an error when it is
/// dropped unfinished.)
pub(crate) async fn wait<V>(slot: Slot<V>) -> Outcome<V> {
    loop {
        let notified = slot.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so an answer given in between still wakes us.
        notified.as_mut().enable();
        if let Some(outcome) = slot.lock().as_ref() {
            return outcome.clone();
        }
        notified.await;
    }
}

/// The leader's side of a flight. Dropping it without [`finish`](Leader::finish) (the task
/// panicked or was cancelled) answers every waiter with an error.
pub(crate) struct Leader<V> {
    flights: Arc<Flights>,
    key: L1Key,
    id: Option<u64>,
    poisoned: Arc<AtomicBool>,
    /// Not answered for good yet.
    open: bool,
    slot: Slot<V>,
}

impl<V> std::fmt::Debug for Leader<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<V> Leader<V> {
    fn detached(flights: Arc<Flights>, key: &[u8]) -> Self {
        Self {
            flights,
            key: key.into(),
            id: None,
            poisoned: Arc::new(AtomicBool::new(true)),
            open: true,
            slot: Arc::new(SlotShared::new()),
        }
    }

    /// A receiver for this flight's outcome (the leader's own caller waits on it too, so an
    /// early answer reaches it as it reaches everyone).
    pub(crate) fn subscribe(&self) -> Slot<V> {
        self.slot.clone()
    }

    /// Answers every waiter now, but keeps the flight registered: it goes on (a load past its
    /// soft timeout) and later callers get the same answer until it finishes.
    pub(crate) fn answer_early(&self, outcome: Outcome<V>) {
        if self.open {
            self.slot.answer(outcome, true);
        }
    }

    /// The key this flight fetches.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Whether a write or invalidation has happened since the flight began.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The flight's poison flag, for the L1 entry it fills (see `L1::insert_guarded`).
    pub(crate) fn guard(&self) -> &FillGuard {
        &self.poisoned
    }

    /// Hands the outcome to every waiter and unregisters the flight.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) -> Outcome<V> {
        self.publish(outcome.clone());
        outcome
    }

    fn publish(&mut self, outcome: Outcome<V>) {
        if let Some(id) = self.id.take() {
            self.flights.unregister(&self.key, id);
        }
        if std::mem::take(&mut self.open) {
            // An early answer stands: those who got it were served; later joiners got it too.
            self.slot.answer(outcome, false);
        }
    }
}

impl<V> Drop for Leader<V> {
    fn drop(&mut self) {
        if self.open || self.id.is_some() {
            self.publish(Err(Error::new(
                ErrorKind::Closed,
                "the fetch ended without a result (its runtime shut down, or it panicked)",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first join of `k` leads its flight, the second waits on it.
    fn lead_and_wait(f: &Arc<Flights>) -> (Leader<u32>, Slot<u32>) {
        let Join::Lead(leader) = f.join::<u32>(b"k") else {
            panic!("the first join leads")
        };
        let Join::Wait(rx) = f.join::<u32>(b"k") else {
            panic!("the second join waits")
        };
        (leader, rx)
    }

    #[tokio::test]
    async fn second_caller_waits_and_gets_the_leaders_value() {
        let f = Arc::new(Flights::default());
        let (leader, rx) = lead_and_wait(&f);
        let _ = leader.finish(Ok(Some(Arc::new(7))));
        assert_eq!(*wait(rx).await.unwrap().unwrap(), 7);
        // Unregistered after finishing: the next caller leads.
        assert!(matches!(f.join::<u32>(b"k"), Join::Lead(_)));
    }

    #[tokio::test]
    async fn an_early_answer_reaches_waiters_and_later_joiners() {
        let f = Arc::new(Flights::default());
        let Join::Lead(leader) = f.join::<u32>(b"k") else {
            panic!()
        };
        let own = leader.subscribe();
        leader.answer_early(Ok(Some(Arc::new(1))));
        assert_eq!(*wait(own).await.unwrap().unwrap(), 1);
        let Join::Wait(late) = f.join::<u32>(b"k") else {
            panic!("still registered after an early answer")
        };
        assert_eq!(*wait(late).await.unwrap().unwrap(), 1);
        let _ = leader.finish(Ok(Some(Arc::new(2))));
        assert!(matches!(f.join::<u32>(b"k"), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_waiter_that_waits_before_the_answer_is_woken_by_it() {
        let f = Arc::new(Flights::default());
        let (leader, rx) = lead_and_wait(&f);
        let waiter = tokio::spawn(wait(rx));
        // Let the waiter run until it waits.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "no answer yet");
        let _ = leader.finish(Ok(Some(Arc::new(9))));
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the answer wakes the waiter");
        assert_eq!(*woken.unwrap().unwrap().unwrap(), 9);
    }

    #[tokio::test]
    async fn dropped_leader_answers_waiters_with_an_error() {
        let f = Arc::new(Flights::default());
        let (leader, rx) = lead_and_wait(&f);
        drop(leader);
        assert_eq!(wait(rx).await.unwrap_err().kind(), ErrorKind::Closed);
        assert!(matches!(f.join::<u32>(b"k"), Join::Lead(_)));
    }

    #[tokio::test]
    async fn poison_marks_the_leader_and_frees_the_key() {
        let f = Arc::new(Flights::default());
        let Join::Lead(old) = f.join::<u32>(b"k") else {
            panic!()
        };
        f.poison(b"k");
        assert!(old.is_poisoned());
        let Join::Lead(new) = f.join::<u32>(b"k") else {
            panic!("a poisoned flight must not be joined")
        };
        // The old flight finishing must not unregister the new one.
        let _ = old.finish(Ok(None));
        assert!(matches!(f.join::<u32>(b"k"), Join::Wait(_)));
        assert!(!new.is_poisoned());
    }

    #[test]
    fn a_write_ticket_is_poisoned_by_a_later_write_or_flush_not_by_its_own_fetch_poison() {
        let f = Arc::new(Flights::default());
        let t = f.ticket(b"k", None);
        f.poison_fetch(b"k");
        assert!(!t.is_poisoned(), "the write's own second poison");
        f.poison(b"other");
        assert!(!t.is_poisoned());
        f.poison(b"k");
        assert!(t.is_poisoned(), "a later write or invalidation of the key");
        let t2 = f.ticket(b"k", None);
        f.poison_prefix(b"k");
        assert!(t2.is_poisoned(), "a generation move");
        let t3 = f.ticket(b"k", None);
        f.poison_all();
        assert!(t3.is_poisoned(), "a flush");
        drop((t, t2, t3));
        assert!(f.tickets().is_empty(), "tickets unregister on drop");
    }

    #[test]
    fn a_versioned_write_spares_the_fill_of_a_newer_version_only() {
        let f = Arc::new(Flights::default());
        let v5 = f.ticket(b"k", Some(5));
        let plain = f.ticket(b"k", None);
        let v3 = f.ticket(b"k", Some(3));
        f.poison_for_write(b"k", Some(4));
        assert!(!v5.is_poisoned(), "a newer version keeps its fill");
        assert!(
            plain.is_poisoned(),
            "an unversioned write loses to any later write"
        );
        assert!(v3.is_poisoned(), "an older version loses");
        f.poison_for_write(b"k", Some(5));
        assert!(
            v5.is_poisoned(),
            "the same version again: the later one wins"
        );
        let v7 = f.ticket(b"k", Some(7));
        f.poison_for_write(b"k", None);
        assert!(
            v7.is_poisoned(),
            "an unversioned write replaces any version"
        );
    }

    #[tokio::test]
    async fn another_value_type_under_the_same_key_is_not_shared() {
        let f = Arc::new(Flights::default());
        let Join::Lead(_a) = f.join::<u32>(b"k") else {
            panic!()
        };
        assert!(matches!(f.join::<String>(b"k"), Join::Lead(_)));
    }
}
