//! The connection handshake of every listener (the gate's incremental reader, bytes arriving in input-chosen pieces), the TCP transport's connection hello, and the call description heading each data frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxccl::fuzzing::handshake(data));
