//! Who is asking (`identity`) and what they may do (`access`).

pub mod access;
pub mod identity;
