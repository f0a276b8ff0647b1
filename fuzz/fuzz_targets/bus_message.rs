//! Any bytes received on the bus channel: a message (that encodes back to the same bytes) or a
//! rejection, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = layercache::fuzzing::decode_bus_message(data);
});
