#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::engine_commands(data));
