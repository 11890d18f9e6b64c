// Whether `row` (of the bound rows) counts, from the coefficients the rows pass wrote: every
// row that does not has FILL_ZERO (`linear_live.wgsl`). Needs `coefs` (binding 8).
fn row_counts(row: u32) -> bool {
    return row < p.rows && coefs[row].fill != FILL_ZERO;
}
