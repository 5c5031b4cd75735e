//! The unique id: UniqueId::from_bytes and FromStr, with round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxccl::fuzzing::unique_id(data));
