//! Envelopes with a valid magic, version, codec and checksum but fuzzed lengths, flags, tag
//! block and payload: the checks behind the checksum, and LZ4 decompression under its cap.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = layercache::fuzzing::open_resealed_envelope(data);
});
