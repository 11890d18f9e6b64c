// Portable segment reduction: a tree over each segment of invocations_per_row invocations in workgroup memory.
// Every invocation runs every barrier (the loop bound is uniform).
fn reduce_segment(st_in: Partial, local: u32, lane: u32) -> Partial {
    var st = st_in;
    shared_partials[local] = st;
    for (var stride = p.invocations_per_row / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lane < stride) {
            st = merge(st, shared_partials[local + stride]);
            shared_partials[local] = st;
        }
    }
    return st;
}
