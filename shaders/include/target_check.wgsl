// Shared by the partials and targets passes: the check of a row's index target. Needs `error`
// (binding 9).

// A valid (not ignored) index target of `global_row` outside [0, C) is recorded in `error` as
// NONE − row (atomicMax keeps the lowest row; 0 is none). Kernels after this one treat the row
// as ignored, so a bad target is never read through.
fn flag_bad_target(global_row: u32) {
    let y = load_target(global_row, p.ignore_lo, p.ignore_hi);
    if (y.y == 0 && (y.x < 0 || u32(y.x) >= p.classes)) {
        atomicMax(&error[0], NONE - global_row);
    }
}
