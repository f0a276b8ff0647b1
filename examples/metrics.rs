//! Metrics: a service loop with a Prometheus exporter on a local port, scraped once by the
//! example itself.
//!
//! ```sh
//! cargo run --example metrics                                   # L1 only, no Redis needed
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example metrics  # both tiers
//! ```
//!
//! layercache reports through the `metrics` facade (its `metrics` feature), so any exporter
//! works. Here `metrics-exporter-prometheus` renders the text format, and a few lines of tokio
//! serve it on `127.0.0.1:<port>/metrics` (a real service would use the exporter's own HTTP
//! listener, or its web framework's route). The example then scrapes that port as Prometheus
//! would and prints layercache's series. Names and labels: the `layercache::metrics` docs.
#![expect(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::Duration;

use layercache::{EntryOptions, LayerCache};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Serves the exporter's text on every connection: a minimal `/metrics` endpoint.
async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let body = handle.render();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).await;
        let _ = conn.write_all(body.as_bytes()).await;
    }
}

/// `GET /metrics` on `port`, as a Prometheus server would; returns the body.
async fn scrape(port: u16) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok(body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The exporter, installed as the process's recorder, and its endpoint.
    let handle = PrometheusBuilder::new().install_recorder()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(serve(listener, handle));
    println!("metrics on http://127.0.0.1:{port}/metrics");

    // 2. A cache (both tiers with REDIS_URL), exporting its counters every 100 ms.
    let mut builder = LayerCache::builder("metrics-example")
        .max_capacity(10_000)
        .default_entry_options(EntryOptions::new().ttl(Duration::from_secs(60)))
        .metrics_interval(Duration::from_millis(100));
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis_url(url);
    }
    let cache = builder.build().await?;
    let products = cache.region::<u64, String>("products").build().await?;

    // 3. A service loop: 1,000 requests over 50 products, so most reads are hits.
    for i in 0..1_000u64 {
        let id = i % 50;
        products
            .get_or_load(&id, |id| async move {
                tokio::time::sleep(Duration::from_millis(1)).await; // the database
                Ok::<_, std::io::Error>(format!("product {id}"))
            })
            .await?;
    }

    // 4. One scrape, as Prometheus would (export first: the figures are exact to now).
    cache.export_metrics();
    let body = scrape(port).await?;
    let ours: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with("layercache_hits_total")
                || l.starts_with("layercache_loads_total")
                || l.starts_with("layercache_l1_entries")
                || l.starts_with("layercache_load_duration_seconds_count")
        })
        .collect();
    println!(
        "scraped {} lines; some of layercache's:",
        body.lines().count()
    );
    for line in &ours {
        println!("  {line}");
    }
    if ours.is_empty() {
        return Err("the scrape held no layercache series".into());
    }
    cache.shutdown().await;
    Ok(())
}
