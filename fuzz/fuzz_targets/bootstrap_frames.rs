//! Bootstrap messages: frames (magic, version, kind, length) as a stream, and every payload decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxccl::fuzzing::bootstrap_frames(data));
