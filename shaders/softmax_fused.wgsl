// Softmax forward and backward fused, for rows that fit in registers: each logit is read once
// and its gradient written once (1 read + 1 write per logit, where the three passes take
// 2 reads + 1 write).
//
// Math: the three passes' math on one row, with their code: the row's online-softmax Partial
// as in `softmax_partials.wgsl` (`element`, then the same segment merge), the row's loss,
// LSE, metrics and gradient coefficients as in `softmax_rows.wgsl` (`finish_row`), and each
// element's gradient as in `softmax_backward.wgsl` (`element_gradient`):
//   dz[c] = (a·p_coefficient + b·2λ·lse)·p[c] − a·w[c]·(B·t[c] + ε/C) − a·(1−ε)·w[y]·[c = y],
// with p[c] = exp((z[c] − max) − ln s) from the logits kept in registers.
// Precondition of the fusion: the gradient's scales (a, b) are known before the loss. They
// are for `none` (per-row upstream) and `sum` (scalar upstream); for `mean`, D and Σ s come
// from the totals of the targets pre-pass (`softmax_targets.wgsl`) and the fixed-order reduce,
// bound at `scale_source`. Index targets were checked by that pre-pass too (a bad one is
// flagged there and the row is treated as ignored here, as `finish_row` does); the loss-only
// variant has no pre-pass and flags them itself.
// Not fused (the host's choice, `launch::fused_shape` and `plan::gpu`): contiguous rows
// longer than 4·FUSED_GROUPS·WG, focal loss with smoothing or soft targets (its factors
// need the final lse of every class: the focal pass), f16/bf16 gradients (in place or
// `SeparateHalf`) of contiguous rows with odd C and a workgroup per row, or of the (N, C, d…)
// layout with an odd number of positions (two rows would share a word with no pair in one
// workgroup to own it), and rows longer than a binding.
//
// Launch (`launch::fused_shape`): WG / invocations_per_row row segments per workgroup; a segment of invocations_per_row
// invocations owns a row, invocations_per_row as small as holds it (C ≤ 4·FUSED_GROUPS·invocations_per_row, up to 16 logits
// per invocation). Invocation `lane` owns the 4-element groups g = lane + j·invocations_per_row
// (j < FUSED_GROUPS) of the row, so neighbours read neighbouring 16-byte runs (coalesced;
// vec4 loads where the row is 4-element aligned) and own whole words of f16/bf16 in-place
// stores (odd C: shifted by one in a row that starts mid-word, below). The raw values stay in
// a private array of FUSED_GROUPS vec4s.
// The segment's Partials merge by a tree in workgroup memory (or subgroup butterflies, then
// the tree); lane 0 finishes the row (stores its record, keeps its sums) and shares its RowCoef
// through workgroup memory; after one barrier (none with one invocation per row, except the
// pairs of rows that share f16/bf16 words, below) every lane writes its groups' gradient.
// The (N, C, d…) layout (any C): one invocation per row, a position of a sample, so
// neighbours read neighbouring positions of each class plane (coalesced); the first
// 4·FUSED_GROUPS classes stay in registers, the rest are streamed and read once more for the
// gradient (from cache: a workgroup's rows span C runs of WG positions). Against the
// three-pass path it saves each row's 48-byte partial, written and read back, and a pass.
// Its f16/bf16 gradients are stored a word (two positions) at a time by the pair of
// invocations that owns them (`store_pair`), after a barrier (two with several rows per
// invocation) where the f32 path has none.
// Rows per invocation (`launch::fused_rows_per_invocation`): with one invocation per row and
// at least 64 workgroups' worth of rows, each invocation owns k = 4 rows, row
// (tile·k + i)·WG + local of its workgroup's tile of k·WG rows (neighbours still read
// neighbouring rows), and adds their sums in i order into one reduction slot, as the targets
// pass does; the host cuts chunks into whole tiles. A 2-class f32 row then costs 8 bytes of
// sums (4 written, 4 reduced) instead of 32 next to its 8 bytes of logits. Otherwise k = 1
// and the slot is the row.
// Grid: x (and z past 65 535) = rows / (k·WG / invocations_per_row) workgroups.
//
// Loss only (no gradient asked, `store_none.wgsl`): the forward, the row's finish and the
// check of its index target, one read of each logit and no write, in place of the targets,
// partials and rows passes. Under autodiff (`Store::Save`) the same, and each row's RowCoef
// written to `coefficients` (binding 8, in `scale_source`'s place: a gradient's input) for the
// backward pass, which then reads the logits once more and writes the gradient once.
//
// Bytes per logit: reads 4 (f32) or 2 (f16/bf16) once, writes 4 (out of place, f32) or the
// logit's width (in place) or nothing (loss only); dense targets: reads 4 twice. Per row: reads the target, its
// logit, w[y] and s[n]; writes 16 / k (sums, read back once by the reduction), + 32 (row
// record) where the caller reads it (FLAG_KEEP_LOSSES), + 32 (RowCoef) with `Store::Save`.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> row_out: array<RowOut>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
// Per-row upstream values (none), the pre-pass totals (mean), or unused: see `row_scales`.
@group(0) @binding(10) var<storage, read> scale_source: array<f32>;
@group(0) @binding(17) var<storage, read> sample_weights: array<f32>;

