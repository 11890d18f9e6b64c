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
// LINEAR_VEC4) four values a load: 16 bytes of f32, 8 of f16 / bf16 (`linear_logits.wgsl`).

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

// The slabs, k-major, four consecutive m (n) to a vec4: (k, m) is a_slab[k·BM/4 + m/4][m % 4].
// The inner loop then reads an invocation's 4 values of A and 4 of B for one k with two 16-byte
// loads from workgroup memory: 2 loads for 16 FMAs, where scalars took 8.
const_assert TM == 4u && TN == 4u;
var<workgroup> a_slab: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_slab: array<vec4<f32>, BK * BN / 4u>;
fn put_a(k: u32, m: u32, x: f32) { a_slab[k * (BM / 4u) + m / 4u][m % 4u] = x; }
fn put_b(k: u32, n: u32, x: f32) { b_slab[k * (BN / 4u) + n / 4u][n % 4u] = x; }

fn tile_product(m0: u32, n0: u32, depth: u32, local: u32) -> array<vec4<f32>, 4> {
    let tx = local % SIDE;
    let ty = local / SIDE;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < depth; k0 += BK) {
        load_slabs(m0, n0, k0, local);
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let a = a_slab[k * (BM / 4u) + ty];
            let b = b_slab[k * (BN / 4u) + tx];
            for (var i = 0u; i < TM; i++) { acc[i] = fma(vec4(a[i]), b, acc[i]); }
        }
        workgroupBarrier();
    }
    return acc;
}

// The slabs of depth k0 .. k0 + BK, one scalar of A and one of B per invocation and round.
fn load_slabs_scalar(m0: u32, n0: u32, k0: u32, local: u32) {
    load_a_scalar(m0, k0, local);
    load_b_scalar(n0, k0, local);
}
fn load_a_scalar(m0: u32, k0: u32, local: u32) {
    for (var e = local; e < BK * BM; e += WG) {
        var m = e / BK;
        var k = e % BK;
        if (!A_ALONG_K) { m = e % BM; k = e / BM; }
        put_a(k, m, load_a(m0 + m, k0 + k));
    }
}
fn load_b_scalar(n0: u32, k0: u32, local: u32) {
    for (var e = local; e < BK * BN; e += WG) {
        var n = e / BK;
        var k = e % BK;
        if (!B_ALONG_K) { n = e % BN; k = e / BN; }
        put_b(k, n, load_b(n0 + n, k0 + k));
    }
}

// A slab's place for four values across m (n) of one k, in the first BK·BM/4 invocations:
// (k, first m); they then fill a whole vec4 of the slab, `a_slab[k·BM/4 + m/4]`, from one load
// of four consecutive values, neighbouring invocations on neighbouring 16 bytes.
const_assert BK * BM / 4u <= WG;
fn across4(local: u32) -> vec2<u32> { return vec2(local / (BM / 4u), (local % (BM / 4u)) * 4u); }
