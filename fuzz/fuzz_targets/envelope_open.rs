//! Any bytes read from Redis under a cache key: a value or a rejection, never a panic, never
//! an allocation past the cap.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = layercache::fuzzing::open_envelope(data);
});