var<workgroup> shared_partials: array<Partial, WG>;

// The raw logit of the row's target, for `finish_row`.
fn target_x(row: u32, c: u32) -> f32 { return load_x(elem_index(row, c)); }

// A RowCoef in a Partial's slot of workgroup memory (room for WG Partials, 12 KiB, and not
// for another array of WG RowCoefs within the 16 KiB every adapter has).
fn pack_coef(k: RowCoef) -> Partial {
    return Partial(k.max, k.p_coefficient, bitcast<u32>(k.y), k.fill, k.target_coefficient, k.log_sum, k.scale, k.sample,
        0.0, 0.0, 0u, 0.0);
}
fn unpack_coef(a: Partial) -> RowCoef {
    return RowCoef(a.m, a.s, a.wz, bitcast<i32>(a.arg), a.nan_arg, a.wt, a.wtz, a.ez);
}

// Class c's word of the (N, C, d…) position pair holding `row` (half-precision gradients,
// `fused_row`): this row's gradient from its logit `x`, the other row's from its own.
fn store_pair(row: u32, c: u32, x: f32, k: RowCoef, ab: vec2<f32>, other_k: RowCoef, other_ab: vec2<f32>) {
    let other = row ^ 1u;
    let t = select(0.0, dense_target(target_index(row, c)), has(FLAG_DENSE));
    let t_other = select(0.0, dense_target(target_index(other, c)), has(FLAG_DENSE));
    let dx = element_gradient(k, ab, c, x, t);
    let dx_other = element_gradient(other_k, other_ab, c, load_x(elem_index(other, c)), t_other);
    let pair = select(vec2(dx, dx_other), vec2(dx_other, dx), (row & 1u) == 1u);
    store_dx(elem_index(row & ~1u, c) - p.elem_offset, vec4(pair, 0.0, 0.0), 2u);
}

