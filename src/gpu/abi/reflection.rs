//! Reflects every shader variant with naga and checks it against `abi.rs`: each shared
//! struct's size and member names and offsets, and each variant's bindings (number, uniform
//! or storage, read or read-write) against the table its pipeline is built from, with at
//! most 8 storage buffers (the least an adapter may offer).

use super::{Params, Partial, RowCoef};
use crate::gpu::pipelines::{all_variants, Slot};
use crate::gpu::GpuRow;
use naga::proc::Layouter;
use naga::{AddressSpace, StorageAccess, TypeInner};
use std::mem::{offset_of, size_of};

/// `(member, offset)` of a `#[repr(C)]` struct whose fields are all 4 bytes, checked to cover
/// the whole struct (so a field added on the Rust side and not listed here fails).
macro_rules! members {
    ($ty:ty { $($field:ident),* $(,)? }) => {{
        let members = vec![$((stringify!($field), offset_of!($ty, $field))),*];
        assert_eq!(members.len() * 4, size_of::<$ty>(), "{}: list every field", stringify!($ty));
        (size_of::<$ty>(), members)
    }};
}

/// A struct's size and its `(member, offset)` list.
type Layout = (usize, Vec<(&'static str, usize)>);

fn rust_structs() -> Vec<(&'static str, Layout)> {
    vec![
        (
            "Params",
            members!(Params {
                rows,
                classes,
                spatial,
                row0,
                elem_offset,
                f32_offset,
                splits,
                span,
                invocations_per_row,
                flags,
                elems,
                reduction,
                scale,
                cap,
                prob_eps,
                smoothing,
                z_loss,
                uniform,
                ignore_lo,
                ignore_hi,
                upstream,
                denominator,
                focal_gamma,
                focal_alpha,
                first_row,
                col0,
                split0,
                hidden,
                block_columns,
                order_base,
            }),
        ),
        (
            "Partial",
            members!(Partial {
                m,
                s,
                arg,
                nan_arg,
                wz,
                wt,
                wtz,
                ez,
                te,
                tmax,
                targ,
                w_all
            }),
        ),
        (
            "RowCoef",
            members!(RowCoef {
                max,
                p_coefficient,
                target_coefficient,
                y,
                fill,
                log_sum,
                scale,
                sample
            }),
        ),
        (
            "RowOut",
            members!(GpuRow {
                loss,
                lse,
                argmax,
                flags,
                target_prob,
                entropy,
                confidence,
                _pad
            }),
        ),
    ]
}

#[test]
fn every_variant_matches_the_rust_abi() {
    let structs = rust_structs();
    let mut seen = std::collections::HashSet::new();
    for variant in all_variants() {
        let source = variant.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{variant:?}: {}", e.emit_to_string(&source)));
        let mut layouter = Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        for (handle, ty) in module.types.iter() {
            let (Some(name), TypeInner::Struct { members, span }) = (&ty.name, &ty.inner) else {
                continue;
            };
            let Some((_, (size, rust))) = structs.iter().find(|(n, _)| n == name) else {
                continue;
            };
            seen.insert(name.clone());
            let wgsl: Vec<(&str, usize)> = members
                .iter()
                .map(|m| (m.name.as_deref().unwrap_or("?"), m.offset as usize))
                .collect();
            assert_eq!(
                &wgsl, rust,
                "{variant:?}: struct {name}: (member, offset), WGSL vs Rust"
            );
            assert_eq!(*span as usize, *size, "{variant:?}: struct {name}: size");
            assert_eq!(
                layouter[handle].size as usize, *size,
                "{variant:?}: {name}: layout"
            );
        }
        // (binding, kind, the smallest window the shader accepts: one element of a
        // runtime-sized array, else the whole type).
        let mut bindings: Vec<(u32, Slot, u64)> = module
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let binding = g.binding.as_ref()?;
                assert_eq!(binding.group, 0, "{variant:?}: {:?}: group", g.name);
                let slot = match g.space {
                    AddressSpace::Uniform => Slot::Uniform,
                    AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                        Slot::Write
                    }
                    AddressSpace::Storage { .. } => Slot::Read,
                    other => panic!("{variant:?}: {:?}: address space {other:?}", g.name),
                };
                Some((binding.binding, slot, smallest(&module, &layouter, g.ty)))
            })
            .collect();
        bindings.sort_by_key(|b| b.0);
        let mut expected = variant.bindings();
        expected.sort_by_key(|b| b.0);
        let kinds = |b: &[(u32, Slot, u64)]| b.iter().map(|&(n, s, _)| (n, s)).collect::<Vec<_>>();
        assert_eq!(
            kinds(&bindings),
            kinds(&expected),
            "{variant:?}: bindings, WGSL vs the Rust table"
        );
        for (wgsl, rust) in bindings.iter().zip(&expected) {
            assert_eq!(
                wgsl.2, rust.2,
                "{variant:?}: binding {}: smallest window, WGSL vs the Rust table",
                wgsl.0
            );
        }
        let storage = bindings.iter().filter(|b| b.1 != Slot::Uniform).count();
        assert!(storage <= 8, "{variant:?}: {storage} storage buffers");
    }
    for (name, _) in &structs {
        assert!(seen.contains(*name), "no shader declares struct {name}");
    }
}

#[test]
fn flags_are_distinct_bits() {
    let mut all = 0u32;
    for (name, bit) in super::FLAGS {
        assert!(bit.is_power_of_two() && all & bit == 0, "{name} = {bit}");
        all |= bit;
    }
}

/// The smallest buffer a global of type `ty` may be bound to: a runtime-sized array's element
/// stride, or the type's size.
fn smallest(module: &naga::Module, layouter: &Layouter, ty: naga::Handle<naga::Type>) -> u64 {
    match module.types[ty].inner {
        TypeInner::Array {
            size: naga::ArraySize::Dynamic,
            stride,
            ..
        } => stride as u64,
        _ => layouter[ty].size as u64,
    }
}
