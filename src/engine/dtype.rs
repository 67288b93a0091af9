//! The float formats the engine averages, and how they map to safetensors dtypes.
//!
//! Tensors of any other dtype (integers, bool, the 8-bit and smaller float formats)
//! are not averaged: they must agree byte for byte across ingredients and are copied.

use std::fmt;
use std::str::FromStr;

use safetensors::Dtype;

/// A float format the kernel widens from and narrows to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloatDtype {
    /// IEEE binary64.
    F64,
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16: the upper half of a binary32.
    BF16,
}

impl FloatDtype {
    /// The averaged format for a safetensors dtype, or `None` for tensors that are
    /// copied instead (integers, bool, sub-16-bit floats).
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F64 => Some(Self::F64),
            Dtype::F32 => Some(Self::F32),
            Dtype::F16 => Some(Self::F16),
            Dtype::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    /// The safetensors dtype written to output headers.
    pub fn to_safetensors(self) -> Dtype {
        match self {
            Self::F64 => Dtype::F64,
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// The lower-case name used on the command line and in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F64 => "f64",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }
}

impl fmt::Display for FloatDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a dtype name that is not one of `f64`, `f32`, `f16`, `bf16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown float dtype {0:?}: expected f64, f32, f16 or bf16")]
pub struct UnknownDtype(pub String);

impl FromStr for FloatDtype {
    type Err = UnknownDtype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f64" | "float64" => Ok(Self::F64),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(UnknownDtype(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in [FloatDtype::F64, FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            assert_eq!(d.name().parse::<FloatDtype>(), Ok(d));
            assert_eq!(FloatDtype::from_safetensors(d.to_safetensors()), Some(d));
            assert_eq!(d.to_safetensors().bitsize(), 8 * d.size());
        }
        assert!("int8".parse::<FloatDtype>().is_err());
        assert_eq!(FloatDtype::from_safetensors(Dtype::I64), None);
    }
}
