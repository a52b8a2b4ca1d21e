//! Reading input rows (`.csv`, `.npy`) and writing predictions as CSV.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::layout::GpuForest;
use crate::predict::Prediction;

/// A row-major batch of f32 feature vectors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// `n_rows * n_features` values.
    pub data: Vec<f32>,
    /// Number of rows.
    pub n_rows: usize,
    /// Values per row.
    pub n_features: usize,
}

impl Rows {
    /// Row `i` (empty when out of range).
    pub fn row(&self, i: usize) -> &[f32] {
        self.data
            .get(i * self.n_features..(i + 1) * self.n_features)
            .unwrap_or(&[])
    }

    /// A new batch holding the rows at `indices`, in that order (out-of-range ones skipped).
    pub fn select(&self, indices: &[usize]) -> Rows {
        let mut data = Vec::with_capacity(indices.len() * self.n_features);
        let mut n_rows = 0;
        for &i in indices {
            if i < self.n_rows {
                data.extend_from_slice(self.row(i));
                n_rows += 1;
            }
        }
        Rows {
            data,
            n_rows,
            n_features: self.n_features,
        }
    }
}

/// Why an input file could not be read.
#[derive(Debug, Error)]
pub enum RowsError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Neither `.csv` nor `.npy`.
    #[error("{0}: unsupported input file type (use .csv or .npy)")]
    UnsupportedExtension(PathBuf),
    /// Malformed CSV.
    #[error("{path}, line {line}: {problem}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Malformed or unsupported `.npy`.
    #[error("{path}: {problem}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Reads rows from a `.csv` (comma-separated floats, optional header row of names, `nan`
/// allowed) or a `.npy` (2-D float32/float64, C order).
pub fn read_rows(path: &Path) -> Result<Rows, RowsError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = std::fs::read(path).map_err(|source| RowsError::Io {
        path: path.to_owned(),
        source,
    })?;
    match ext.as_deref() {
        Some("csv") => parse_csv(&bytes).map_err(|(line, problem)| RowsError::Csv {
            path: path.to_owned(),
            line,
            problem,
        }),
        Some("npy") => {
            let array = parse_npy(&bytes).map_err(|problem| RowsError::Npy {
                path: path.to_owned(),
                problem,
            })?;
            Ok(Rows {
                data: array.values.iter().map(|&v| v as f32).collect(),
                n_rows: array.rows,
                n_features: array.cols,
            })
        }
        _ => Err(RowsError::UnsupportedExtension(path.to_owned())),
    }
}

/// Parses CSV text. Each value is parsed as f64 and then rounded to f32, which is what
/// numpy/scikit-learn do (`loadtxt` to float64, trees cast to float32).
pub fn parse_csv(bytes: &[u8]) -> Result<Rows, (usize, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        (line, "not valid UTF-8".to_owned())
    })?;
    let mut rows = Rows::default();
    let mut first_content_line = true;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Vec<Option<f64>> = fields.iter().map(|f| parse_float(f)).collect();
        if first_content_line {
            first_content_line = false;
            // A header row is any first row that is not all numbers.
            if parsed.iter().any(Option::is_none) {
                rows.n_features = fields.len();
                continue;
            }
            rows.n_features = fields.len();
        }
        if fields.len() != rows.n_features {
            return Err((
                line_no,
                format!("{} values, expected {}", fields.len(), rows.n_features),
            ));
        }
        for (col, (field, value)) in fields.iter().zip(parsed).enumerate() {
            let v = value.ok_or_else(|| (line_no, format!("column {}: {field:?} is not a number", col + 1)))?;
            rows.data.push(v as f32);
        }
        rows.n_rows += 1;
    }
    Ok(rows)
}

fn parse_float(field: &str) -> Option<f64> {
    if field.is_empty() {
        return None;
    }
    field.parse::<f64>().ok()
}

/// A 2-D array read from `.npy`, widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Row-major values.
    pub values: Vec<f64>,
    /// First dimension.
    pub rows: usize,
    /// Second dimension (1 for a 1-D array).
    pub cols: usize,
}

