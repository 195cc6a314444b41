//! Compile-fail tests: one per rule of the spec language (the README's key table), each with its reviewed
//! message and span in `tests/ui/*.stderr`.

#[test]
fn spec_errors_are_spanned_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
