// Subgroup segment reduction: butterflies with subgroupShuffleXor inside each subgroup (for
// strides below min(invocations_per_row, subgroup size)), then a tree in workgroup memory across subgroups.
// Assumes subgroups cover consecutive local invocation indices, as 1D workgroups do on
// Vulkan, Metal, D3D12 and GL drivers; any subgroup size from 4 to 128 works.
fn shuffle_partial(a: Partial, mask: u32) -> Partial {
    return Partial(
        subgroupShuffleXor(a.m, mask), subgroupShuffleXor(a.s, mask),
        subgroupShuffleXor(a.arg, mask), subgroupShuffleXor(a.nan_arg, mask),
        subgroupShuffleXor(a.wz, mask), subgroupShuffleXor(a.wt, mask),
        subgroupShuffleXor(a.wtz, mask), subgroupShuffleXor(a.ez, mask),
        subgroupShuffleXor(a.te, mask), subgroupShuffleXor(a.tmax, mask),
        subgroupShuffleXor(a.targ, mask), subgroupShuffleXor(a.w_all, mask));
}

fn reduce_segment(st_in: Partial, local: u32, lane: u32, subgroup_size: u32) -> Partial {
    var st = st_in;
    let within = min(p.invocations_per_row, subgroup_size);
    for (var mask = within / 2u; mask > 0u; mask /= 2u) {
        // The lower lane of each pair keeps (lower, upper) order so the bits are fixed.
        let other = shuffle_partial(st, mask);
        if ((lane & mask) == 0u) { st = merge(st, other); } else { st = merge(other, st); }
    }
    shared_partials[local] = st;
    for (var stride = p.invocations_per_row / 2u; stride >= within && stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lane < stride) {
            st = merge(st, shared_partials[local + stride]);
            shared_partials[local] = st;
        }
    }
    return st;
}
