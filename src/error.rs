//! Errors are values: everything a caller can get wrong (shapes, conv geometry, devices, files) comes back as
//! an [`Error`] whose message names the operation and the offending values.

/// The one error type of liera.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that an operation cannot combine; `op` is the operation's name.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation's name.
        op: &'static str,
        /// What does not fit, with the shapes.
        msg: String,
    },
    /// An invalid argument that is not a shape (an axis out of range, a zero stride, ...).
    #[error("{op}: {msg}")]
    Invalid {
        /// The operation (or command, or flag) concerned.
        op: &'static str,
        /// What is wrong, with the offending value.
        msg: String,
    },
    /// Tensors on different devices were combined.
    #[error("{op}: operands live on different devices ({a} and {b})")]
    DeviceMismatch {
        /// The operation's name.
        op: &'static str,
        /// The first operand's device.
        a: String,
        /// The second operand's device.
        b: String,
    },
    /// The device could not be created or failed while running.
    #[error("device: {0}")]
    Device(String),
    /// A backend does not (yet) implement a kernel.
    #[error("{backend} backend has no kernel for {op}")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// The missing kernel.
        op: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Training produced a non-finite loss (read back at a logging step); the run stopped there.
    #[error("train: loss became {value} at step {step}; stopping (lower the learning rate){note}")]
    Diverged {
        /// The 1-based step whose loss was not finite.
        step: u64,
        /// The loss read back (NaN or ±∞).
        value: f32,
        /// What the caller adds, e.g. where the last good checkpoint is (empty, or starts with "; ").
        note: String,
    },
    /// A file's contents are malformed.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is malformed.
        msg: String,
    },
}

/// `Result` with liera's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A shape error for operation `op`.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    /// An invalid-argument error for operation `op`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
}
