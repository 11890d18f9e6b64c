//! `SEMANTICS.md` ships with the crate as the user-facing contract; it is a copy of the
//! steering repository's `shared/SEMANTICS.md`, beside this checkout where CI runs. When that
//! file is there, the two must be the same text (copy it over when the contract changes).

#[test]
fn the_shipped_contract_is_the_current_one() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("SEMANTICS.md")).expect("SEMANTICS.md");
    assert!(
        shipped.starts_with("# xent semantics"),
        "SEMANTICS.md: {shipped:.80}"
    );
    let upstream = root.join("../shared/SEMANTICS.md");
    match std::fs::read_to_string(&upstream) {
        Ok(current) => assert!(
            shipped == current,
            "SEMANTICS.md differs from {}: copy it over (cp ../shared/SEMANTICS.md .)",
            upstream.display()
        ),
        Err(_) => eprintln!(
            "{} is not beside this checkout: SEMANTICS.md not compared",
            upstream.display()
        ),
    }
}
