//! Any payload given to the default codec: a value or an error, never a panic, never an
//! allocation a length prefix claims but the bytes cannot back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = layercache::fuzzing::decode_bincode(data);
});