/// Parses a `.npy` file holding a 2-D (or 1-D, read as one column) float32/float64 array
/// in C order.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (little, size) = match descr {
        "<f4" | "=f4" => (true, 4),
        "<f8" | "=f8" => (true, 8),
        ">f4" => (false, 4),
        ">f8" => (false, 8),
        other => {
            return Err(format!("dtype {other} is not supported (use float32 or float64)"));
        }
    };
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("array is in Fortran order; save it in C order".into());
    }
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => return Err(format!("array must be 2-D, shape is {shape}")),
    };
    let data = &bytes[data_start..];
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| format!("shape {shape} is too large"))?;
    if data.len() != expected {
        return Err(format!(
            "shape {shape} needs {expected} data bytes, file has {}",
            data.len()
        ));
    }
    let values = if size == 4 {
        data.chunks_exact(4)
            .map(|c| {
                let b: [u8; 4] = c.try_into().expect("4 bytes");
                f64::from(if little {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                })
            })
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| {
                let b: [u8; 8] = c.try_into().expect("8 bytes");
                if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }
            })
            .collect()
    };
    Ok(NpyArray { values, rows, cols })
}

/// The text of `key`'s value in a numpy header dict (`{'descr': '<f4', ...}`).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|i| i + k.len()))?;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

/// Writes predictions as CSV. Classifiers: `label,<class names...>` then the predicted label
/// and per-class scores; regressors: `target_0,...` then the values.
pub fn write_predictions_csv(out: &mut dyn Write, forest: &GpuForest, prediction: &Prediction) -> io::Result<()> {
    let n = prediction.n_outputs;
    let classifier = forest.task.is_classifier();
    let mut header: Vec<String> = Vec::with_capacity(n + 1);
    if classifier {
        header.push("label".into());
        header.extend((0..n).map(|i| csv_field(&forest.label_name(i as u32))));
    } else {
        header.extend((0..n).map(|i| format!("target_{i}")));
    }
    writeln!(out, "{}", header.join(","))?;
    for r in 0..prediction.n_rows {
        let mut line = String::new();
        if classifier && let Some(&label) = prediction.labels.get(r) {
            line.push_str(&csv_field(&forest.label_name(label)));
            line.push(',');
        }
        let values: Vec<String> = prediction.row(r).iter().map(|v| v.to_string()).collect();
        line.push_str(&values.join(","));
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let r = parse_csv(b"a,b\n1,2\n3,nan\n").unwrap();
        assert_eq!((r.n_rows, r.n_features), (2, 2));
        assert!(r.data[3].is_nan());
        let r = parse_csv(b"1, 2.5\r\n-inf,4\n\n").unwrap();
        assert_eq!(r.data, vec![1.0, 2.5, f32::NEG_INFINITY, 4.0]);
    }

    #[test]
    fn csv_errors_name_the_line() {
        assert_eq!(parse_csv(b"1,2\n3\n").unwrap_err().0, 2);
        let (line, msg) = parse_csv(b"x,y\n1,2\n3,oops\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.contains("oops"), "{msg}");
        assert_eq!(parse_csv(b"1,2\n1,\n").unwrap_err().0, 2);
    }

    #[test]
    fn csv_parses_through_f64() {
        // 0.1 parsed as f64 then rounded equals numpy's float64 -> float32 cast.
        let r = parse_csv(b"0.1\n").unwrap();
        assert_eq!(r.data[0], 0.1f64 as f32);
    }

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        npy_with_order(descr, "False", shape, data)
    }

    fn npy_with_order(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_f32_f64_and_errors() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!((a.rows, a.cols), (2, 3));
        assert_eq!(a.values[5], 6.0);
        let data: Vec<u8> = [1.5f64, f64::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f8", "(2, 1)", &data)).unwrap();
        assert!(a.values[1].is_nan());
        assert!(
            parse_npy(&npy("<i8", "(1, 1)", &[0; 8]))
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            parse_npy(&npy("<f4", "(2, 3)", &[0; 8]))
                .unwrap_err()
                .contains("needs 24")
        );
        assert!(parse_npy(&npy("<f4", "(2, 3, 4)", &[])).unwrap_err().contains("2-D"));
        assert!(parse_npy(&npy("<f4", "(99999999999999, 99999999999)", &[])).is_err());
        assert!(parse_npy(b"garbage").is_err());
        let fortran = npy_with_order("<f4", "True", "(1, 1)", &[0; 4]);
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
    }
}
