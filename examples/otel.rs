//! OpenTelemetry: layercache's `tracing` spans exported with `tracing-opentelemetry`.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example otel  # Redis calls as client spans
//! cargo run --example otel                                   # L1 only: the cache's own spans
//! ```
//!
//! The spans go to the OpenTelemetry SDK's in-memory exporter and are printed, so the example
//! needs no collector. In a service, swap it for the OTLP exporter (`opentelemetry-otlp`) and
//! keep the rest: the `tracing-opentelemetry` layer turns every span into an OpenTelemetry
//! span. Redis calls (`layercache.l2.*`) are client spans carrying the database semantic
//! conventions' `db.system` and `db.operation.name`; see the `layercache::telemetry` docs.
#![expect(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::Duration;

use layercache::LayerCache;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. OpenTelemetry's SDK with an exporter, and the layer that feeds it from `tracing`.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;

    // 2. Two instances of a service (both tiers with REDIS_URL): a load on one, a read on the
    // other.
    let build = || {
        let mut b = LayerCache::builder("otel-example").time_to_live(Duration::from_secs(60));
        if let Ok(url) = std::env::var("REDIS_URL") {
            b = b.redis_url(url);
        }
        b.build()
    };
    let (a, b) = (build().await?, build().await?);
    let (ra, rb) = (
        a.region::<str, String>("users").build().await?,
        b.region::<str, String>("users").build().await?,
    );
    ra.get_or_load("42", |id| async move {
        Ok::<_, std::io::Error>(format!("user {id}"))
    })
    .await?;
    rb.get("42").await?;

    // 3. What an OpenTelemetry backend would receive.
    provider.force_flush()?;
    for span in exporter.get_finished_spans()? {
        let attributes: Vec<String> = span
            .attributes
            .iter()
            // What tracing-opentelemetry adds on its own (source location, thread, timings).
            .filter(|kv| {
                let k = kv.key.as_str();
                !(k.starts_with("code.") || k.starts_with("thread.") || k.ends_with("_ns"))
                    && k != "target"
            })
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        println!(
            "{:<22} {:<9} {}",
            span.name,
            format!("{:?}", span.span_kind),
            attributes.join(" ")
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
