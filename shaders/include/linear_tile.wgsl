// The tile product of the linear head's kernels: one workgroup of 16 × 16 invocations computes
// a 64 × 64 block of A·Bᵀ (A [m][k], B [n][k], depth `depth`), 8-deep slabs of both through
// workgroup memory, 4 × 4 values per invocation in registers: acc[i][j] is (m0 + ty·4 + i,
// n0 + tx·4 + j) with tx = local % 16, ty = local / 16. The sum over k runs in slab order, the
// same on every device and launch.
//
// The kernel defines `load_a(m, k)` and `load_b(n, k)` (0 outside its operands), the
// constants A_ALONG_K / B_ALONG_K: whether consecutive k are consecutive words of the operand,
// so that neighbouring invocations load neighbouring words (along k, or else along m / n),
// and `load_slabs(m0, n0, k0, local)`: `load_slabs_scalar` here, or with LINEAR_VEC4 four
// values a load (16 bytes of f32, 8 of f16 / bf16) where an operand allows it: along k in
// `linear_logits.wgsl`, across k (`across4`) in the dW and dh kernels.

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
// loads from workgroup memory: 2 loads for 16 FMAs, where scalars took 8. Each invocation
// writes whole vec4s of a slab: writing one component of a vector may access the whole vector
// (WGSL; MSL and HLSL compilers do), so invocations filling one vec4's components would race.
const_assert TM == 4u && TN == 4u;
var<workgroup> a_slab: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_slab: array<vec4<f32>, BK * BN / 4u>;
// The loads are split in halves: the first WG / 2 invocations fill A's slab, the others B's,
// one vec4 of it each (`slot`: the invocation's place in its half).
const_assert WG / 2u == BK * BM / 4u && BM == BN;
fn slot(local: u32) -> u32 { return local % (WG / 2u); }
// A whole vec4 of a slab: the four m (n) from `at.y` of depth `at.x`.
fn put_a4(at: vec2<u32>, v: vec4<f32>) { a_slab[at.x * (BM / 4u) + at.y / 4u] = v; }
fn put_b4(at: vec2<u32>, v: vec4<f32>) { b_slab[at.x * (BN / 4u) + at.y / 4u] = v; }

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

// The slabs of depth k0 .. k0 + BK a value at a time: each invocation the four m (n) of one k.
fn load_slabs_scalar(m0: u32, n0: u32, k0: u32, local: u32) {
    if (local < WG / 2u) {
        fill_a_scalar(m0, k0, slot(local));
    } else {
        fill_b_scalar(n0, k0, slot(local));
    }
}
// The (k, first m) of slot u's vec4: along k neighbouring slots take neighbouring k (of the
// same four rows), else neighbouring fours of m.
fn scalar_place(u: u32, along_k: bool) -> vec2<u32> {
    if (along_k) { return vec2(u % BK, (u / BK) * 4u); }
    return across4(u);
}
fn fill_a_scalar(m0: u32, k0: u32, u: u32) {
    let at = scalar_place(u, A_ALONG_K);
    let m = m0 + at.y;
    let k = k0 + at.x;
    put_a4(at, vec4(load_a(m, k), load_a(m + 1u, k), load_a(m + 2u, k), load_a(m + 3u, k)));
}
fn fill_b_scalar(n0: u32, k0: u32, u: u32) {
    let at = scalar_place(u, B_ALONG_K);
    let n = n0 + at.y;
    let k = k0 + at.x;
    put_b4(at, vec4(load_b(n, k), load_b(n + 1u, k), load_b(n + 2u, k), load_b(n + 3u, k)));
}

// Slot u's (k, first m) for four values across m (n) of one k read in one load (an operand
// stored along m): `a_slab[k·BM/4 + m/4]` whole, neighbouring slots on neighbouring bytes.
fn across4(u: u32) -> vec2<u32> { return vec2(u / (BM / 4u), (u % (BM / 4u)) * 4u); }
