//! Reading `.npy` files (C or Fortran order), in place where the layout allows.

use super::*;

/// The magic string and the header length field, checked against the file size before npyz
/// reads (and allocates) the header text. Returns where the header ends.
pub(super) fn check_npy_preamble(bytes: &[u8]) -> Result<usize, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (no NumPy magic string at the start)".into());
    }
    let (len_field, header_len) = match bytes[6] {
        1 => (2, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            4,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        2 | 3 => return Err("truncated .npy header".into()),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = 8 + len_field + header_len;
    if end > bytes.len() {
        return Err(format!(
            "the .npy header claims {header_len} bytes of header text but the file holds only {} \
             (truncated file?)",
            bytes.len() - 8 - len_field
        ));
    }
    Ok(end)
}

pub(super) fn read_npy(arg: &str, map: Arc<Mmap>) -> Result<Tensor, CliError> {
    let err = |problem: String| CliError::file(arg, problem);
    let header_end = check_npy_preamble(&map).map_err(err)?;
    // npyz says "invalid type string" of an object array's `|O`: say what it is.
    let header_text = String::from_utf8_lossy(&map[..header_end]);
    if ["'|O'", "'O'", "\"|O\""]
        .iter()
        .any(|o| header_text.contains(o))
    {
        return Err(err(
            "holds an object array (dtype object, pickled Python objects); save a numeric \
             array, e.g. np.save(path, np.asarray(x, dtype=np.float32))"
                .into(),
        ));
    }
    let mut rest: &[u8] = &map;
    let header = npyz::NpyHeader::from_reader(&mut rest)
        .map_err(|e| err(format!("bad .npy header: {e}")))?;
    let offset = map.len() - rest.len();
    let npyz::DType::Plain(ty) = header.dtype() else {
        return Err(err(format!(
            "dtype {} is a structured or sub-array type; expected {READABLE}",
            header.dtype().descr()
        )));
    };
    use npyz::TypeChar;
    let kind = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Float, 8) => Kind::F64,
        (TypeChar::Float, 4) => Kind::F32,
        (TypeChar::Float, 2) => Kind::F16,
        (TypeChar::Int, 4) => Kind::I32,
        (TypeChar::Int, 8) => Kind::I64,
        _ => {
            return Err(err(format!(
                "dtype {} ({}) is not supported; expected {READABLE}",
                ty,
                numpy_name(&ty)
            )))
        }
    };
    let shape: Vec<usize> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| err("a dimension of the header does not fit in memory".into()))?;
    let bytes = check_size(&shape, kind.size(), rest.len(), "the .npy header").map_err(err)?;
    if bytes < rest.len() {
        return Err(err(format!(
            "the file holds {} bytes after the data that shape {} of {} describes",
            rest.len() - bytes,
            shape_string(&shape),
            kind.name()
        )));
    }
    let little = match ty.endianness() {
        npyz::Endianness::Little => true,
        npyz::Endianness::Big => false,
        npyz::Endianness::Irrelevant => true,
    } == cfg!(target_endian = "little");
    let len = bytes / kind.size();
    let fortran = shape.len() > 1 && header.order() == npyz::Order::Fortran;
    let data = if little {
        in_place(kind, map, offset, len)
    } else {
        // Byte-swapped data: npyz converts it (allocation bounded by the checked size above).
        let file = npyz::NpyFile::with_header(header, &map[offset..offset + bytes]);
        let io = |e: std::io::Error| err(format!("cannot read the data: {e}"));
        match kind {
            Kind::F64 => Data::F32(Buf::Owned(
                file.into_vec::<f64>()
                    .map_err(io)?
                    .into_iter()
                    .map(|v| v as f32)
                    .collect(),
            )),
            Kind::F32 => Data::F32(Buf::Owned(file.into_vec().map_err(io)?)),
            Kind::F16 => Data::F16(Buf::Owned(file.into_vec().map_err(io)?)),
            Kind::I32 => Data::I32(Buf::Owned(file.into_vec().map_err(io)?)),
            Kind::I64 => Data::I64(Buf::Owned(file.into_vec().map_err(io)?)),
            Kind::Bf16 => unreachable!("NumPy has no bfloat16 type string"),
        }
    };
    let data = if fortran {
        data.into_c_order(&shape)
    } else {
        data
    };
    Ok(Tensor {
        source: arg.to_string(),
        shape,
        file_dtype: kind.name().into(),
        data,
    })
}

fn numpy_name(ty: &npyz::TypeStr) -> String {
    use npyz::TypeChar;
    let bits = ty.size_field() * 8;
    match ty.type_char() {
        TypeChar::Bool => "bool".into(),
        TypeChar::Int => format!("int{bits}"),
        TypeChar::Uint => format!("uint{bits}"),
        TypeChar::Float => format!("float{bits}"),
        TypeChar::Complex => format!("complex{bits}"),
        _ => "not numeric".into(),
    }
}
