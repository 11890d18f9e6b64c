//! Reading tensors from `.npy` and `.safetensors` files, and writing `.npy` results.
//!
//! A file is memory-mapped (memmap2) and its header parsed by the format's own crate (npyz,
//! safetensors). The header's claims are checked against the file size *before* anything is
//! allocated, so a truncated file or a header that promises more data than the file holds is
//! an error, never an allocation of what the header claims. Little-endian `f32`, `f16`, `bf16`,
//! `i32` and `i64` data is then used in place, straight from the mapping; `f64` is converted to
//! `f32` (one owned copy), big-endian data is converted by npyz, and a Fortran-order `.npy`
//! (`np.asfortranarray(x)`, or `np.save` of a transposed C-order array) is copied into C order.
//!
//! A file argument is `path.npy`, or `path.safetensors:tensor_name` (the name may be left out
//! when the file holds exactly one tensor).

mod npy;
mod safetensors_file;

use super::CliError;
use bytemuck::Pod;
use half::{bf16, f16};
use memmap2::Mmap;
use npy::read_npy;
use safetensors_file::read_safetensors;
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

/// Element values of a tensor: mapped from the file in place, or converted into an owned buffer.
#[derive(Debug)]
pub enum Buf<T> {
    /// `len` elements at byte `offset` of a mapping (offset aligned for `T`).
    Mapped {
        /// The file's mapping, shared by every tensor read from it.
        map: Arc<Mmap>,
        /// Byte offset of the first element.
        offset: usize,
        /// Number of elements.
        len: usize,
        /// The element type.
        kind: PhantomData<T>,
    },
    /// Converted values.
    Owned(Vec<T>),
}

impl<T: Pod> Buf<T> {
    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        match self {
            Buf::Mapped {
                map, offset, len, ..
            } => {
                let bytes = &map[*offset..*offset + *len * std::mem::size_of::<T>()];
                bytemuck::cast_slice(bytes)
            }
            Buf::Owned(v) => v,
        }
    }
}

/// The values of a tensor, by element type as stored (f64 is already converted to f32).
#[derive(Debug)]
pub enum Data {
    /// 32-bit floats (or 64-bit floats converted).
    F32(Buf<f32>),
    /// IEEE half floats.
    F16(Buf<f16>),
    /// bfloat16 (safetensors only: NumPy has no such dtype).
    Bf16(Buf<bf16>),
    /// 32-bit integers.
    I32(Buf<i32>),
    /// 64-bit integers.
    I64(Buf<i64>),
}

impl Data {
    /// The values of a Fortran-order (column-major) array of `shape`, copied into C order.
    fn into_c_order(self, shape: &[usize]) -> Data {
        fn copy<T: Pod>(b: Buf<T>, shape: &[usize]) -> Buf<T> {
            Buf::Owned(c_order(b.as_slice(), shape))
        }
        match self {
            Data::F32(b) => Data::F32(copy(b, shape)),
            Data::F16(b) => Data::F16(copy(b, shape)),
            Data::Bf16(b) => Data::Bf16(copy(b, shape)),
            Data::I32(b) => Data::I32(copy(b, shape)),
            Data::I64(b) => Data::I64(copy(b, shape)),
        }
    }
}

/// `values` of a column-major array of `shape` (first index fastest), in row-major order.
fn c_order<T: Copy>(values: &[T], shape: &[usize]) -> Vec<T> {
    // Column-major strides, and an odometer over the row-major index (last index fastest).
    let mut strides = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        strides[d] = strides[d - 1] * shape[d - 1];
    }
    let mut index = vec![0usize; shape.len()];
    let mut at = 0usize;
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        out.push(values[at]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += strides[d];
            if index[d] < shape[d] {
                break;
            }
            at -= strides[d] * shape[d];
            index[d] = 0;
        }
    }
    out
}

