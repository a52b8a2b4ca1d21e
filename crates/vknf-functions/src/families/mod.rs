//! The families vknf ships. Each module is one family; [`crate::Families::builtin`] registers them.

pub mod forest;
pub mod generic;
