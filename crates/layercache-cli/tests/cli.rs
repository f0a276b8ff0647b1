//! The CLI against a real redis-server, with a running instance of the cache in the same test.
#![expect(clippy::unwrap_used, reason = "a test's unwrap is its assertion")]

use std::{
    process::Output,
    time::{Duration, Instant},
};

use fred::{
    prelude::{Builder, Client, ClientLike, Config, KeysInterface},
    types::{ClusterHash, CustomCommand},
};
use layercache::{LayerCache, Region};
use layercache_testkit::RedisServer;
use serde_json::Value;

/// Runs the CLI on `server` for cache `cache` (blocking in a helper thread).
async fn cli(server_url: &str, cache: &str, args: &[&str]) -> Output {
    let mut all = vec!["--url", server_url, "--cache", cache, "--timeout", "2"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_layercache-cli"))
            .args(all)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn instance(server: &RedisServer, cache: &str) -> (LayerCache, Region<str, String>) {
    let c = LayerCache::builder(cache)
        .redis_url(server.url())
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(2))
        .l1_write_cooldown(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let r = c.region::<str, String>("users").build().await.unwrap();
    (c, r)
}

async fn raw(server: &RedisServer) -> Client {
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_compressed_tagged_entry_as_text_and_json() {
    let server = RedisServer::start().unwrap();
    let (_c, r) = instance(&server, "shop").await;
    r.entry("42")
        .tags(&["team:7"])
        .insert("x".repeat(5000))
        .await
        .unwrap();

    let out = cli(&server.url(), "shop", &["--json", "inspect", "users", "42"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let v = json(&out);
    assert_eq!(v["redis_key"], r.redis_key("42").unwrap());
    assert_eq!(v["compressed"], true);
    assert_eq!(v["tags"], serde_json::json!(["team:7"]));
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["key_matches"], true);
    assert_eq!(v["codec"], "bincode");
    assert!(v["raw_len"].as_u64().unwrap() > 5000);
    assert!(v["stored_len"].as_u64().unwrap() < 200, "{v}");
    assert!(v["ttl_ms"].as_u64().unwrap() > 0);
    assert_eq!(v["tombstone"], false);

    let out = cli(&server.url(), "shop", &["inspect", "users", "42"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    for expected in ["lz4", "team:7", "checks      ok", "kind        value"] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_is_announced_and_applied_by_a_running_instance() {
    let server = RedisServer::start().unwrap();
    let (c, r) = instance(&server, "shop").await;
    r.insert("42", "old".to_owned()).await.unwrap();
    r.insert("43", "kept".to_owned()).await.unwrap();
    assert_eq!(*r.get("42").await.unwrap().unwrap(), "old"); // in L1

    let out = cli(
        &server.url(),
        "shop",
        &["--json", "invalidate", "key", "users", "42"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let v = json(&out);
    let (sender, seq) = (
        v["instance"].as_str().unwrap().to_owned(),
        v["published_seq"].as_u64().unwrap(),
    );
    // The running instance applies the CLI's message (it arrives on the bus: no polling of
    // Redis), and from then on does not serve the value.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = c.bus_status().unwrap();
        let applied = status
            .peers
            .iter()
            .find(|(id, _)| id.to_string() == sender)
            .map(|(_, s)| *s);
        if applied >= Some(seq) {
            break;
        }
        assert!(Instant::now() < deadline, "not applied: {status:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stats = c.stats();
    assert!(r.get("42").await.unwrap().is_none());
    assert_eq!(c.stats().l1_hits, stats.l1_hits, "not from L1");
    assert_eq!(*r.get("43").await.unwrap().unwrap(), "kept");
    // Redis holds the tombstone.
    let out = cli(&server.url(), "shop", &["--json", "inspect", "users", "42"]).await;
    assert_eq!(json(&out)["tombstone"], true);

    // A tag, a region: announced the same way.
    r.entry("44")
        .tags(&["t"])
        .insert("tagged".to_owned())
        .await
        .unwrap();
    let out = cli(&server.url(), "shop", &["invalidate", "tag", "t"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = cli(&server.url(), "shop", &["invalidate", "region", "users"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.get("43").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the region move was not applied");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(r.get("44").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_lists_generations_and_key_counts() {
    let server = RedisServer::start().unwrap();
    let (c, users) = instance(&server, "shop").await;
    let orders = c.region::<str, String>("orders").build().await.unwrap();
    for i in 0..3 {
        users.insert(&i.to_string(), "u".to_owned()).await.unwrap();
    }
    orders.insert("1", "o".to_owned()).await.unwrap();

    let out = cli(&server.url(), "shop", &["--json", "regions"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let v = json(&out);
    let rows = v["regions"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["region"] == name).unwrap().clone();
    assert_eq!(row("users")["keys"], 3);
    assert_eq!(row("orders")["keys"], 1);
    assert_eq!(row("users")["generation"], users.generation().unwrap());
    assert_eq!(rows.len(), 2);
    let out = cli(&server.url(), "shop", &["regions"]).await;
    assert!(text(&out).0.contains("users"), "{:?}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_message_an_exit_code_and_changes_nothing() {
    let server = RedisServer::start().unwrap();
    let (_c, r) = instance(&server, "shop").await;
    r.insert("42", "v".to_owned()).await.unwrap();
    let raw = raw(&server).await;

    // Unreachable, with a password: exit 1, the password never shown.
    let out = cli(
        "redis://user:hunter2@127.0.0.1:1",
        "shop",
        &["invalidate", "tag", "t"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("user:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("hunter2") && !stdout.contains("hunter2"));

    // A URL that is not one: exit 2, said so.
    for args in [&["regions"][..], &["inspect", "--redis-key", "k"][..]] {
        let out = cli("ftp://127.0.0.1:1", "shop", args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
        assert!(
            text(&out).1.contains("ftp://127.0.0.1:1"),
            "{:?}",
            text(&out)
        );
    }
    // `generations` is `regions`.
    let out = cli(&server.url(), "shop", &["--json", "generations"]).await;
    assert_eq!(json(&out)["regions"][0]["region"], "users");

    // `invalidate all` without --yes: exit 2, nothing changed.
    let out = cli(&server.url(), "shop", &["invalidate", "all"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--yes"));
    let key = r.redis_key("42").unwrap();
    assert!(raw.exists::<bool, _>(&key).await.unwrap());

    // No such region, no such key: exit 3.
    let out = cli(&server.url(), "shop", &["inspect", "nope", "1"]).await;
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("no region \"nope\""));
    let out = cli(&server.url(), "shop", &["invalidate", "region", "nope"]).await;
    assert_eq!(out.status.code(), Some(3));
    let out = cli(&server.url(), "shop", &["inspect", "users", "missing"]).await;
    assert_eq!(out.status.code(), Some(3));

    // Another Redis type, bytes that are not ours: exit 4.
    let _: i64 = raw
        .custom(
            CustomCommand::new_static("LPUSH", ClusterHash::FirstKey, false),
            vec!["a-list", "x"],
        )
        .await
        .unwrap();
    let out = cli(&server.url(), "shop", &["inspect", "--redis-key", "a-list"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out).1.contains("holds a Redis list"),
        "{:?}",
        text(&out)
    );
    let _: () = raw.set("plain", "hello", None, None, false).await.unwrap();
    let out = cli(&server.url(), "shop", &["inspect", "--redis-key", "plain"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out).1.contains("not a layercache entry"));

    // A damaged envelope: its header is shown, with what is wrong; exit 4.
    let mut bytes: Vec<u8> = raw.get(&key).await.unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let _: () = raw.set(&key, bytes, None, None, false).await.unwrap();
    let out = cli(&server.url(), "shop", &["inspect", "users", "42"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stdout.contains("FAILED: checksum"), "{stdout}");
    assert!(stderr.contains("damaged: checksum"), "{stderr}");
    // Nothing was changed by any of it.
    assert!(raw.exists::<bool, _>(&key).await.unwrap());
}

/// A heartbeat from `sender` with sequence number `seq`, as the bus format documents it.
fn heartbeat(sender: u8, seq: u64) -> Vec<u8> {
    let mut m = b"LCBM\x01".to_vec();
    m.extend_from_slice(&[sender; 16]);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_bus_and_a_gap_it_was_shown() {
    let server = RedisServer::start().unwrap();
    let raw = raw(&server).await;
    let channel = layercache::bus::channel("shop");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_layercache-cli"))
        .args(["--url", &server.url(), "--cache", "shop", "--json"])
        .args(["watch", "--count", "4", "--seconds", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its subscription.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Vec<fred::types::Value> = raw
            .custom(
                CustomCommand::new_static("PUBSUB", ClusterHash::Random, false),
                vec!["NUMSUB", channel.as_str()],
            )
            .await
            .unwrap();
        if v.get(1).and_then(fred::types::Value::as_i64) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the CLI never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for bytes in [
        heartbeat(9, 1),
        heartbeat(9, 2),
        b"not ours".to_vec(),
        heartbeat(9, 5),
    ] {
        let _: i64 = raw
            .custom(
                CustomCommand::new_static("PUBLISH", ClusterHash::Random, false),
                vec![
                    fred::types::Value::from(channel.as_str()),
                    fred::types::Value::from(bytes.as_slice()),
                ],
            )
            .await
            .unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let lines: Vec<Value> = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let sender = "09".repeat(16);
    assert_eq!(lines[0]["sender"], sender.as_str());
    assert_eq!(lines[0]["heartbeat"], true);
    assert_eq!(lines[1]["seq"], 2);
    assert_eq!(lines[1]["lost_before"], 0);
    assert_eq!(lines[2]["dropped"], 8);
    assert_eq!(lines[3]["seq"], 5);
    assert_eq!(lines[3]["lost_before"], 2, "the gap: 3 and 4 never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lists_who_is_on_the_bus_with_version_and_last_flush() {
    let server = RedisServer::start().unwrap();
    let (a, _) = instance(&server, "shop").await;
    let (b, _) = instance(&server, "shop").await;
    let (gone, _) = instance(&server, "shop").await;
    let gone_id = gone.instance_id().unwrap().to_string();
    gone.shutdown().await;
    a.clear().await.unwrap(); // every instance flushes its L1: reason "clear"
    let a_id = a.instance_id().unwrap().to_string();
    // Presence records are rewritten every five heartbeats (100 ms here).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = a.instances_in_redis().await.unwrap();
        let flushed = records
            .iter()
            .filter(|r| r.last_flush.as_ref().is_some_and(|(why, _)| why == "clear"))
            .count();
        if flushed == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{records:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let out = cli(
        &server.url(),
        "shop",
        &["--json", "instances", "--seconds", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let v = json(&out);
    let rows = v["instances"].as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    for c in [&a, &b] {
        let id = c.instance_id().unwrap().to_string();
        assert!(ids.contains(&id.as_str()), "{id} not in {ids:?}");
    }
    assert!(
        !ids.contains(&gone_id.as_str()),
        "a shut-down instance is gone"
    );
    assert_eq!(ids.len(), 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert_eq!(r["heard"], true, "{r}");
        assert!(r["heartbeats"].as_u64().unwrap() >= 2, "{r}");
        assert_eq!(r["lost"], 0);
        assert_eq!(r["last_flush"], "clear", "{r}");
        assert_eq!(r["regions"], serde_json::json!(["users"]));
    }
    assert!(rows.iter().any(|r| r["instance"] == a_id.as_str()));
    let out = cli(&server.url(), "shop", &["instances", "--seconds", "0.5"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("clear, ") && stdout.contains(&a_id),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_of_100k_members_shows_its_progress() {
    let server = RedisServer::start().unwrap();
    let (_c, r) = instance(&server, "shop").await;
    r.entry("real")
        .tags(&["big"])
        .insert("v".to_owned())
        .await
        .unwrap();
    let real_key = r.redis_key("real").unwrap();
    let raw = raw(&server).await;
    // 100,000 more members of the tag, planted in one script.
    let set = "shop:t2:big";
    let _: i64 = raw
        .custom(
            CustomCommand::new_static("EVAL", ClusterHash::Random, false),
            vec![
                "for i = 1, 100000 do local k = 'shop:f2:users:s1:g1:m' .. i; \
                 redis.call('SET', k, 'x'); redis.call('SADD', KEYS[1], k) end return 1",
                "1",
                set,
            ],
        )
        .await
        .unwrap();
    let before: i64 = raw
        .custom(
            CustomCommand::new_static("DBSIZE", ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await
        .unwrap();

    let out = cli(
        &server.url(),
        "shop",
        &["--progress", "always", "invalidate", "tag", "big"],
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let counts: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("tag big: entries deleted: "))
        .map(|l| l.trim_end_matches(", done").parse().unwrap())
        .collect();
    assert!(counts.len() >= 2, "{stderr}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(counts[0] < 100_001, "{counts:?}");
    assert!(
        stderr.contains("tag big: entries deleted: 100001, done"),
        "{stderr}"
    );
    // Every planted member is gone (counted directly: the key count also moves with presence
    // records and the mark).
    let left: i64 = raw
        .custom(
            CustomCommand::new_static("EVAL", ClusterHash::Random, false),
            vec![
                "local n = 0 for i = 1, 100000 do \
                 n = n + redis.call('EXISTS', 'shop:f2:users:s1:g1:m' .. i) end return n",
                "0",
            ],
        )
        .await
        .unwrap();
    assert_eq!(left, 0, "{before} keys before");
    assert!(!raw.exists::<bool, _>(&real_key).await.unwrap());
    assert!(!raw.exists::<bool, _>(set).await.unwrap());
    assert!(r.get("real").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_clearly_and_never_shown() {
    let server = RedisServer::builder()
        .arg("requirepass", "right-one")
        .start()
        .unwrap();
    let url = format!("redis://:wrong-one@127.0.0.1:{}", server.port());
    for args in [
        &["regions"][..],
        &["inspect", "--redis-key", "k"][..],
        &["invalidate", "tag", "t"][..],
    ] {
        let out = cli(&url, "shop", args).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(":***@127.0.0.1"), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("wrong-one") && !stdout.contains("wrong-one"),
            "{stderr}"
        );
    }
    // The right one works.
    let url = format!("redis://:right-one@127.0.0.1:{}", server.port());
    let out = cli(&url, "shop", &["regions"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_with_yes_clears_every_instance_and_shows_its_walk() {
    let server = RedisServer::start().unwrap();
    let (c, r) = instance(&server, "shop").await;
    let keys: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
    let results = r
        .insert_many(keys.iter().map(|k| (k.as_str(), "v".to_owned())))
        .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(r.get("k1").await.unwrap().is_some());

    let out = cli(
        &server.url(),
        "shop",
        &["--progress", "always", "invalidate", "all", "--yes"],
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let done: u64 = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("clear: outdated keys deleted: ")?
                .strip_suffix(", done")
        })
        .unwrap_or_else(|| panic!("{stderr}"))
        .parse()
        .unwrap();
    assert_eq!(done, 3000, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.flushes(layercache::FlushReason::Clear) == 0 {
        assert!(
            Instant::now() < deadline,
            "the instance never heard the clear"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(r.get("k1").await.unwrap().is_none());
}

/// The primitives' operator commands: a user signed out of every session, a rate limiter's
/// count forgotten, a lock broken (only with `--yes`) — each seen by a running instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rate_counts_and_locks_are_invalidated_for_running_instances() {
    let server = RedisServer::start().unwrap();
    let (c, _) = instance(&server, "ops").await;
    let sessions = c.sessions::<String>("web").build().await.unwrap();
    let mine = sessions
        .create_for("user:42", "a".to_owned())
        .await
        .unwrap();
    let theirs = sessions.create_for("user:7", "b".to_owned()).await.unwrap();
    let out = cli(
        &server.url(),
        "ops",
        &["invalidate", "sessions", "web", "user:42"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("announced on the bus"),
        "{:?}",
        text(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sessions.get(&mine).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the sign-out was not applied");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(sessions.get(&theirs).await.unwrap().is_some());

    let limit = layercache::RateLimit::fixed_window(1, Duration::from_secs(3600));
    let limiter = c.rate_limiter("login", limit).unwrap();
    assert!(limiter.check("user:42").await.unwrap().allowed);
    assert!(!limiter.check("user:42").await.unwrap().allowed);
    let out = cli(
        &server.url(),
        "ops",
        &["--json", "invalidate", "rate", "login", "user:42"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(json(&out)["instance"], Value::Null, "nothing to announce");
    assert!(limiter.check("user:42").await.unwrap().allowed);

    let held = c.lock("nightly").acquire().await.unwrap().unwrap();
    let out = cli(&server.url(), "ops", &["invalidate", "lock", "nightly"]).await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("--yes"), "{:?}", text(&out));
    assert!(
        c.lock("nightly").acquire().await.unwrap().is_none(),
        "still held"
    );
    let out = cli(
        &server.url(),
        "ops",
        &["invalidate", "lock", "nightly", "--yes"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let next = c.lock("nightly").acquire().await.unwrap().expect("broken");
    assert!(next.fence() > held.fence());
    tokio::time::timeout(Duration::from_secs(10), held.lost())
        .await
        .expect("the broken lock's holder finds it lost");
    c.shutdown().await;
}