/// A tensor read from a file argument.
#[derive(Debug)]
pub struct Tensor {
    /// The file argument as the user wrote it (used in every message about this tensor).
    pub source: String,
    /// Dimensions, outermost first (row-major).
    pub shape: Vec<usize>,
    /// The dtype as the file spells it, NumPy-style (`float64`, `int32`, ...).
    pub file_dtype: String,
    /// The values.
    pub data: Data,
}

impl Tensor {
    /// Number of elements (the product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An error about this tensor: `"<source>: <problem>"`, exit code 2.
    pub fn error(&self, problem: impl std::fmt::Display) -> CliError {
        CliError::file(&self.source, problem)
    }

    /// The values as f32: borrowed when they are f32 already, converted from f16/bf16 (for
    /// targets and weights). Integers are an error naming `role` (e.g. "soft targets").
    pub fn to_f32(&self, role: &str) -> Result<Cow<'_, [f32]>, CliError> {
        match &self.data {
            Data::F32(b) => Ok(Cow::Borrowed(b.as_slice())),
            Data::F16(b) => Ok(Cow::Owned(
                b.as_slice().iter().map(|v| v.to_f32()).collect(),
            )),
            Data::Bf16(b) => Ok(Cow::Owned(
                b.as_slice().iter().map(|v| v.to_f32()).collect(),
            )),
            Data::I32(_) | Data::I64(_) => Err(self.error(format_args!(
                "dtype {} is not allowed for {role}: expected float32, float16, bfloat16 or float64",
                self.file_dtype
            ))),
        }
    }

    /// `(3, 4)`-style shape string.
    pub fn shape_string(&self) -> String {
        shape_string(&self.shape)
    }
}

/// `(3, 4)`, `(5,)`, `()`.
pub fn shape_string(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// Reads the tensor a file argument names (`file.npy` or `file.safetensors[:tensor]`).
pub fn read_tensor(arg: &str) -> Result<Tensor, CliError> {
    let (path, tensor) = split_safetensors(arg);
    let err = |problem: String| CliError::file(arg, problem);
    let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?;
    if meta.is_dir() {
        return Err(err(
            "is a directory; name a .npy or .safetensors file".into()
        ));
    }
    let size = meta.len();
    if size == 0 {
        return Err(err("the file is empty".into()));
    }
    // SAFETY: the mapping is read-only; as with any mmap, a file truncated or rewritten by
    // another process while this one runs is undefined behaviour, which the CLI documents.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
    let map = Arc::new(map);
    if path.ends_with(".safetensors") {
        read_safetensors(arg, map, tensor)
    } else {
        read_npy(arg, map)
    }
}

/// `("a.safetensors", Some("x"))` for `a.safetensors:x`; `(arg, None)` otherwise.
fn split_safetensors(arg: &str) -> (&str, Option<&str>) {
    if let Some((path, name)) = arg.rsplit_once(':') {
        if path.ends_with(".safetensors") {
            return (path, Some(name));
        }
    }
    (arg, None)
}

/// Element kinds the CLI reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    F64,
    F32,
    F16,
    Bf16,
    I32,
    I64,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::F64 | Kind::I64 => 8,
            Kind::F32 | Kind::I32 => 4,
            Kind::F16 | Kind::Bf16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::F64 => "float64",
            Kind::F32 => "float32",
            Kind::F16 => "float16",
            Kind::Bf16 => "bfloat16",
            Kind::I32 => "int32",
            Kind::I64 => "int64",
        }
    }
}

/// What each input reads, for messages about a dtype that none does.
const READABLE: &str = "float32, float16, float64 or bfloat16 for logits, weights and soft \
                        targets; int32 or int64 for class-index targets";

/// Checks `shape` × `item` bytes against what the file holds after the header.
fn check_size(shape: &[usize], item: usize, held: usize, what: &str) -> Result<usize, String> {
    let bytes = shape
        .iter()
        .try_fold(item, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            format!(
                "{what} claims shape {} of {item}-byte elements, which overflows the address space",
                shape_string(shape)
            )
        })?;
    if bytes > held {
        return Err(format!(
            "{what} claims shape {} ({bytes} bytes of data) but the file holds only {held} \
             (truncated file?)",
            shape_string(shape)
        ));
    }
    Ok(bytes)
}

