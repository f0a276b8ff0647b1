//! The engine's side of the bus seam ([`bus::Receiver`](crate::bus::Receiver)): what it does
//! with what the bus delivers, and the background work the bus asks for.

use std::{future::Future, pin::Pin, sync::Arc};

use super::Engine;
use crate::{
    bus::{Entry, FlushReason, Outgoing, Receiver},
    stats::Counters,
};

/// How long a presence record outlives its last write (written every five heartbeats).
pub(crate) const PRESENCE_TTL_MS: u64 = 30_000;

impl Engine {
    /// This instance's presence record: `key=value` pairs separated by spaces (see
    /// [`LayerCache::instances_in_redis`](crate::LayerCache::instances_in_redis)).
    pub(crate) fn presence_record(&self) -> String {
        let last_flush = *self
            .last_flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let flushes: u64 = self.counters.flushes.iter().map(|c| c.get()).sum();
        let mut regions: Vec<String> = self.all_regions().iter().map(|r| r.name.clone()).collect();
        regions.sort();
        regions.dedup();
        let mut record = format!(
            "version={} started_ms={} l1_entries={} flushes={flushes} regions={}",
            env!("CARGO_PKG_VERSION"),
            self.started_ms,
            self.l1.entry_count(),
            regions.join(",")
        );
        if let Some((reason, at)) = last_flush {
            record.push_str(&format!(" last_flush={}@{at}", reason.as_str()));
        }
        record
    }
}

impl Receiver for Engine {
    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn apply<'a>(&'a self, entries: &'a [Entry]) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.apply_remote(entries))
    }

    fn flush(&self, reason: FlushReason) {
        self.flush_l1(reason);
    }

    fn lost(self: Arc<Self>, reason: FlushReason) {
        self.flush_l1(reason);
        self.refresh_generations(true);
    }

    fn forget_generations(&self) {
        for region in self.all_regions() {
            region.forget_generation();
        }
    }

    /// In a task of its own, so the listener never waits on Redis.
    fn refresh_generations(self: Arc<Self>, all: bool) {
        let regions: Vec<_> = self
            .all_regions()
            .into_iter()
            .filter(|r| all || r.needs_generation_retry())
            .collect();
        if regions.is_empty() {
            return;
        }
        let weak = Arc::downgrade(&self);
        self.adopt_task(tokio::spawn(async move {
            for region in regions {
                let Some(engine) = weak.upgrade() else { return };
                engine.refresh_generation(&region).await;
            }
        }));
    }

    fn repair(self: Arc<Self>) {
        crate::engine::repair::spawn_repair(&self);
    }

    fn report_presence(self: Arc<Self>) {
        let (Some(l2), Some(bus)) = (self.l2.clone(), self.bus.as_ref()) else {
            return;
        };
        let key = crate::key::presence_key(&self.name, bus.id);
        let record = self.presence_record();
        self.adopt_task(tokio::spawn(async move {
            // Best effort: a failed write shows as a missing record, never as an error.
            let _ = l2
                .set_meta(&key, record.into_bytes(), PRESENCE_TTL_MS)
                .await;
        }));
    }

    /// Queued to the publisher, never awaited; if the queue is full the sender times out and
    /// names this instance.
    fn acknowledge(&self, to: [u8; 16], seq: u64) {
        if let Some(bus) = &self.bus {
            let (ack, _) = tokio::sync::oneshot::channel();
            let entry = Entry::Ack { to, seq };
            let _ = bus.tx.try_send(Outgoing { entry, ack });
        }
    }
}
