//! The checks of a device-resident call: buffer sizes against the shape, and the options
//! (the values inside device buffers are checked by the kernels: targets raise a flag).

use super::Loss;
use crate::error::{Error, Result};
use crate::gpu::{
    DeviceBatch, DeviceGradient, DeviceOutputs, DeviceSaved, DeviceTargets, DeviceUpstream, GpuRow,
    SAVED_ROW_BYTES,
};
use crate::input::Layout;
use crate::options::Reduction;

/// Checks a device batch's buffers against its shape: each slice's size and offset
/// (`alignment`: the device's storage-buffer offset alignment), and outputs over bytes of
/// their own. Returns whether an output shares a buffer with an input ([`separate`]).
pub(crate) fn check(
    batch: &DeviceBatch<'_>,
    out: &DeviceOutputs,
    job: &Loss,
    alignment: u64,
) -> Result<bool> {
    let (rows, classes) = (batch.rows, batch.classes);
    if classes == 0 {
        return Err(Error::NoClasses);
    }
    let elements = rows.checked_mul(classes).ok_or_else(|| Error::Overflow {
        shape: format!("rows {rows} × classes {classes}"),
    })? as u64;
    let shape = || format!("rows {rows} × classes {classes}");
    let (targets, target_bytes) = match batch.targets {
        DeviceTargets::I32(t) => (t, rows as u64 * 4),
        DeviceTargets::I64(t) => (t, rows as u64 * 8),
        DeviceTargets::Dense(t) => (t, elements * 4),
    };
    let (per_row, row_what) = match job {
        Loss::Softmax(_) => (
            rows as u64 * std::mem::size_of::<GpuRow>() as u64,
            "rows buffer (bytes)",
        ),
        Loss::Binary(_) => (elements * 4, "element losses buffer (bytes)"),
    };
    let upstream = match job {
        Loss::Binary(_) => elements * 4,
        Loss::Softmax(_) => rows as u64 * 4,
    };
    // An in-place gradient writes over the logits.
    let in_place = matches!(out.gradient, DeviceGradient::InPlace);
    let logits = (
        "logits buffer (bytes, padded to 4)",
        Some(batch.logits),
        (elements * batch.dtype.size() as u64).next_multiple_of(4),
    );
    let reads = [
        if in_place {
            (logits.0, None, 0)
        } else {
            logits
        },
        ("targets buffer (bytes)", Some(targets), target_bytes),
        (
            "class_weights buffer (bytes)",
            batch.class_weights,
            classes as u64 * 4,
        ),
        (
            "pos_weight buffer (bytes)",
            batch.pos_weight,
            classes as u64 * 4,
        ),
        (
            "sample_weights buffer (bytes)",
            batch.sample_weights,
            rows as u64 * 4,
        ),
        ("upstream buffer (bytes)", out.upstream, upstream),
    ];
    let (gradient, gradient_bytes) = match out.gradient {
        DeviceGradient::Into(g) => (Some(g), elements * 4),
        DeviceGradient::IntoLogitsDtype(g) => (Some(g), logits.2),
        _ => (None, 0),
    };
    let writes = [
        if in_place { logits } else { ("", None, 0) },
        ("gradient buffer (bytes)", gradient, gradient_bytes),
        ("loss buffer (bytes)", Some(out.loss), 4),
        ("target error buffer (bytes)", out.target_error, 4),
        (row_what, out.rows, per_row),
        (
            "saved rows buffer (bytes)",
            out.saved.map(|s| s.rows),
            rows as u64 * SAVED_ROW_BYTES,
        ),
        (
            "saved totals buffer (bytes)",
            out.saved.map(|s| s.totals),
            16,
        ),
    ];
    for &(what, slice, bytes) in reads.iter().chain(&writes) {
        if let Some(slice) = slice {
            slice_fits(what, slice, bytes, alignment, shape)?;
        }
    }
    let shared = separate(&reads, &writes)?;
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
    if out.saved.is_some() && matches!(job, Loss::Binary(_)) {
        return Err(Error::Unsupported(
            "saved per-row state is for softmax cross-entropy; BCE's gradient is one pass".into(),
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
    Ok(shared)
}

/// A named slice of a call and the bytes it must hold.
pub(crate) type Named<'a> = (&'static str, Option<wgpu::BufferSlice<'a>>, u64);

/// A slice holds `bytes` and starts at an offset the device can bind.
pub(crate) fn slice_fits(
    what: &'static str,
    slice: wgpu::BufferSlice<'_>,
    bytes: u64,
    alignment: u64,
    shape: impl Fn() -> String,
) -> Result<()> {
    if !slice.offset().is_multiple_of(alignment) {
        return Err(Error::Misaligned {
            what,
            offset: slice.offset(),
            alignment,
        });
    }
    if slice.size() < bytes {
        return Err(Error::Shape {
            what,
            expected: bytes as usize,
            actual: slice.size() as usize,
            shape: shape(),
        });
    }
    Ok(())
}

/// Whether an output shares a `wgpu::Buffer` with another slice (the call then takes its
/// kernels' writable variants: wgpu refuses one buffer bound read-only and writable in a
/// dispatch, and an in-place gradient's logits are read-only to the passes that only read
/// them), after checking that no output's bytes overlap another slice's (they would
/// race, or read what the call writes). `size` of each is the bytes the call touches.
pub(crate) fn separate(reads: &[Named<'_>], writes: &[Named<'_>]) -> Result<bool> {
    let mut shared = false;
    for (i, &(what, slice, size)) in writes.iter().enumerate() {
        let Some(slice) = slice else { continue };
        let same = |other: &wgpu::BufferSlice<'_>| other.buffer() == slice.buffer();
        let overlaps = |&&(_, s, bytes): &&Named<'_>| {
            s.is_some_and(|s| {
                same(&s)
                    && s.offset() < slice.offset() + size
                    && slice.offset() < s.offset() + bytes
            })
        };
        if let Some((other, _, _)) = writes[..i].iter().chain(reads).find(overlaps) {
            return Err(Error::Unsupported(format!(
                "the {what} overlaps the {other}: each output needs bytes of its own"
            )));
        }
        // Any other slice in the buffer: an input, or an output beside an in-place gradient's
        // logits (bound read-only by the passes that only read them).
        let others = reads.iter().chain(&writes[..i]).chain(&writes[i + 1..]);
        shared |= others
            .filter(|(_, s, _)| s.is_some())
            .any(|(_, s, _)| s.as_ref().is_some_and(same));
    }
    Ok(shared)
}

/// The parts of a recorded backward its forward's check does not see: a gradient is asked
/// for, a device upstream is
/// one f32 of a `Sum`/`Mean` call, per-row (softmax) or per-element (BCE) values go with
/// `None`, and the device upstream (and for a softmax mean the saved totals, `saved`) are
/// copies' sources: 4-byte aligned, `COPY_SRC`.
pub(crate) fn check_backward(
    batch: &DeviceBatch<'_>,
    saved: Option<&DeviceSaved<'_>>,
    gradient: &DeviceGradient<'_>,
    upstream: &DeviceUpstream<'_>,
    reduction: Reduction,
) -> Result<()> {
    if matches!(gradient, DeviceGradient::None) {
        return Err(Error::Unsupported(
            "a backward needs a gradient destination (Into, IntoLogitsDtype or InPlace)".into(),
        ));
    }
    let shape = || format!("rows {} × classes {}", batch.rows, batch.classes);
    let per_row = matches!(upstream, DeviceUpstream::Rows(_));
    if (reduction == Reduction::None) != per_row {
        return Err(Error::Unsupported(format!(
            "a backward's upstream is per row or element (DeviceUpstream::Rows) for \
             Reduction::None and a scalar for sum and mean; got {upstream:?} with {reduction:?}"
        )));
    }
    if let DeviceUpstream::Device(u) = upstream {
        slice_fits(
            "device upstream buffer (bytes)",
            *u,
            4,
            wgpu::COPY_BUFFER_ALIGNMENT,
            shape,
        )?;
        let mut sources = vec![("device upstream buffer", u.buffer())];
        if let (Reduction::Mean, Some(saved)) = (reduction, saved) {
            sources.push(("saved totals buffer", saved.totals.buffer()));
        }
        for (what, buffer) in sources {
            if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                return Err(Error::Unsupported(format!(
                    "the {what} is copied beside the other on the device: it needs COPY_SRC usage"
                )));
            }
        }
    }
    Ok(())
}
