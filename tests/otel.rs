//! The `tracing` spans as OpenTelemetry sees them (through `tracing-opentelemetry`, into the
//! SDK's in-memory exporter), after real traffic against a real redis-server: Redis calls are
//! client spans with the semantic conventions' database attributes, children of the cache's
//! own span.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use opentelemetry::{trace::SpanKind, trace::TracerProvider as _, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::{builder, redis};
use tracing_subscriber::layer::SubscriberExt as _;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_calls_are_client_spans_with_the_database_conventions() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("layercache-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let server = redis();
    let a = builder(&server, "otel").build().await.unwrap();
    let b = builder(&server, "otel").build().await.unwrap();
    let ra = a.region::<str, u64>("r").build().await.unwrap();
    let rb = b.region::<str, u64>("r").build().await.unwrap();
    ra.get_or_load("k", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(*rb.get("k").await.unwrap().unwrap(), 1);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // B's read: `layercache.get`, and under it a client span for the Redis GET.
    let get = spans
        .iter()
        .find(|s| {
            s.name == "layercache.l2.get"
                && attribute(s, "db.operation.name") == Some(&Value::from("GET"))
                && attribute(s, "hit") == Some(&Value::from(true))
        })
        .unwrap_or_else(|| panic!("no GET span that hit in {:#?}", names(&spans)));
    assert_eq!(get.span_kind, SpanKind::Client);
    assert_eq!(attribute(get, "db.system"), Some(&Value::from("redis")));
    let parent = spans
        .iter()
        .find(|s| s.span_context.span_id() == get.parent_span_id)
        .expect("the GET span has its parent among the exported spans");
    assert_eq!(parent.name, "layercache.get");
    assert_eq!(parent.span_kind, SpanKind::Internal);
    assert_eq!(
        parent.span_context.trace_id(),
        get.span_context.trace_id(),
        "one trace"
    );
    // A's fill: a write over nothing, fenced on the region's generation, needs no script
    // (`SET … NX` and the generation's `GET`, pipelined).
    let fill = spans
        .iter()
        .find(|s| s.name == "layercache.l2.set")
        .unwrap_or_else(|| panic!("no fill span in {:#?}", names(&spans)));
    assert_eq!(fill.span_kind, SpanKind::Client);
    assert_eq!(
        attribute(fill, "db.operation.name"),
        Some(&Value::from("SET"))
    );
    assert_eq!(attribute(fill, "mode"), Some(&Value::from("nx")));
    assert_eq!(attribute(fill, "fenced"), Some(&Value::from(true)));
    // The cache's own spans are not client spans and carry no database attributes.
    let load = spans
        .iter()
        .find(|s| s.name == "layercache.load")
        .expect("the load span");
    assert_eq!(load.span_kind, SpanKind::Internal);
    assert_eq!(attribute(load, "db.system"), None);
}

fn names(spans: &[SpanData]) -> Vec<(String, Vec<String>)> {
    spans
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.attributes
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect(),
            )
        })
        .collect()
}
