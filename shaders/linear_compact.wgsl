// Linear cross-entropy: the order in which the tile kernels take a window of rows (a chunk of
// the forward, a group of the backward) and each row's target beside it. With
// FLAG_SKIP_IGNORED (a recorded call that asks for no per-row records) the rows that count
// come first, in row order, then the others: the tile kernels read their rows through it
// (`linear_order.wgsl`) and a tile past the rows that count takes no product, so an ignored
// row costs no GEMM work wherever it sits (as in Cut Cross-Entropy). Without it every row
// counts, in row order (the forward still reads its targets here). A row counts when its index
// target is valid and in [0, C) (SEMANTICS.md section 2: an ignored row, or one flagged out of
// range, contributes nothing).
//
// Output, from word order_base: L, the rows that count; then for each place i < rows the
// pair (row of the window from 0, its target or −1 for a row that does not count): the L
// that count ascending, then the others descending.
//
// Launch: compacting, one workgroup per window, WG rows a round: an inclusive scan of the
// rows' flags in workgroup memory (Hillis–Steele, log2 WG steps), so each row knows its
// place; integer counts, so the order is the same on every device. Without FLAG_SKIP_IGNORED
// every place is its row: one invocation per row over the grid (x, and y past 65 535), no
// scan.
// Bytes: reads each row's target (4 or 8), writes 8 per row.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(27) var<storage, read_write> row_order: array<u32>;

var<workgroup> scan: array<u32, WG>;

// The target of `row` of the window where it counts (valid and in [0, C)), else −1.
fn counted_target(row: u32) -> i32 {
    let t = load_target(p.row0 + row, p.ignore_lo, p.ignore_hi);
    return select(-1, t.x, t.y == 0 && t.x >= 0 && u32(t.x) < p.classes);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    if (!has(FLAG_SKIP_IGNORED)) {
        let row = (group.x + group.y * groups.x) * WG + local;
        if (row < p.rows) {
            row_order[p.order_base + 1u + 2u * row] = row;
            row_order[p.order_base + 2u + 2u * row] = bitcast<u32>(counted_target(row));
        }
        if (row == 0u) { row_order[p.order_base] = p.rows; }
        return;
    }
    // Rows that count, and rows that don't, in the rounds before this one.
    var counted = 0u;
    var others = 0u;
    for (var base = 0u; base < p.rows; base += WG) {
        let row = base + local;
        var y = -1;
        if (row < p.rows) { y = counted_target(row); }
        let counts = y >= 0;
        let flag = select(0u, 1u, counts);
        scan[local] = flag;
        workgroupBarrier();
        for (var stride = 1u; stride < WG; stride *= 2u) {
            var v = scan[local];
            if (local >= stride) { v += scan[local - stride]; }
            workgroupBarrier();
            scan[local] = v;
            workgroupBarrier();
        }
        // Rows of this round before `local` that count, and that don't.
        let before = scan[local] - flag;
        let before_others = local - before;
        if (row < p.rows) {
            var place = p.rows - 1u - others - before_others;
            if (counts) { place = counted + before; }
            row_order[p.order_base + 1u + 2u * place] = row;
            row_order[p.order_base + 2u + 2u * place] = bitcast<u32>(y);
        }
        let round = scan[WG - 1u];
        counted += round;
        others += min(WG, p.rows - base) - round;
        // Every invocation has read `scan` before the next round writes it.
        workgroupBarrier();
    }
    if (local == 0u) { row_order[p.order_base] = counted; }
}
