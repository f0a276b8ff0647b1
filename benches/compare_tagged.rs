//! `compare`'s tagged batches (informational): what tags cost a batch call made through
//! `Region::many().tags(…)`, against the same call untagged, in the same run.

use crate::{interleave, l2_bench, owned_batch_keys, support, BATCH};
use layercache::Region;

/// `many().tags(&["t"]).insert(100 values)` against `insert_many` of the same keys.
pub(crate) fn batch_write_tagged(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let batch = |i: usize| owned_batch_keys(&setup, i);
        let r = interleave(
            rounds,
            20,
            |i| {
                let (region, keys) = (setup.region.clone(), batch(i));
                async move {
                    let done = region
                        .many()
                        .tags(&["team"])
                        .insert(keys.iter().map(|k| (k.as_str(), support::profile())))
                        .await;
                    assert!(done.iter().all(Result::is_ok));
                }
            },
            |i| {
                let (region, keys) = (setup.region.clone(), batch(i));
                async move {
                    let done = region
                        .insert_many(keys.iter().map(|k| (k.as_str(), support::profile())))
                        .await;
                    assert!(done.iter().all(Result::is_ok));
                }
            },
        )
        .await;
        r.report("batch_write_tagged", 1.0);
    });
    drop(server);
}

/// A batch load of 100 new keys, tagged, against the same untagged.
pub(crate) fn batch_load_tagged(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let keys = |side: &str, i: usize| -> Vec<String> {
            (0..BATCH).map(|j| format!("{side}:{i}:{j}")).collect()
        };
        let r = interleave(
            rounds,
            10,
            |i| load(setup.region.clone(), keys("tagged", i), true),
            |i| load(setup.region.clone(), keys("plain", i), false),
        )
        .await;
        r.report("batch_load_tagged", 1.0);
    });
    drop(server);
}

/// One batch load of `keys`, all new, tagged or not.
async fn load(region: Region<str, support::Profile>, keys: Vec<String>, tagged: bool) {
    let tags: &[&str] = if tagged { &["team"] } else { &[] };
    let got = region
        .many()
        .tags(tags)
        .get_or_load(keys.iter().map(String::as_str), |ks: Vec<String>| {
            let rows: Vec<(String, support::Profile)> =
                ks.into_iter().map(|k| (k, support::profile())).collect();
            std::future::ready(Ok::<_, std::io::Error>(rows))
        })
        .await;
    assert!(got.iter().all(|v| matches!(v, Ok(Some(_)))));
}
