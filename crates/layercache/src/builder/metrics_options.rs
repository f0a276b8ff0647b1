//! The `metrics` feature's option of [`LayerCacheBuilder`].

use std::time::Duration;

use super::LayerCacheBuilder;

impl LayerCacheBuilder {
    /// How often the cache hands its counters and gauges to the installed `metrics` recorder
    /// (see [`crate::metrics`]): a background task reads the cache's own counters and reports
    /// their totals, so nothing is added to a read. `Duration::ZERO` starts no task: call
    /// [`LayerCache::export_metrics`](crate::LayerCache::export_metrics) yourself (before a
    /// scrape, say). Histograms are recorded as the work happens either way.
    ///
    /// Default: 1 second.
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every;
        self
    }
}
