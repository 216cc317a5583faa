//! Record states built from the bytes, merged every way: see `fieldsync::fuzzing::merge_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync::fuzzing::merge_bytes(data));
