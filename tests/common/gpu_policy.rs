//! What a test does when wgpu finds no adapter: fail, naming the way out, unless the user
//! opted out with `XENT_SKIP_GPU=1` (then a loud line says the GPU part was not run).
//! `XENT_REQUIRE_GPU=1` (set by `.ci/run`) overrides the opt-out.

/// Panics (or, under `XENT_SKIP_GPU=1`, prints) that the GPU part of `what` can't run.
pub fn missing_gpu(what: &str, error: &dyn std::fmt::Display) {
    let set = |name: &str| std::env::var(name).as_deref() == Ok("1");
    if set("XENT_SKIP_GPU") && !set("XENT_REQUIRE_GPU") {
        eprintln!(
            "\n!!!!!!!! NO GPU ADAPTER ({error}): {what} WERE NOT RUN (XENT_SKIP_GPU=1) !!!!!!!!\n"
        );
    } else {
        panic!(
            "no GPU adapter ({error}): {what} need one. Install one (no GPU? `apt-get install \
             mesa-vulkan-drivers` gives a software Vulkan adapter) or set XENT_SKIP_GPU=1 to run \
             the tests without their GPU part"
        );
    }
}
