use std::fmt;

/// Why a request failed, as carried by an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The frame does not follow the protocol (bad magic, malformed payload).
    BadFrame,
    /// The frame is larger than the server accepts.
    TooLarge,
    /// Wrong feature count, zero rows, or an output the function does not have.
    Shape,
    /// NaN or infinity in the input of a function that rejects them.
    Nan,
    /// A frame type, dtype or protocol version the server does not support.
    Unsupported,
    /// The server's queues for this function or connection are full: retry later.
    Busy,
    /// The device was lost while running the request; the function is being reloaded.
    DeviceLost,
    /// A server-side failure that is not the client's fault.
    Internal,
    /// The server or this function is shutting down and takes no new requests.
    ShuttingDown,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// Every known code, for metrics and documentation.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadFrame,
        ErrorCode::TooLarge,
        ErrorCode::Shape,
        ErrorCode::Nan,
        ErrorCode::Unsupported,
        ErrorCode::Busy,
        ErrorCode::DeviceLost,
        ErrorCode::Internal,
        ErrorCode::ShuttingDown,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::TooLarge => 2,
            ErrorCode::Shape => 3,
            ErrorCode::Nan => 4,
            ErrorCode::Unsupported => 5,
            ErrorCode::Busy => 6,
            ErrorCode::DeviceLost => 7,
            ErrorCode::Internal => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// Inverse of [`ErrorCode::code`].
    pub const fn from_code(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Shape,
            4 => ErrorCode::Nan,
            5 => ErrorCode::Unsupported,
            6 => ErrorCode::Busy,
            7 => ErrorCode::DeviceLost,
            8 => ErrorCode::Internal,
            9 => ErrorCode::ShuttingDown,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The upper-case name used in docs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Shape => "SHAPE",
            ErrorCode::Nan => "NAN",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Busy => "BUSY",
            ErrorCode::DeviceLost => "DEVICE_LOST",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(code) => write!(f, "UNKNOWN({code})"),
            known => f.write_str(known.name()),
        }
    }
}
