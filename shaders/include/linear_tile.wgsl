// The tile product of the linear head's kernels: one workgroup of 16 × 16 invocations computes
// a 64 × 64 block of A·Bᵀ (A [m][k], B [n][k], depth `depth`), 8-deep slabs of both through
// workgroup memory, 4 × 4 values per invocation in registers: acc[i][j] is (m0 + ty·4 + i,
// n0 + tx·4 + j) with tx = local % 16, ty = local / 16. The sum over k runs in slab order, the
// same on every device and launch.
//
// The kernel defines `load_a(m, k)` and `load_b(n, k)` (0 outside its operands), the
// constants A_ALONG_K / B_ALONG_K: whether consecutive k are consecutive words of the operand,
// so that neighbouring invocations load neighbouring words (along k, or else along m / n),
// and `load_slabs(m0, n0, k0, local)`: `load_slabs_scalar` here, or (both operands along k,
// LINEAR_VEC4) 16-byte loads (`linear_logits.wgsl`).

// The tile's side comes from the host (`abi::LINEAR_TILE`), which cuts rows and columns by it.
const BM: u32 = LINEAR_TILE;
const BN: u32 = LINEAR_TILE;
const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;
// Invocations along a tile's columns (and rows): BN / TN = BM / TM.
const SIDE: u32 = BN / TN;
const_assert SIDE * SIDE == WG;
const_assert BM / TM == SIDE;

// The slabs, k-major: a_slab[k·BM + m], b_slab[k·BN + n].
var<workgroup> a_slab: array<f32, BK * BM>;
var<workgroup> b_slab: array<f32, BK * BN>;

fn tile_product(m0: u32, n0: u32, depth: u32, local: u32) -> array<vec4<f32>, 4> {
    let tx = local % SIDE;
    let ty = local / SIDE;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < depth; k0 += BK) {
        load_slabs(m0, n0, k0, local);
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let b = vec4(
                b_slab[k * BN + tx * TN],
                b_slab[k * BN + tx * TN + 1u],
                b_slab[k * BN + tx * TN + 2u],
                b_slab[k * BN + tx * TN + 3u],
            );
            for (var i = 0u; i < TM; i++) {
                acc[i] = fma(vec4(a_slab[k * BM + ty * TM + i]), b, acc[i]);
            }
        }
        workgroupBarrier();
    }
    return acc;
}

// The slabs of depth k0 .. k0 + BK, one scalar of A and one of B per invocation and round.
fn load_slabs_scalar(m0: u32, n0: u32, k0: u32, local: u32) {
    for (var e = local; e < BK * BM; e += WG) {
        var m = e / BK;
        var k = e % BK;
        if (!A_ALONG_K) { m = e % BM; k = e / BM; }
        a_slab[k * BM + m] = load_a(m0 + m, k0 + k);
        var n = e / BK;
        var kb = e % BK;
        if (!B_ALONG_K) { n = e % BN; kb = e / BN; }
        b_slab[kb * BN + n] = load_b(n0 + n, k0 + kb);
    }
}
