//! The checks of a device-resident call: buffer sizes against the shape, and the options
//! (the values inside device buffers are checked by the kernels: targets raise a flag).

use super::Loss;
use crate::error::{Error, Result};
use crate::gpu::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, GpuRow};
use crate::input::Layout;
use crate::options::Reduction;

/// Checks a device batch's buffers against its shape.
pub(crate) fn check(batch: &DeviceBatch, out: &DeviceOutputs, job: &Loss) -> Result<()> {
    let (rows, classes) = (batch.rows, batch.classes);
    if classes == 0 {
        return Err(Error::NoClasses);
    }
    let elements = rows.checked_mul(classes).ok_or_else(|| Error::Overflow {
        shape: format!("rows {rows} × classes {classes}"),
    })? as u64;
    let shape = || format!("rows {rows} × classes {classes}");
    let need = |what: &'static str, buffer: &wgpu::Buffer, bytes: u64| -> Result<()> {
        if buffer.size() < bytes {
            Err(Error::Shape {
                what,
                expected: bytes as usize,
                actual: buffer.size() as usize,
                shape: shape(),
            })
        } else {
            Ok(())
        }
    };
    need(
        "logits buffer (bytes, padded to 4)",
        batch.logits,
        (elements * batch.dtype.size() as u64).next_multiple_of(4),
    )?;
    match batch.targets {
        DeviceTargets::I32(t) => need("targets buffer (bytes)", t, rows as u64 * 4)?,
        DeviceTargets::I64(t) => need("targets buffer (bytes)", t, rows as u64 * 8)?,
        DeviceTargets::Dense(t) => need("targets buffer (bytes)", t, elements * 4)?,
    }
    if let Some(w) = batch.class_weights {
        need("class_weights buffer (bytes)", w, classes as u64 * 4)?;
    }
    if let Some(w) = batch.pos_weight {
        need("pos_weight buffer (bytes)", w, classes as u64 * 4)?;
    }
    if let Some(w) = batch.sample_weights {
        need("sample_weights buffer (bytes)", w, rows as u64 * 4)?;
    }
    if let DeviceGradient::Into(g) = out.gradient {
        need("gradient buffer (bytes)", g, elements * 4)?;
    }
    need("loss buffer (bytes)", out.loss, 4)?;
    if let Some(flag) = out.target_error {
        need("target error buffer (bytes)", flag, 4)?;
    }
    let (per_row, row_what) = match job {
        Loss::Softmax(_) => (
            rows as u64 * std::mem::size_of::<GpuRow>() as u64,
            "rows buffer (bytes)",
        ),
        Loss::Binary(_) => (elements * 4, "element losses buffer (bytes)"),
    };
    if let Some(r) = out.rows {
        need(row_what, r, per_row)?;
    }
    if let Some(u) = out.upstream {
        let n = if matches!(job, Loss::Binary(_)) {
            elements
        } else {
            rows as u64
        };
        need("upstream buffer (bytes)", u, n * 4)?;
    }
    let reduction = match job {
        Loss::Softmax(o) => {
            o.validate()?;
            o.reduction
        }
        Loss::Binary(o) => {
            o.validate()?;
            o.reduction
        }
    };
    if matches!(job, Loss::Binary(_)) != matches!(batch.targets, DeviceTargets::Dense(_))
        && matches!(job, Loss::Binary(_))
    {
        return Err(Error::Unsupported(
            "binary cross-entropy needs dense f32 targets".into(),
        ));
    }
    if out.upstream.is_some() && reduction != Reduction::None {
        return Err(Error::Unsupported(
            "a per-row upstream buffer goes with Reduction::None; use upstream_scalar".into(),
        ));
    }
    if let Layout::ClassDim1 { spatial } = batch.layout {
        if spatial == 0 || rows % spatial != 0 {
            return Err(Error::Shape {
                what: "rows (a multiple of spatial)",
                expected: spatial,
                actual: rows,
                shape: shape(),
            });
        }
    }
    Ok(())
}
