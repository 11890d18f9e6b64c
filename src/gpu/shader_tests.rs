//! Every shader variant parses and validates with naga and translates to SPIR-V, MSL, HLSL and
//! GLSL, so a shader that would break on Metal or DX12 fails here, on any machine; and holds no
//! more workgroup memory than every WebGPU device offers.

use super::pipelines::{all_variants, Variant};
use naga::back;
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// A variant's assembled source, parsed by naga.
fn parse(variant: &Variant) -> (String, naga::Module) {
    let source = variant.source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{variant:?}: {}", e.emit_to_string(&source)));
    (source, module)
}

#[test]
fn every_variant_validates_and_translates() {
    for variant in all_variants() {
        let (source, module) = parse(&variant);
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{variant:?}: {}", e.emit_to_string(&source)));

        back::spv::write_vec(&module, &info, &back::spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{variant:?} SPIR-V: {e}"));

        let mut msl = String::new();
        let pipeline = back::msl::PipelineOptions::default();
        back::msl::Writer::new(&mut msl)
            .write(&module, &info, &back::msl::Options::default(), &pipeline)
            .unwrap_or_else(|e| panic!("{variant:?} MSL: {e}"));

        let mut hlsl = String::new();
        let hlsl_options = back::hlsl::Options {
            shader_model: back::hlsl::ShaderModel::V6_0,
            ..Default::default()
        };
        back::hlsl::Writer::new(
            &mut hlsl,
            &hlsl_options,
            &back::hlsl::PipelineOptions::default(),
        )
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{variant:?} HLSL: {e}"));

        let mut glsl = String::new();
        let glsl_options = back::glsl::Options {
            version: back::glsl::Version::Desktop(450),
            ..Default::default()
        };
        let entry = back::glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
            multiview: None,
        };
        back::glsl::Writer::new(
            &mut glsl,
            &module,
            &info,
            &glsl_options,
            &entry,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .unwrap_or_else(|e| panic!("{variant:?} GLSL: {e}"));
    }
}

/// wgpu's default `max_compute_workgroup_storage_size`, the WebGPU minimum: a device opened
/// with default limits (a trainer's, `Gpu::with_device`) may offer no more.
const WORKGROUP_BYTES: u32 = 16384;

#[test]
fn every_variant_fits_the_minimum_workgroup_memory() {
    for variant in all_variants() {
        let (_, module) = parse(&variant);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("a layout");
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
            .map(|(_, g)| layouter[g.ty].size)
            .sum();
        assert!(
            bytes <= WORKGROUP_BYTES,
            "{variant:?}: {bytes} bytes of workgroup memory"
        );
    }
}
