//! Coverage-guided fuzzing of `confab::fuzzing::sasl` (see README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    confab::fuzzing::sasl(data);
});