/// Little-endian data used where it lies in the mapping (f64 converted to f32).
fn in_place(kind: Kind, map: Arc<Mmap>, offset: usize, len: usize) -> Data {
    fn buf<T: Pod>(map: Arc<Mmap>, offset: usize, len: usize) -> Buf<T> {
        if len == 0 {
            return Buf::Owned(Vec::new());
        }
        let bytes = &map[offset..offset + len * std::mem::size_of::<T>()];
        if bytemuck::try_cast_slice::<u8, T>(bytes).is_ok() {
            Buf::Mapped {
                map,
                offset,
                len,
                kind: PhantomData,
            }
        } else {
            // Unaligned (possible in .safetensors, whose header length is arbitrary): one copy.
            Buf::Owned(bytemuck::pod_collect_to_vec(bytes))
        }
    }
    match kind {
        Kind::F64 => {
            let bytes = &map[offset..offset + len * 8];
            Data::F32(Buf::Owned(
                bytes
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ))
        }
        Kind::F32 => Data::F32(buf(map, offset, len)),
        Kind::F16 => Data::F16(buf(map, offset, len)),
        Kind::Bf16 => Data::Bf16(buf(map, offset, len)),
        Kind::I32 => Data::I32(buf(map, offset, len)),
        Kind::I64 => Data::I64(buf(map, offset, len)),
    }
}

/// Writes `values` (row-major, `shape`) as a little-endian f32 `.npy` file.
pub fn write_npy_f32(path: &str, shape: &[usize], values: &[f32]) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::output(path, format!("cannot write: {e}"));
    let file = File::create(Path::new(path)).map_err(err)?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(err)?;
    writer.extend(values.iter().copied()).map_err(err)?;
    writer.finish().map_err(err)
}

/// Writes `text` to `path`.
pub fn write_text(path: &str, text: &str) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::output(path, format!("cannot write: {e}"));
    let mut file = BufWriter::new(File::create(path).map_err(err)?);
    file.write_all(text.as_bytes()).map_err(err)?;
    file.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_becomes_c_order() {
        // x[i][j][k] = 100·i + 10·j + k of shape (2, 3, 2), laid out column-major.
        let shape = [2, 3, 2];
        let mut fortran = Vec::new();
        for k in 0..2 {
            for j in 0..3 {
                for i in 0..2 {
                    fortran.push(100 * i + 10 * j + k);
                }
            }
        }
        let expected: Vec<usize> = (0..2)
            .flat_map(|i| (0..3).flat_map(move |j| (0..2).map(move |k| 100 * i + 10 * j + k)))
            .collect();
        assert_eq!(c_order(&fortran, &shape), expected);
        assert_eq!(c_order(&[1, 2, 3], &[3]), vec![1, 2, 3]);
        assert_eq!(c_order::<u8>(&[], &[0, 4]), Vec::<u8>::new());
    }

    #[test]
    fn shape_strings_follow_python() {
        assert_eq!(shape_string(&[]), "()");
        assert_eq!(shape_string(&[5]), "(5,)");
        assert_eq!(shape_string(&[2, 3]), "(2, 3)");
    }

    #[test]
    fn safetensors_arguments_split_at_the_last_colon() {
        assert_eq!(
            split_safetensors("a.safetensors:x"),
            ("a.safetensors", Some("x"))
        );
        assert_eq!(split_safetensors("a.safetensors"), ("a.safetensors", None));
        assert_eq!(split_safetensors("c:/a.npy"), ("c:/a.npy", None));
    }

    #[test]
    fn sizes_are_checked_before_use() {
        assert!(check_size(&[2, 3], 4, 24, "h").is_ok());
        assert!(check_size(&[2, 3], 4, 23, "h")
            .unwrap_err()
            .contains("24 bytes"));
        assert!(check_size(&[usize::MAX, 2], 4, 10, "h")
            .unwrap_err()
            .contains("overflows"));
    }
}
