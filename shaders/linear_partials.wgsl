// Linear cross-entropy forward: a linear head's logits x = h·Wᵀ + b, tile by tile, folded
// into the online-softmax partials of each (row, split) and dropped; the rows and reduce
// passes finish the rows as they do for logits (softmax_partials.wgsl has the partial's math).
//
// Math: x[r][c] = Σ_d h[r][d]·W[c][d] + b[c], summed in f32 over d in slabs of BK, in order;
// each x is then one `element` of its row's partial (SEMANTICS.md sections 1-2, 5: transform,
// max, rescaled sum, argmax, Σ w·(z − m), entropy sum). The invocation holding the target's
// column saves that same x for the rows pass (TARGET_LOGIT), so z[y] is the number the LSE saw.
//
// Launch: workgroups of 16 × 16 invocations (WG = 256); grid x = row tiles of BM = 64 rows
// (in `bound_row` order: with SKIP_IGNORED the rows that count first, and a tile past them
// takes no product),
// y = vocabulary splits of `span` columns (a multiple of BN). A workgroup owns its BM rows ×
// its split: it walks the split in tiles of BN = 64 columns; for each tile the BM × BK slab of
// h and the BN × BK slab of W go through workgroup memory and each invocation accumulates a
// TM × TN = 4 × 4 block of x in registers. Its epilogue adds each of its rows' 4 values to
// that row's partial (one partial per row per invocation, in registers across the split's
// tiles); at the end the 16 invocations sharing rows merge their partials by a fixed tree in
// workgroup memory, and one writes partials[row · splits + split].
//
// Bytes: h is read once per (row tile, split) and W once per row tile: e·D·(BM·S + V)
// per row tile (e = 4 for f32, 2 for f16 / bf16) for 2·BM·V·D FLOPs; 48 bytes written per (row, split), nothing per logit.
//
// The chunked strategy (STORED_LOGITS) also keeps every x of its rows for the backward, in
// `logits`, chunk-major: the chunk of `block_columns` columns holding c, then row, then column
// (each chunk's rows × width a contiguous block, as `linear_gradient.wgsl` binds it); 4 more
// bytes written per logit.
//
// The rows' targets come with the chunk's row order (`linear_compact.wgsl` runs first).
//
// Inputs larger than a binding come in pieces: the host binds a chunk of rows (h, partials and
// target logits from the chunk's first row, so rows index the windows from 0)
// and a piece of whole splits of W (its rows from class `col0`, the piece's first column); a
// W stored [D × V] (WEIGHT_T) is bound whole, every piece, and indexed by global class.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(19) var<storage, read_write> target_logits: array<f32>;
// h (binding 20) and W (binding 21) come with the variant's loads `load_h` and `load_w`
// (f32, or f16 / bf16 pairs in u32 words, widened as the logits kernels widen theirs).
@group(0) @binding(22) var<storage, read> head_bias: array<f32>;

var<workgroup> merged: array<Partial, WG>;

// Index targets only, from the row order (`bound_target`): `element` sees no dense ones.
fn dense_target(i: u32) -> f32 { return 0.0; }

// The tile product's operands: include `linear_logits.wgsl` (b_end: the split's end).

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    let r0 = group.x * BM;
    let split = p.split0 + group.y;
    let c0 = split * p.span;
    let c1 = min(c0 + p.span, p.classes);
    let d = p.hidden;

    var st: array<Partial, TM>;
    for (var i = 0u; i < TM; i++) { st[i] = empty_partial(); }
    // The invocation's rows of the window (`bound_row`) and their targets (−1: the row does
    // not count), from the row order the compaction pass wrote.
    var rows: array<u32, TM>;
    var y: array<i32, TM>;
    for (var i = 0u; i < TM; i++) {
        let v = r0 + ty * TM + i;
        y[i] = -1;
        rows[i] = p.rows;
        if (v < p.rows) {
            rows[i] = bound_row(v);
            y[i] = bound_target(v);
        }
    }

    b_end = c1;
    // A tile of rows that count for nothing: empty partials (the rows pass leaves such rows
    // out), no product.
    if (r0 >= rows_that_count(local)) {
        let v = r0 + local;
        if (local < BM && v < p.rows) {
            partials[(p.row0 + bound_row(v)) * p.splits + split] = empty_partial();
        }
        return;
    }
    for (var n0 = c0; n0 < c1; n0 += BN) {
        let acc = tile_product(r0, n0, d, local);
        // Epilogue: each value into its row's partial, in column order.
        for (var i = 0u; i < TM; i++) {
            let row = rows[i];
            if (row >= p.rows) { continue; }
            var s = st[i];
            for (var j = 0u; j < TN; j++) {
                let c = n0 + tx * TN + j;
                if (c >= c1) { continue; }
                var x = acc[i][j];
                if (has(FLAG_BIAS)) { x += head_bias[c]; }
                element(&s, row, c, x);
                if (y[i] >= 0 && u32(y[i]) == c) { target_logits[p.row0 + row] = x; }
                if (has(FLAG_STORED_LOGITS)) { logits[stored_index(row, c)] = x; }
            }
            st[i] = s;
        }
    }

    // The 16 invocations of each row merge their partials: a fixed tree over tx.
    for (var i = 0u; i < TM; i++) {
        merged[local] = st[i];
        workgroupBarrier();
        for (var stride = SIDE / 2u; stride > 0u; stride /= 2u) {
            if (tx < stride) { merged[local] = merge(merged[local], merged[local + stride]); }
            workgroupBarrier();
        }
        let row = rows[i];
        if (tx == 0u && row < p.rows) {
            partials[(p.row0 + row) * p.splits + split] = merged[local];
        }
        workgroupBarrier();
    }
}
