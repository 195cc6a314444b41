//! The crate's rustdoc includes `docs/*.md` (the key table, the meaning, the runtime rules); the
//! README shows the same sections to readers of the repository. They must not drift apart.

#[test]
fn the_readme_holds_each_docs_section_verbatim() {
    let readme = include_str!("../README.md");
    for (name, section) in [
        ("docs/keys.md", include_str!("../docs/keys.md")),
        ("docs/meaning.md", include_str!("../docs/meaning.md")),
        ("docs/runtime.md", include_str!("../docs/runtime.md")),
    ] {
        assert!(
            readme.contains(section),
            "README.md no longer contains {name} verbatim: edit both, or copy {name} back in"
        );
    }
}
