//! Reading one tensor of a `.safetensors` file, in place.

use super::*;

pub(super) fn read_safetensors(
    arg: &str,
    map: Arc<Mmap>,
    name: Option<&str>,
) -> Result<Tensor, CliError> {
    let err = |problem: String| CliError::file(arg, problem);
    if !cfg!(target_endian = "little") {
        return Err(err(
            "safetensors data is little-endian; this host is not".into()
        ));
    }
    // The safetensors crate checks the header length and every tensor's byte range against
    // the buffer before handing out views.
    let st = ::safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| err(format!("bad .safetensors file: {e}")))?;
    let mut names = st.names();
    names.sort();
    let name = match name {
        Some(n) => n,
        None if names.len() == 1 => names[0],
        None => {
            return Err(err(format!(
                "holds {} tensors; name one as FILE.safetensors:NAME (tensors: {})",
                names.len(),
                names.join(", ")
            )))
        }
    };
    let view = st.tensor(name).map_err(|_| {
        err(format!(
            "no tensor named {name:?} (tensors: {})",
            names.join(", ")
        ))
    })?;
    use ::safetensors::Dtype as D;
    let kind = match view.dtype() {
        D::F64 => Kind::F64,
        D::F32 => Kind::F32,
        D::F16 => Kind::F16,
        D::BF16 => Kind::Bf16,
        D::I32 => Kind::I32,
        D::I64 => Kind::I64,
        other => {
            return Err(err(format!(
                "tensor {name:?} has dtype {other:?}; expected {READABLE}"
            )))
        }
    };
    let shape = view.shape().to_vec();
    let data = view.data();
    check_size(&shape, kind.size(), data.len(), "the tensor's header").map_err(err)?;
    // The view is a slice of the mapping (the crate slices the buffer it was given).
    let offset = (data.as_ptr() as usize)
        .checked_sub(map.as_ptr() as usize)
        .filter(|o| o + data.len() <= map.len())
        .ok_or_else(|| err("tensor data lies outside the file".into()))?;
    let len = data.len() / kind.size();
    let file_dtype = kind.name().to_string();
    drop(st);
    Ok(Tensor {
        source: arg.to_string(),
        shape,
        file_dtype,
        data: in_place(kind, map, offset, len),
    })
}