// Row `row` of the chunk, owned by invocation `local` (`lane` of its segment): its sums.
fn fused_row(row: u32, local: u32, lane: u32, subgroup_size: u32) -> vec4<f32> {
    var sums = vec4(0.0);
    let live = row < p.rows;
    // Class c of the row is at base + c·step: contiguous rows, or the (N, C, d…) layout's
    // planes (one invocation per row there, so neighbours read neighbouring positions).
    let base = elem_index(row, 0u);
    let step = select(1u, p.spatial, p.spatial != 0u);
    let aligned = p.spatial == 0u && (base & 3u) == 0u;

    // One read: the values into registers and the row's Partial. The loops stop at the
    // row's last class (uniform with one invocation per row).
    var xs: array<vec4<f32>, FUSED_GROUPS>;
    var st = empty_partial();
    for (var j = 0u; j < FUSED_GROUPS; j++) {
        let c0 = 4u * (lane + j * p.invocations_per_row);
        if (c0 >= p.classes) { break; }
        if (live) {
            var x = vec4(0.0);
            if (aligned && c0 + 4u <= p.classes) {
                x = load4((base + c0) >> 2u);
            } else {
                for (var k = 0u; k < 4u; k++) {
                    if (c0 + k >= p.classes) { break; }
                    x[k] = load_x(base + (c0 + k) * step);
                }
            }
            xs[j] = x;
            for (var k = 0u; k < 4u; k++) {
                if (c0 + k >= p.classes) { break; }
                element(&st, row, c0 + k, x[k]);
            }
        }
    }
    // An (N, C, d…) row longer than the registers: the rest streamed (read again for the
    // gradient, from cache: the workgroup's rows are neighbouring positions of C planes).
    if (p.spatial != 0u && live) {
        for (var c = 4u * FUSED_GROUPS; c < p.classes; c++) {
            element(&st, row, c, load_x(base + c * step));
        }
    }

    REDUCE_SEGMENT

    // Lane 0 holds the merged Partial: it finishes the row and leaves the coefficients in
    // its slot (no lane reads that slot after the merge). After the barrier every lane has
    // them, and `finish_row` has read the target's logit before any lane overwrites it in
    // place.
    let global_row = p.row0 + row;
    if (live && lane == 0u) {
        let r = finish_row(st, row);
        // The record only where the caller reads it: 32 bytes a row, 4× a 2-class row's read.
        if (has(FLAG_KEEP_LOSSES)) { row_out[global_row] = r.out; }
        sums = r.sums;
        // Under autodiff (`Store::Save`) the row's coefficients are kept for the backward.
        SAVE_COEF
        shared_partials[local] = pack_coef(r.coef);
    }
    // The loss-only variant (`store_none.wgsl`) checks the row's index target here (no
    // targets pass ran before it; `finish_row` already treated a bad one as ignored) and
    // goes to the next row; `Variant::source` fills the placeholder below, empty in the
    // other variants.
    LOSS_ONLY
    // One invocation per row (C ≤ 16): it finished its own row and reads its own slot, so
    // short rows need no barrier (p is uniform, so is the branch) unless a pair of rows
    // shares f16/bf16 words (below). Several rows per
    // invocation come only with one invocation per row, so no lane of the next row's
    // merge overwrites a slot another lane still reads.
    // Half-precision gradients of the (N, C, d…) layout: positions 2i and 2i + 1 (an even
    // number of them a sample, the host's condition, so a pair is one sample's and both or
    // neither live) share each class's word. The pair's invocations split the words, the even
    // position taking the even classes and the odd one the odd, each computing both
    // positions' gradients: the other's RowCoef from its slot after a barrier, its logit from
    // cache (a word is read after the barrier only by the invocation that writes it). With
    // several rows per invocation a second barrier keeps the next row's finish off the slots
    // until both have read them.
    // Half-precision gradients of contiguous rows of odd C: row 2i ends in the low half of the
    // word whose high half is row 2i + 1's first element (chunks start at an even row and
    // bindings on a word). Row 2i's segment writes that word, its own last gradient and the
    // next row's first from that row's RowCoef (its slot, after the barrier) and its logit,
    // read by this writer alone; row 2i + 1's segment writes from its second element on,
    // each lane the words (c0 + 1, c0 + 2) and (c0 + 3, c0 + 4) of its group, the latter's
    // high half the next group's first element. The host keeps a pair in one workgroup (an
    // even number of segments: `launch::fused_owns_half_words`, invocations_per_row < WG).
    // (`STORES_HALF_WORDS`: the variant's store, from `Variant::source`.)
    let paired = STORES_HALF_WORDS && (p.spatial != 0u || (p.classes & 1u) == 1u);
    if (p.invocations_per_row > 1u || paired) { workgroupBarrier(); }
    var pair_coef: RowCoef;
    if (paired) {
        // The other segment of the pair: lane 0 of segment ^ 1 (the position ^ 1 in (N, C, d…)).
        pair_coef = unpack_coef(shared_partials[(local - lane) ^ p.invocations_per_row]);
        if (ROWS_PER_INVOCATION > 1u) { workgroupBarrier(); }
    }
    if (live && paired && p.spatial != 0u) {
        let coef = unpack_coef(shared_partials[local]);
        let ab = row_scales(coef, global_row);
        let ab_other = row_scales(pair_coef, p.row0 + (row ^ 1u));
        let odd = row & 1u;
        // Classes in registers, two of each group of four; then the streamed ones.
        for (var j = 0u; j < FUSED_GROUPS; j++) {
            let c = 4u * j + odd;
            if (c >= p.classes) { break; }
            let x = xs[j];
            store_pair(row, c, select(x.x, x.y, odd == 1u), coef, ab, pair_coef, ab_other);
            if (c + 2u >= p.classes) { break; }
            store_pair(row, c + 2u, select(x.z, x.w, odd == 1u), coef, ab, pair_coef, ab_other);
        }
        for (var c = 4u * FUSED_GROUPS + odd; c < p.classes; c += 2u) {
            store_pair(row, c, load_x(base + c * step), coef, ab, pair_coef, ab_other);
        }
    } else if (live) {
        let coef = unpack_coef(shared_partials[local - lane]);
        // One write: the gradient from the registers. `store_dx` takes the element's index
        // in the chunk; the (N, C, d…) layout stores one element at a time here (f32).
        let ab = row_scales(coef, global_row);
        let at = base - p.elem_offset;
        for (var j = 0u; j < FUSED_GROUPS; j++) {
            let c0 = 4u * (lane + j * p.invocations_per_row);
            if (c0 >= p.classes) { break; }
            let n = min(4u, p.classes - c0);
            var dx = vec4(0.0);
            // A mid-word row's group leaves its first value to the word's writer (below).
            let skip = select(0u, 1u, paired && p.spatial == 0u && (base & 1u) == 1u);
            for (var k = skip; k < 4u; k++) {
                if (k >= n) { break; }
                let t = select(0.0, dense_target(target_index(row, c0 + k)), has(FLAG_DENSE));
                dx[k] = element_gradient(coef, ab, c0 + k, xs[j][k], t);
            }
            if (p.spatial == 0u && !paired) {
                store_dx(at + c0, dx, n);
            } else if (p.spatial == 0u && (base & 1u) == 1u) {
                // Mid-word row: whole words from the group's second element (C − c0 − 1 is
                // even, so 0, 2 or 4 values); the 4th is the next group's first.
                let m = min(4u, p.classes - c0 - 1u);
                var shifted = vec4(dx.y, dx.z, dx.w, 0.0);
                if (m == 4u) {
                    let t = select(0.0, dense_target(target_index(row, c0 + 4u)), has(FLAG_DENSE));
                    shifted.w = element_gradient(coef, ab, c0 + 4u, load_x(base + c0 + 4u), t);
                }
                store_dx(at + c0 + 1u, shifted, m);
            } else if (p.spatial == 0u) {
                // A word-aligned row: its last group (n odd) also writes the next row's first
                // gradient where that row is live, else the word's low half alone.
                var m = n;
                if (c0 + n == p.classes && row + 1u < p.rows) {
                    let t = select(0.0, dense_target(target_index(row + 1u, 0u)), has(FLAG_DENSE));
                    let ab_next = row_scales(pair_coef, global_row + 1u);
                    let next = element_gradient(pair_coef, ab_next, 0u, load_x(base + p.classes), t);
                    // n is 1 or 3 (C and c0's parities); a constant index keeps dx in registers.
                    if (n == 1u) { dx.y = next; } else { dx.w = next; }
                    m = n + 1u;
                }
                store_dx(at + c0, dx, m);
            } else {
                for (var k = 0u; k < n; k++) { store_dx(at + (c0 + k) * step, vec4(dx[k]), 1u); }
            }
        }
        if (p.spatial != 0u) {
            for (var c = 4u * FUSED_GROUPS; c < p.classes; c++) {
                let t = select(0.0, dense_target(target_index(row, c)), has(FLAG_DENSE));
                let dx = element_gradient(coef, ab, c, load_x(base + c * step), t);
                store_dx(at + c * step, vec4(dx), 1u);
            }
        }
    }
    return sums;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    SUBGROUP_BUILTINS
) {
    let lane = local % p.invocations_per_row;
    let segments = WG / p.invocations_per_row;
    let segment = local / p.invocations_per_row;
    let tile = group.x + group.z * groups.x;
    // The variant's rows per invocation (`Variant::short_tiles`), as in the targets pass.
    let first = tile * ROWS_PER_INVOCATION * segments + segment;
    // Four rows (`launch::SHORT_ROWS_PER_INVOCATION`) written out, not looped: a loop around
    // the row ran 1.4× slower on llvmpipe, the calls are the same code for a GPU's compiler.
    // Added from 0 row by row, as the targets pass adds its sums.
    var sums = vec4(0.0);
    sums += fused_row(first, local, lane, SUBGROUP_SIZE);
    if (ROWS_PER_INVOCATION == 4u) {
        sums += fused_row(first + segments, local, lane, SUBGROUP_SIZE);
        sums += fused_row(first + 2u * segments, local, lane, SUBGROUP_SIZE);
        sums += fused_row(first + 3u * segments, local, lane, SUBGROUP_SIZE);
    }
    if (lane == 0u && first < p.rows) {
        row_sums[p.row0 / ROWS_PER_INVOCATION + tile * segments + segment] = sums;
    }
}
