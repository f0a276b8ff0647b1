//! Long walks over Redis keys: a tag's members (page by page), and the data keys a region
//! generation move left behind.

use std::time::Duration;

use crate::{
    envelope::FORMAT_VERSION,
    error::Result,
    freshness::token,
    key::{parse_data_key, tag_key, tag_mark_key},
    options::millis_ceil,
    remote::Remote,
};

/// How long a tag's mark lives after its last invalidation. A load that runs longer than this
/// across an invalidation of one of its tags could see the mark vanish and come back as it
/// was (absent); loads are bounded far below a day in practice.
pub(crate) const TAG_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// Walks every key starting with `prefix` (`SCAN … COUNT 1000`, on every primary of a
/// cluster), handing each page to `page` (a key may be seen twice, as with `SCAN`).
pub(crate) async fn scan_all(
    l2: &Remote,
    prefix: &str,
    mut page: impl FnMut(Vec<String>),
) -> Result<()> {
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys) = l2.scan_prefix(prefix, &cursor, 1000).await?;
        page(keys);
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// The Redis side of `invalidate_tag`: replace the mark, then delete the members page by page
/// (`progress`: the number deleted so far, after every page).
pub(crate) async fn drop_tag(
    l2: &Remote,
    cache: &str,
    tag: &str,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    l2.set_mark(
        &tag_mark_key(cache, tag),
        token(),
        millis_ceil(TAG_MARK_TTL),
    )
    .await?;
    l2.drop_tag_members(&tag_key(cache, tag), progress).await
}

/// Deletes, in batches (`SCAN … COUNT 1000`, one `UNLINK` per page), the data keys of every
/// region in `moved` whose generation is older than the one it was moved to. Newer keys (filled
/// since) and keys of regions not in `moved` stay: deleting a tombstone there could let a
/// stale fill in.
pub(crate) async fn delete_outdated(
    l2: &Remote,
    cache: &str,
    moved: &[(String, u32, u64)],
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    let prefix = format!("{cache}:{}{FORMAT_VERSION}:", crate::key::space::DATA);
    let (mut cursor, mut deleted) = ("0".to_owned(), 0u64);
    loop {
        let (next, keys) = l2.scan_prefix(&prefix, &cursor, 1000).await?;
        let old: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                parse_data_key(cache, k).is_some_and(|(region, schema, g)| {
                    moved
                        .iter()
                        .any(|(r, s, to)| r == region && *s == schema && g < *to)
                })
            })
            .collect();
        deleted += old.len() as u64;
        l2.delete_many(old).await?;
        progress(deleted);
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}
