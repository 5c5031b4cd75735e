//! The connection handshake of every listener (the gate's incremental reader, bytes arriving in input-chosen pieces) and the TCP transport's connection hello.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxccl::fuzzing::handshake(data));
