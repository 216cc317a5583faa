//! Bytes from a peer as a sync page, both encodings: see `fieldsync::fuzzing::page_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync::fuzzing::page_bytes(data));
